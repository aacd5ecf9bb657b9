"""Exercise checks of notebook 11 (two-stage Deformable DETR).

    from ddetr_lib.course import checks_11
    checks_11.check_token_proposals(token_proposals)
    checks_11.check_select_proposals(select_proposals)
"""
from __future__ import annotations

import torch

from ddetr_lib.course import CheckResult, check_function
from ddetr_lib.models.deformable_transformer import encoder_proposals


def _reference_proposals(spatial_shapes):
    s = int((spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum())
    proposals, _ = encoder_proposals(torch.zeros(1, s, dtype=torch.bool), spatial_shapes)
    return proposals[0].sigmoid()  # back from inverse-sigmoid space


def check_token_proposals(fn) -> CheckResult:
    """fn(spatial_shapes (L, 2) rows (H, W)) -> (S, 4) boxes (cx, cy, w, h), level after level."""
    cases = [(torch.tensor([[4, 6], [2, 3]]),), (torch.tensor([[8, 8], [4, 4], [2, 2]]),), (torch.tensor([[3, 5]]),)]
    return check_function("one proposal per token", fn, cases, _reference_proposals,
                          hint="Token (i, j) of level l proposes the box centred on its pixel centre "
                               "((j + 0.5) / W, (i + 0.5) / H), of width and height 0.05 * 2**l; tokens go "
                               "row by row, level after level (as the flattened sequence).")


def _reference_select(enc_logits, enc_boxes_unact, k):
    index = torch.topk(enc_logits[:, 0], k).indices
    return enc_boxes_unact[index].sigmoid()


def check_select_proposals(fn) -> CheckResult:
    """fn(enc_logits (S, C), enc_boxes_unact (S, 4), k) -> (k, 4) reference boxes, best first."""
    g = torch.Generator().manual_seed(111)
    cases = [(torch.randn(30, 3, generator=g), torch.randn(30, 4, generator=g), 5),
             (torch.randn(12, 5, generator=g), torch.randn(12, 4, generator=g), 12)]
    return check_function("select the top-k proposals", fn, cases, _reference_select,
                          hint="The encoder's classifier is trained class-agnostic (every object is 'class 0'), "
                               "so rank by logit 0 alone; the boxes are still unsigmoided (sigmoid them).")
