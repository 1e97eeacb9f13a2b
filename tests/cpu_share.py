"""Threads for a shared machine: the test session uses as many torch threads as the cores other processes leave free.

Measured on the 2-core development VM (12 training steps of the demo model at 128², one process at a time):

- idle machine: 1 thread 10.7 s, 2 threads 7.1 s (2 threads win 1.5x);
- one core busy with another job: 1 thread 22 s, 2 threads 49 s (2 threads *lose* 2.2x: every parallel region
  waits for the thread the other job has pushed off its core).

So an oversubscribed suite runs its training tests several times slower (a fresh-clone `make test` took 88 min on
a busy machine, 18 min on an idle one). Before a test, at most every ``PROBE_EVERY_S`` seconds, the share of the
CPU that *other* processes used over a short window is read from ``/proc/stat`` (this process's own time taken
out) and torch gets ``cores - busy`` threads (at least 1, at most what it started with); ``OMP_NUM_THREADS`` follows,
so notebook kernels and subprocesses started afterwards do the same. On an idle machine nothing changes.
``MEMSEG_TEST_THREADS=<n>`` fixes the count instead; a test that sets its own thread count keeps it.
"""

from __future__ import annotations

import os
import time

PROBE_EVERY_S = 20.0
WINDOW_S = 0.2
ENV = "MEMSEG_TEST_THREADS"


def threads_for(busy_by_others: float, cores: int, most: int) -> int:
    """Torch threads for ``cores`` CPUs of which ``busy_by_others`` (in cores) are used by other processes.

    >>> threads_for(0.1, 2, 2), threads_for(0.9, 2, 2), threads_for(3.0, 2, 2), threads_for(0.0, 8, 4)
    (2, 1, 1, 4)
    """
    return max(1, min(most, cores - int(round(busy_by_others))))


def _busy_and_total() -> tuple[float, float]:
    """Busy and total CPU time of the whole machine so far, in seconds (``/proc/stat``'s first line)."""
    with open("/proc/stat") as f:
        fields = [float(v) for v in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return (sum(fields) - idle) / tick, sum(fields) / tick


def busy_by_others(window_s: float = WINDOW_S) -> float:
    """Cores' worth of CPU that processes other than this one used over ``window_s`` seconds."""
    busy0, total0 = _busy_and_total()
    own0 = sum(os.times()[:2])
    time.sleep(window_s)
    busy1, total1 = _busy_and_total()
    own1 = sum(os.times()[:2])
    cores = os.cpu_count() or 1
    elapsed = max((total1 - total0) / cores, 1e-6)  # wall seconds as the kernel counted them
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / elapsed


class ThreadShare:
    """Applies :func:`threads_for` to torch and ``OMP_NUM_THREADS`` before tests (see the module docstring)."""

    def __init__(self) -> None:
        self.most: int | None = None  # torch's thread count at the first probe
        self.last_set: int | None = None
        self.last_probe = -PROBE_EVERY_S

    def apply(self) -> None:
        import torch

        if self.most is None:
            self.most = torch.get_num_threads()
        if self.last_set is not None and torch.get_num_threads() != self.last_set:
            return  # the test (or its module) chose its own count: leave it
        now = time.monotonic()
        if now - self.last_probe < PROBE_EVERY_S:
            return
        self.last_probe = now
        fixed = os.environ.get(ENV, "auto")
        n = int(fixed) if fixed.isdigit() and int(fixed) > 0 else threads_for(busy_by_others(), os.cpu_count() or 1,
                                                                                self.most)
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
        os.environ["OMP_NUM_THREADS"] = str(n)
        self.last_set = n
