#!/bin/sh
# Tests scripts/install-deps.sh against stand-ins for dpkg-query, apt-get, id, sudo and sleep that log
# their arguments: no network, no root, nothing installed. Usage: tests/test_install_deps.sh
set -u
cd "$(dirname "$0")/.." || exit 1
script=$PWD/scripts/install-deps.sh
tmp=$(mktemp -d) && [ -d "$tmp" ] || exit 1
trap 'rm -rf "$tmp"' EXIT

# bin/ holds the stand-ins and links to the few real tools the script uses, and is the whole
# PATH: a real sudo or apt-get elsewhere on the machine cannot be reached.
mkdir "$tmp/bin"
for tool in grep env mktemp cat rm; do
    real=$(command -v "$tool") || { echo "test_install_deps: no $tool" >&2; exit 1; }
    ln -s "$real" "$tmp/bin/$tool"
done
# dpkg-query -W -f=... PACKAGE: installed when PACKAGE is listed in $tmp/installed.
cat >"$tmp/bin/dpkg-query" <<EOF
#!/bin/sh
for last; do :; done
if grep -qx "\$last" "$tmp/installed"; then echo "install ok installed"; exit 0; fi
echo "dpkg-query: no packages found matching \$last" >&2
exit 1
EOF
# apt-get logs its arguments, one call a line; it fails when $tmp/apt-fails exists. While
# $tmp/lists-locked holds a number above 0, update fails as apt 2.6 does when another apt holds
# the lock on the package lists (DPkg::Lock::Timeout or not), and counts down.
cat >"$tmp/bin/apt-get" <<EOF
#!/bin/sh
echo "apt-get \$* [DEBIAN_FRONTEND=\${DEBIAN_FRONTEND:-}]" >>"$tmp/calls"
if [ "\$3" = update ] && read -r n <"$tmp/lists-locked" && [ "\$n" -gt 0 ]; then
    echo \$((n - 1)) >"$tmp/lists-locked"
    echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 1 (apt-get)" >&2
    echo "E: Unable to lock directory /var/lib/apt/lists/" >&2
    exit 100
fi
[ ! -e "$tmp/apt-fails" ]
EOF
echo 0 >"$tmp/lists-locked"
# sleep returns at once, and logs how long it was asked to sleep.
cat >"$tmp/bin/sleep" <<EOF
#!/bin/sh
echo "sleep \$*" >>"$tmp/sleeps"
EOF
# id -u prints the uid in $tmp/uid.
cat >"$tmp/bin/id" <<EOF
#!/bin/sh
read -r uid <"$tmp/uid" && echo "\$uid"
EOF
# sudo logs itself and runs its command (made only for the tests that want one).
cat >"$tmp/sudo" <<EOF
#!/bin/sh
echo "sudo \$*" >>"$tmp/calls"
exec "\$@"
EOF
chmod +x "$tmp/bin/dpkg-query" "$tmp/bin/apt-get" "$tmp/bin/id" "$tmp/bin/sleep" "$tmp/sudo"

failures=0
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}
pass() { echo "ok: $*"; }

# run_script SET: runs the script with PATH=bin; sets status, and out, err, calls as files.
run_script() {
    : >"$tmp/calls"
    : >"$tmp/sleeps"
    env -u DEBIAN_FRONTEND PATH="$tmp/bin" /bin/sh "$script" "$@" >"$tmp/out" 2>"$tmp/err"
    status=$?
}
lines() { grep -c '' "$1"; }

# Every package of every set, one a line.
all=$(printf '%s\n' gcc make libc6-dev libstb-dev libpcre2-dev check pkg-config valgrind python3 python3-numpy \
    python3-torch python3-sentencepiece libopenblas0-pthread python3-matplotlib chromium time clang \
    libclang-rt-dev nodejs npm)

# 1. Everything installed: no output, no apt-get, exit 0, for every set.
echo "$all" >"$tmp/installed"
echo 0 >"$tmp/uid"
for set in build test train bench fuzz; do
    run_script "$set"
    if [ $status -ne 0 ] || [ -s "$tmp/out" ] || [ -s "$tmp/err" ] || [ -s "$tmp/calls" ]; then
        fail "all installed, set $set: status $status, output: $(cat "$tmp/out" "$tmp/err" "$tmp/calls")"
    else
        pass "all installed, set $set: silent, no apt-get"
    fi
done

# 2. Root, two packages missing from the test set (matplotlib among them): update, then install of
#    exactly those two, both waiting for the package lock; progress is not hidden.
echo "$all" | grep -v -x -e valgrind -e python3-matplotlib >"$tmp/installed"
run_script test
if [ $status -ne 0 ]; then
    fail "root, 2 missing: status $status: $(cat "$tmp/err")"
elif [ "$(lines "$tmp/calls")" -ne 2 ]; then
    fail "root, 2 missing: expected 2 apt-get calls, got: $(cat "$tmp/calls")"
else
    update=$(sed -n 1p "$tmp/calls")
    install=$(sed -n 2p "$tmp/calls")
    case "$update" in
    "apt-get -o DPkg::Lock::Timeout=600 update "*) pass "update waits for the lock: $update" ;;
    *) fail "update call: $update" ;;
    esac
    case "$install" in
    "apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends valgrind python3-matplotlib [DEBIAN_FRONTEND=noninteractive]")
        pass "install waits for the lock, installs only the missing: $install" ;;
    *) fail "install call: $install" ;;
    esac
    case "$update $install" in
    *-qq* | *" -q "*) fail "apt-get's output is hidden: $update / $install" ;;
    esac
    if grep -q "installing 2 missing packages with apt-get: valgrind python3-matplotlib" "$tmp/out" &&
        grep -q "minute" "$tmp/out"; then
        pass "says what it installs and how long it takes"
    else
        fail "no announcement of the install: $(cat "$tmp/out")"
    fi
fi

# 3. Another apt holds the package lists for 3 tries: update is retried, with one line saying so,
#    then the install goes ahead.
echo 3 >"$tmp/lists-locked"
run_script test
if [ $status -eq 0 ] && [ "$(grep -c " update" "$tmp/calls")" -eq 4 ] &&
    [ "$(grep -c " install " "$tmp/calls")" -eq 1 ] && [ "$(lines "$tmp/sleeps")" -eq 3 ] &&
    [ "$(grep -c "waiting for it" "$tmp/out")" -eq 1 ]; then
    pass "package lists locked for 3 tries: waited, then installed"
else
    fail "package lists locked for 3 tries: status $status, calls: $(cat "$tmp/calls"), sleeps: $(cat "$tmp/sleeps"), output: $(cat "$tmp/out" "$tmp/err")"
fi

# 4. Held for good: it gives up after 10 minutes with apt's error, and installs nothing.
echo 1000000 >"$tmp/lists-locked"
run_script test
slept=0
while read -r _ seconds; do slept=$((slept + seconds)); done <"$tmp/sleeps"
if [ $status -eq 1 ] && [ $slept -eq 600 ] && ! grep -q " install " "$tmp/calls" &&
    grep -q "Could not get lock" "$tmp/err" && grep -q "apt-get update failed" "$tmp/err"; then
    pass "package lists locked for good: gave up after $slept s"
else
    fail "package lists locked for good: status $status, slept $slept s, stderr: $(cat "$tmp/err")"
fi
echo 0 >"$tmp/lists-locked"

# 5. python3-torch missing: the announcement says about 4 minutes.
echo "$all" | grep -v -x python3-torch >"$tmp/installed"
run_script train
if [ $status -eq 0 ] && grep -q "about 4 minutes" "$tmp/out"; then
    pass "python3-torch missing: about 4 minutes"
else
    fail "python3-torch missing: status $status, output: $(cat "$tmp/out" "$tmp/err")"
fi

# 6. Not root and no sudo: one clear line on stderr, exit 1, no apt-get.
echo "$all" | grep -v -x python3-matplotlib >"$tmp/installed"
echo 1000 >"$tmp/uid"
run_script test
if [ $status -eq 1 ] && [ "$(lines "$tmp/err")" -eq 1 ] && [ ! -s "$tmp/out" ] && [ ! -s "$tmp/calls" ] &&
    grep -q "need root or sudo to install: python3-matplotlib" "$tmp/err"; then
    pass "non-root without sudo: $(cat "$tmp/err")"
else
    fail "non-root without sudo: status $status, stdout: $(cat "$tmp/out"), stderr: $(cat "$tmp/err"), calls: $(cat "$tmp/calls")"
fi

# 7. Not root, with sudo: apt-get goes through sudo, and DEBIAN_FRONTEND survives sudo's
#    scrubbing of the environment (it is set by env under sudo).
ln -s "$tmp/sudo" "$tmp/bin/sudo"
run_script test
if [ $status -eq 0 ] && grep -q "^sudo apt-get -o DPkg::Lock::Timeout=600 update" "$tmp/calls" &&
    grep -q "^sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install" "$tmp/calls"; then
    pass "non-root with sudo: through sudo"
else
    fail "non-root with sudo: status $status, calls: $(cat "$tmp/calls")"
fi
rm "$tmp/bin/sudo"
echo 0 >"$tmp/uid"

# 8. apt-get fails: the script fails with a line that says so.
touch "$tmp/apt-fails"
run_script test
if [ $status -ne 0 ] && grep -q "install-deps: apt-get update failed" "$tmp/err"; then
    pass "apt-get failure: status $status, $(cat "$tmp/err")"
else
    fail "apt-get failure: status $status, stderr: $(cat "$tmp/err")"
fi
rm "$tmp/apt-fails"

# 9. No apt-get at all: names what is missing, exit 1.
rm "$tmp/bin/apt-get"
run_script test
if [ $status -eq 1 ] && grep -q "missing packages: python3-matplotlib; install them" "$tmp/err"; then
    pass "no apt-get: $(cat "$tmp/err")"
else
    fail "no apt-get: status $status, stderr: $(cat "$tmp/err")"
fi

# 10. An unknown set: exit 2.
run_script nonsense
if [ $status -eq 2 ] && grep -q "unknown set 'nonsense'" "$tmp/err"; then
    pass "unknown set: exit 2"
else
    fail "unknown set: status $status, stderr: $(cat "$tmp/err")"
fi

if [ $failures -ne 0 ]; then
    echo "test_install_deps: $failures failed"
    exit 1
fi
echo "test_install_deps: all passed"
