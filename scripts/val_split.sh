#!/bin/sh
# Prints the validation split of a text file: its last 10% by characters, exactly the text
# model/train.py validates on. Training reads the file as UTF-8 text (newlines translated as
# Python's text mode does) and splits the decoded string at int(0.9 * len(text)); this does the
# same in Python, so the cut falls on a character, never inside a UTF-8 sequence.
#
#   scripts/val_split.sh [FILE] > val.txt      FILE defaults to ../shared/data/tinyshakespeare.txt
set -eu

file=${1:-$(dirname "$0")/../../shared/data/tinyshakespeare.txt}
if [ $# -gt 1 ]; then
    echo "val_split: usage: scripts/val_split.sh [FILE] > val.txt" >&2
    exit 2
fi
if [ ! -f "$file" ]; then
    echo "val_split: $file: no such file" >&2
    exit 1
fi
exec /usr/bin/python3 -c '
import sys
with open(sys.argv[1], "r", encoding="utf-8") as f:  # as model/train.py load_data reads it
    text = f.read()
n = int(len(text) * 0.9)
sys.stdout.buffer.write(text[n:].encode("utf-8"))
' "$file"
