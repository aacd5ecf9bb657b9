"""Exercise checks for ``notebooks/01_boxes_and_coco.ipynb``.

Each ``check_*`` takes the learner's function, runs it on a few small cases (easy
ones first, then the corner cases where mistakes show) and compares with
torchvision or the library:

    from ddetr_lib.course import checks_01
    checks_01.check_cxcywh_to_xyxy(my_cxcywh_to_xyxy)   # prints PASS / FAIL (+ hint) / TODO

Solutions: ``notebooks/solutions/01_boxes_and_coco.py``.
"""
from __future__ import annotations

import torch
from torchvision.ops import box_convert, box_iou, generalized_box_iou

from ddetr_lib.course import CheckResult, check_function
from ddetr_lib.utils import nested_tensor_from_tensor_list


def _xyxy(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def _random_xyxy(n: int, seed: int) -> torch.Tensor:
    """n valid (x0 < x1, y0 < y1) boxes in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    cxcy = torch.rand(n, 2, generator=g)
    wh = torch.rand(n, 2, generator=g) * 0.5 + 0.02
    return box_convert(torch.cat([cxcy, wh], 1), "cxcywh", "xyxy")


# A box, the same box, a box inside it, an overlapping one, a disjoint one, one that only touches it.
_BOXES_A = _xyxy((0, 0, 2, 2), (1, 1, 3, 4))
_BOXES_B = _xyxy((0, 0, 2, 2), (0.5, 0.5, 1.5, 1.5), (1, 0, 3, 2), (5, 5, 6, 7), (2, 0, 3, 2))


def check_cxcywh_to_xyxy(fn) -> CheckResult:
    """``fn(boxes (..., 4) cx, cy, w, h) -> (..., 4) x0, y0, x1, y1``."""
    cases = [
        (torch.tensor([[0.5, 0.5, 0.2, 0.4]]),),
        (torch.tensor([[10.0, 20.0, 4.0, 6.0], [0.0, 0.0, 2.0, 2.0]]),),
        (torch.rand(2, 3, 4),),  # a batch of boxes: (B, Q, 4) as the model predicts them
        (torch.zeros(0, 4),),  # no boxes at all (an image without objects)
    ]
    return check_function(
        "cxcywh -> xyxy", fn, cases, lambda b: box_convert(b, "cxcywh", "xyxy"),
        hint="Hint: a corner is the centre minus HALF the size (x0 = cx - w / 2); "
             "work on the last axis (boxes[..., 0]) so that any leading shape works.")


def check_box_iou(fn) -> CheckResult:
    """``fn(boxes1 (N, 4) xyxy, boxes2 (M, 4) xyxy) -> (N, M)`` IoU of every pair."""
    cases = [
        (_xyxy((0, 0, 2, 2)), _xyxy((1, 1, 3, 3))),  # 1 / 7
        (_BOXES_A, _BOXES_B),
        (_random_xyxy(5, 0), _random_xyxy(3, 1)),
    ]
    return check_function(
        "pairwise IoU", fn, cases, box_iou,
        hint="Hint: the overlap's width is (min(x1) - max(x0)) clamped at 0 (disjoint boxes overlap by 0, "
             "not by a negative amount); union = area1 + area2 - intersection; broadcast (N, 1, .) against (1, M, .).")


def check_generalized_box_iou(fn) -> CheckResult:
    """``fn(boxes1 (N, 4) xyxy, boxes2 (M, 4) xyxy) -> (N, M)`` generalised IoU of every pair."""
    cases = [
        (_xyxy((0, 0, 2, 2)), _xyxy((1, 1, 3, 3))),  # 1/7 - 2/9
        (_BOXES_A, _BOXES_B),
        (_xyxy((0, 0, 1, 1)), _xyxy((3, 0, 4, 1), (10, 0, 11, 1))),  # disjoint: GIoU tells near from far
        (_random_xyxy(4, 2), _random_xyxy(6, 3)),
    ]
    return check_function(
        "generalised IoU", fn, cases, generalized_box_iou,
        hint="Hint: GIoU = IoU - (C - union) / C, where C is the area of the smallest box enclosing BOTH boxes "
             "(min of the x0, y0; max of the x1, y1) -- the enclosing box, not the union.")


def _reference_mask(sizes):
    images = [torch.zeros(3, h, w) for h, w in sizes]
    return nested_tensor_from_tensor_list(images).mask


def check_padding_mask(fn) -> CheckResult:
    """``fn(sizes: list of (h, w)) -> (B, H_max, W_max)`` bool, True on padding."""
    cases = [
        ([(2, 3)],),  # one image: no padding at all
        ([(2, 3), (3, 2)],),
        ([(4, 6), (2, 2), (5, 1)],),
    ]
    return check_function(
        "padding mask", fn, cases, _reference_mask,
        hint="Hint: start from torch.ones(B, H_max, W_max, dtype=torch.bool) and set mask[i, :h, :w] = False "
             "(True marks padding, the pixels that are NOT image).")
