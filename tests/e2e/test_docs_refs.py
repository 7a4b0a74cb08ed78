# SPDX-License-Identifier: MIT
"""Every reference to the specification resolves inside this repository. No VM, no build.

- A B-number (`B5.4`) anywhere in the sources, tests, docs, benchmarks or scripts must have a
  heading of its own in docs/spec.md (`## B5.` or `### B5.4 …`).
- A section sign with a number, where the code cites the wire-protocol notes, must have a
  heading of that number in the wire-protocol notes of docs/ (`### 4.8 …`, or `## 4.` for a whole
  section). One after an RFC number is not ours and is left alone.
- Nothing may point at files that are not in the repository: the product specification,
  architecture proposal and style guide the project started from, or a reference directory
  beside it. The spec and the wire-protocol notes in docs/ restate what the code relies on.
"""

import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SPEC = os.path.join(ROOT, "docs", "spec.md")
PROTOCOLS = os.path.join(ROOT, "docs", "protocols.md")

SCAN_DIRS = ["src", "guest", "tests", "docs", "bench", "include", "scripts", "fuzz", "clients", "man",
             "packaging", "completions", "debian", ".ci"]
SCAN_FILES = ["README.md", "Makefile", "meson.build", "meson_options.txt"]
SKIP_DIRS = {"__pycache__", "corpus", "img", ".pytest_cache"}
SKIP_EXT = (".png", ".jpg", ".gz", ".svg", ".pyc", ".o", ".a", ".so")

B_REF = re.compile(r"\bB(\d+(?:\.\d+)*)\b")
S_REF = re.compile(r"§\s?(\d+(?:\.\d+)*)")
B_HEADING = re.compile(r"^#{2,4} B(\d+(?:\.\d+)*)\.?(?:\s|$)", re.M)
S_HEADING = re.compile(r"^#{2,4} (\d+(?:\.\d+)*)\.?(?:\s|$)", re.M)

# Files outside the repository that early comments pointed at. Written in pieces so that this file
# does not match itself.
OUTSIDE = [
    (re.compile(r"\b" + "PRODUCT" + r"(\.md\b|\s+B\d)"), "the product specification (use docs/spec.md)"),
    (re.compile(r"\b" + "ARCHITECTURE" + r"\.md\b"), "the architecture proposal (say it in docs/design.md)"),
    (re.compile(r"\b" + "STYLE" + r"\.md\b"), "the style guide (see .clang-format, docs/design.md)"),
    (re.compile(r"(\.\./|\b)" + "shared/" + r"(reference|PRODUCT|ARCHITECTURE|STYLE)"), "a reference directory"),
    (re.compile(r"\(in " + "shared/" + r"\)"), "a directory outside the repository"),
    (re.compile(r"(?<![\w/])(?<!\]\()" + "protocols" + r"\.md"), "a bare protocols file name (write docs/protocols.md)"),
]


def scanned_files():
    for d in SCAN_DIRS:
        top = os.path.join(ROOT, d)
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(n for n in dirnames if n not in SKIP_DIRS and not n.startswith("build"))
            for name in sorted(filenames):
                if not name.endswith(SKIP_EXT):
                    yield os.path.join(dirpath, name)
    for f in SCAN_FILES:
        p = os.path.join(ROOT, f)
        if os.path.exists(p):
            yield p


def read_text(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (UnicodeDecodeError, OSError):
        return None


def refs(pattern, skip_rfc=False):
    """{number: ["path:line", ...]} of every match in the scanned files."""
    found = {}
    for path in scanned_files():
        text = read_text(path)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            for m in pattern.finditer(line):
                if skip_rfc and re.search(r"RFC\s*\d+\s*$", line[:m.start()]):
                    continue
                found.setdefault(m.group(1), []).append(f"{os.path.relpath(path, ROOT)}:{lineno}")
    return found


def headings(path, pattern):
    with open(path, encoding="utf-8") as f:
        return set(pattern.findall(f.read()))


def unresolved(found, have, prefix):
    lines = []
    for num in sorted(found, key=lambda s: [int(x) for x in s.split(".")]):
        if num not in have:
            where = found[num]
            lines.append(f"  {prefix}{num}: {', '.join(where[:5])}" + (f" (+{len(where) - 5} more)" if len(where) > 5 else ""))
    return lines


def test_spec_and_protocols_exist():
    assert os.path.isfile(SPEC), "docs/spec.md is missing: B-numbers in the code have nothing to point at"
    assert os.path.isfile(PROTOCOLS), "docs/protocols.md is missing: § references have nothing to point at"
    with open(SPEC, encoding="utf-8") as f:
        assert "B-numbers in comments and docs refer to the sections of this file" in f.read()


def test_every_b_number_has_a_section():
    assert os.path.isfile(SPEC), "docs/spec.md is missing"
    found = refs(B_REF)
    assert found, "no B-number found at all: is the scan looking in the right place?"
    missing = unresolved(found, headings(SPEC, B_HEADING), "B")
    assert not missing, "B-numbers without a section in docs/spec.md:\n" + "\n".join(missing)


def test_every_section_sign_has_a_section():
    assert os.path.isfile(PROTOCOLS), "docs/protocols.md is missing"
    found = refs(S_REF, skip_rfc=True)
    missing = unresolved(found, headings(PROTOCOLS, S_HEADING), "§")
    assert not missing, "§ numbers without a section in docs/protocols.md:\n" + "\n".join(missing)


def test_no_reference_outside_the_repository():
    me = os.path.abspath(__file__)
    bad = []
    for path in scanned_files():
        if os.path.abspath(path) == me:
            continue
        text = read_text(path)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            for pattern, what in OUTSIDE:
                if pattern.search(line):
                    bad.append(f"  {os.path.relpath(path, ROOT)}:{lineno}: {what}: {line.strip()[:120]}")
    assert not bad, "references to files that are not in the repository:\n" + "\n".join(bad)
