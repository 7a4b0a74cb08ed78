# SPDX-License-Identifier: MIT
"""Rules of the source tree that a compiler does not check (no VM, no build needed):

- one error-logging idiom: a log call that reports an error passes it to a log_*_errno() macro and
  says %m (src/shared/log.h); a log call without _errno never says %m (it would print "Success"),
  and no log call formats strerror() itself;
- no source, test or fuzz target is listed under an fs.exists() guard in a meson.build: a missing
  file must break the build, not silently drop what it builds.
"""

import glob
import os
import re

from conftest import SRC

LOG_CALL = re.compile(r"\blog_(debug|info|notice|warning|error)(_errno)?\s*\(")


def log_calls(text):
    """(line, errno?, the whole call) for every log_*() call in C source text."""
    for m in LOG_CALL.finditer(text):
        i, depth = m.end(), 1
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        yield text.count("\n", 0, m.start()) + 1, bool(m.group(2)), text[m.start():i]


def c_files():
    for d in ("src", "guest"):
        yield from glob.glob(os.path.join(SRC, d, "**", "*.c"), recursive=True)


def test_one_error_logging_idiom():
    bad = []
    calls = 0
    for path in c_files():
        if path.endswith(os.path.join("shared", "log.c")):
            continue
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for line, with_errno, call in log_calls(text):
            calls += 1
            where = f"{os.path.relpath(path, SRC)}:{line}"
            if "strerror" in call:
                bad.append(f"{where}: formats strerror() itself (use log_*_errno(r, \"…: %m\")): {call[:120]}")
            # %m, but not %%m (a literal percent sign followed by m).
            if not with_errno and re.search(r"(?<!%)%m", call):
                bad.append(f"{where}: %m without an error (prints \"Success\"): {call[:120]}")
    assert calls > 50, f"only {calls} log calls found: is the scan broken?"
    assert not bad, "\n".join(bad)


def test_no_fs_exists_guards_in_meson():
    found = []
    for path in glob.glob(os.path.join(SRC, "**", "meson.build"), recursive=True):
        rel = os.path.relpath(path, SRC)
        if rel.startswith("build") or "/build" in rel.split(os.sep)[0]:
            continue
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if "fs.exists(" in line and not line.lstrip().startswith("#"):
                    found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
