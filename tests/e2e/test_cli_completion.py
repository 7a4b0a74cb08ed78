# SPDX-License-Identifier: MIT
"""The shell completions in completions/:

- bash: the file is sourced and its function called with COMP_WORDS/COMP_CWORD set, as bash does
  on TAB; COMPREPLY is checked for commands, subcommands, options and option values, and for the
  ids of the VMs registered with a real ballastd (two fake QEMU monitors, tests/peers/qmp-peer);
- zsh: `zsh -n`, then a real interactive zsh in tmux with compinit: TAB after `ballastctl hist`
  and after `ballastctl vm st` completes, as a user would see it (capture-pane)."""

import os
import shlex
import shutil
import subprocess
import time
import uuid

import pytest

from conftest import CTL, SRC, wait_until
from conftest_daemon import ballastd, daemons  # noqa: F401 (fixtures)
from test_cli_help import discovered
from test_cli_history import fleet  # noqa: F401 (fixture)

BASH_COMP = os.path.join(SRC, "completions", "ballastctl.bash")
ZSH_COMP_DIR = os.path.join(SRC, "completions")


def bash_complete(words, env=None):
    """COMPREPLY for the command line `words` with the cursor in the last word."""
    arr = " ".join(shlex.quote(w) for w in [CTL] + words)
    script = (f"source {shlex.quote(BASH_COMP)}\n"
              f"COMP_WORDS=({arr}); COMP_CWORD={len(words)}\n"
              "_ballastctl\n"
              "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    p = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True, timeout=30,
                       env=env or dict(os.environ, BALLAST_API="/nonexistent/api.sock"))
    assert p.returncode == 0, p.stderr
    assert p.stderr == "", p.stderr
    return sorted(l for l in p.stdout.splitlines() if l)


def test_bash_registers_the_function():
    p = subprocess.run(["bash", "--norc", "-c", f"source {shlex.quote(BASH_COMP)}; complete -p ballastctl"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "-F _ballastctl ballastctl" in p.stdout, (p.stdout, p.stderr)


def test_bash_commands_and_subcommands():
    everything = bash_complete([""])
    for (cmd, *_) in discovered():
        assert cmd in everything, f"command {cmd} not completed: {everything}"
    assert bash_complete(["hi"]) == ["history"]
    assert bash_complete(["vm", "st"]) == ["start", "stop"]
    assert bash_complete(["--json", "vm", "st"]) == ["start", "stop"], "global options are skipped"
    assert bash_complete(["--api", "/x.sock", "po"]) == ["pool"], "an option's value is not the command"
    for group in ("vm", "pool", "balloon"):
        verbs = bash_complete([group, ""])
        for c in discovered():
            if c[0] == group and len(c) == 2:
                assert c[1] in verbs, f"{group} {c[1]} not completed: {verbs}"


def test_bash_options_and_values():
    assert bash_complete(["history", "--"]) == sorted(
        ["--limit", "--vm", "--since", "--follow", "--interval", "--api", "--timeout", "--json", "--help"])
    assert "--dry-run" in bash_complete(["reclaim", "--d"])
    assert bash_complete(["vm", "add", "x", "--driver", ""]) == sorted(
        ["qemu", "firecracker", "cloud-hypervisor", "libvirt"])
    assert bash_complete(["vm", "start", "x", "--free-page-reporting", ""]) == ["off", "on"]
    assert bash_complete(["top", "--sort", "a"]) == ["actual", "assigned"]
    assert bash_complete(["reclaim", "--hold", ""]) == [], "a duration has no completion"
    assert "--foreground" in bash_complete(["vm", "start", "--f"])
    # No daemon: no VM ids, and no error on the terminal.
    assert bash_complete(["vm", "show", ""]) == []


def test_bash_snapshot_commands(tmp_path):
    (tmp_path / "vm1.snap").write_text("")
    (tmp_path / "other").write_text("")
    prefix = str(tmp_path / "vm")
    assert bash_complete(["vm", "snapshot", "--"]) == sorted(["--stop", "--resume", "--timeout", "--help"])
    assert bash_complete(["vm", "resume", "--"]) == ["--help"]
    # FILE, the word after NAME (an option's value does not count), is a file name.
    assert bash_complete(["vm", "snapshot", "x", prefix]) == [prefix + "1.snap"]
    assert bash_complete(["vm", "snapshot", "--timeout", "5s", "x", prefix]) == [prefix + "1.snap"]
    assert bash_complete(["vm", "snapshot", "x", prefix + "1.snap", ""]) == []
    assert bash_complete(["vm", "start", "x", "--restore", prefix]) == [prefix + "1.snap"]
    assert "--restore" in bash_complete(["vm", "start", "x", "--r"])
    # With --restore, only the options a restore takes (the snapshot fixes the machine).
    assert bash_complete(["vm", "start", "x", "--restore", prefix + "1.snap", "--"]) == sorted(
        ["--restore", "--image", "--boot-timeout", "--timeout", "--no-wait", "--help"])


def test_bash_completes_registered_vm_ids(fleet):  # noqa: F811
    env = dict(os.environ, BALLAST_API=fleet.d.socket)
    assert bash_complete(["vm", "show", ""], env) == ["p1", "p2"]
    assert bash_complete(["park", "p"], env) == ["p1", "p2"]
    assert bash_complete(["history", "--vm", "p2"], env) == ["p2"]
    # --api on the command line is used for the lookup.
    other = dict(os.environ, BALLAST_API="/nonexistent/api.sock")
    assert bash_complete(["--api", fleet.d.socket, "unpark", ""], other) == ["p1", "p2"]


def need(prog, pkg):
    path = shutil.which(prog)
    if not path:
        msg = f"{prog} is missing (Debian package {pkg})"
        if os.environ.get("BALLAST_REQUIRE_VM"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def test_zsh_syntax():
    zsh = need("zsh", "zsh")
    p = subprocess.run([zsh, "-n", os.path.join(ZSH_COMP_DIR, "_ballastctl")], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0, p.stderr


def test_zsh_completes_in_a_terminal(tmp_path):
    zsh = need("zsh", "zsh")
    tmux = need("tmux", "tmux")
    sock = str(tmp_path / "tmux.sock")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(CTL, bindir / "ballastctl")
    session = f"zc-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", HOME=str(tmp_path), TERM="xterm",
               BALLAST_API="/nonexistent/api.sock")

    def t(*args):
        return subprocess.run([tmux, "-S", sock, *args], capture_output=True, text=True, timeout=30, env=env)

    def pane():
        return t("capture-pane", "-p", "-t", session).stdout.rstrip() + "\n"

    def wait_pane(text, what, timeout=30):
        try:
            wait_until(lambda: text in pane(), timeout, 0.1, what)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- the terminal ---\n{pane().rstrip()}") from None

    p = t("new-session", "-d", "-s", session, "-x", "120", "-y", "30", f"{zsh} -f")
    assert p.returncode == 0, p.stderr
    try:
        t("send-keys", "-t", session,
          f"PS1='zsh> '; fpath=({ZSH_COMP_DIR} $fpath); autoload -U compinit; compinit -u -D; echo RE''ADY",
          "Enter")
        # The command line shows RE''ADY; the line READY is its output, once compinit is done.
        wait_until(lambda: "\nREADY\n" in pane(), 60, 0.1, "zsh and compinit to be ready")
        t("send-keys", "-t", session, "clear", "Enter")
        wait_until(lambda: "READY" not in pane(), 20, 0.1, "the screen to clear")
        t("send-keys", "-t", session, "ballastctl hist", "Tab")
        wait_pane("zsh> ballastctl history\n", "TAB to complete 'hist' to 'history'")
        t("send-keys", "-t", session, "C-u")
        t("send-keys", "-t", session, "ballastctl vm sta", "Tab")
        wait_pane("zsh> ballastctl vm start\n", "TAB to complete 'vm sta' to 'vm start'")
        t("send-keys", "-t", session, "C-u")
        t("send-keys", "-t", session, "ballastctl vm snap", "Tab")
        wait_pane("zsh> ballastctl vm snapshot\n", "TAB to complete 'vm snap' to 'vm snapshot'")
        t("send-keys", "-t", session, "C-u")
        t("send-keys", "-t", session, "ballastctl top --sort rec", "Tab")
        wait_pane("ballastctl top --sort reclaimed", "TAB to complete a --sort key")
    finally:
        t("kill-server")
