"""The exercise checks of notebook 01 pass the solutions, fail plausible mistakes, and report a stub as TODO."""

import pytest
import torch

from ddetr_lib.course import checks_01
from _solutions import assert_check_behaves, load_solutions


S = load_solutions("01")


# --- plausible wrong answers: the mistakes learners make -------------------------------
def cxcywh_full_size(boxes):  # forgets the 1/2
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w, cy - h, cx + w, cy + h], -1)


def cxcywh_to_xywh(boxes):  # returns COCO's top-left corner + size, not the other corner
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, w, h], -1)


def iou_without_clamp(b1, b2):  # disjoint boxes get a "negative overlap"
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    wh = torch.min(b1[:, None, 2:], b2[None, :, 2:]) - torch.max(b1[:, None, :2], b2[None, :, :2])
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None] - inter)


def iou_union_is_sum(b1, b2):  # counts the overlap twice
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    wh = (torch.min(b1[:, None, 2:], b2[None, :, 2:]) - torch.max(b1[:, None, :2], b2[None, :, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None])


def iou_diagonal(b1, b2):  # pairs box i with box i only (what torchvision's *paired* functions do)
    return S.box_iou(b1, b2).diagonal()[:, None] if len(b1) == len(b2) else S.box_iou(b1, b2)[:, :1]


def giou_with_union_as_c(b1, b2):  # uses the union where the enclosing box belongs: always equals IoU
    iou = S.box_iou(b1, b2)
    return iou - 0 * iou


def giou_enclosing_from_intersection_corners(b1, b2):  # min/max swapped for the enclosing box
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    wh = (torch.min(b1[:, None, 2:], b2[None, :, 2:]) - torch.max(b1[:, None, :2], b2[None, :, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None] - inter
    c_wh = (torch.min(b1[:, None, 2:], b2[None, :, 2:]) - torch.max(b1[:, None, :2], b2[None, :, :2])).abs()
    c = c_wh[..., 0] * c_wh[..., 1] + 1e-9
    return inter / union - (c - union) / c


def mask_inverted(sizes):  # True on the image instead of on the padding
    return ~S.padding_mask(sizes)


def mask_transposed(sizes):  # (w, h) read as (h, w)
    return S.padding_mask([(w, h) for h, w in sizes])


CHECKS = [
    ("check_cxcywh_to_xyxy", S.cxcywh_to_xyxy, [cxcywh_full_size, cxcywh_to_xywh]),
    ("check_box_iou", S.box_iou, [iou_without_clamp, iou_union_is_sum, iou_diagonal]),
    ("check_generalized_box_iou", S.generalized_box_iou,
     [giou_with_union_as_c, giou_enclosing_from_intersection_corners, S.box_iou]),
    ("check_padding_mask", S.padding_mask, [mask_inverted, mask_transposed]),
]


@pytest.mark.parametrize("name, solution, wrongs", CHECKS, ids=[c[0] for c in CHECKS])
def test_check_passes_solution_fails_mistakes_and_reports_todo(name, solution, wrongs):
    assert_check_behaves(getattr(checks_01, name), solution, wrongs)


def test_failure_message_names_the_case(capsys):
    result = checks_01.check_cxcywh_to_xyxy(cxcywh_full_size)
    assert "case 0" in result.message and "[FAIL]" in capsys.readouterr().out


def test_solutions_agree_with_torchvision_on_hand_computed_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    # overlap 1, union 7, enclosing box 9: IoU 1/7, GIoU 1/7 - 2/9
    torch.testing.assert_close(S.box_iou(a, b), torch.tensor([[1 / 7]]))
    torch.testing.assert_close(S.generalized_box_iou(a, b), torch.tensor([[1 / 7 - 2 / 9]]))
