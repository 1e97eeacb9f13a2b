"""The README's notebook tour: one picture per teaching notebook, cut from the executed notebooks.

`make docs` (or the notebook tests) leave executed copies in ``build/executed``; this takes the n-th image
output of each, shrinks it to fit 900×420 px and writes ``assets/tour/<NN>.png`` (256 colours, a few hundred
KB in all). Rerun it after a figure changes:

    .venv/bin/python docs/make_tour_images.py --executed build/executed
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOUR = {  # notebook -> which image output (0-based, in cell order) shows it best
    "01_anomaly_simulation": 5,  # the gallery of simulated anomalies and their masks
    "02_model_overview": 0,  # parameters per stage: frozen encoder, trainable rest
    "03_training": 2,  # test predictions: input, ground truth, anomaly map, overlay
    "04_tsne_simulated_vs_real": 0,  # normal, simulated and real anomalies side by side
    "05_spatial_attention": 0,  # DI* channel means and M3 -> M2 -> M1 beside the prediction
    "06_baselines": 0,  # MemSeg, DRAEM and MMR maps of the same images
}


def images_of(notebook: Path) -> list[bytes]:
    cells = json.loads(notebook.read_text())["cells"]
    return [base64.b64decode(o["data"]["image/png"]) for c in cells for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--executed", default="build/executed", help="folder of executed notebooks")
    p.add_argument("--out", default=str(ROOT / "assets" / "tour"))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, index in TOUR.items():
        nb = Path(args.executed) / f"{name}.ipynb"
        if not nb.is_file():
            p.error(f"--executed {args.executed}: {nb.name} is missing; run `make docs` first")
        found = images_of(nb)
        if index >= len(found):
            p.error(f"{nb}: has {len(found)} image outputs, the tour wants number {index + 1}")
        im = Image.open(io.BytesIO(found[index])).convert("RGB")
        im.thumbnail((900, 420), Image.LANCZOS)
        target = out / f"{name[:2]}.png"
        im.quantize(256).save(target, optimize=True)
        print(target, im.size, f"{target.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
