"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021, Eq. 3).

Ordinary attention lets every query look at every key: cost grows with (H*W)^2 and
early in training the weights are spread thinly over the whole image. Deformable
attention lets each query look at only a few points around a *reference point*:

    MSDeformAttn(z_q, p_q, {x^l}) =
        sum_m W_m [ sum_l sum_k A_mlqk * W'_m x^l( phi_l(p_q) + Delta p_mlqk ) ]

* ``z_q``        the query feature (C,); ``p_q`` its reference point, normalised to [0, 1];
* ``m``          the attention head (M heads), ``l`` the feature level (L levels),
  ``k``          the sampling point (P points per head and level);
* ``Delta p``    sampling offsets, predicted from ``z_q`` by a linear layer
                 (``sampling_offsets``), in pixels of level l;
* ``A``          attention weights, predicted from ``z_q`` by a linear layer
                 (``attention_weights``), softmaxed over the L*P points of each head;
* ``W'_m``       the value projection (``value_proj``), ``W_m`` the output one (``output_proj``);
* ``x^l(p)``     the level-l feature map read at a fractional position by bilinear
                 interpolation (zero outside the map).

There is no query-key dot product at all: where to look and how much to trust each
point are both read off the query. The sampling itself is done by
``ddetr_lib.kernels.ms_deform_attn`` (``backend`` picks the PyTorch reference or the
Numba kernel).

A reference point can also be a box ``(cx, cy, w, h)`` (iterative box refinement and
two-stage): the offsets are then measured in units of the box size, so the points
follow the box as it is refined.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ddetr_lib.kernels import ms_deform_attn


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention.

    d_model: feature size C; num_feature_levels: L; nheads: M; n_points: P (the paper's K:
    sampling points per head and level).
    backend: "auto" | "torch" | "numba_cpu" | "numba_cuda" (see ``ddetr_lib.kernels``).

    ``sampling_points`` is the part of Eq. 3 read off the query (where to look, how much
    to trust each point); ``forward`` adds the value projection, the sampling itself
    (``ms_deform_attn``) and the output projection.
    """

    def __init__(self, d_model: int = 256, num_feature_levels: int = 4, nheads: int = 8, n_points: int = 4,
                 backend: str = "auto"):
        super().__init__()
        if d_model % nheads != 0:
            raise ValueError(f"d_model: {d_model} is not divisible by nheads={nheads}")
        self.d_model = d_model
        self.num_feature_levels = num_feature_levels
        self.nheads = nheads
        self.n_points = n_points
        self.backend = backend
        # One (x, y) offset and one weight per head, level and point, read off the query.
        self.sampling_offsets = nn.Linear(d_model, nheads * num_feature_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, nheads * num_feature_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self):
        """The official initialisation.

        The offsets start independent of the query (weight 0); their bias puts head m
        on the direction of angle 2*pi*m/M (scaled so that the larger of |cos|, |sin|
        is 1: the 8 heads point at the 8 neighbouring pixels), the same for every level,
        and point k at (k+1) times that step: each head starts as a short ray of P
        points. Attention weights start uniform (weight and bias 0).
        """
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.nheads, dtype=torch.float32) * (2.0 * math.pi / self.nheads)  # (M,)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)  # (M, 2)
        grid = grid / grid.abs().max(-1, keepdim=True).values  # max |component| = 1
        grid = grid.view(self.nheads, 1, 1, 2).repeat(1, self.num_feature_levels, self.n_points, 1)  # (M, L, P, 2)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def sampling_points(self, query, reference_points, spatial_shapes):
        """Where each head of each query looks, and how much each point counts.

        query:             (N, Lq, C)
        reference_points:  (N, Lq, L, 2) points (x, y) in [0, 1] (per level), or
                           (N, Lq, L, 4) boxes (cx, cy, w, h) in [0, 1]
        spatial_shapes:    (L, 2) int64 rows (H_l, W_l)
        -> sampling_locations (N, Lq, M, L, P, 2) as (x, y) in [0, 1] (p_q + Delta p),
           attention_weights  (N, Lq, M, L, P), softmaxed over the L*P points of each head (A)
        """
        n, len_q, _ = query.shape
        M, L, P = self.nheads, self.num_feature_levels, self.n_points  # heads, levels, points
        if reference_points.dim() != 4 or reference_points.shape[:3] != (n, len_q, L) \
                or reference_points.shape[-1] not in (2, 4):
            raise ValueError(f"reference_points: expected (N, Lq, L, 2) or (N, Lq, L, 4) = "
                             f"({n}, {len_q}, {L}, 2|4), got {tuple(reference_points.shape)}")
        if spatial_shapes.shape != (L, 2):
            raise ValueError(f"spatial_shapes: expected ({L}, 2), got {tuple(spatial_shapes.shape)}")

        offsets = self.sampling_offsets(query).view(n, len_q, M, L, P, 2)  # (N, Lq, M, L, P, 2) pixels
        weights = self.attention_weights(query).view(n, len_q, M, L * P)
        weights = F.softmax(weights, -1).view(n, len_q, M, L, P)  # (N, Lq, M, L, P)

        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: divide by (W_l, H_l) to normalise.
            normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1).to(offsets)  # (L, 2)
            locations = (reference_points[:, :, None, :, None, :]
                         + offsets / normalizer[None, None, None, :, None, :])
        else:
            # Box reference: offsets in units of the box half-size (divided by P, so the
            # k-th point of the initial ray reaches at most the box border).
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5)
        return locations, weights  # (N, Lq, M, L, P, 2), (N, Lq, M, L, P)

    def forward(self, query, reference_points, input_flatten, spatial_shapes, level_start_index,
                padding_mask=None, backend: str | None = None):
        """
        query:             (N, Lq, C)
        reference_points:  (N, Lq, L, 2) points or (N, Lq, L, 4) boxes, in [0, 1]
        input_flatten:     (N, S, C) all levels' pixels, flattened level after level
        spatial_shapes:    (L, 2) int64 rows (H_l, W_l); level_start_index: (L,)
        padding_mask:      (N, S) True on padding (those values are zeroed)
        -> (N, Lq, C)
        """
        n, len_in, _ = input_flatten.shape
        value = self.value_proj(input_flatten)  # (N, S, C)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)  # padding contributes nothing
        value = value.view(n, len_in, self.nheads, self.d_model // self.nheads)  # (N, S, M, C/M)

        locations, weights = self.sampling_points(query, reference_points, spatial_shapes)
        backend = self.backend if backend is None else backend
        if torch.is_autocast_enabled(value.device.type):  # mixed precision: the kernel runs in float32
            with torch.autocast(value.device.type, enabled=False):
                output = ms_deform_attn(value.float(), spatial_shapes, level_start_index, locations.float(),
                                        weights.float(), backend=backend)  # (N, Lq, C)
        else:
            output = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights,
                                    backend=backend)  # (N, Lq, C)
        return self.output_proj(output)
