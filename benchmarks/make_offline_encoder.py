"""Make the kit's offline encoder, ``weights/memseg-resnet18-offline.pt``, with the kit's own code only.

1. ``memseg synth`` renders the procedural synthetic dataset (weave, washer, toys; seed 0; 80 normal
   training images each at 256²);
2. their ``train/good`` images are gathered into one ``folder``-layout category ``mix`` (240 images);
3. ``memseg pretrain`` trains the ResNet18's stem and blocks 1-3 end to end under MemSeg's objective on
   them (simulated anomalies with DTD textures when a DTD root is given, the memory re-extracted every
   25 steps), 2000 steps at 128², seed 0, and writes the float16 stem + blocks 1-3 with its provenance.

No test image of any dataset is seen, and the real data the kit is measured on (MVTec 3D-AD tire) is
held out. About 25 minutes on one core of the development CPU.

    python benchmarks/make_offline_encoder.py --work runs/offline-encoder --dtd /path/to/dtd \\
        --out weights/memseg-resnet18-offline.pt
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memseg.apps.cli import main as memseg  # noqa: E402
from memseg.data.synthetic import CATEGORIES  # noqa: E402

STEPS, SIZE, SEED = 2000, 128, 0


def gather(synthetic: Path, mix: Path) -> int:
    """Copy every category's train/good images into ``mix/mix/train`` (names prefixed by the category)."""
    target = mix / "mix" / "train"
    target.mkdir(parents=True, exist_ok=True)
    n = 0
    for category in CATEGORIES:
        for image in sorted((synthetic / category / "train" / "good").glob("*.png")):
            shutil.copyfile(image, target / f"{category}_{image.name}")
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/offline-encoder", help="scratch folder (synthetic data, the run)")
    p.add_argument("--dtd", default=None, help="DTD root for the simulated anomalies' textures")
    p.add_argument("--out", default="weights/memseg-resnet18-offline.pt")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--minutes", type=float, default=None)
    args = p.parse_args(argv)
    work = Path(args.work)
    synthetic = work / "synthetic"
    if not all((synthetic / c).is_dir() for c in CATEGORIES):
        memseg(["synth", "--out", str(synthetic), "--seed", str(SEED)])
    print(f"{gather(synthetic, work / 'mix')} normal images in {work / 'mix' / 'mix' / 'train'}")
    cmd = ["pretrain", "--data", str(work / "mix"), "--category", "mix", "--layout", "folder", "--out", args.out,
           "--steps", str(args.steps), "--size", str(SIZE), "--seed", str(SEED)]
    if args.dtd:
        cmd += ["--dtd", args.dtd]
    if args.minutes:
        cmd += ["--minutes", str(args.minutes)]
    return memseg(cmd)


if __name__ == "__main__":
    raise SystemExit(main())
