# SPDX-License-Identifier: MIT
"""Runs last (file order): the whole suite must have left no QEMU process and no VM directory."""

import os

from conftest import qemu_pids_under


def test_no_qemu_or_directories_left_behind():
    left = [d for d in os.listdir("/tmp") if d.startswith("bt-")]
    pids = qemu_pids_under("/tmp/bt-")
    assert not pids, f"QEMU processes left running: {pids}"
    assert not left, f"VM run directories left in /tmp: {left}"
