"""Multi-scale deformable attention, written with ``F.grid_sample`` for reading.

This is the version the notebooks teach first. It is short, runs on any device,
and PyTorch's autograd gives all three gradients for free. The Numba kernels in
this package compute exactly the same function, only faster.

The idea
--------
For every query ``q`` and head ``m`` the model predicts, on each feature level
``l``, ``P`` sampling points ``(x, y)`` in normalised coordinates (``[0, 1]``
covers the whole feature map) and one attention weight per point. The output of
the head is the weighted sum of the value vectors *bilinearly interpolated* at
those points::

    out[n, q, m, :] = sum_l sum_p A[n, q, m, l, p] * bilinear(value_l[n, :, :, m, :], x * W_l - 0.5, y * H_l - 0.5)

The ``- 0.5`` says that pixel ``i`` covers ``[i, i + 1)`` and has its centre at
``i + 0.5`` (``align_corners=False``). A bilinear corner that falls outside the
``H_l x W_l`` grid contributes zero (``padding_mode="zeros"``).

``grid_sample`` wants coordinates in ``[-1, 1]``, hence ``grid = 2 * loc - 1``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def ms_deform_attn_torch(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Reference multi-scale deformable attention (bilinear, zeros outside).

    Args:
        value: ``(N, S, M, D)`` flattened feature maps of all levels, per head.
        spatial_shapes: ``(L, 2)`` integer rows ``(H_l, W_l)``; ``sum H_l * W_l == S``.
        level_start_index: ``(L,)`` offset of each level in ``S``. Unused here
            (the split sizes say the same thing) but kept for the common signature.
        sampling_locations: ``(N, Lq, M, L, P, 2)`` points as ``(x, y)`` in ``[0, 1]``.
        attention_weights: ``(N, Lq, M, L, P)`` weights, already softmaxed over ``L * P``.

    Returns:
        ``(N, Lq, M * D)``: the heads' outputs side by side.
    """
    del level_start_index  # implied by spatial_shapes
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape

    # Python ints for split / view (a device sync on CUDA: fine for a reference).
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]

    # One tensor per level: list of (N, H_l * W_l, M, D).
    value_list = value.split([h * w for h, w in shapes], dim=1)

    # grid_sample's coordinate convention: -1 is the left/top edge, +1 the right/bottom one.
    sampling_grids = 2 * sampling_locations - 1  # (N, Lq, M, L, P, 2)

    sampled_per_level = []
    for lid, (h, w) in enumerate(shapes):
        # (N, H*W, M, D) -> (N, H*W, M*D) -> (N, M*D, H*W) -> (N*M, D, H, W):
        # every (batch, head) pair becomes one "image" with D channels.
        value_l = value_list[lid].flatten(2).transpose(1, 2).reshape(N * M, D, h, w)
        # (N, Lq, M, P, 2) -> (N, M, Lq, P, 2) -> (N*M, Lq, P, 2): a Lq x P "output image" of points.
        grid_l = sampling_grids[:, :, :, lid].transpose(1, 2).flatten(0, 1)
        # Bilinear sampling of each point: (N*M, D, Lq, P).
        sampled_l = F.grid_sample(
            value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        sampled_per_level.append(sampled_l)

    # (N*M, D, Lq, L, P) -> (N*M, D, Lq, L*P)
    sampled = torch.stack(sampled_per_level, dim=-2).flatten(-2)
    # (N, Lq, M, L, P) -> (N, M, Lq, L, P) -> (N*M, 1, Lq, L*P): one weight per point, shared by all D channels.
    weights = attention_weights.transpose(1, 2).reshape(N * M, 1, Lq, L * P)
    # Weighted sum over the L*P points: (N*M, D, Lq) -> (N, M*D, Lq).
    output = (sampled * weights).sum(-1).view(N, M * D, Lq)
    # (N, Lq, M*D): head m occupies channels m*D .. (m+1)*D - 1.
    return output.transpose(1, 2).contiguous()

