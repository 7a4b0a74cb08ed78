# SPDX-License-Identifier: MIT
"""Memory the balloon takes comes back scrubbed (Firecracker's test_memory_scrub), on a real QEMU
guest: the guest fills 300 MiB with a known pattern and frees it, the balloon is inflated over most
of the guest's free memory and deflated again, and then

- inside the guest, as Firecracker checks it: 300 MiB allocated again hold no byte of before (the
  agent's fill with check_zero counts pages that were not all zero before it wrote them);
- on the host, which is where the promise is kept: QEMU's copy of guest RAM (read through
  /proc/PID/mem) is searched for pages of the pattern, identified exactly (every pattern word
  decodes to its seed and position). Before the balloon they are all there (so the search can
  fail); after it, only pages the balloon did not take (the guest's free memory while inflated)
  may still hold it.

Free page reporting is off: with it the guest would return freed memory without the balloon."""

import os

import pytest

from conftest import MiB, settled_rss, wait_until

ASSIGNED = 512 * MiB
PAGE = 4096
M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
SEED_MUL = 0xD1B54A32D192ED03
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
INV1 = pow(MIX1, -1, 1 << 64)
INV2 = pow(MIX2, -1, 1 << 64)


def fill_word(seed, line):
    """The agent's pattern word for 64-byte line `line` (guest/agent/proto.c, agent_fill_word)."""
    z = (line ^ (seed * SEED_MUL)) & M64
    z = (z + GOLDEN) & M64
    z = ((z ^ (z >> 30)) * MIX1) & M64
    z = ((z ^ (z >> 27)) * MIX2) & M64
    z ^= z >> 31
    return z or 1


def _unxorshift(y, s):
    x = y
    for _ in range(64 // s + 1):
        x = y ^ (x >> s)
    return x


def fill_line(seed, word):
    """The line index whose pattern word for `seed` is `word` (splitmix64's finaliser inverted)."""
    z = _unxorshift(word, 31)
    z = _unxorshift((z * INV2) & M64, 27)
    z = _unxorshift((z * INV1) & M64, 30)
    return ((z - GOLDEN) & M64) ^ ((seed * SEED_MUL) & M64)


def guest_ram(pid, size):
    """(start address) of QEMU's guest RAM: its anonymous read-write mapping of exactly `size`."""
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if hi - lo == size and parts[1] == "rw-p" and len(parts) == 5:
                return lo
    raise AssertionError(f"no {size >> 20} MiB anonymous mapping in /proc/{pid}/maps")


def pattern_pages(pid, seed, lines_total, chunk=16 * MiB):
    """Pages of QEMU's guest RAM that hold the fill pattern of `seed`: every 64-byte line a word
    then zeros, the first two words those of consecutive lines of a page of the fill (its first
    `lines_total` lines)."""
    base = guest_ram(pid, ASSIGNED)
    found = 0
    zero_tail = bytes(PAGE // 8)
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except PermissionError as e:
        why = (f"cannot read QEMU's memory through /proc/{pid}/mem ({e}): the host-side check needs root "
               "or ptrace rights over QEMU")
        if os.environ.get("BALLAST_REQUIRE_VM"):
            pytest.fail(why + " (BALLAST_REQUIRE_VM is set: CI must run it)")
        pytest.skip(why)
    try:
        for off in range(0, ASSIGNED, chunk):
            buf = os.pread(fd, chunk, base + off)
            assert len(buf) == chunk, f"short read of guest RAM at {off}"
            words = memoryview(buf).cast("Q")
            # Per 64-byte line, OR of its words 1..7: zero for every line of a pattern page.
            tails = 0
            for k in range(1, 8):
                tails |= int.from_bytes(words[k::8].tobytes(), "little")
            tails = tails.to_bytes(chunk // 8, "little")
            heads = words[0::8]
            per_page = PAGE // 64  # lines (and tail bytes / 8) per page
            for p in range(chunk // PAGE):
                if tails[p * per_page * 8:(p + 1) * per_page * 8] != zero_tail:
                    continue
                w0, w1 = heads[p * per_page], heads[p * per_page + 1]
                if w0 == 0:
                    continue
                line = fill_line(seed, w0)
                if line % per_page == 0 and line < lines_total and fill_word(seed, line + 1) == w1:
                    found += 1
    finally:
        os.close(fd)
    return found


def test_pattern_helpers_match_the_agent():
    """The decoder inverts the encoder (a wrong decoder would find nothing and prove nothing)."""
    for seed, line in ((1, 0), (77, 12345), (0xFFFFFFFF, 4 << 20)):
        assert fill_line(seed, fill_word(seed, line)) == line


def test_memory_is_scrubbed_after_inflate_and_deflate(ctl):
    name = "scrub"
    out = ctl.json("vm", "start", name, "--memory", f"{ASSIGNED // MiB}M", "--free-page-reporting", "off",
                   "--boot-timeout", "180s", timeout=240)
    assert out["ready"], out
    pid = out["qemu_pid"]
    seed, mib = 4242, 300
    lines = mib * MiB // 64

    f = ctl.agent(name, "fill", str(mib), "--seed", str(seed), timeout=300)
    assert f["ok"], f
    r = ctl.agent(name, "release", str(f["handle"]))
    assert r["ok"], r
    before = pattern_pages(pid, seed, lines)
    print(f"\npattern pages in QEMU's guest RAM after the guest freed them: {before * PAGE / MiB:.0f} MiB")
    assert before * PAGE >= (mib - 20) * MiB, \
        f"only {before * PAGE / MiB:.0f} MiB of the freed {mib} MiB pattern found: the search does not work"

    # Inflate over most of the guest's free memory.
    free0 = ctl.meminfo(name)["MemFree"]
    target = 96
    s = ctl.json("balloon", "set", "--vm", name, "--wait", "--timeout", "180s", f"{target}M", check=False, timeout=240)
    assert s["result"] in ("reached", "stalled"), s
    inflated = ctl.meminfo(name)
    taken = ASSIGNED - ctl.actual(name)
    print(f"balloon took {taken / MiB:.0f} MiB of {free0 / MiB:.0f} MiB free; "
          f"free while inflated {inflated['MemFree'] / MiB:.0f} MiB; QEMU RSS {settled_rss(pid) / MiB:.0f} MiB")
    assert taken >= free0 - 128 * MiB, f"the balloon took only {taken / MiB:.0f} MiB of {free0 / MiB:.0f} MiB free"

    s = ctl.json("balloon", "set", "--vm", name, "--wait", "--timeout", "180s", f"{ASSIGNED // MiB}M", timeout=240)
    assert s["result"] == "reached", s
    wait_until(lambda: ctl.meminfo(name)["MemFree"] >= free0 - 64 * MiB, 60, 0.5, "the deflated memory free again")

    after = pattern_pages(pid, seed, lines)
    print(f"pattern pages after inflate and deflate: {after * PAGE / MiB:.1f} MiB "
          f"(bound: what stayed free while inflated, {inflated['MemFree'] / MiB:.0f} MiB)")
    assert after * PAGE <= inflated["MemFree"] + 4 * MiB, \
        f"{after * PAGE / MiB:.0f} MiB of the pattern survived the balloon, more than stayed free while inflated"
    assert (before - after) * PAGE >= (mib - 128) * MiB, (before, after)

    # Firecracker's check: the memory allocated again holds nothing of before.
    g = ctl.agent(name, "fill", str(mib), "--seed", str(seed + 1), "--check-zero", timeout=300)
    assert g["ok"], g
    assert g["nonzero_pages"] == 0, f"{g['nonzero_pages']} pages came back to the guest with old contents"
