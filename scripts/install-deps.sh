#!/bin/sh
# Installs the Debian/Ubuntu packages a make target needs, and only those missing.
# Usage: scripts/install-deps.sh build|test|train|bench|fuzz
#
# Silent when nothing is missing. Otherwise it says what it installs and about how long that
# takes, then shows apt's own output (a line per package fetched, unpacked and set up). When
# another apt or dpkg holds a package lock, it waits up to 10 minutes for it instead of failing.
set -eu

build="gcc make libc6-dev libstb-dev libpcre2-dev"
python="python3 python3-numpy python3-torch python3-sentencepiece libopenblas0-pthread"
case "${1:-build}" in
build) wanted="$build" ;;
test) wanted="$build check pkg-config valgrind chromium $python python3-matplotlib nodejs npm" ;;
train) wanted="$build $python python3-matplotlib" ;;
bench) wanted="$build python3 python3-numpy python3-matplotlib time" ;;
fuzz) wanted="$build clang libclang-rt-dev" ;;
*) echo "install-deps: unknown set '$1' (expected build, test, train, bench or fuzz)" >&2; exit 2 ;;
esac

missing=""
count=0
for package in $wanted; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" && continue
    # A Node.js build that brings its own npm (NodeSource's nodejs) needs no Debian npm, which
    # would conflict with it.
    [ "$package" = npm ] && command -v npm >/dev/null 2>&1 && continue
    missing="$missing $package"
    count=$((count + 1))
done
[ -z "$missing" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: missing packages:$missing; install them with your package manager" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
        echo "install-deps: need root or sudo to install:$missing" >&2
        exit 1
    }
    sudo="sudo"
fi

# python3-torch and its libraries are most of the download: about 4 minutes for the test and
# train sets on a fresh machine. The rest take a minute or two at most.
case " $missing " in
*" python3-torch "*) took="about 4 minutes (python3-torch and its libraries are most of it)" ;;
*) took="a minute or two at most" ;;
esac
echo "install-deps: installing $count missing packages with apt-get:$missing"
echo "install-deps: with their dependencies this takes $took; apt's progress follows"
# DPkg::Lock::Timeout makes apt-get install wait for another apt or dpkg (an unattended upgrade,
# say) to release the package lock. apt-get update ignores it for the lock on its package lists
# (apt 2.6 fails at once), so that one is retried here, for as long.
lock="-o DPkg::Lock::Timeout=600"
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
waited=0
# shellcheck disable=SC2086
until $sudo apt-get $lock update 2>"$errors"; do
    if grep -q "Could not get lock" "$errors" && [ "$waited" -lt 600 ]; then
        [ "$waited" -eq 0 ] &&
            echo "install-deps: another apt holds the package lists; waiting for it (up to 10 minutes)"
        sleep 5
        waited=$((waited + 5))
        continue
    fi
    cat "$errors" >&2
    echo "install-deps: apt-get update failed (see above)" >&2
    exit 1
done
cat "$errors" >&2
# shellcheck disable=SC2086
$sudo env DEBIAN_FRONTEND=noninteractive apt-get $lock install -y --no-install-recommends $missing || {
    echo "install-deps: apt-get install failed (see above); missing:$missing" >&2
    exit 1
}
echo "install-deps: installed$missing"
