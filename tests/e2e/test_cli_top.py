# SPDX-License-Identifier: MIT
"""`ballastctl top` in a real terminal: tmux runs it against a real ballastd whose VMs are fake QEMU
monitors (tests/peers/qmp-peer, simulated guests whose balloons move). The pane is read with
capture-pane and keys are sent with send-keys:

- the host lines (available, watermarks, state, PSI, hold, reclaim) and one row per VM with its
  status, reason, sizes as GET /v1/vms has them, and a bar whose parts are in proportion;
- it refreshes by itself (a VM registered meanwhile appears, a hold set meanwhile shows);
- the sort keys reorder the rows, `i` inverts, the status line says so;
- a small terminal: every line fits, rows that do not fit are counted, a tiny one says so;
- the daemon going away is shown on the status line while top keeps running;
- `q` and Ctrl-C quit with status 0 and leave the alternate screen."""

import os
import re
import shutil
import subprocess
import uuid

import pytest

from conftest import CTL, MiB, wait_until
from conftest_daemon import ballastd, daemons  # noqa: F401 (fixtures)
from test_cli_history import GiB, fleet  # noqa: F401 (fixture)


class Term:
    """A tmux server of our own (its own socket) with one session running a shell command."""

    def __init__(self, tmp_path, env, cols=140, rows=20):
        self.tmux = shutil.which("tmux")
        if not self.tmux:
            msg = "tmux is missing (Debian package tmux)"
            if os.environ.get("BALLAST_REQUIRE_VM"):
                pytest.fail(msg)
            pytest.skip(msg)
        self.sock = str(tmp_path / "tmux.sock")
        self.session = f"top-{uuid.uuid4().hex[:8]}"
        self.env = dict(env, TERM="xterm-256color")
        self.cols, self.rows = cols, rows

    def run(self, *args):
        return subprocess.run([self.tmux, "-S", self.sock, *args], capture_output=True, text=True, timeout=30,
                              env=self.env)

    def start(self, command):
        p = self.run("new-session", "-d", "-s", self.session, "-x", str(self.cols), "-y", str(self.rows), command)
        assert p.returncode == 0, p.stderr
        return self

    def pane(self):
        return self.run("capture-pane", "-p", "-t", self.session).stdout

    def lines(self):
        return self.pane().rstrip("\n").split("\n")

    def keys(self, *keys):
        p = self.run("send-keys", "-t", self.session, *keys)
        assert p.returncode == 0, p.stderr

    def resize(self, cols, rows):
        self.cols, self.rows = cols, rows
        p = self.run("resize-window", "-t", self.session, "-x", str(cols), "-y", str(rows))
        assert p.returncode == 0, p.stderr

    def wait(self, pred, what, timeout=30):
        last = [""]

        def check():
            last[0] = self.pane()
            return pred(last[0])

        try:
            wait_until(check, timeout, 0.1, what)
            return last[0]
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- the terminal ({self.cols}x{self.rows}) ---\n{last[0]}") from None

    def close(self):
        self.run("kill-server")


def full(pane):
    """A whole frame: the title on the first line, the status line on the last (a frame drawn
    before a resize reached the program can be seen for a moment)."""
    lines = pane.rstrip("\n").split("\n")
    return lines[0].startswith("ballast top") and ("sort:" in lines[-1] or "retrying" in lines[-1])


def row_of(pane, vm):
    for line in pane.split("\n"):
        if re.match(rf"^{re.escape(vm)}\s", line):
            return line
    return None


def vm_rows(pane):
    return [l.split()[0] for l in pane.split("\n") if re.match(r"^p\d\s", l)]


def compact(n):
    """ballastctl's compact size (cli_format_size_compact) of n bytes, for whole MiB/GiB values."""
    if n % GiB == 0:
        return f"{n // GiB}G"
    return f"{n / MiB:.2f}".rstrip("0").rstrip(".") + "M"


def check_bar(line, vm):
    """The bar is the last field; its parts are in proportion to assigned."""
    bar = line.split()[-1]
    assert set(bar) <= set("#+-.|"), line
    width = len(bar)
    assert width >= 10, line
    assigned, floor = vm["assigned_bytes"], vm["effective_floor_bytes"]
    held = sum(1 for c in bar if c in "#+")
    pf = bar.index("|")
    assert abs(pf - round(floor * width / assigned)) <= 1, (line, vm)
    # '#' and '+' run up to actual; the floor mark may cover one of them.
    assert abs(held + (1 if pf < round(vm["actual_bytes"] * width / assigned) else 0)
               - round(vm["actual_bytes"] * width / assigned)) <= 1, (line, vm)


def test_top_in_a_terminal(fleet, tmp_path):  # noqa: F811
    f = fleet
    p = f.ctl("reclaim", "300M", "--hold", "5m", "--reason", "top-test")
    assert p.returncode in (0, 5), p
    f.d.wait_vms(lambda v: all(x["actual_bytes"] == x["target_bytes"] for x in v.values()), 30,
                 "the guests to reach their targets")
    t = Term(tmp_path, f.env).start(f"{CTL} top --interval 200ms; echo \"top exited $?\"; sleep 120")
    try:
        pane = t.wait(lambda s: full(s) and row_of(s, "p1") and row_of(s, "p2"), "both VMs on the screen")
        lines = pane.split("\n")
        assert lines[0].startswith("ballast top") and "host" in lines[0], pane
        host = f.d.host()
        assert re.search(r"available \S+ of \S+ \(\d+\.\d%\)\s+state healthy\s+psi some \d+\.\d\d full", pane), pane
        assert "watermarks low" in pane and "critical" in pane, pane
        assert re.search(r"hold 300M, \d+m\d+s left: top-test", pane), pane
        assert "reclaim requested 300M" in pane, pane
        assert host["state"] == "healthy"

        # Each VM's row: status, reason, sizes as the API has them, and its bar.
        vms = f.d.vms()
        for name, vm in vms.items():
            row = row_of(pane, name)
            fields = row.split()
            assert fields[1] == vm["status"] == "ok", row
            assert fields[2] == vm["reason"], (row, vm["reason"])
            assert fields[3] == compact(vm["assigned_bytes"]), row
            assert compact(vm["target_bytes"]) in fields[4:8], (row, vm["target_bytes"])
            check_bar(row, vm)
        assert vm_rows(pane) == ["p1", "p2"], pane
        assert re.search(r"2 VMs\s+sort: name\s", t.lines()[-1]), pane

        # Sorting: assigned (largest first), inverted, back to name; the status line follows.
        t.keys("a")
        t.wait(lambda s: "sort: assigned" in s and vm_rows(s) == ["p1", "p2"], "sort by assigned")
        t.keys("i")
        t.wait(lambda s: "sort: assigned (inverted)" in s and vm_rows(s) == ["p2", "p1"], "inverted order")
        t.keys("r")  # reclaimed = assigned - actual: p1 gave up more
        t.wait(lambda s: "sort: reclaimed (inverted)" in s, "sort by reclaimed")
        t.keys("i", "n")
        t.wait(lambda s: re.search(r"sort: name\s", s) and vm_rows(s) == ["p1", "p2"], "back to name order")

        # It refreshes by itself: a VM registered now appears.
        f.d.register("p3", f.add_peer("p3", 256 * MiB), 256 * MiB)
        t.wait(lambda s: row_of(s, "p3") and "3 VMs" in s, "the new VM p3 to appear")

        # A small terminal: lines fit, the rows that do not fit are counted.
        t.resize(50, 8)
        pane = t.wait(lambda s: "more VMs" in s or len(vm_rows(s)) == 3, "the 50x8 layout")
        pane = t.wait(lambda s: all(len(l) <= 50 for l in s.split("\n")) and "sort:" in s.split("\n")[7],
                      "every line within 50 columns, the status line last")
        t.resize(40, 7)
        pane = t.wait(lambda s: all(len(l) <= 40 for l in s.split("\n")) and "more VMs" in s,
                      "7 rows: the rows that do not fit are counted")
        t.resize(20, 4)
        t.wait(lambda s: "too small (20x4)" in s, "the too-small notice")
        t.resize(140, 20)
        t.wait(lambda s: len(vm_rows(s)) == 3, "all rows back")

        # q quits, exit status 0, the shell's screen is back.
        t.keys("q")
        pane = t.wait(lambda s: "top exited" in s, "top to exit on q")
        assert "top exited 0" in pane, pane
        assert "ballast top" not in pane, "the alternate screen was left"
    finally:
        t.close()


def test_top_daemon_going_away_and_ctrl_c(fleet, tmp_path):  # noqa: F811
    f = fleet
    t = Term(tmp_path, f.env, 100, 15).start(f"{CTL} top --interval 200ms --sort status; echo \"top exited $?\"; "
                                             "sleep 120")
    try:
        t.wait(lambda s: row_of(s, "p1") and "sort: status" in s, "top to show the VMs")
        f.d.kill()
        pane = t.wait(lambda s: "retrying: cannot reach ballastd" in s,
                      "the lost daemon on the status line")
        assert row_of(pane, "p1"), "the last good data stays on the screen"
        f.d.start()
        t.wait(lambda s: "sort: status" in s and "retrying" not in s, "top to recover when the daemon is back")
        t.keys("C-c")
        pane = t.wait(lambda s: "top exited" in s, "top to exit on Ctrl-C")
        assert "top exited 0" in pane, pane
    finally:
        t.close()


def test_top_needs_a_terminal(fleet):  # noqa: F811
    p = fleet.ctl("top")  # stdin/stdout are not a terminal here
    assert p.returncode == 1 and "needs a terminal" in p.stderr, p
    p = fleet.ctl("--json", "top")
    assert p.returncode == 2, p
    p = subprocess.run([CTL, "top"], env=dict(os.environ, BALLAST_API="/nonexistent/api.sock"), capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 1, p
