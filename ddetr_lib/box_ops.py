"""Box utilities: thin, documented wrappers around ``torchvision.ops``.

DETR predicts boxes as ``(cx, cy, w, h)`` normalised to the image (all in [0, 1]),
because centre and size are what a sigmoid head can regress smoothly. The IoU-based
costs and losses need corner form ``(x0, y0, x1, y1)``; the COCO evaluator needs
``(x, y, w, h)`` in pixels. These helpers name each conversion once.

Generalised IoU (Rezatofighi et al., 2019) is IoU minus the fraction of the smallest
enclosing box ``C`` that is not covered by the union::

    GIoU(A, B) = IoU(A, B) - |C \\ (A u B)| / |C|      in [-1, 1]

Unlike IoU it still gives a gradient (and an ordering) when boxes do not overlap.
"""
from __future__ import annotations

import torch
from torchvision.ops import box_area, box_convert, box_iou, generalized_box_iou

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_xyxy_to_xywh",
    "box_area",
    "box_iou",
    "generalized_box_iou",
    "scale_boxes",
    "inverse_sigmoid",
]


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) centre/size ``(cx, cy, w, h)`` -> corners ``(x0, y0, x1, y1)``."""
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) corners ``(x0, y0, x1, y1)`` -> centre/size ``(cx, cy, w, h)``."""
    return box_convert(boxes, in_fmt="xyxy", out_fmt="cxcywh")


def box_xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) corners -> COCO's ``(x, y, w, h)`` (top-left corner and size)."""
    return box_convert(boxes, in_fmt="xyxy", out_fmt="xywh")


def scale_boxes(boxes: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
    """Scale normalised ``(x0, y0, x1, y1)`` boxes to pixels.

    boxes: (B, Q, 4) in [0, 1];  image_sizes: (B, 2) as ``(h, w)`` -> (B, Q, 4) pixels.
    """
    h, w = image_sizes.unbind(-1)
    scale = torch.stack([w, h, w, h], dim=-1).to(boxes.dtype)  # (B, 4)
    return boxes * scale[:, None, :]


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """log(x / (1 - x)), the inverse of ``sigmoid``; x and 1 - x are clamped to at least eps.

    Boxes in [0, 1] come out of a sigmoid; Deformable DETR refines a box by adding the box
    head's output to ``inverse_sigmoid(box)`` and taking the sigmoid again.
    """
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
