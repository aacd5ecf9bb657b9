"""Multi-scale deformable attention as a literal loop: the paper's Eq. 3, start here.

Deformable DETR (Zhu et al., 2021), Eq. 3, for one query ``q`` with reference
point ``p_q`` (normalised to ``[0, 1]``)::

    MSDeformAttn(z_q, p_q, {x^l}) = sum_m W_m [ sum_l sum_k A_mlqk * W'_m x^l( phi_l(p_q) + dp_mlqk ) ]

``m`` runs over the M heads, ``l`` over the L feature levels, ``k`` over the P
sampling points of each level. The model computes the linear maps around the
brackets (``W'_m x`` is the value projection, ``W_m`` the output projection) and
the sampling locations ``phi_l(p_q) + dp_mlqk`` and weights ``A_mlqk``. What is
left, the part *inside* the brackets, is this kernel: for every batch element,
query and head, a weighted sum of value vectors read at fractional positions.

Reading a map at a fractional position is bilinear interpolation:

* a location ``(x, y)`` in ``[0, 1]`` becomes the pixel coordinate
  ``(x * W - 0.5, y * H - 0.5)``: pixel ``i`` covers ``[i, i + 1)`` and its
  centre is ``i + 0.5`` (``align_corners=False`` in PyTorch's words);
* the four pixels around that point are ``(x0, y0)``, ``(x0 + 1, y0)``,
  ``(x0, y0 + 1)`` and ``(x0 + 1, y0 + 1)`` with ``x0 = floor(x)``,
  ``y0 = floor(y)``; each gets the area of the sub-rectangle opposite to it,
  e.g. ``(1 - fx) * (1 - fy)`` for ``(x0, y0)`` where ``fx = x - x0``;
* a corner that falls outside the ``H x W`` map contributes zero.

Every other version in this package computes exactly this function:
``reference.py`` with ``grid_sample`` (fast enough to train with, and autograd
gives the gradients), ``numba_cpu.py`` and ``numba_cuda.py`` as hand-written
kernels (this loop plus named optimisations, with hand-written gradients).
The tests check each of them against this file.

This version is for reading and for tiny checks: it makes one Python-level step
per sample and per corner, so it is thousands of times slower than the others.
Autograd still differentiates it in all three float inputs (slowly).
"""
from __future__ import annotations

import math

import torch

__all__ = ["ms_deform_attn_naive", "bilinear_sample"]


def bilinear_sample(feature_map: torch.Tensor, H: int, W: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Value of an ``H x W`` map with ``D`` channels at the pixel coordinate ``(x, y)``.

    Args:
        feature_map: ``(H * W, D)``, row ``i * W + j`` is pixel (row ``i``, column ``j``).
        H, W: the map's height and width.
        x, y: 0-dim tensors, pixel coordinates (``x = loc_x * W - 0.5``); pixel ``j`` has its centre at ``x = j``.

    Returns:
        ``(D,)``: the bilinear mix of the (up to) four pixels around ``(x, y)``; zero outside the map.
    """
    out = feature_map.new_zeros(feature_map.shape[1])  # (D,)
    if not (math.isfinite(float(x)) and math.isfinite(float(y))):
        return out  # a NaN / inf location reads nothing
    x0 = math.floor(float(x))  # column of the left corners
    y0 = math.floor(float(y))  # row of the top corners
    fx = x - x0  # in [0, 1): how far right of the left column (a tensor, so autograd sees it)
    fy = y - y0  # in [0, 1): how far below the top row
    # Each corner's weight is the area of the sub-rectangle opposite to it.
    for row, wy in ((y0, 1 - fy), (y0 + 1, fy)):
        for col, wx in ((x0, 1 - fx), (x0 + 1, fx)):
            if 0 <= row < H and 0 <= col < W:  # corners off the map contribute zero
                out = out + wy * wx * feature_map[row * W + col]
    return out


def ms_deform_attn_naive(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Multi-scale deformable attention written as plain loops (Eq. 3 inside the brackets).

    Args:
        value: ``(N, S, M, D)``, the flattened feature maps of all levels, split into M heads.
        spatial_shapes: ``(L, 2)`` integer rows ``(H_l, W_l)``.
        level_start_index: ``(L,)`` where level ``l`` starts in ``S``.
        sampling_locations: ``(N, Lq, M, L, P, 2)`` points ``(x, y)``, ``[0, 1]`` spans the map.
        attention_weights: ``(N, Lq, M, L, P)``, already softmaxed over ``L * P``.

    Returns:
        ``(N, Lq, M * D)``: head ``m`` in channels ``m * D .. (m + 1) * D - 1``.
    """
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    levels = [(int(h), int(w), int(s)) for (h, w), s in zip(spatial_shapes.tolist(), level_start_index.tolist())]

    rows = []  # one (D,) vector per (n, q, m), in that order
    for n in range(N):
        for q in range(Lq):
            for m in range(M):
                head_out = value.new_zeros(D)
                for lvl, (H, W, start) in enumerate(levels):
                    feature_map = value[n, start:start + H * W, m]  # (H*W, D): level lvl, head m
                    for k in range(P):
                        loc_x, loc_y = sampling_locations[n, q, m, lvl, k]
                        x = loc_x * W - 0.5  # normalised -> pixel coordinates
                        y = loc_y * H - 0.5
                        a = attention_weights[n, q, m, lvl, k]  # A_mlqk
                        head_out = head_out + a * bilinear_sample(feature_map, H, W, x, y)
                rows.append(head_out)
    if not rows:  # no queries
        return value.new_zeros(N, Lq, M * D)
    return torch.stack(rows).view(N, Lq, M * D)
