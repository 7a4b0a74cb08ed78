# SPDX-License-Identifier: MIT
"""Every ballastctl command and subcommand answers --help (and -h) with its usage on stdout and exit
status 0, and a usage error (an unknown option, a missing argument) with a message and a
"Try 'ballastctl … --help'." hint on stderr, nothing on stdout, and exit status 2. No daemon and no
VM are needed: none of these reach either (the API socket is pointed at a path nobody listens on,
so a command that wrongly went ahead would exit 1, not 0 or 2).

The commands are the union of a fixed list and those the usage texts themselves name (ballastctl
--help, vm --help, pool --help, balloon --help), so a subcommand added to a usage text is walked
too."""

import os
import re
import subprocess

import pytest

from conftest import CTL

NOSUCH_API = "/nonexistent/ballast-help-test/api.sock"

# (command words...) for every command and subcommand.
KNOWN = [
    (), ("host",), ("vms",), ("capacity",), ("reclaim",), ("history",), ("top",), ("park",), ("unpark",),
    ("vm",), ("vm", "add"), ("vm", "rm"), ("vm", "show"),
    ("vm", "start"), ("vm", "stop"), ("vm", "list"), ("vm", "info"), ("vm", "exec"), ("vm", "ping"),
    ("vm", "meminfo"), ("vm", "drop-caches"), ("vm", "fill"), ("vm", "verify"), ("vm", "release"), ("vm", "agent"),
    ("vm", "snapshot"), ("vm", "resume"),
    ("pool",), ("pool", "fill"), ("pool", "acquire"), ("pool", "release"), ("pool", "status"), ("pool", "drain"),
    ("balloon",), ("balloon", "get"), ("balloon", "set"), ("balloon", "stats"), ("balloon", "caps"),
]


@pytest.fixture(scope="module", autouse=True)
def need_ctl():
    if not os.access(CTL, os.X_OK):
        msg = f"ballastctl is not built: {CTL} does not exist"
        if os.environ.get("BALLAST_REQUIRE_VM"):
            pytest.fail(msg)
        pytest.skip(msg)


def run(*args):
    env = dict(os.environ, BALLAST_API=NOSUCH_API)
    return subprocess.run([CTL, *args], env=env, capture_output=True, text=True, timeout=60)


def discovered():
    """Commands the usage texts name: 'ballastctl vm start …' lines and the 'Commands' lists."""
    found = set()
    top = run("--help").stdout
    for line in top.split("\nExamples:")[0].splitlines():
        m = re.match(r"^  ([a-z][a-z-]*)(?:\|[a-z|-]+)?(?: |$)", line)
        if m:
            found.add((m.group(1),))
        m = re.match(r"^  (vm|pool|balloon) ([a-z|-]+)", line)
        if m:
            found.add((m.group(1),))
            found.update((m.group(1), v) for v in m.group(2).split("|") if v)
    for group in ("vm", "pool", "balloon"):
        for line in run(group, "--help").stdout.splitlines():
            m = re.search(rf"ballastctl {group} ([a-z][a-z|-]*)", line)
            if m:
                found.update((group, v) for v in m.group(1).split("|") if v)
    return found


def all_commands():
    cmds = set(KNOWN) | discovered()
    return sorted(cmds)


def test_discovery_finds_the_known_commands():
    """The parser of the usage texts works (otherwise the union above would prove nothing)."""
    d = discovered()
    for c in [("host",), ("vm", "start"), ("vm", "agent"), ("pool", "drain"), ("balloon", "caps"), ("top",)]:
        assert c in d, f"{c} not found in the usage texts: {sorted(d)}"


# -h is handled by the same code as --help in each command: a sample of them is enough.
SHORT_H = {(), ("vm",), ("vm", "start"), ("vm", "info"), ("history",), ("pool", "fill"), ("balloon", "get"), ("top",)}


@pytest.mark.parametrize("cmd,flag", [(c, "--help") for c in all_commands()] +
                         [(c, "-h") for c in all_commands() if c in SHORT_H],
                         ids=lambda x: (" ".join(x) or "ballastctl") if isinstance(x, tuple) else x)
def test_help(cmd, flag):
    p = run(*cmd, flag)
    name = " ".join(("ballastctl",) + cmd)
    assert p.returncode == 0, f"{name} {flag} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert p.stderr == "", f"{name} {flag} wrote to stderr: {p.stderr}"
    assert p.stdout.startswith("Usage: "), f"{name} {flag}: no usage on stdout: {p.stdout[:300]!r}"
    # The usage names the command (a group's usage names its verbs).
    assert name in p.stdout, f"{name} {flag}: usage does not mention '{name}':\n{p.stdout}"


@pytest.mark.parametrize("cmd", [c for c in all_commands() if len(c) == 2], ids=" ".join)
def test_help_after_arguments(cmd):
    """--help wins also after other words (vm info NAME --help must not look up the VM)."""
    p = run(*cmd, "somename", "--help")
    assert p.returncode == 0, f"{' '.join(cmd)} somename --help exited {p.returncode}: {p.stderr}"
    assert p.stdout.startswith("Usage: ") and p.stderr == ""


@pytest.mark.parametrize("cmd", all_commands(), ids=lambda c: " ".join(c) or "ballastctl")
def test_unknown_option_is_a_usage_error(cmd):
    p = run(*cmd, "--no-such-option")
    name = " ".join(("ballastctl",) + cmd)
    assert p.returncode == 2, f"{name} --no-such-option exited {p.returncode}\nstderr: {p.stderr}"
    assert p.stdout == "", f"{name} --no-such-option wrote to stdout: {p.stdout[:300]!r}"
    assert "--no-such-option" in p.stderr, p.stderr
    assert re.search(r"Try 'ballastctl [a-z -]*--help'\.", p.stderr), p.stderr
    if len(cmd) == 2:  # the hint names the subcommand
        assert f"Try '{name} --help'." in p.stderr, p.stderr


@pytest.mark.parametrize("args", [
    [], ["nosuchcommand"], ["vm"], ["vm", "nosuchverb"], ["pool"], ["pool", "nosuchverb"], ["balloon"],
    ["balloon", "nosuchverb"], ["vm", "info"], ["vm", "ping"], ["vm", "meminfo", "a", "b"], ["vm", "exec"],
    ["vm", "start"], ["vm", "stop"], ["vm", "fill", "x"], ["vm", "verify", "x"], ["vm", "agent", "x"],
    ["vm", "list", "extra"], ["vm", "show"], ["vm", "add", "x"], ["reclaim"], ["reclaim", "lots"],
    ["reclaim", "1G", "--hold", "2h"], ["history", "--limit", "0"], ["history", "extra"], ["capacity"], ["park"], ["balloon", "get"], ["balloon", "set", "--vm", "x"],
    ["top", "--interval", "0s"], ["top", "--sort", "nosuchkey"], ["top", "extra"], ["--json", "top"],
    ["history", "--since", "yesterday-ish"], ["history", "--interval", "1ms"], ["--timeout", "0s", "host"],
    ["host", "--timeout"], ["vm", "snapshot", "x"], ["vm", "snapshot", "x", "f", "--stop", "--resume"],
    ["vm", "snapshot", "x", "f", "--timeout", "soon"], ["vm", "resume"], ["vm", "resume", "a", "b"],
    ["vm", "start", "x", "--restore"], ["vm", "start", "x", "--restore", ""],
    ["vm", "start", "x", "--restore", "f", "--memory", "1G"],
], ids=lambda a: " ".join(a) or "(nothing)")
def test_usage_errors_exit_2(args):
    p = run(*args)
    assert p.returncode == 2, f"ballastctl {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}"
    assert p.stderr.strip(), "a usage error says why"
    assert "cannot reach ballastd" not in p.stderr, "a usage error is found before any request"


def test_restore_help_and_usage_errors():
    """vm start --restore is parsed apart from vm start: its --help shows the snapshot usage, its
    usage errors carry the hint, and vm start --help points to it."""
    p = run("vm", "start", "x", "--restore", "f", "--help")
    assert p.returncode == 0 and p.stderr == "", p
    assert p.stdout.startswith("Usage: ") and "ballastctl vm start NAME --restore FILE" in p.stdout, p.stdout
    p = run("vm", "start", "x", "--restore", "f", "--no-such-option")
    assert p.returncode == 2 and p.stdout == "", p
    assert "--no-such-option" in p.stderr and "Try 'ballastctl vm start --help'." in p.stderr, p.stderr
    assert "--restore FILE" in run("vm", "start", "--help").stdout


def test_version_and_help_word():
    p = run("--version")
    assert p.returncode == 0 and p.stdout.startswith("ballastctl "), p
    p = run("help")
    assert p.returncode == 0 and p.stdout.startswith("Usage: "), p


def test_exit_statuses_documented():
    """ballastctl --help lists every exit status, including reclaim's partial plan (5)."""
    out = run("--help").stdout
    for code in ("0 done", "1 error", "2 usage", "5 reclaim"):
        assert code in out, f"'{code}' missing from the exit statuses in ballastctl --help:\n{out}"
    assert "5 " in run("reclaim", "--help").stdout


def test_api_command_without_daemon_is_not_a_usage_error():
    """The other side of the line: a well-formed command that cannot reach the daemon exits 1."""
    p = run("host")
    assert p.returncode == 1, p
    assert "cannot reach ballastd" in p.stderr
