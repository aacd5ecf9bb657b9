"""Exercise checks of notebook 09 (Deformable DETR, assembled).

    from ddetr_lib.course import checks_09
    checks_09.check_sigmoid_focal_loss(sigmoid_focal_loss)
    checks_09.check_box_from_point_reference(box_from_point_reference)
    checks_09.check_top_k_detections(top_k_detections)

Each check runs the learner's function on a few cases and compares it with an
independent reference (torchvision's focal loss, the library's post-processor).
"""
from __future__ import annotations

import torch
from torchvision.ops import sigmoid_focal_loss

from ddetr_lib.course import CheckResult, check_function
from ddetr_lib.models import PostProcessDeformable
from ddetr_lib.models.deformable_transformer import inverse_sigmoid


def _focal_cases():
    g = torch.Generator().manual_seed(9)
    cases = []
    for shape, alpha, gamma in [((2, 5, 3), 0.25, 2.0), ((1, 7, 4), 0.5, 1.0), ((3, 4, 2), 0.25, 0.0)]:
        logits = torch.randn(*shape, generator=g) * 3
        targets = (torch.rand(*shape, generator=g) < 0.3).float()
        cases.append((logits, targets, alpha, gamma))
    return cases


def check_sigmoid_focal_loss(fn) -> CheckResult:
    """fn(logits, targets, alpha, gamma) -> per-element focal loss, same shape as logits."""
    def reference(logits, targets, alpha, gamma):
        return sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none")

    return check_function("sigmoid focal loss", fn, _focal_cases(), reference,
                          hint="Per element: alpha_t * (1 - p_t)**gamma * BCE, with p_t = p where the target "
                               "is 1 and 1 - p where it is 0, and alpha_t = alpha for positives, 1 - alpha "
                               "for negatives. No reduction.")


def _reference_box_from_point(delta, reference):
    centre = delta[..., :2] + inverse_sigmoid(reference)
    return torch.cat([centre, delta[..., 2:]], -1).sigmoid()


def check_box_from_point_reference(fn) -> CheckResult:
    """fn(delta (B, Q, 4), reference (B, Q, 2)) -> boxes (B, Q, 4) (cx, cy, w, h) in (0, 1)."""
    g = torch.Generator().manual_seed(19)
    cases = [(torch.randn(2, 5, 4, generator=g), torch.rand(2, 5, 2, generator=g) * 0.9 + 0.05),
             (torch.zeros(1, 3, 4), torch.tensor([[[0.5, 0.5], [0.2, 0.7], [0.9, 0.1]]]))]
    return check_function("box from a point reference", fn, cases, _reference_box_from_point,
                          hint="Only the centre is relative to the reference point, and in inverse-sigmoid "
                               "space: sigmoid(delta_xy + inverse_sigmoid(ref)); w and h are sigmoid(delta_wh).")


def _reference_top_k(logits, boxes, k):
    out = PostProcessDeformable(num_select=k)({"pred_logits": logits[None], "pred_boxes": boxes[None]},
                                             torch.tensor([[1, 1]]))[0]
    prob = logits.sigmoid().flatten()
    index = torch.topk(prob, k).indices
    return out["scores"], out["labels"], torch.div(index, logits.shape[-1], rounding_mode="floor")


def check_top_k_detections(fn) -> CheckResult:
    """fn(logits (Q, C), boxes (Q, 4), k) -> (scores (k,), labels (k,), query index (k,)), best first."""
    g = torch.Generator().manual_seed(29)
    cases = []
    for q, c, k in [(6, 3, 5), (10, 4, 12), (4, 2, 8)]:
        cases.append((torch.randn(q, c, generator=g) * 2, torch.rand(q, 4, generator=g), k))
    return check_function("top-k detections over queries x classes", fn, cases, _reference_top_k,
                          hint="Flatten the (Q, C) sigmoid scores and take the k best of all Q*C: a query may "
                               "appear with two classes. label = index % C, query = index // C.")
