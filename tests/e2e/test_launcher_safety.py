# SPDX-License-Identifier: MIT
"""The launcher never acts outside its run directory: a VM directory replaced by a symbolic link
to someone's files, or a run directory that another user owns, is refused by `vm start` and
`vm stop` with a message naming the path, and the files survive. No VM is booted: the checks come
before QEMU would be started, so a stand-in image of two empty files is enough."""

import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import CTL

NOBODY = 65534
VICTIM_FILES = {"precious": "keep me\n", "sub/deep": "and me\n"}


@pytest.fixture
def area():
    """A run root, a victim directory with files, and a stand-in guest image, all removed after."""
    base = tempfile.mkdtemp(prefix="bls-", dir="/tmp")
    run_root = os.path.join(base, "run")
    victim = os.path.join(base, "victim")
    image = os.path.join(base, "image")
    os.mkdir(run_root, 0o700)
    os.makedirs(os.path.join(victim, "sub"))
    for rel, text in VICTIM_FILES.items():
        with open(os.path.join(victim, rel), "w") as f:
            f.write(text)
    os.mkdir(image)
    for f in ("vmlinuz", "initramfs.cpio.gz"):
        open(os.path.join(image, f), "w").close()
    env = dict(os.environ, BALLAST_RUN_DIR=run_root, BALLAST_ACCEL="tcg")
    env.pop("BALLAST_IMAGE_DIR", None)
    try:
        yield {"base": base, "run": run_root, "victim": victim, "image": image, "env": env}
    finally:
        shutil.rmtree(base)


def ctl(area, *args):
    return subprocess.run([CTL, *args], env=area["env"], capture_output=True, text=True, timeout=60)


def assert_victim_intact(area):
    for rel, text in VICTIM_FILES.items():
        path = os.path.join(area["victim"], rel)
        assert os.path.exists(path), f"{path} was deleted"
        with open(path) as f:
            assert f.read() == text


def test_stop_refuses_vm_dir_that_is_a_symlink(area):
    link = os.path.join(area["run"], "vm1")
    os.symlink(area["victim"], link)
    p = ctl(area, "vm", "stop", "vm1")
    assert_victim_intact(area)
    assert p.returncode == 1, p
    assert link in p.stderr and "symbolic link" in p.stderr, p.stderr
    assert os.path.islink(link)


def test_start_refuses_vm_dir_that_is_a_symlink(area):
    link = os.path.join(area["run"], "vm1")
    os.symlink(area["victim"], link)
    p = ctl(area, "vm", "start", "vm1", "--image", area["image"], "--no-wait")
    assert_victim_intact(area)
    assert p.returncode == 1, p
    assert link in p.stderr and "symbolic link" in p.stderr, p.stderr
    assert os.path.islink(link)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory another user's needs root")
def test_run_root_of_another_user_is_refused(area):
    run_root = area["run"]
    os.mkdir(os.path.join(run_root, "vm1"), 0o700)
    with open(os.path.join(run_root, "vm1", "vm.json"), "w") as f:
        f.write("{}")
    os.chown(run_root, NOBODY, NOBODY)
    for args in (["vm", "stop", "vm1"], ["vm", "start", "vm2", "--image", area["image"], "--no-wait"]):
        p = ctl(area, *args)
        assert p.returncode == 1, p
        assert run_root in p.stderr and f"owned by uid {NOBODY}" in p.stderr, p.stderr
    assert os.path.exists(os.path.join(run_root, "vm1", "vm.json"))
    assert not os.path.exists(os.path.join(run_root, "vm2"))
    p = ctl(area, "vm", "list")
    assert p.returncode == 1, p


def test_run_root_writable_by_others_is_refused(area):
    os.chmod(area["run"], 0o777)
    p = ctl(area, "vm", "stop", "vm1")
    assert p.returncode == 1, p
    assert area["run"] in p.stderr and "writable" in p.stderr, p.stderr


def test_stale_vm_dir_is_still_cleaned(area):
    """What the checks must not break: a real leftover directory of a VM that is gone goes."""
    d = os.path.join(area["run"], "vm1")
    os.mkdir(d, 0o700)
    os.mkdir(os.path.join(d, "inner"))
    os.symlink(area["victim"], os.path.join(d, "inner", "link"))
    p = ctl(area, "vm", "stop", "vm1")
    assert p.returncode == 0, p
    assert not os.path.lexists(d)
    assert_victim_intact(area)
