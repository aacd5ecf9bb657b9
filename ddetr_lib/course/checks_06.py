"""Exercise checks for notebook 06 (deformable attention).

Each check compares the learner's function with an independent reference: PyTorch's
``grid_sample`` for the bilinear sample, the library's ``MSDeformAttn`` initialisation
for the rays, and the library's module arithmetic for the offset normalisation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ddetr_lib.course import check_function


def _grid_sample_one(value, loc):
    image = value.permute(2, 0, 1)[None]  # (1, D, H, W)
    grid = (2 * loc - 1).view(1, 1, 1, 2)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, :, 0, 0]


def check_bilinear_sample(fn, quiet: bool = False):
    g = torch.Generator().manual_seed(6)
    value = torch.randn(5, 7, 3, dtype=torch.float64, generator=g)
    locs = [(0.5, 0.5), (0.5 / 7, 0.5 / 5), (0.3, 0.8), (0.0, 0.5), (1.0, 0.99), (-0.05, 0.4), (1.2, 1.2),
            (0.999, 0.001)]
    cases = [(value, torch.tensor(loc, dtype=torch.float64)) for loc in locs]
    cases.append((torch.randn(1, 1, 4, dtype=torch.float64, generator=g), torch.tensor([0.7, 0.2], dtype=torch.float64)))
    return check_function("bilinear_sample", fn, cases, _grid_sample_one, quiet=quiet,
                          hint="Hint: u = x*W - 0.5, v = y*H - 0.5 (x is the column); a corner outside the map counts 0.")


def _library_initial_offsets(n_heads, n_points):
    from ddetr_lib.models import MSDeformAttn

    module = MSDeformAttn(8 * n_heads, 1, n_heads, n_points)
    return module.sampling_offsets.bias.detach().view(n_heads, 1, n_points, 2)[:, 0]


def check_initial_offsets(fn, quiet: bool = False):
    cases = [(8, 4), (4, 3), (1, 2), (6, 1)]
    return check_function("initial_offsets", fn, cases, _library_initial_offsets, quiet=quiet,
                          hint="Hint: direction (cos, sin) of 2*pi*m/M divided by its larger |component|; "
                               "point k is (k+1) times that.")


def _reference_locations(ref, offsets, H, W):
    return ref[:, None, None, :] + offsets / torch.tensor([W, H], dtype=offsets.dtype)


def check_offsets_to_locations(fn, quiet: bool = False):
    g = torch.Generator().manual_seed(60)
    cases = []
    for (H, W) in ((6, 8), (5, 5), (3, 11)):
        cases.append((torch.rand(4, 2, generator=g), torch.randn(4, 2, 3, 2, generator=g) * 3, H, W))
    return check_function("offsets_to_locations", fn, cases, _reference_locations, quiet=quiet,
                          hint="Hint: divide the x offset by the width W and the y offset by the height H.")
