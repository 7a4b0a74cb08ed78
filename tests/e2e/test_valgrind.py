# SPDX-License-Identifier: MIT
"""ballastctl under valgrind against a real VM: no leaks, no invalid reads or writes."""

import os
import shutil
import subprocess

import pytest

from conftest import SRC

PLAIN_CTL = os.path.join(os.environ.get("BALLAST_PLAIN_BUILDDIR", os.path.join(SRC, "build")), "src", "ballastctl")


@pytest.mark.skipif(not shutil.which("valgrind"), reason="valgrind is not installed")
def test_ballastctl_is_valgrind_clean(ctl, vm):
    assert os.path.exists(PLAIN_CTL), f"{PLAIN_CTL} missing: the valgrind run needs the non-sanitizer build"
    vm("vg", "--memory", "384M")
    commands = [
        ["balloon", "get", "--vm", "vg"],
        ["balloon", "caps", "--vm", "vg"],
        ["balloon", "stats", "--vm", "vg", "--period", "1"],
        ["--json", "balloon", "set", "--vm", "vg", "--wait", "256M"],
        ["balloon", "set", "--vm", "vg", "384M"],
        ["--json", "vm", "list"],
        ["vm", "exec", "vg", "--", "true"],
        ["vm", "meminfo", "vg"],
        ["balloon", "get", "--vm", "vg", "--expected-uid", "4242"],  # an error path
        ["balloon", "get", "--qmp", "/nonexistent.sock"],             # another
    ]
    for argv in commands:
        p = subprocess.run(["valgrind", "-q", "--leak-check=full", "--errors-for-leak-kinds=all",
                            "--error-exitcode=99", PLAIN_CTL] + argv,
                           env=ctl.env, capture_output=True, text=True, timeout=300)
        assert p.returncode != 99, f"valgrind found errors in {argv}:\n{p.stderr}"
        assert p.returncode in (0, 1), (argv, p.returncode, p.stderr)
