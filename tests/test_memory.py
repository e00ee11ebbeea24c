"""speed.keep_memory: freed memory stays mapped (no page faults on reuse) and switching back releases it again.

Each case runs in its own interpreter: the allocator setting belongs to the process.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from refdet_core import memory

SCRIPT = """
import ctypes, json, resource
from refdet_core import memory

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def faults_per_round(rounds=4, size=64 << 20):
    # one block the size of a big activation: taken from malloc (as torch's CPU allocator does), touched, freed
    out = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        p = libc.malloc(size)
        ctypes.memset(p, 1, size)
        libc.free(p)
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return out

out = {"default": faults_per_round()}
out["applied"] = memory.apply(True)
out["keep"] = faults_per_round()
memory.apply(False)
out["released"] = faults_per_round()
out["state"] = memory.state()
print(json.dumps(out))
"""

PAGES = (64 << 20) // 4096  # touched per round


@pytest.mark.skipif(not sys.platform.startswith("linux") or memory._glibc() is None, reason="glibc only")
def test_keep_memory_stops_refaulting_and_switches_back():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    r = json.loads(run.stdout.strip().splitlines()[-1])
    assert r["applied"] is True and r["state"] is False
    # glibc maps a block this big anew each time and unmaps it on free: every page faults again, every round
    assert all(f > PAGES // 2 for f in r["default"]), r
    # kept: the first round maps it, the later ones find the pages still there
    assert r["keep"][0] > PAGES // 2 and all(f < PAGES // 20 for f in r["keep"][1:]), r
    # switched back: what was kept is handed back, and the block is mapped anew each round again
    assert all(f > PAGES // 2 for f in r["released"]), r


def test_release_on_an_untouched_process_changes_nothing(monkeypatch):
    calls, trims = [], []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

        def malloc_trim(self, pad):
            trims.append(pad)
            return 1

    monkeypatch.setattr(memory, "_state", [None])
    monkeypatch.setattr(memory, "_glibc", FakeLibc)
    assert memory.apply(False) is True and calls == [] and trims == [] and memory.state() is None
    assert memory.apply(True) is True and dict(calls) == memory.KEEP and trims == [] and memory.state() is True
    calls.clear()
    assert memory.apply(True) is True and calls == []  # already set: nothing to do
    assert memory.apply(False) is True and dict(calls) == memory.RELEASE and memory.state() is False
    assert trims == [0]  # what KEEP held is handed back
