"""Exercise checks of notebook 10 (iterative bounding box refinement).

    from ddetr_lib.course import checks_10
    checks_10.check_refine_box(refine_box)
    checks_10.check_box_sampling_locations(box_sampling_locations)
"""
from __future__ import annotations

import torch

from ddetr_lib.course import CheckResult, check_function
from ddetr_lib.models import MSDeformAttn
from ddetr_lib.models.deformable_transformer import inverse_sigmoid


def _reference_refine(delta, reference):
    if reference.shape[-1] == 4:
        return (delta + inverse_sigmoid(reference)).sigmoid()
    return torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], -1).sigmoid()


def check_refine_box(fn) -> CheckResult:
    """fn(delta (B, Q, 4), reference (B, Q, 4) box or (B, Q, 2) point) -> refined box (B, Q, 4)."""
    g = torch.Generator().manual_seed(10)
    cases = [(torch.randn(2, 4, 4, generator=g) * 0.5, torch.rand(2, 4, 4, generator=g) * 0.8 + 0.1),
             (torch.zeros(1, 2, 4), torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.05, 0.3]]])),
             (torch.randn(1, 3, 4, generator=g), torch.rand(1, 3, 2, generator=g) * 0.8 + 0.1)]
    return check_function("refine a box in inverse-sigmoid space", fn, cases, _reference_refine,
                          hint="new box = sigmoid(delta + inverse_sigmoid(reference)) for a 4-number box; for "
                               "a 2-number point only the centre gets the reference, w and h are sigmoid(delta).")


def _reference_locations(reference_box, offsets):
    """Where the library's MSDeformAttn samples around box references, its offsets fixed to
    ``offsets`` for every query (``MSDeformAttn.sampling_points``, the step its forward uses)."""
    m, l, p, _ = offsets.shape
    attn = MSDeformAttn(8 * m, l, m, p, backend="torch")  # d_model, levels, heads, points
    with torch.no_grad():
        attn.sampling_offsets.weight.zero_()
        attn.sampling_offsets.bias.copy_(offsets.flatten())
    shapes = torch.tensor([[6, 5]] * l)
    q = reference_box.shape[0]
    with torch.no_grad():
        locations, _ = attn.sampling_points(torch.zeros(1, q, 8 * m), reference_box[None, :, None].expand(1, q, l, 4),
                                            shapes)
    return locations[0]


def check_box_sampling_locations(fn) -> CheckResult:
    """fn(reference_box (Q, 4), offsets (M, L, P, 2)) -> sampling locations (Q, M, L, P, 2) as (x, y)."""
    g = torch.Generator().manual_seed(11)
    cases = [(torch.tensor([[0.5, 0.5, 0.4, 0.2], [0.3, 0.6, 0.1, 0.3]]), torch.randn(2, 2, 3, 2, generator=g)),
             (torch.rand(3, 4, generator=g) * 0.5 + 0.25, torch.randn(4, 1, 4, 2, generator=g) * 2)]
    return check_function("sampling locations around a box", fn, cases, _reference_locations,
                          hint="location = centre + offset / P * (w, h) / 2: the offsets are measured in half "
                               "box sizes, divided by the number of points P (no pixels involved).")
