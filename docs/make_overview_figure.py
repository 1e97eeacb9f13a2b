"""Draw assets/memseg_overview.png: a block diagram of MemSeg (paper Fig. 2 and Fig. 3).

Run: .venv/bin/python docs/make_overview_figure.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

BOXES = {
    # name: (x, y, w, h, colour, label)
    "img": (0.2, 4.2, 1.6, 0.9, "#dbe9f6", "normal image I"),
    "perlin": (0.2, 2.9, 1.6, 0.9, "#fde2c8", "Perlin P > T\n→ M_P"),
    "fg": (0.2, 1.6, 1.6, 0.9, "#fde2c8", "foreground M_I\n(binarise + open/close)"),
    "src": (0.2, 0.3, 1.6, 0.9, "#fde2c8", "source I_n: DTD texture\nor 4×8 shuffled I"),
    "blend": (2.4, 2.2, 1.8, 1.2, "#fbd0a8", "eq. (1)–(2)\nI_A = M̄⊙I + δM⊙I_n\n+ (1−δ)M⊙I"),
    "enc": (4.8, 2.2, 1.7, 1.2, "#d5ecd4", "ResNet18\nstem+blocks 1–3\n(frozen)"),
    "mem": (4.8, 4.1, 1.7, 1.0, "#e6dcf2", "memory bank\nN normal images"),
    "di": (7.0, 3.6, 1.8, 1.1, "#e6dcf2", "DI* = argmin ΣDI_i\n(eq. 3–4)"),
    "sa": (9.3, 3.9, 1.7, 0.9, "#f6d5dc", "spatial attention\nM3→M2→M1 (eq. 5–7)"),
    "msff": (7.0, 1.9, 1.8, 1.1, "#fff3b0", "CI = [II, DI*]\nMSFF + coord. attn\n(Fig. 4)"),
    "b4": (4.8, 0.5, 1.7, 0.9, "#d5ecd4", "block 4\n(trained)"),
    "dec": (9.3, 1.6, 1.7, 1.3, "#cfe8ef", "U-Net decoder\n→ 2-ch softmax"),
    "out": (11.5, 1.7, 1.6, 1.1, "#f2f2f2", "anomaly map\nL1 + focal loss"),
}
ARROWS = [
    ("img", "blend"), ("perlin", "blend"), ("fg", "blend"), ("src", "blend"), ("blend", "enc"),
    ("mem", "di"), ("enc", "di"), ("enc", "msff"), ("di", "msff"), ("di", "sa"), ("sa", "dec"),
    ("msff", "dec"), ("enc", "b4"), ("b4", "dec"), ("dec", "out"),
]


def _anchors(a, b):
    """Edge mid-points joining box a to box b (right→left when b lies to the right, else top/bottom)."""
    ax_, ay, aw, ah, *_ = BOXES[a]
    bx, by, bw, bh, *_ = BOXES[b]
    if bx >= ax_ + aw - 0.05:
        return (ax_ + aw + 0.05, ay + ah / 2), (bx - 0.05, by + bh / 2)
    if by > ay:
        return (ax_ + aw / 2, ay + ah + 0.05), (bx + bw / 2, by - 0.05)
    return (ax_ + aw / 2, ay - 0.05), (bx + bw / 2, by + bh + 0.05)


def draw(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(14, 5.6), dpi=110)
    for name, (x, y, w, h, colour, label) in BOXES.items():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=colour, ec="#444", lw=1.2))
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=10)
    for a, b in ARROWS:
        start, end = _anchors(a, b)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color="#555", lw=1.1))
    ax.text(0.2, 5.35, "1. anomaly simulation (§3.1, Fig. 3)", fontsize=12, weight="bold")
    ax.text(4.8, 5.35, "2. memory module and spatial attention (§3.2)", fontsize=12, weight="bold")
    ax.text(9.3, 5.35, "3. fusion and decoding (§3.3–3.4)", fontsize=12, weight="bold")
    ax.set_xlim(0, 13.3)
    ax.set_ylim(0, 5.7)
    ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


if __name__ == "__main__":
    draw(Path(__file__).resolve().parents[1] / "assets" / "memseg_overview.png")
