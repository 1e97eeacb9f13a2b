"""Structural similarity (SSIM, Wang et al. 2004) in torch, used by DRAEM's reconstruction loss.

DRAEM (Zavrtanik et al., ICCV 2021, eq. 1-2) trains its reconstructive sub-network with
``L_rec = l2(I, I_r) + L_SSIM(I, I_r)`` where ``L_SSIM = 1 - mean(SSIM map)`` over an 11x11
Gaussian window (sigma 1.5). Images are expected in [0, 1] (``data_range=1``), which is what the
constants ``C1 = (0.01 * L)^2`` and ``C2 = (0.03 * L)^2`` assume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_window(size: int = 11, sigma: float = 1.5, channels: int = 3, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """Depthwise 2-D Gaussian window, shape (channels, 1, size, size), summing to 1 per channel."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"SSIM window size must be a positive odd integer, got {size}")
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    window = g[:, None] * g[None, :]  # (size, size)
    return window.expand(channels, 1, size, size).contiguous()


def ssim_map(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5,
             data_range: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM between ``x`` and ``y`` (B, C, H, W) -> (B, C, H, W).

    Borders are handled with reflection padding so the map has the input's size.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim expects two (B, C, H, W) tensors of the same shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    # float32 without autocast: ``E[x^2] - E[x]^2`` cancels catastrophically in bf16/fp16
    with torch.autocast(x.device.type, enabled=False):
        return _ssim_map_fp32(x.float(), y.float(), window_size, sigma, data_range)


def _ssim_map_fp32(x: torch.Tensor, y: torch.Tensor, window_size: int, sigma: float, data_range: float) -> torch.Tensor:
    c = x.shape[1]
    win = gaussian_window(window_size, sigma, c, dtype=x.dtype, device=x.device)
    pad = window_size // 2
    mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (pad, pad, pad, pad), mode=mode), win, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sigma_x = blur(x * x) - mu_x**2
    sigma_y = blur(y * y) - mu_y**2
    sigma_xy = blur(x * y) - mu_x * mu_y
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2)
    return num / den


def ssim(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5,
         data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM over the batch, a scalar in [-1, 1] (1 = identical)."""
    return ssim_map(x, y, window_size, sigma, data_range).mean()


def ssim_loss(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5,
              data_range: float = 1.0) -> torch.Tensor:
    """DRAEM's structural loss ``1 - SSIM(x, y)`` (0 for identical images)."""
    return 1.0 - ssim(x, y, window_size, sigma, data_range)
