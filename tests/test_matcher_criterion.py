"""Hungarian matcher against brute force, set losses against direct formulas."""
import itertools
import math

import pytest
import torch

from ddetr_lib.config import get_config
from ddetr_lib.models import build_criterion
from ddetr_lib.models.criterion import SetCriterion, build_weight_dict
from ddetr_lib.models.matcher import HungarianMatcher


# ----------------------------------------------------------------------------- independent references
def xyxy(box):
    cx, cy, w, h = box
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def giou_ref(a, b):
    """GIoU of two (cx, cy, w, h) boxes, written out with plain floats."""
    ax0, ay0, ax1, ay1 = xyxy(a)
    bx0, by0, bx1, by1 = xyxy(b)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    enclosing = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (enclosing - union) / enclosing


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def class_cost_ref(logits_row, label, focal, alpha=0.25, gamma=2.0):
    if focal:
        p = sigmoid(logits_row[label])
        pos = alpha * (1 - p) ** gamma * -math.log(p + 1e-8)
        neg = (1 - alpha) * p ** gamma * -math.log(1 - p + 1e-8)
        return pos - neg
    z = sum(math.exp(v) for v in logits_row)
    return -math.exp(logits_row[label]) / z


def pair_cost_ref(logits_row, box, label, tbox, weights, focal):
    wc, wb, wg = weights
    l1 = sum(abs(p - t) for p, t in zip(box, tbox))
    return wc * class_cost_ref(logits_row, label, focal) + wb * l1 - wg * giou_ref(box, tbox)


def brute_force_min(logits, boxes, labels, tboxes, weights, focal):
    """Minimum total cost over every injective assignment of targets to queries."""
    q, n = len(logits), len(labels)
    cost = [[pair_cost_ref(logits[i], boxes[i], labels[j], tboxes[j], weights, focal) for j in range(n)]
            for i in range(q)]
    best = min(sum(cost[perm[j]][j] for j in range(n)) for perm in itertools.permutations(range(q), n))
    return best, cost


def random_case(g, q, n, num_logits, num_classes):
    logits = torch.randn(q, num_logits, generator=g, dtype=torch.float64) * 2
    boxes = torch.cat([torch.rand(q, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2,
                       torch.rand(q, 2, generator=g, dtype=torch.float64) * 0.3 + 0.05], 1)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    tboxes = torch.cat([torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2,
                        torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.3 + 0.05], 1)
    return logits, boxes, labels, tboxes


# ----------------------------------------------------------------------------- matcher
@pytest.mark.parametrize("focal", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matcher_reaches_brute_force_minimum(focal, seed):
    g = torch.Generator().manual_seed(seed)
    num_classes = 5
    weights = (2.0, 5.0, 2.0) if focal else (1.0, 5.0, 2.0)
    logits, boxes, labels, tboxes = random_case(g, 4, 3, num_classes if focal else num_classes + 1, num_classes)
    matcher = HungarianMatcher(*weights, focal_loss=focal)
    (i, j), = matcher({"pred_logits": logits[None], "pred_boxes": boxes[None]},
                      [{"labels": labels, "boxes": tboxes}])
    assert i.dtype == torch.int64 and j.dtype == torch.int64
    assert len(i) == len(j) == 3 and len(set(i.tolist())) == 3 and sorted(j.tolist()) == [0, 1, 2]
    best, cost = brute_force_min(logits.tolist(), boxes.tolist(), labels.tolist(), tboxes.tolist(), weights, focal)
    total = sum(cost[a][b] for a, b in zip(i.tolist(), j.tolist()))
    assert total == pytest.approx(best, abs=1e-9)


def test_matcher_batch_with_an_empty_image():
    g = torch.Generator().manual_seed(3)
    weights = (1.0, 5.0, 2.0)
    q, num_classes = 4, 3
    cases = [random_case(g, q, n, num_classes + 1, num_classes) for n in (3, 0, 2)]
    outputs = {"pred_logits": torch.stack([c[0] for c in cases]), "pred_boxes": torch.stack([c[1] for c in cases])}
    targets = [{"labels": c[2], "boxes": c[3]} for c in cases]
    indices = HungarianMatcher(*weights)(outputs, targets)
    assert [len(i) for i, _ in indices] == [3, 0, 2]
    for (i, j), (logits, boxes, labels, tboxes) in zip(indices, cases):
        if len(labels) == 0:
            assert i.numel() == 0 and j.numel() == 0 and i.dtype == torch.int64
            continue
        best, cost = brute_force_min(logits.tolist(), boxes.tolist(), labels.tolist(), tboxes.tolist(), weights,
                                     False)
        assert sum(cost[a][b] for a, b in zip(i.tolist(), j.tolist())) == pytest.approx(best, abs=1e-9)


def test_matcher_all_images_empty():
    outputs = {"pred_logits": torch.randn(2, 5, 4), "pred_boxes": torch.rand(2, 5, 4) * 0.5 + 0.1}
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2
    indices = HungarianMatcher(1, 5, 2)(outputs, targets)
    assert all(i.numel() == 0 and j.numel() == 0 for i, j in indices)


def test_matcher_obvious_case():
    # Query 2 sits exactly on target 0 with the right class; query 0 on target 1.
    boxes = torch.tensor([[[0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 0.9, 0.9], [0.2, 0.2, 0.1, 0.1]]])
    logits = torch.tensor([[[0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 0.0]]])
    targets = [{"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2]])}]
    (i, j), = HungarianMatcher(1, 5, 2)({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert dict(zip(j.tolist(), i.tolist())) == {0: 2, 1: 0}


def test_matcher_refuses_non_finite_predictions():
    outputs = {"pred_logits": torch.full((1, 3, 4), float("nan")), "pred_boxes": torch.rand(1, 3, 4)}
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    with pytest.raises(ValueError, match="diverged"):
        HungarianMatcher(1, 5, 2)(outputs, targets)


# ----------------------------------------------------------------------------- losses
class FixedMatcher:
    """Test double: returns a given assignment, so the losses can be checked by hand."""

    def __init__(self, indices):
        self.indices = [(torch.tensor(i, dtype=torch.int64), torch.tensor(j, dtype=torch.int64)) for i, j in indices]

    def __call__(self, outputs, targets):
        return self.indices


@pytest.fixture
def loss_case():
    g = torch.Generator().manual_seed(7)
    num_classes, q = 3, 4
    outputs = {
        "pred_logits": torch.randn(2, q, num_classes + 1, generator=g, dtype=torch.float64),
        "pred_boxes": torch.cat([torch.rand(2, q, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2,
                                 torch.rand(2, q, 2, generator=g, dtype=torch.float64) * 0.3 + 0.05], -1),
    }
    targets = [
        {"labels": torch.tensor([2, 0]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.1], [0.6, 0.6, 0.3, 0.3]],
                                                                dtype=torch.float64)},
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.2]], dtype=torch.float64)},
    ]
    indices = [([3, 1], [0, 1]), ([2], [0])]  # (query, target) pairs per image
    return num_classes, outputs, targets, indices


def matched_pairs(outputs, targets, indices):
    for b, (qs, ts) in enumerate(indices):
        for qi, tj in zip(qs, ts):
            yield b, qi, tj


def test_detr_losses_against_formulas(loss_case):
    num_classes, outputs, targets, indices = loss_case
    eos = 0.1
    crit = SetCriterion(num_classes, FixedMatcher(indices), {"loss_ce": 1}, eos_coef=eos)
    losses = crit(outputs, targets)
    num_boxes = 3

    # Cross entropy with class weights w (1 for objects, eos for "no object"):
    # sum_q w[y_q] * -log softmax(x_q)[y_q] / sum_q w[y_q].
    logits = outputs["pred_logits"].tolist()
    target_class = {(b, qi): targets[b]["labels"][tj].item() for b, qi, tj in matched_pairs(outputs, targets, indices)}
    num, den = 0.0, 0.0
    for b in range(2):
        for qi in range(4):
            y = target_class.get((b, qi), num_classes)
            w = 1.0 if y < num_classes else eos
            row = logits[b][qi]
            log_z = math.log(sum(math.exp(v) for v in row))
            num += w * (log_z - row[y])
            den += w
    # (empty_weight is a float32 buffer: eos_coef carries float32 rounding)
    assert losses["loss_ce"].item() == pytest.approx(num / den, rel=1e-7)

    l1, giou_loss = 0.0, 0.0
    for b, qi, tj in matched_pairs(outputs, targets, indices):
        p, t = outputs["pred_boxes"][b, qi].tolist(), targets[b]["boxes"][tj].tolist()
        l1 += sum(abs(x - y) for x, y in zip(p, t))
        giou_loss += 1 - giou_ref(p, t)
    assert losses["loss_bbox"].item() == pytest.approx(l1 / num_boxes, rel=1e-10)
    assert losses["loss_giou"].item() == pytest.approx(giou_loss / num_boxes, rel=1e-10)

    # class_error: 100 - accuracy of argmax over the matched queries.
    correct = sum(int(max(range(num_classes + 1), key=lambda c: logits[b][qi][c]) == targets[b]["labels"][tj].item())
                  for b, qi, tj in matched_pairs(outputs, targets, indices))
    assert losses["class_error"].item() == pytest.approx(100 - 100 * correct / num_boxes)

    # cardinality: queries whose argmax is not "no object", vs the number of targets.
    pred_counts = [sum(int(max(range(num_classes + 1), key=lambda c: logits[b][qi][c]) != num_classes)
                       for qi in range(4)) for b in range(2)]
    expected_card = (abs(pred_counts[0] - 2) + abs(pred_counts[1] - 1)) / 2
    assert losses["cardinality_error"].item() == pytest.approx(expected_card)


def test_focal_loss_against_formula(loss_case):
    num_classes, outputs, targets, indices = loss_case
    outputs = {"pred_logits": outputs["pred_logits"][..., :num_classes], "pred_boxes": outputs["pred_boxes"]}
    alpha, gamma = 0.25, 2.0
    crit = SetCriterion(num_classes, FixedMatcher(indices), {"loss_ce": 2}, focal_loss=True, focal_alpha=alpha)
    losses = crit(outputs, targets)
    assert not hasattr(crit, "empty_weight")
    # Official normalisation: elementwise focal loss, mean over queries, sum, / num_boxes, x Q
    # = (sum over every batch, query and class) / num_boxes.
    target_class = {(b, qi): targets[b]["labels"][tj].item() for b, qi, tj in matched_pairs(outputs, targets, indices)}
    total = 0.0
    for b in range(2):
        for qi in range(4):
            for c in range(num_classes):
                t = 1.0 if target_class.get((b, qi)) == c else 0.0
                p = sigmoid(outputs["pred_logits"][b, qi, c].item())
                ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
                p_t = p * t + (1 - p) * (1 - t)
                alpha_t = alpha * t + (1 - alpha) * (1 - t)
                total += alpha_t * ce * (1 - p_t) ** gamma
    assert losses["loss_ce"].item() == pytest.approx(total / 3, rel=1e-10)
    # Box losses are shared with DETR.
    l1 = sum(sum(abs(x - y) for x, y in zip(outputs["pred_boxes"][b, qi].tolist(), targets[b]["boxes"][tj].tolist()))
             for b, qi, tj in matched_pairs(outputs, targets, indices))
    assert losses["loss_bbox"].item() == pytest.approx(l1 / 3, rel=1e-10)


def test_aux_loss_keys_and_weight_dict():
    cfg = get_config("toy_detr", num_classes=4, dec_layers=3)
    crit = build_criterion(cfg)
    assert set(crit.weight_dict) == {f"{k}{s}" for k in ("loss_ce", "loss_bbox", "loss_giou") for s in ("", "_0", "_1")}
    assert crit.weight_dict["loss_ce"] == cfg.cls_loss_coef
    assert crit.weight_dict["loss_bbox_1"] == cfg.bbox_loss_coef
    assert crit.weight_dict["loss_giou_0"] == cfg.giou_loss_coef
    assert torch.equal(crit.empty_weight, torch.tensor([1.0, 1.0, 1.0, 1.0, cfg.eos_coef]))

    g = torch.Generator().manual_seed(0)

    def head():
        return {"pred_logits": torch.randn(2, 5, 5, generator=g), "pred_boxes": torch.rand(2, 5, 4, generator=g) * 0.5 + 0.2}

    outputs = head()
    outputs["aux_outputs"] = [head(), head()]
    targets = [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2]])},
               {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.4, 0.6, 0.3, 0.3]])}]
    losses = crit(outputs, targets)
    base = {"loss_ce", "loss_bbox", "loss_giou", "cardinality_error"}
    expected = base | {"class_error"} | {f"{k}_{i}" for k in base for i in (0, 1)}
    assert set(losses) == expected
    # Each aux head is matched and scored on its own: same as the criterion on that head alone.
    alone = crit(outputs["aux_outputs"][1], targets)
    for k in ("loss_ce", "loss_bbox", "loss_giou"):
        torch.testing.assert_close(losses[f"{k}_1"], alone[k])
    total = sum(losses[k] * w for k, w in crit.weight_dict.items() if k in losses)
    assert torch.isfinite(total)

    no_aux = build_weight_dict(get_config("toy_detr", aux_loss=False))
    assert set(no_aux) == {"loss_ce", "loss_bbox", "loss_giou"}


def test_losses_with_no_targets():
    crit = build_criterion(get_config("toy_detr", num_classes=3))
    outputs = {"pred_logits": torch.randn(2, 4, 4, requires_grad=True), "pred_boxes": torch.rand(2, 4, 4)}
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2
    losses = crit(outputs, targets)
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0
    # Every query must say "no object": plain CE toward the last class (weights all eos_coef cancel out).
    expected = torch.nn.functional.cross_entropy(outputs["pred_logits"].reshape(-1, 4), torch.full((8,), 3))
    torch.testing.assert_close(losses["loss_ce"], expected)
    losses["loss_ce"].backward()
    assert outputs["pred_logits"].grad is not None
