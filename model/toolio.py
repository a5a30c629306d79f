"""What the command-line tools (quantize.py, convert.py, import.py, scripts/plot_attention.py)
share: they answer bad input as run.c does.

- Every failure is one line on stderr, `TOOL: what is wrong`, and exit status 1 for bad data or
  files, 2 for bad usage (a bad flag, an output that exists or that is one of the inputs); never
  a traceback. Ctrl-C exits 130 (SIGTERM and SIGHUP 128 + the signal) without a word.
- Inputs must be regular files, opened without waiting for a writer, so a FIFO is refused at once.
- An output is written under a temporary name beside it and renamed into place only when every
  byte is written: a failed or interrupted run leaves the old file, or none, never half of a new
  one. Without --force the finished file replaces nothing (not even a file another program
  created meanwhile). An output that exists and is not a regular file (/dev/null, /dev/full) is
  written in place, as run.c does.

A tool calls guard(TOOL) first thing (so that even its imports fail in one line), raises Failure
for anything the user must fix, and ends with run(main).
"""
import argparse
import errno
import os
import signal
import stat
import sys
import tempfile

EXIT_DATA = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

_tool = "tool"


class Failure(Exception):
    """Something the user must fix, in one line (without the tool's name), and the exit status."""

    def __init__(self, message, status=EXIT_DATA):
        super().__init__(message)
        self.status = status


class Interrupted(BaseException):
    """SIGTERM or SIGHUP, raised like KeyboardInterrupt so that temporary files are removed."""

    def __init__(self, signum):
        super().__init__(signum)
        self.status = 128 + signum


def _status_and_message(e):
    """An exception as (exit status, the line to print or None)."""
    if isinstance(e, Failure):
        return e.status, str(e)
    if isinstance(e, KeyboardInterrupt):
        return EXIT_INTERRUPTED, None
    if isinstance(e, Interrupted):
        return e.status, None
    if isinstance(e, MemoryError):
        return EXIT_DATA, "out of memory"
    if isinstance(e, RecursionError):
        return EXIT_DATA, "the input is nested too deeply to read"
    # A bug, not bad input: still one line, naming the exception.
    return EXIT_DATA, f"unexpected error: {type(e).__name__}: {e}"


def _say(message):
    """Prints TOOL's one line on stderr (nothing when message is None)."""
    try:
        if message is not None:
            sys.stderr.write(f"{_tool}: {message}\n")
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # stderr closed or unwritable
        pass


def _finish(status, message):
    """From sys.excepthook, where nothing may be raised: says message and ends the process."""
    _say(message)
    _quiet_stdout()
    os._exit(status)


def _quiet_stdout():
    """Flushes stdout and returns None, or the error of a flush that failed; then stdout goes to
    /dev/null, so that the flush at exit cannot fail again."""
    if sys.stdout is None:  # started with stdout closed
        return None
    try:
        sys.stdout.flush()
        return None
    except (OSError, ValueError) as e:
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, sys.stdout.fileno())
            os.close(null)
        except (OSError, ValueError):
            pass
        return e


def _excepthook(kind, value, traceback):
    _finish(*_status_and_message(value))


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def guard(tool):
    """Names the tool in its messages and makes any exception that escapes (an import cut short by
    Ctrl-C, say) one line and an exit status instead of a traceback."""
    global _tool
    _tool = tool
    sys.excepthook = _excepthook
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, _raise_interrupted)


def run(main):
    """Runs main() and exits: 0 once stdout is written, else the failure's status and line."""
    try:
        main()
    except SystemExit:  # argparse's --help, or a tool's own sys.exit
        _quiet_stdout()
        raise
    except BaseException as e:  # noqa: B036 (Ctrl-C included)
        status, message = _status_and_message(e)
        _say(message)
        _quiet_stdout()
        sys.exit(status)
    error = _quiet_stdout()
    if error is not None:
        _say(f"cannot write output: {_reason(error)}")
        sys.exit(EXIT_DATA)
    sys.exit(0)


def print_result(line):
    """Prints the tool's summary line on stdout; Failure (exit 1) when stdout cannot take it (a
    full disk: print can fail at once, not only at the flush at exit)."""
    try:
        print(line)
        sys.stdout.flush()
    except OSError as e:
        _quiet_stdout()
        raise Failure(f"cannot write output: {_reason(e)}") from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors in one line, `TOOL: ... (see PROG --help)`, exit 2."""

    def error(self, message):
        raise Failure(f"{message} (see {self.prog} --help)", EXIT_USAGE)


def _reason(e):
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)


def read_input(path):
    """All bytes of the regular file at path, and its os.stat_result; Failure (exit 1) naming what
    is wrong. The file is opened with O_NONBLOCK, so a FIFO is refused instead of waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise Failure(f"{path}: cannot open: {_reason(e)}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise Failure(f"{path}: is a directory, expected a file")
        if not stat.S_ISREG(info.st_mode):
            raise Failure(f"{path}: not a regular file")
        if info.st_size == 0:
            raise Failure(f"{path}: file is empty")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read()
    except OSError as e:
        raise Failure(f"{path}: cannot read: {_reason(e)}") from None
    finally:
        os.close(fd)
    return data, info


def check_output(path, force, inputs):
    """Refuses, before any work, an output that names one of the inputs (same file: by name, a
    symlink or a hard link; whatever --force says), an existing output without --force (both
    exit 2), and one whose directory is missing (exit 1). inputs: [(path, description)], the
    description read as in "OUT is DESCRIPTION; write somewhere else"."""
    try:
        out = os.stat(path)
    except OSError:
        out = None
    if out is not None:
        for input_path, description in inputs:
            try:
                info = os.stat(input_path)
            except OSError:
                continue
            if (info.st_dev, info.st_ino) == (out.st_dev, out.st_ino):
                raise Failure(f"{path} is {description}; write somewhere else", EXIT_USAGE)
        if not force:
            raise Failure(f"{path} exists; pass --force to overwrite it", EXIT_USAGE)
        if stat.S_ISDIR(out.st_mode):
            raise Failure(f"cannot create {path}: {os.strerror(errno.EISDIR)}")
        return
    if path.endswith(os.sep) or os.path.basename(path) in ("", ".", ".."):
        raise Failure(f"cannot create {path}: {os.strerror(errno.EISDIR)}")
    directory = os.path.dirname(path) or "."
    try:
        if not stat.S_ISDIR(os.stat(directory).st_mode):
            raise Failure(f"cannot create {path}: {os.strerror(errno.ENOTDIR)}")
    except OSError as e:
        raise Failure(f"cannot create {path}: {_reason(e)}") from None


def _block_signals():
    """Holds back Ctrl-C and friends while a temporary file is removed; returns the old mask."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def _publish(temp, path, force):
    """Puts the finished temp in place of path. Without force it replaces nothing: a hard link
    fails if path exists (where links are not supported, a check just before the rename)."""
    if force:
        os.replace(temp, path)
        return
    try:
        os.link(temp, path)
    except FileExistsError:
        raise Failure(f"{path} exists: another program created it during this run; pass --force "
                      "to overwrite it") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        if os.path.lexists(path):
            raise Failure(f"{path} exists: another program created it during this run; pass "
                          "--force to overwrite it") from None
        os.rename(temp, path)
        return
    os.unlink(temp)


def write_output(path, force, write):
    """Calls write(f) with a binary file that becomes path only once write has returned and every
    byte is on disk (a temporary file beside path until then, removed on any failure or
    interrupt). Failure (exit 1) when it cannot be created or written. Returns write's result."""
    try:
        info = os.stat(path)
    except OSError:
        info = None
    if info is not None and not stat.S_ISREG(info.st_mode):
        if stat.S_ISDIR(info.st_mode):
            raise Failure(f"cannot create {path}: {os.strerror(errno.EISDIR)}")
        try:  # /dev/null, /dev/full, a pipe: written in place, as run.c does
            with open(path, "wb") as f:
                result = write(f)
        except OSError as e:
            raise Failure(f"cannot write {path}: {_reason(e)}") from None
        return result
    directory, name = os.path.split(path)
    try:
        fd, temp = tempfile.mkstemp(prefix=name + ".tmp-", dir=directory or ".")
    except OSError as e:
        raise Failure(f"cannot create {path}: {_reason(e)}") from None
    try:
        mask = os.umask(0)  # mkstemp makes the file private; give it the usual mode
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)
        with os.fdopen(fd, "wb") as f:
            fd = None
            result = write(f)
            f.flush()
        _publish(temp, path, force)
    except BaseException as e:
        old = _block_signals()
        try:
            if fd is not None:
                os.close(fd)
            os.unlink(temp)
        except OSError:
            pass
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if isinstance(e, OSError):
            raise Failure(f"cannot write {path}: {_reason(e)}") from None
        raise
    return result
