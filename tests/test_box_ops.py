"""Box conversions and GIoU against hand-computed values."""
import pytest
import torch

from ddetr_lib import box_ops


def test_cxcywh_to_xyxy_by_hand():
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.2, 0.2, 0.2]])
    expected = torch.tensor([[0.4, 0.3, 0.6, 0.7], [0.0, 0.1, 0.2, 0.3]])
    torch.testing.assert_close(box_ops.box_cxcywh_to_xyxy(boxes), expected)


def test_xyxy_to_cxcywh_and_xywh_by_hand():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    torch.testing.assert_close(box_ops.box_xyxy_to_cxcywh(boxes), torch.tensor([[20.0, 40.0, 20.0, 40.0]]))
    torch.testing.assert_close(box_ops.box_xyxy_to_xywh(boxes), torch.tensor([[10.0, 20.0, 20.0, 40.0]]))


def test_conversions_round_trip_and_keep_leading_dims():
    g = torch.Generator().manual_seed(0)
    boxes = torch.rand(2, 5, 4, generator=g)
    xyxy = box_ops.box_cxcywh_to_xyxy(boxes)
    assert xyxy.shape == (2, 5, 4)
    torch.testing.assert_close(box_ops.box_xyxy_to_cxcywh(xyxy), boxes)


@pytest.mark.parametrize(
    "a, b, expected",
    [
        # identical boxes: IoU 1, the enclosing box is the box itself
        ([0.0, 0.0, 2.0, 3.0], [0.0, 0.0, 2.0, 3.0], 1.0),
        # disjoint, side by side: IoU 0, enclosing 3x1 = 3, union 2 -> 0 - (3 - 2) / 3
        ([0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0], -1.0 / 3.0),
        # far apart on a diagonal: union 2, enclosing 10x10 = 100 -> -(100 - 2) / 100
        ([0.0, 0.0, 1.0, 1.0], [9.0, 9.0, 10.0, 10.0], -0.98),
        # nested: inner 2x2 inside 4x4: IoU 4/16, enclosing = outer box, so GIoU = IoU
        ([0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 3.0, 3.0], 0.25),
        # partial overlap: inter 1, union 7, enclosing 3x3 = 9 -> 1/7 - (9 - 7) / 9
        ([0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], 1.0 / 7.0 - 2.0 / 9.0),
    ],
)
def test_generalized_box_iou_by_hand(a, b, expected):
    giou = box_ops.generalized_box_iou(torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64))
    assert giou.shape == (1, 1)
    assert giou.item() == pytest.approx(expected, abs=1e-12)


def test_generalized_box_iou_is_pairwise():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0], [1.0, 1.0, 3.0, 3.0]])
    giou = box_ops.generalized_box_iou(a, b)
    assert giou.shape == (2, 3)
    # a[0] vs b[2]: touching at a corner: union 5, enclosing 3x3 -> -(9 - 5) / 9
    assert giou[0, 2].item() == pytest.approx(-4.0 / 9.0, abs=1e-6)
    # a[1] vs b[0]: b[0] nested in a[1]: IoU 1/4
    assert giou[1, 0].item() == pytest.approx(0.25, abs=1e-6)


def test_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    assert box_ops.box_iou(a, b).item() == pytest.approx(1.0 / 7.0)
    assert box_ops.box_area(b).item() == pytest.approx(4.0)


def test_scale_boxes_uses_h_w_order():
    boxes = torch.tensor([[[0.4, 0.3, 0.6, 0.7]], [[0.0, 0.0, 1.0, 1.0]]])  # (B=2, Q=1, 4)
    sizes = torch.tensor([[100, 200], [10, 20]])  # (h, w)
    expected = torch.tensor([[[80.0, 30.0, 120.0, 70.0]], [[0.0, 0.0, 20.0, 10.0]]])
    torch.testing.assert_close(box_ops.scale_boxes(boxes, sizes), expected)


def test_inverse_sigmoid():
    from ddetr_lib.box_ops import inverse_sigmoid
    x = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    torch.testing.assert_close(inverse_sigmoid(x), torch.logit(x))
    torch.testing.assert_close(inverse_sigmoid(x).sigmoid(), x)
    ends = inverse_sigmoid(torch.tensor([0.0, 1.0]))
    assert torch.isfinite(ends).all() and ends[0] < -11 and ends[1] > 11  # log(1e-5) ~ -11.5
