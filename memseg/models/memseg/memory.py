"""Memory module of MemSeg (paper §3.2, eq. 3-4).

The memory information MI is the block 1-3 features of N normal training images (paper: N=30),
stored as registered buffers ``level1``, ``level2``, ``level3`` of shapes (N, 64, H/4, W/4),
(N, 128, H/8, W/8), (N, 256, H/16, W/16). They are allocated at construction from the input size
and N, so a checkpoint's ``state_dict`` loads into a fresh model and the bank moves with
``.to(device)``. ``memory_ready`` (a bool buffer) records whether the bank was filled. The DI* search
flattens the bank: :meth:`MemSeg.set_channels_last` leaves it contiguous.

Difference information (eq. 3): the paper writes DI_i = ||MI_i - II||_2 and then takes channel
means of DI* (eq. 5-7) and concatenates DI* with II along channels (CI has 2C channels). So DI keeps
the C channels of the features: the L2 norm is taken per feature element, i.e. over a scalar, which
is the absolute difference ``|MI_i - II|`` (``distance="l2"``, the default). The variant of the
public kits, the elementwise squared difference ``(MI_i - II)^2`` (``F.mse_loss(reduction="none")``),
is available as ``distance="squared"``.

DI* (eq. 4): the DI_i with the minimum sum of all its elements, summed over ALL three levels, so
one memory sample is chosen per input image (its index is returned for notebooks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DISTANCES = ("l2", "squared")


def difference(memory: torch.Tensor, features: torch.Tensor, distance: str = "l2") -> torch.Tensor:
    """Elementwise difference information DI = ||MI - II||_2 per element (eq. 3)."""
    diff = memory - features
    if distance == "l2":
        return diff.abs()  # sqrt((MI - II)^2) per element
    if distance == "squared":
        return diff.square()
    raise ValueError(f"unknown distance {distance!r}; expected one of {DISTANCES}")


def aligned_difference(memory: torch.Tensor, features: torch.Tensor, distance: str = "l2",
                       shift: int = 0) -> torch.Tensor:
    """DI (eq. 3) with a tolerance for misalignment: each input position is compared with the memory
    sample's feature at the offset within ``shift`` cells (in both directions) whose Σ_c DI is smallest.

    ``shift=0`` is eq. (3) as written. A part that moves or turns a little between images (a tyre)
    makes the literal DI large everywhere on the part; the tolerance keeps it for what no nearby
    normal feature explains. Shapes: ``memory`` and ``features`` (B, C, h, w) -> (B, C, h, w).
    """
    if shift <= 0:
        return difference(memory, features, distance)
    h, w = features.shape[-2:]
    padded = F.pad(memory, (shift, shift, shift, shift), mode="replicate")
    best, best_sum = None, None
    for dy in range(2 * shift + 1):
        for dx in range(2 * shift + 1):
            d = difference(padded[..., dy:dy + h, dx:dx + w], features, distance)
            total = d.sum(dim=1, keepdim=True)  # (B, 1, h, w)
            if best is None:
                best, best_sum = d, total
            else:
                closer = total < best_sum
                best, best_sum = torch.where(closer, d, best), torch.where(closer, total, best_sum)
    return best


def _read_ready(bank: "MemoryBank", _incompatible_keys: object = None) -> None:
    """``memory_ready`` into its host copy, after a state dict was loaded into the buffer."""
    if bank.memory_ready.device.type != "meta":
        bank._ready = bool(bank.memory_ready)


class MemoryBank(nn.Module):
    """N memory samples' block 1-3 features, and the DI / DI* computation (eq. 3-4).

    Args:
        memory_size: N, the number of memory samples.
        feature_shapes: [(C, h, w)] of blocks 1-3 at the model's input size.
        distance: ``"l2"`` (|MI - II|, default) or ``"squared"`` ((MI - II)^2).
        chunk_size: memory samples compared per pass when searching DI* (bounds the work
            memory when N is large).
        shift: DI* tolerates a misalignment of up to this many feature cells (:func:`aligned_difference`;
            0: eq. 3 as written). The closest memory sample (eq. 4) is chosen as without it.
    """

    def __init__(self, memory_size: int, feature_shapes: list[tuple[int, int, int]], distance: str = "l2",
                 chunk_size: int = 32,
                 shift: int = 0) -> None:
        super().__init__()
        if memory_size < 1:
            raise ValueError(f"memory_size must be >= 1, got {memory_size}")
        if distance not in DISTANCES:
            raise ValueError(f"unknown distance {distance!r}; expected one of {DISTANCES}")
        self.memory_size = int(memory_size)
        self.feature_shapes = [tuple(int(v) for v in s) for s in feature_shapes]
        self.distance = distance
        self.chunk_size = max(1, int(chunk_size))
        self.shift = max(0, int(shift))
        for i, (c, h, w) in enumerate(self.feature_shapes, start=1):
            self.register_buffer(f"level{i}", torch.zeros(self.memory_size, c, h, w))  # MI_i: (N, C_i, h_i, w_i)
        self.register_buffer("memory_ready", torch.zeros((), dtype=torch.bool))
        self._ready = False  # memory_ready on the host: reading the buffer would make a GPU wait on every forward
        self.register_load_state_dict_post_hook(_read_ready)
        # S_i: how much normal images differ from their closest memory sample at each position
        # (see reference_differences), the scale on which calibrated attention reads DI* (attention.py).
        for i, (_, h, w) in enumerate(self.feature_shapes, start=1):
            self.register_buffer(f"scale{i}", torch.ones(1, 1, h, w))  # S_i: (1, 1, h_i, w_i)

    @property
    def scales(self) -> list[torch.Tensor]:
        """[S_1, S_2, S_3]: reference channel-mean DI of normal images per position, (1, 1, h_i, w_i)."""
        return [getattr(self, f"scale{i}") for i in range(1, len(self.feature_shapes) + 1)]

    @property
    def levels(self) -> list[torch.Tensor]:
        return [getattr(self, f"level{i}") for i in range(1, len(self.feature_shapes) + 1)]

    @property
    def ready(self) -> bool:
        """Whether the bank was filled (``memory_ready``, read without a device sync)."""
        return self._ready

    def _check(self, features: list[torch.Tensor], what: str) -> None:
        if len(features) != len(self.feature_shapes):
            raise ValueError(f"{what}: expected {len(self.feature_shapes)} feature levels, got {len(features)}")
        for i, (f, shape) in enumerate(zip(features, self.feature_shapes), start=1):
            if tuple(f.shape[1:]) != shape:
                raise ValueError(f"{what}: block {i} features have shape {tuple(f.shape[1:])}, the memory bank holds "
                                 f"{shape}")

    @torch.no_grad()
    def fill(self, features: list[torch.Tensor]) -> None:
        """Store the N memory samples' block 1-3 features (each (N, C, h, w))."""
        self._check(features, "memory features")
        if features[0].shape[0] != self.memory_size:
            raise ValueError(f"the memory bank holds N={self.memory_size} samples, got features of "
                             f"{features[0].shape[0]} images")
        for buf, f in zip(self.levels, features):
            buf.copy_(f.detach().to(device=buf.device, dtype=buf.dtype))
        self.memory_ready.fill_(True)
        self._ready = True
        for s, ref in zip(self.scales, self.reference_differences()):
            s.copy_(ref)

    @torch.no_grad()
    def reference_differences(self) -> list[torch.Tensor]:
        """How far normal images lie from their closest memory sample, per level and position.

        Each memory sample is compared with the *other* memory samples exactly as an input is
        (eq. 3-4, leaving itself out); S_i is the channel mean of that DI*, averaged over the
        samples, smoothed over 3x3 positions and floored at a tenth of its spatial mean. Where
        normal images vary a lot (a part whose pose or reflection changes), S_i is large; where they
        agree (a plain background), it is small. With a single memory sample, the sample's deviation
        from its own spatial mean is used.

        Returns:
            [S_1 (1, 1, h_1, w_1), S_2, S_3].
        """
        levels = [lvl.float() for lvl in self.levels]
        n = self.memory_size
        if n == 1:
            di = [(m - m.mean(dim=(2, 3), keepdim=True)).abs() for m in levels]
        else:
            d = self.distances(levels)  # (N, N)
            d.fill_diagonal_(float("inf"))
            nearest = d.argmin(dim=1)  # (N,)
            di = [aligned_difference(m.index_select(0, nearest), m, self.distance, self.shift) for m in levels]
        out = []
        for x in di:
            s = x.mean(dim=(0, 1), keepdim=True)  # (1, 1, h, w)
            s = F.avg_pool2d(s, 3, stride=1, padding=1, count_include_pad=False)
            out.append(torch.maximum(s, 0.1 * s.mean()).clamp_min(1e-12))
        return out

    @torch.no_grad()
    def distances(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Σ over all elements of all levels of DI_i, for every input and memory sample: (B, N) (eq. 3-4).

        One vectorised pass per chunk of memory samples (``torch.cdist`` computes the pairwise
        sums without materialising the (B, N, C, h, w) differences).
        """
        self._check(features, "input features")
        b = features[0].shape[0]
        out = torch.zeros(b, self.memory_size, device=features[0].device, dtype=torch.float32)
        for f, mem in zip(features, self.levels):
            x = f.detach().float().reshape(b, -1)  # (B, D_l)
            m = mem.float().reshape(self.memory_size, -1)  # (N, D_l)
            for n0 in range(0, self.memory_size, self.chunk_size):
                chunk = m[n0 : n0 + self.chunk_size]
                if self.distance == "l2":
                    d = torch.cdist(x, chunk, p=1)  # Σ |MI - II|
                else:
                    # Σ (MI - II)^2
                    d = torch.cdist(x, chunk, p=2, compute_mode="donot_use_mm_for_euclid_dist").square()
                out[:, n0 : n0 + chunk.shape[0]] += d
        return out

    @torch.no_grad()
    def select(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """DI* for each input (eq. 4).

        Args:
            features: II, the input's block 1-3 features [(B, C_l, h_l, w_l)].

        Returns:
            ``(di_star, index)``: DI* per level [(B, C_l, h_l, w_l)] and the chosen memory
            sample per input (B,) (long).
        """
        if not self.ready:  # a host-side bool: no device sync, nothing data-dependent in an exported graph
            raise RuntimeError(
                "the memory bank is empty: call model.prepare(normal_images) (N normal training images, "
                "ImageNet-normalised, at the model's input size) before using the model"
            )
        index = self.distances(features).argmin(dim=1)  # eq. (4): (B,)
        di_star = [aligned_difference(mem.index_select(0, index).to(f.dtype), f, self.distance, self.shift)
                   for f, mem in zip(features, self.levels)]
        return di_star, index

    def extra_repr(self) -> str:
        return (f"memory_size={self.memory_size}, feature_shapes={self.feature_shapes}, distance={self.distance!r}, "
                f"shift={self.shift}")
