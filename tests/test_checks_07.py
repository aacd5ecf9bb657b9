"""Notebook 07's exercise checks pass the solutions and catch typical mistakes."""

import torch

from ddetr_lib.course import checks_07 as checks
from _solutions import load_solutions, todo

solutions = load_solutions("07")


def test_start_index():
    assert checks.check_start_index(solutions.start_index, quiet=True).passed is True
    assert checks.check_start_index(todo, quiet=True).passed is None

    def inclusive_cumsum(shapes):  # the end of each level instead of its start
        return (shapes[:, 0] * shapes[:, 1]).cumsum(0)

    assert checks.check_start_index(inclusive_cumsum, quiet=True).passed is False


def test_valid_ratio():
    assert checks.check_valid_ratio(solutions.valid_ratio, quiet=True).passed is True

    def h_first(mask):  # (h, w) instead of (w, h)
        return solutions.valid_ratio(mask).flip(-1)

    def counts_padding(mask):  # forgets that True means padding
        _, H, W = mask.shape
        return torch.stack([mask[:, 0, :].sum(1) / W, mask[:, :, 0].sum(1) / H], -1).float()

    for wrong in (h_first, counts_padding):
        assert checks.check_valid_ratio(wrong, quiet=True).passed is False, wrong.__name__


def test_flatten_levels():
    assert checks.check_flatten_levels(solutions.flatten_levels, quiet=True).passed is True

    def column_major(maps):  # reshapes (B, C, H, W) straight to (B, H*W, C): scrambles channels and pixels
        return torch.cat([m.reshape(m.shape[0], -1, m.shape[1]) for m in maps], 1)

    assert checks.check_flatten_levels(column_major, quiet=True).passed is False
