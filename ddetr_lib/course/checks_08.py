"""Exercise checks for notebook 08 (the kernel).

References: the library's naive bilinear sample (``kernels/naive.py``) and PyTorch's
autograd through the ``grid_sample`` reference for the attention-weight gradient.
"""
from __future__ import annotations

import torch

from ddetr_lib.course import check_function


def _naive_sample(feature_map, H, W, x, y):
    from ddetr_lib.kernels.naive import bilinear_sample

    return bilinear_sample(feature_map, H, W, torch.tensor(float(x), dtype=feature_map.dtype),
                           torch.tensor(float(y), dtype=feature_map.dtype))


def check_sample_pixel(fn, quiet: bool = False):
    g = torch.Generator().manual_seed(8)
    H, W = 4, 5
    fmap = torch.randn(H * W, 3, dtype=torch.float64, generator=g)
    points = [(0.0, 0.0), (2.0, 1.0), (1.3, 2.7), (-0.5, 1.2), (4.4, 3.6), (-1.5, 0.0), (3.99, -0.2), (0.5, 0.5)]
    cases = [(fmap, H, W, x, y) for x, y in points]
    return check_function("sample_pixel", fn, cases, _naive_sample, quiet=quiet,
                          hint="Hint: row i*W + j is pixel (row i, column j); x is the column; "
                               "corners outside 0..W-1 / 0..H-1 count zero.")


def _autograd_grad_weights(value, spatial_shapes, level_start_index, locations, weights, grad_out):
    from ddetr_lib.kernels import ms_deform_attn

    w = weights.clone().requires_grad_()
    out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, w, backend="torch")
    (grad,) = torch.autograd.grad(out, w, grad_out)
    return grad


def check_grad_attention_weights(fn, quiet: bool = False):
    from ddetr_lib.kernels import level_start_index_from_shapes

    cases = []
    for seed, (N, Lq, M, D, shapes, P) in enumerate(((1, 3, 2, 4, ((3, 4),), 2), (2, 4, 2, 3, ((4, 5), (2, 3)), 3))):
        g = torch.Generator().manual_seed(80 + seed)
        spatial = torch.tensor(shapes)
        S, L = int(spatial.prod(1).sum()), len(shapes)
        cases.append((torch.randn(N, S, M, D, generator=g, dtype=torch.float64), spatial,
                      level_start_index_from_shapes(spatial),
                      torch.rand(N, Lq, M, L, P, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1,
                      torch.rand(N, Lq, M, L * P, generator=g, dtype=torch.float64).softmax(-1).view(N, Lq, M, L, P),
                      torch.randn(N, Lq, M * D, generator=g, dtype=torch.float64)))
    return check_function("grad_attention_weights", fn, cases, _autograd_grad_weights, quiet=quiet,
                          hint="Hint: the weight multiplies the whole sampled vector of its head, so its gradient "
                               "is the dot product of grad_out's head slice with that sample; it does not involve "
                               "the weight itself.")
