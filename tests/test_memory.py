"""speed.keep_memory: freed memory stays mapped (no page faults on reuse) and switching back releases it again.

Each case runs in its own interpreter: the allocator setting belongs to the process.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from refdet_core.speed import memory

SCRIPT = """
import json, resource, sys
import torch
from refdet_core.speed import memory

def faults_of_reuse(rounds=8, measured=3):
    # a step-like pattern (64 + 32 MiB allocated, touched, combined, freed), repeated: the minor page faults
    # of the last rounds, once the heap has settled
    for i in range(rounds):
        if i == rounds - measured:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.empty(16 << 20).fill_(1.0); y = torch.empty(8 << 20).fill_(2.0); z = x[: 8 << 20] + y
        del x, y, z
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / measured

out = {"default": faults_of_reuse()}
out["applied"] = memory.apply(True)
out["keep"] = faults_of_reuse()
memory.apply(False)
out["released"] = faults_of_reuse()
out["state"] = memory.state()
print(json.dumps(out))
"""

PAGES = (128 << 20) // 4096  # touched per round


@pytest.mark.skipif(not sys.platform.startswith("linux") or memory._mallopt() is None, reason="glibc only")
def test_keep_memory_stops_refaulting_and_switches_back():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    r = json.loads(run.stdout.strip().splitlines()[-1])
    assert r["applied"] is True and r["state"] is False
    assert r["default"] > PAGES // 2, r  # glibc maps blocks >= 32 MiB anew each time: every page faults again
    assert r["keep"] < PAGES // 20, r  # kept in the heap: the pages are still there
    assert r["released"] > PAGES // 2, r  # back to glibc's behaviour


def test_release_on_an_untouched_process_changes_nothing(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "_state", [None])
    monkeypatch.setattr(memory, "_mallopt", lambda: lambda param, value: calls.append((param, value)) or 1)
    assert memory.apply(False) is True and calls == [] and memory.state() is None
    assert memory.apply(True) is True and dict(calls) == memory.KEEP and memory.state() is True
    calls.clear()
    assert memory.apply(True) is True and calls == []  # already set: nothing to do
    assert memory.apply(False) is True and dict(calls) == memory.RELEASE and memory.state() is False
