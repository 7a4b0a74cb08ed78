# SPDX-License-Identifier: MIT
"""The driver conformance suite (tests/conformance/conformance.c, docs/conformance.md) against a
real hypervisor: a QEMU VM booted by the launcher, driven through its controller socket
($BALLAST_RUN_DIR/NAME/qmp.sock) by `conformance --driver qemu --real-socket ...`.

Against a real QEMU only the cases that need no fault injection can run; the others must be
reported as skipped with the reason "needs a fault-injecting peer: covered by --driver qemu", and a
second test proves that claim by running exactly those cases against the QMP peer. A libvirt hook
runs the same suite through the libvirt driver when libvirtd is reachable (the domain comes from
tests/e2e/test_libvirt.py's fixture, not from here).

Missing binaries skip loudly, or fail when BALLAST_REQUIRE_VM is set."""

import os
import re
import subprocess

import pytest

from conftest import BUILD, MiB

CONFORMANCE = os.path.join(BUILD, "tests", "conformance", "conformance")
PEER_DIR = os.path.join(BUILD, "tests")
REQUIRE = bool(os.environ.get("BALLAST_REQUIRE_VM"))
RAM = 512 * MiB
FAULT_REASON = "needs a fault-injecting peer: covered by --driver qemu"

# The cases a real hypervisor must pass (no fault injection), and those only a peer can stage.
REAL_CASES = ["caps", "caps-stats", "get-actual", "concurrent", "set-target", "target-above-ram",
              "set-target-invalid", "wait-reached", "wait-deadline", "stats", "peer-uid", "peer-pid", "cancel",
              "free-pending"]
FAULT_CASES = ["wait-stalled", "no-balloon", "nobody-listening", "peer-gone", "close-mid-reply", "hung-peer",
               "hung-does-not-block", "garbage-reply", "oversized-reply"]

TAP_LINE = re.compile(r"^(ok|not ok) (\d+) - (\S+)(?: # (SKIP|TODO)\s*(.*))?$")


def unavailable(msg):
    if REQUIRE:
        pytest.fail(msg + " (BALLAST_REQUIRE_VM is set)")
    pytest.skip(msg)


@pytest.fixture(scope="module")
def conformance():
    if not (os.path.exists(CONFORMANCE) and os.access(CONFORMANCE, os.X_OK)):
        unavailable(f"the conformance suite is not built: {CONFORMANCE} does not exist (BALLAST_BUILDDIR={BUILD})")
    return CONFORMANCE


def parse_tap(out):
    """{case: {"status": "ok"|"not ok", "directive": "SKIP"|None, "reason": str, "diag": [lines]}}, the
    plan, and the numbers in order (they must run 1..N)."""
    cases, plan, numbers, last = {}, None, [], None
    for line in out.splitlines():
        m = TAP_LINE.match(line)
        if m:
            status, num, name, directive, reason = m.groups()
            assert name not in cases, f"case {name} reported twice"
            numbers.append(int(num))
            last = cases[name] = {"status": status, "directive": directive, "reason": reason or "", "diag": []}
        elif re.match(r"^1\.\.\d+$", line):
            plan = int(line[3:])
        elif line.startswith("#") and last is not None:
            last["diag"].append(line.lstrip("# ").rstrip())
        elif line.startswith("Bail out!"):
            raise AssertionError(f"the conformance suite bailed out: {line}\n{out}")
    return cases, plan, numbers


def run(argv, timeout=600):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    print(f"$ {' '.join(argv)}\n{p.stdout}{p.stderr}")
    return p


def listed_cases(binary):
    p = subprocess.run([binary, "--list"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p
    return [l.split()[0] for l in p.stdout.splitlines() if l.strip()]


def failures(cases):
    return {n: c for n, c in cases.items() if c["status"] != "ok"}


def describe(cases):
    return "\n".join(f"  {n}: {c['status']} {c['directive'] or ''} {c['reason']}\n    " + "\n    ".join(c["diag"])
                     for n, c in cases.items())


def test_case_lists_match(conformance):
    """This file's idea of the suite is the suite's own (a case added there must be placed here)."""
    listed = listed_cases(conformance)
    assert sorted(listed) == sorted(REAL_CASES + FAULT_CASES), listed
    peer_only = [l.split()[0] for l in subprocess.run([conformance, "--list"], capture_output=True, text=True,
                                                      timeout=30).stdout.splitlines() if "(peer only)" in l]
    assert sorted(peer_only) == sorted(FAULT_CASES)


def test_conformance_real_qemu(conformance, vm, ctl):
    """conformance --driver qemu against the controller socket of a real 512 MiB VM: exit 0, every
    no-fault case run and passed (none skipped), every fault case skipped with the honest reason;
    afterwards the VM is at its full size and its guest answers."""
    vm("cq", "--memory", "512M", "--deflate-on-oom", "on", "--free-page-reporting", "on")
    sock = os.path.join(ctl.run_dir, "cq", "qmp.sock")
    assert os.path.exists(sock), sock
    p = run([conformance, "--driver", "qemu", "--real-socket", sock, "--ram", str(RAM),
             "--expected-uid", str(os.getuid()), "--expect-deflate-on-oom", "yes",
             "--expect-free-page-reporting", "yes"])
    cases, plan, numbers = parse_tap(p.stdout)
    assert plan == len(REAL_CASES) + len(FAULT_CASES), (plan, p.stdout)
    assert numbers == list(range(1, plan + 1)), numbers
    assert sorted(cases) == sorted(REAL_CASES + FAULT_CASES), sorted(cases)

    # The real cases ran (never skipped) and passed; a failure names the case, what was expected
    # and what came.
    skipped_real = [n for n in REAL_CASES if cases[n]["directive"] == "SKIP"]
    assert not skipped_real, f"real-hypervisor cases were skipped: {skipped_real}\n{describe(cases)}"
    failed = {n: c for n, c in failures(cases).items() if n in REAL_CASES}
    assert not failed, f"the QEMU driver failed conformance cases against a real QEMU:\n{describe(failed)}"

    # The fault cases: skipped, honestly, never counted as passed.
    for n in FAULT_CASES:
        c = cases[n]
        assert c["status"] == "ok" and c["directive"] == "SKIP" and c["reason"] == FAULT_REASON, (n, c)
    summary = [l for l in p.stdout.splitlines() if l.startswith("# qemu driver (real hypervisor):")]
    assert summary == [f"# qemu driver (real hypervisor): {len(REAL_CASES)} passed, 0 failed, "
                       f"{len(FAULT_CASES)} skipped"], summary
    assert p.returncode == 0, f"conformance exited {p.returncode}\n{p.stderr}"

    # Some figures the suite measured on the real QEMU.
    for n in ("set-target", "wait-reached", "wait-deadline", "stats"):
        print(f"{n}: " + " | ".join(cases[n]["diag"]))

    # Left as found: full size, as QEMU and the guest see it.
    assert ctl.actual("cq") == RAM
    assert ctl.agent("cq", "ping")["ok"]


def test_fault_cases_are_covered_by_the_peer(conformance):
    """What the real run skips as "covered by --driver qemu" is covered: exactly those cases pass
    against the fault-injecting QMP peer."""
    if not os.path.exists(os.path.join(PEER_DIR, "qmp-peer")):
        unavailable(f"no QMP peer in {PEER_DIR}")
    argv = [conformance, "--driver", "qemu", "--peer-dir", PEER_DIR]
    for n in FAULT_CASES:
        argv += ["--case", n]
    p = run(argv, timeout=300)
    cases, plan, _ = parse_tap(p.stdout)
    assert plan == len(FAULT_CASES) and sorted(cases) == sorted(FAULT_CASES), p.stdout
    bad = failures(cases)
    assert not bad, f"fault cases failed against the QMP peer:\n{describe(bad)}"
    assert not [n for n, c in cases.items() if c["directive"] == "SKIP"], cases
    assert p.returncode == 0


# --- HOOK: libvirt (B1.5) --------------------------------------------------------------------
# The libvirt driver has no fault-injecting peer; its conformance run is against a real libvirtd
# driving QEMU. The domain is tests/e2e/test_libvirt.py's module fixture `domain` (512 MiB,
# autodeflate and freePageReporting on, stats period 1), reused here, not duplicated. This test
# runs when the suite was built with the libvirt driver; the fixture starts libvirtd if needed.

LIBVIRT_URI = "qemu:///system"

try:  # the fixtures of test_libvirt.py, when that module exists and imports
    from test_libvirt import domain, libvirtd  # noqa: F401
    HAVE_LIBVIRT_FIXTURE = True
except Exception as e:  # noqa: BLE001 (any import problem means: no hook)
    HAVE_LIBVIRT_FIXTURE = False
    LIBVIRT_FIXTURE_ERROR = repr(e)


def libvirt_reachable():
    try:
        p = subprocess.run(["virsh", "-c", LIBVIRT_URI, "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, repr(e)
    return p.returncode == 0, (p.stdout + p.stderr).strip()


def test_conformance_libvirt(conformance, request):
    """conformance --driver libvirt --uri qemu:///system --domain D --ram 512M against
    test_libvirt.py's domain: exit 0, the real cases passed, the fault cases skipped as not covered
    (libvirt has no peer)."""
    usage = subprocess.run([conformance, "--help"], capture_output=True, text=True, timeout=30).stdout
    if "--driver libvirt" not in usage:
        pytest.skip("HOOK libvirt: the conformance suite was built without the libvirt driver (no libvirt-dev)")
    # test_libvirt.py's fixtures start a libvirtd (scripts/libvirt-setup) when none answers, and
    # skip loudly (or fail under BALLAST_REQUIRE_VM) when one cannot be started.
    if not HAVE_LIBVIRT_FIXTURE:
        pytest.skip(f"HOOK libvirt: tests/e2e/test_libvirt.py's domain fixture is not importable "
                    f"({LIBVIRT_FIXTURE_ERROR})")
    dom = request.getfixturevalue("domain")
    p = run([conformance, "--driver", "libvirt", "--uri", LIBVIRT_URI, "--domain", dom.name, "--ram", str(RAM),
             "--expect-deflate-on-oom", "yes", "--expect-free-page-reporting", "yes"])
    cases, plan, _ = parse_tap(p.stdout)
    assert sorted(cases) == sorted(REAL_CASES + FAULT_CASES), p.stdout
    socket_cases = {"peer-uid", "peer-pid"}  # libvirtd stands between ballast and QEMU
    failed = {n: c for n, c in failures(cases).items() if n in REAL_CASES}
    assert not failed, f"the libvirt driver failed conformance cases:\n{describe(failed)}"
    for n in REAL_CASES:
        if n not in socket_cases:
            assert cases[n]["directive"] is None, (n, cases[n])
    for n in FAULT_CASES:
        assert cases[n]["directive"] == "SKIP" and "not covered" in cases[n]["reason"], (n, cases[n])
    assert p.returncode == 0
