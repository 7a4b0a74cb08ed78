#!/bin/sh
# meson install: puts the example configuration in place unless there is one already, so that a
# reinstall never overwrites an operator's edits. $1: the directory, $2: the example file.
set -eu
dir="${DESTDIR:-}$1"
if [ -e "$dir/ballastd.conf" ]; then
    echo "Keeping the existing $dir/ballastd.conf"
else
    install -D -m 0644 "$2" "$dir/ballastd.conf"
    echo "Installing $2 to $dir/ballastd.conf"
fi
