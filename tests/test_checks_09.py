"""The exercise checks of notebook 09 pass the solutions, fail plausible wrong answers
and report an untouched exercise as not attempted."""

import pytest
import torch
import torch.nn.functional as F

from ddetr_lib.course import checks_09
from _solutions import load_solutions, todo


@pytest.fixture(scope="module")
def sol():
    return load_solutions("09")


def test_focal_loss(sol):
    assert checks_09.check_sigmoid_focal_loss(sol.sigmoid_focal_loss).passed is True

    def alpha_everywhere(logits, targets, alpha=0.25, gamma=2.0):  # alpha on negatives too
        p = logits.sigmoid()
        p_t = p * targets + (1 - p) * (1 - targets)
        return alpha * (1 - p_t) ** gamma * F.binary_cross_entropy_with_logits(logits, targets, reduction="none")

    def plain_bce(logits, targets, alpha=0.25, gamma=2.0):
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")

    assert checks_09.check_sigmoid_focal_loss(alpha_everywhere).passed is False
    assert checks_09.check_sigmoid_focal_loss(plain_bce).passed is False
    assert checks_09.check_sigmoid_focal_loss(todo).passed is None


def test_box_from_point_reference(sol):
    assert checks_09.check_box_from_point_reference(sol.box_from_point_reference).passed is True

    def added_after_sigmoid(delta, reference):  # offset in box space instead of logit space
        return torch.cat([delta[..., :2].sigmoid() + reference - 0.5, delta[..., 2:].sigmoid()], -1)

    assert checks_09.check_box_from_point_reference(added_after_sigmoid).passed is False
    assert checks_09.check_box_from_point_reference(todo).passed is None


def test_top_k_detections(sol):
    assert checks_09.check_top_k_detections(sol.top_k_detections).passed is True

    def one_class_per_query(logits, boxes, k):  # DETR's habit: best class per query, then top-k
        best, labels = logits.sigmoid().max(-1)
        k = min(k, len(best))
        scores, query = best.topk(k)
        return scores, labels[query], query

    assert checks_09.check_top_k_detections(one_class_per_query).passed is False
    assert checks_09.check_top_k_detections(todo).passed is None
