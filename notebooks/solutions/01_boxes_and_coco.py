"""Solutions to the exercises of 01_boxes_and_coco.ipynb (try them yourself first!)."""
import torch


def cxcywh_to_xyxy(boxes):
    """(..., 4) centre/size (cx, cy, w, h) -> corners (x0, y0, x1, y1)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def box_iou(boxes1, boxes2):
    """(N, 4), (M, 4) corner boxes -> (N, M) intersection over union of every pair."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])  # (N,)
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])  # (M,)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)  # (N, M, 2): 0 where the boxes do not overlap
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    union = area1[:, None] + area2[None, :] - inter
    return inter / union


def generalized_box_iou(boxes1, boxes2):
    """(N, 4), (M, 4) corner boxes -> (N, M) generalised IoU, in [-1, 1]."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    wh = (torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:]) - torch.max(boxes1[:, None, :2], boxes2[None, :, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    iou = inter / union
    # C: the smallest box that encloses both boxes of the pair.
    enclosing_wh = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:]) - torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    enclosing = enclosing_wh[..., 0] * enclosing_wh[..., 1]  # (N, M)
    return iou - (enclosing - union) / enclosing


def padding_mask(sizes):
    """sizes: list of (h, w) -> (B, H_max, W_max) bool mask, True on padding."""
    h_max = max(h for h, w in sizes)
    w_max = max(w for h, w in sizes)
    mask = torch.ones(len(sizes), h_max, w_max, dtype=torch.bool)
    for i, (h, w) in enumerate(sizes):
        mask[i, :h, :w] = False
    return mask
