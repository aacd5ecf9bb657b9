"""Notebook 06's exercise checks pass the solutions and catch typical mistakes."""

import torch

from ddetr_lib.course import checks_06 as checks
from _solutions import load_solutions, todo

solutions = load_solutions("06")


def test_bilinear_sample():
    assert checks.check_bilinear_sample(solutions.bilinear_sample, quiet=True).passed is True
    assert checks.check_bilinear_sample(todo, quiet=True).passed is None

    def no_half_pixel(value, loc):  # forgets the -0.5: align_corners-style mistake
        H, W, _ = value.shape
        return solutions.bilinear_sample(value, loc + torch.tensor([0.5 / W, 0.5 / H], dtype=loc.dtype))

    def clamps_outside(value, loc):  # reads the border pixel instead of zero outside
        H, W, _ = value.shape
        lo = torch.tensor([0.5 / W, 0.5 / H], dtype=loc.dtype)
        return solutions.bilinear_sample(value, torch.maximum(torch.minimum(loc, 1 - lo), lo))

    def swaps_xy(value, loc):
        return solutions.bilinear_sample(value, loc.flip(0))

    for wrong in (no_half_pixel, clamps_outside, swaps_xy):
        assert checks.check_bilinear_sample(wrong, quiet=True).passed is False, wrong.__name__


def test_initial_offsets():
    assert checks.check_initial_offsets(solutions.initial_offsets, quiet=True).passed is True

    def unit_circle(M, K):  # forgets to scale the larger component to 1
        a = torch.arange(M) * (2 * torch.pi / M)
        d = torch.stack([a.cos(), a.sin()], -1)
        return d[:, None] * torch.arange(1, K + 1.0)[None, :, None]

    def from_zero(M, K):  # point k at k steps instead of k + 1
        return solutions.initial_offsets(M, K) * (torch.arange(K) / torch.arange(1, K + 1.0))[None, :, None]

    for wrong in (unit_circle, from_zero):
        assert checks.check_initial_offsets(wrong, quiet=True).passed is False, wrong.__name__


def test_offsets_to_locations():
    assert checks.check_offsets_to_locations(solutions.offsets_to_locations, quiet=True).passed is True

    def by_hw(ref, offsets, H, W):  # divides by (H, W): right only on square maps
        return ref[:, None, None, :] + offsets / torch.tensor([H, W], dtype=offsets.dtype)

    assert checks.check_offsets_to_locations(by_hw, quiet=True).passed is False
    assert checks.check_offsets_to_locations(todo, quiet=True).passed is None
