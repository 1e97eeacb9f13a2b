"""The suite's thread policy for a shared machine (tests/cpu_share.py)."""

from __future__ import annotations

import subprocess
import sys

import torch
from cpu_share import ThreadShare, busy_by_others, threads_for


def test_threads_leave_the_cores_other_processes_use():
    assert threads_for(0.0, 2, 2) == 2  # idle machine: unchanged
    assert threads_for(0.9, 2, 2) == 1  # one core taken by another job
    assert threads_for(5.0, 2, 2) == 1  # never below one
    assert threads_for(0.0, 16, 4) == 4  # never above what torch started with


def test_a_busy_neighbour_is_seen_and_this_process_is_not():
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        seen = busy_by_others(window_s=1.0)
    finally:
        spin.kill()
        spin.wait()
    assert seen >= 0.6, f"a process spinning on one core was measured as {seen:.2f} cores"


def test_this_process_own_cpu_time_is_not_counted(monkeypatch):
    import cpu_share

    machine = iter([(10.0, 40.0), (11.0, 42.0)])  # busy, total: 1 s busy of 2 s on 2 cores over the window
    own = iter([(5.0, 0.0, 0, 0, 0), (5.6, 0.4, 0, 0, 0)])  # this process: 1 s of that
    monkeypatch.setattr(cpu_share, "_busy_and_total", lambda: next(machine))
    monkeypatch.setattr(cpu_share.os, "times", lambda: next(own))
    monkeypatch.setattr(cpu_share.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cpu_share.time, "sleep", lambda s: None)
    assert busy_by_others() == 0.0


def test_a_test_that_sets_its_own_thread_count_keeps_it(monkeypatch):
    before = torch.get_num_threads()
    share = ThreadShare()
    monkeypatch.setenv("MEMSEG_TEST_THREADS", "1")
    try:
        share.apply()
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)  # the test's own choice
        share.last_probe = -1e9
        share.apply()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
