"""Exercise checks for notebook 07 (multi-scale deformable attention).

References: the library's ``level_start_index_from_shapes`` and ``get_valid_ratio`` (the
functions the model uses), and a flatten written with ``torch.cat``.
"""
from __future__ import annotations

import torch

from ddetr_lib.course import check_function


def check_start_index(fn, quiet: bool = False):
    from ddetr_lib.kernels import level_start_index_from_shapes

    cases = [(torch.tensor([[4, 6]]),), (torch.tensor([[16, 20], [8, 10], [4, 5], [2, 3]]),),
             (torch.tensor([[3, 7], [5, 2]]),)]
    return check_function("start_index", fn, cases, level_start_index_from_shapes, quiet=quiet,
                          hint="Hint: level l starts after all pixels of the levels before it; the first starts at 0.")


def _padded_masks():
    cases = []
    for (H, W, sizes) in ((6, 8, [(6, 8), (3, 5)]), (5, 5, [(2, 5), (5, 1)]), (4, 9, [(4, 9), (4, 9)])):
        mask = torch.ones(len(sizes), H, W, dtype=torch.bool)
        for b, (h, w) in enumerate(sizes):
            mask[b, :h, :w] = False
        cases.append((mask,))
    return cases


def check_valid_ratio(fn, quiet: bool = False):
    from ddetr_lib.models.deformable_transformer import get_valid_ratio

    return check_function("valid_ratio", fn, _padded_masks(), get_valid_ratio, quiet=quiet,
                          hint="Hint: (valid columns / W, valid rows / H), x (width) first; True means padding.")


def _flatten_reference(maps):
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)


def check_flatten_levels(fn, quiet: bool = False):
    g = torch.Generator().manual_seed(7)
    cases = [([torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 2, 3, generator=g)],),
             ([torch.randn(1, 4, 3, 2, generator=g)],),
             ([torch.randn(2, 2, 5, 1, generator=g), torch.randn(2, 2, 1, 5, generator=g),
               torch.randn(2, 2, 2, 2, generator=g)],)]
    return check_function("flatten_levels", fn, cases, lambda maps: _flatten_reference(maps), quiet=quiet,
                          hint="Hint: (B, C, H, W) -> (B, H*W, C) per level (flatten, then transpose), then concatenate along dim 1.")
