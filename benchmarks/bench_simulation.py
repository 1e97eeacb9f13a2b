"""Throughput of the batched anomaly simulation (paper §3.1), in simulated samples per second.

Images and textures are already in memory as tensors (as in training: decoded once), so this
measures the simulation itself, not JPEG/PNG decoding. Run as a script to print one line per
setting: CPU with one thread (the target: >= 400 samples/s at 256×256, vs ~40 for the known kit),
CPU with all threads, and CUDA when available.

    python benchmarks/bench_simulation.py [--size 256] [--batch 32] [--seconds 5] [--category washer]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from memseg.simulation import AnomalySimulator, SimulationConfig


def _object_images(batch: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """A bright textured disc on a dark background (so a foreground preset has work to do)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.35 * size) ** 2).float()
    noise = torch.rand(batch, 3, size, size, generator=generator)
    return (0.08 + 0.05 * noise) * (1 - disc) + (0.55 + 0.4 * noise) * disc


def bench_simulation(
    size: int = 256,
    batch: int = 32,
    threads: int | None = 1,
    device: str = "cpu",
    seconds: float = 5.0,
    category: str | None = None,
    n_textures: int = 64,
    warmup: int = 2,
    cpu_time: bool = False,
) -> float:
    """Simulated samples per second (batched `AnomalySimulator.simulate`).

    threads: torch intra-op threads on CPU (1 = one CPU thread; None = leave as is).
    category: foreground preset to apply (None = no foreground mask, e.g. a texture category).
    cpu_time: divide by the process CPU time instead of wall time (a fairer one-thread figure on a
        busy shared machine; the same as wall time on an idle one).
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        dev = torch.device(device)
        g = torch.Generator().manual_seed(0)
        images = _object_images(batch, size, g).to(dev)
        textures = torch.randint(0, 256, (n_textures, 3, size, size), generator=g, dtype=torch.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "no foreground preset" for custom categories
            sim = AnomalySimulator(SimulationConfig(), size=(size, size), device=dev, category=category,
                                   textures=textures)

        def sync() -> None:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        for _ in range(warmup):
            sim.simulate(images, generator=g)
        sync()
        clock = time.process_time if cpu_time else time.perf_counter
        n, t0, w0 = 0, clock(), time.perf_counter()
        while time.perf_counter() - w0 < seconds:
            sim.simulate(images, generator=g)
            n += batch
        sync()
        return n / max(clock() - t0, 1e-9)
    finally:
        torch.set_num_threads(before)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--category", default=None, help="foreground preset, e.g. washer (Otsu) or hazelnut")
    args = p.parse_args(argv)
    common = dict(size=args.size, batch=args.batch, seconds=args.seconds, category=args.category)
    label = f"{args.size}x{args.size}, batch {args.batch}, foreground {args.category or 'none'}"
    wall = bench_simulation(threads=1, **common)
    cpu = bench_simulation(threads=1, cpu_time=True, **common)
    print(f"simulation CPU 1 thread ({label}): {wall:.1f} samples/s wall, {cpu:.1f} samples per CPU-second")
    n = torch.get_num_threads()
    print(f"simulation CPU {n} threads ({label}): {bench_simulation(threads=None, **common):.1f} samples/s")
    if torch.cuda.is_available():
        print(f"simulation CUDA batched ({label}): {bench_simulation(threads=None, device='cuda', **common):.1f} "
              "samples/s")
    else:
        print("simulation CUDA: not available on this machine")


if __name__ == "__main__":
    main()
