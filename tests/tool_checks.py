"""Running the Python tools (model/quantize.py, convert.py, import.py, scripts/plot_attention.py)
on hostile input, for tests/test_convert.py, test_import.py and test_plot_attention.py.

Each tool must answer bad input as run.c does: one line on stderr, `TOOL: what is wrong`, exit 1
for bad data or files and 2 for bad usage, never a traceback; a FIFO as input is refused at once;
an output is written under a temporary name and renamed into place only when complete, so that
an interrupted or failed run (exit 130 for Ctrl-C) leaves no file of its own behind.

tool() runs a tool and returns a Result; interrupt="publish:PATH" sends the tool SIGINT at the
moment it renames or links its finished output into PATH, interrupt="import:MODULE" while it
imports MODULE, and fsize limits the size of every file the tool writes (RLIMIT_FSIZE: writes
past it fail with EFBIG, like a disk that fills up during the write).
"""
import os
import resource
import stat
import subprocess
import sys
from collections import namedtuple

Result = namedtuple("Result", "status stdout stderr")

# Run as `python3 -c HOOK WHEN SCRIPT ARGS...`: sets the trap WHEN, then runs SCRIPT as __main__.
# The signal is sent to the process itself and a sleep follows, which the signal's handler ends
# by raising KeyboardInterrupt, as Ctrl-C at that moment would.
HOOK = r"""
import os, runpy, signal, sys, time
when, script = sys.argv[1], sys.argv[2]
sys.argv = sys.argv[2:]

def interrupt():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)

# As at a terminal: a shell that starts a job in the background hands it SIGINT ignored, and
# Python then installs no handler of its own, so the signal would change nothing.
signal.signal(signal.SIGINT, signal.default_int_handler)

if when.startswith("publish:"):
    target = os.path.abspath(when[len("publish:"):])
    for name in ("replace", "rename", "link"):
        def hooked(src, dst, *args, _real=getattr(os, name), **kwargs):
            if os.path.abspath(dst) == target:
                interrupt()
            return _real(src, dst, *args, **kwargs)
        setattr(os, name, hooked)
elif when.startswith("import:"):
    module = when[len("import:"):]

    class Trap:
        def find_spec(self, name, path=None, target=None):
            if name == module:
                interrupt()
            return None

    sys.meta_path.insert(0, Trap())
runpy.run_path(script, run_name="__main__")
"""


def tool(script, *args, interrupt=None, fsize=None, stdout=None, timeout=30):
    """Runs script with args (standard input empty; standard output into the file stdout names,
    if given); a run still going after timeout seconds is killed and reported with status None."""
    command = [sys.executable, script, *args]
    if interrupt:
        command = [sys.executable, "-c", HOOK, interrupt, script, *args]

    def limit():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    sink = open(stdout, "wb") if stdout else subprocess.PIPE
    try:
        p = subprocess.run(command, stdout=sink, stderr=subprocess.PIPE, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return Result(None, "", f"(still running after {timeout} s: killed)")
    finally:
        if stdout:
            sink.close()
    return Result(p.returncode, p.stdout or "", p.stderr)


def one_line(result, name, status, needle):
    """Whether the run ended with status and one line `NAME: ...` on stderr that holds needle."""
    lines = result.stderr.splitlines()
    return (result.status == status and len(lines) == 1 and lines[0].startswith(name + ": ")
            and needle in lines[0] and "Traceback" not in result.stderr)


def describe(result):
    """The run in a few words, for the check's line."""
    lines = result.stderr.strip().splitlines()
    last = lines[-1] if lines else ""
    more = f" (+{len(lines) - 1} lines)" if len(lines) > 1 else ""
    return f"exit {result.status}: {last!r}{more}"


def interrupted_cleanly(result):
    """Whether the run ended with 130 and nothing on stderr."""
    return result.status == 130 and result.stderr == ""


def leftovers(directory, before):
    """Files in directory that are not among the names in before."""
    return sorted(set(os.listdir(directory)) - set(before))


def fifo(directory, name="fifo"):
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        os.mkfifo(path)
    return path


def full_disk(directory):
    """A symlink in directory to /dev/full (a disk that is always full), None where there is no
    such device. The tools are given the link, never /dev/full itself: a tool that renames its
    output into place without looking (as these once did) then replaces the link, not the
    device node of the whole machine."""
    try:
        if not stat.S_ISCHR(os.stat("/dev/full").st_mode):
            return None
    except OSError:
        return None
    path = os.path.join(directory, "full-disk")
    if os.path.lexists(path):
        os.remove(path)
    os.symlink("/dev/full", path)
    return path
