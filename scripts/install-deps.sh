#!/bin/sh
# Installs the Debian/Ubuntu packages a make target needs, and only those missing.
# Usage: scripts/install-deps.sh build|test|train|bench|fuzz
set -eu

build="gcc make libc6-dev libstb-dev"
python="python3 python3-numpy python3-torch python3-sentencepiece libopenblas0-pthread"
case "${1:-build}" in
build) wanted="$build" ;;
test) wanted="$build check pkg-config valgrind chromium $python" ;;
train) wanted="$build $python python3-matplotlib" ;;
bench) wanted="$build python3 python3-numpy python3-matplotlib time" ;;
fuzz) wanted="$build clang libclang-rt-dev" ;;
*) echo "install-deps: unknown set '$1' (expected build, test, train, bench or fuzz)" >&2; exit 2 ;;
esac

missing=""
for package in $wanted; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" ||
        missing="$missing $package"
done
[ -z "$missing" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: missing packages:$missing; install them with your package manager" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
        echo "install-deps: need root or sudo to install:$missing" >&2
        exit 1
    }
    sudo="sudo"
fi
echo "install-deps: installing$missing"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
