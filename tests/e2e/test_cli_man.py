# SPDX-License-Identifier: MIT
"""The manual pages in man/: `mandoc -T lint` finds nothing in them (down to style messages; only
the cross-references between the three pages, which are not installed here, are let through),
they say what the programs do (every ballastctl command, every ballastd option, every key of every
configuration section), and meson installs them with the completions."""

import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import BUILD, CTL, SRC
from test_cli_help import discovered

MAN = os.path.join(SRC, "man")
PAGES = {"ballastctl.1": "ballastctl", "ballastd.8": "ballastd", "ballastd.conf.5": "ballastd.conf"}
BALLASTD = os.path.join(BUILD, "src", "ballastd")
OWN_XREF = re.compile(r"STYLE: referenced manual not found: Xr (ballastctl 1|ballastd 8|ballastd\.conf 5)( \(\d+ times\))?$")


def need(path, what):
    if not os.access(path, os.X_OK):
        msg = f"{what} is missing: {path}"
        if os.environ.get("BALLAST_REQUIRE_VM"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def page(name):
    with open(os.path.join(MAN, name)) as f:
        return f.read()


def rendered(name):
    mandoc = need(shutil.which("mandoc") or "/usr/bin/mandoc", "mandoc (Debian package mandoc)")
    p = subprocess.run([mandoc, "-T", "ascii", os.path.join(MAN, name)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return re.sub(r".\x08", "", p.stdout)  # no overstrike


@pytest.mark.parametrize("name", sorted(PAGES))
def test_mandoc_lint(name):
    mandoc = need(shutil.which("mandoc") or "/usr/bin/mandoc", "mandoc (Debian package mandoc)")
    p = subprocess.run([mandoc, "-T", "lint", "-W", "style", os.path.join(MAN, name)], capture_output=True,
                       text=True, timeout=60)
    msgs = [l for l in (p.stdout + p.stderr).splitlines() if l.strip()]
    bad = [m for m in msgs if not OWN_XREF.search(m)]
    assert not bad, f"mandoc -T lint {name}:\n" + "\n".join(bad)
    # The page renders with its name and section.
    text = rendered(name)
    sec = name.rsplit(".", 1)[1]
    assert text.startswith(f"{PAGES[name].upper()}({sec})"), text[:200]


def test_ballastctl_page_has_every_command():
    text = rendered("ballastctl.1")
    missing = []
    for cmd in sorted(discovered()):
        words = " ".join(cmd)
        # "vm start", or a verb listed with others: "vm ping | meminfo", "pool fill | acquire".
        if len(cmd) == 1:
            ok = re.search(rf"^\s+{re.escape(cmd[0])}\b", text, re.M)
        else:
            ok = re.search(rf"^\s+{re.escape(cmd[0])} (\S+ \| )*{re.escape(cmd[1])}\b", text, re.M)
        if not ok:
            missing.append(words)
    assert not missing, f"ballastctl(1) does not describe: {missing}"
    for code in range(6):
        assert re.search(rf"^\s+{code}\s", text, re.M), f"exit status {code} missing"


def test_ballastd_page_has_every_option():
    need(BALLASTD, "ballastd")
    usage = subprocess.run([BALLASTD, "--help"], capture_output=True, text=True, timeout=30).stdout
    text = rendered("ballastd.8")
    for opt in re.findall(r"(--[a-z-]+)", usage):
        assert opt in text, f"ballastd(8) does not describe {opt}"


def test_conf_page_has_every_key(tmp_path):
    """Every key ballastd --check-config prints (the whole configuration, with defaults), in the
    section of ballastd.conf(5) that it belongs to, with its default."""
    need(BALLASTD, "ballastd")
    conf = tmp_path / "empty.conf"
    conf.write_text("")
    p = subprocess.run([BALLASTD, "--config", str(conf), "--check-config"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    src = page("ballastd.conf.5")
    parts = re.split(r"^\.Ss \\&\[(\w+)\]\\&$", src, flags=re.M)
    sections = dict(zip(parts[1::2], parts[2::2]))
    section, checked = None, 0
    for line in p.stdout.splitlines():
        m = re.match(r"^\[(\w+)\]$", line)
        if m:
            section = m.group(1)
            assert section in sections, f"ballastd.conf(5) has no section [{section}]"
            continue
        m = re.match(r"^(\w+) = ?(.*)$", line)
        if not m:
            continue
        key, default = m.groups()
        body = sections[section]
        assert re.search(rf"^\.It Cm {key} No =", body, re.M), f"ballastd.conf(5) [{section}] lacks {key}"
        item = body.split(f".It Cm {key} No =", 1)[1].split(".It ", 1)[0]
        if default:
            assert default in item.replace("\n", " ") or default.replace("/s", "") in item, \
                f"ballastd.conf(5) [{section}] {key}: default {default} not stated:\n{item}"
        checked += 1
    assert checked >= 40, p.stdout


def test_meson_installs_pages_and_completions():
    with open(os.path.join(BUILD, "meson-info", "intro-installed.json")) as f:
        installed = set(json.load(f).values())
    for want in ("/man/man1/ballastctl.1", "/man/man8/ballastd.8", "/man/man5/ballastd.conf.5",
                 "/bash-completion/completions/ballastctl", "/zsh/vendor-completions/_ballastctl"):
        assert any(p.endswith(want) for p in installed), f"meson does not install *{want}: {sorted(installed)}"
