"""Hungarian matching: which query is responsible for which target object.

DETR predicts a fixed-size SET of Q boxes, while an image has N <= Q objects. Before
any loss can be computed, each target must be assigned to exactly one query. The
assignment is the one of minimum total cost (the Hungarian algorithm,
``scipy.optimize.linear_sum_assignment``), with a pairwise cost that mixes

    class:  -p(query i says class of target j)                     (DETR, softmax)
            or a focal-loss-shaped score on sigmoid probabilities  (Deformable DETR)
    box:    L1 distance between (cx, cy, w, h) vectors
    GIoU:   -GIoU between the boxes in corner form

    C[i, j] = cost_class * class + cost_bbox * L1 + cost_giou * (-GIoU)

The Q - N unmatched queries are then trained to predict "no object". The matching
is not differentiated through (it runs under ``torch.no_grad``).
"""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from ddetr_lib.box_ops import box_cxcywh_to_xyxy, generalized_box_iou


class HungarianMatcher(nn.Module):
    """Optimal one-to-one assignment between predictions and targets, per image.

    ``focal_loss=False``: DETR's class cost, ``-softmax(logits)[target class]``.
    ``focal_loss=True``: Deformable DETR's class cost on ``p = sigmoid(logits)``::

        pos = alpha * (1 - p) ** gamma * -log(p + 1e-8)          (cost of calling it positive)
        neg = (1 - alpha) * p ** gamma * -log(1 - p + 1e-8)      (cost of calling it negative)
        class cost = pos[target class] - neg[target class]
    """

    def __init__(self, cost_class: float = 1, cost_bbox: float = 1, cost_giou: float = 1,
                 focal_loss: bool = False, focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("cost_class, cost_bbox, cost_giou: all costs are 0")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_loss = focal_loss
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def class_cost(self, logits: torch.Tensor, tgt_ids: torch.Tensor) -> torch.Tensor:
        """logits (N_pred, C'), tgt_ids (N_tgt,) -> (N_pred, N_tgt)."""
        if self.focal_loss:
            p = logits.sigmoid()
            a, g = self.focal_alpha, self.focal_gamma
            neg = (1 - a) * p.pow(g) * -(1 - p + 1e-8).log()
            pos = a * (1 - p).pow(g) * -(p + 1e-8).log()
            return pos[:, tgt_ids] - neg[:, tgt_ids]
        # 1 - p would be the natural cost; the constant 1 does not change the matching.
        return -logits.softmax(-1)[:, tgt_ids]

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """outputs: pred_logits (B, Q, C'), pred_boxes (B, Q, 4);
        targets: list of B dicts with labels (N_b,) and boxes (N_b, 4) cx,cy,w,h.

        Returns B pairs (index_i, index_j) of int64 tensors of length min(Q, N_b):
        query index_i[k] is matched to target index_j[k].
        """
        bs, num_queries = outputs["pred_logits"].shape[:2]
        # Batch all images into one cost matrix: (B*Q, sum N_b). Only the diagonal
        # blocks (image b's queries x image b's targets) are used below.
        # float32 even under autocast: in fp16 the costs can overflow and the solver fails
        dtype = torch.promote_types(outputs["pred_logits"].dtype, torch.float32)
        out_logits = outputs["pred_logits"].flatten(0, 1).to(dtype)  # (B*Q, C')
        out_bbox = outputs["pred_boxes"].flatten(0, 1).to(dtype)  # (B*Q, 4)
        tgt_ids = torch.cat([t["labels"] for t in targets]).long()  # (N,)
        tgt_bbox = torch.cat([t["boxes"] for t in targets]).to(out_bbox.dtype)  # (N, 4)

        cost_class = self.class_cost(out_logits, tgt_ids)  # (B*Q, N)
        cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)  # (B*Q, N)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))
        C = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        C = C.view(bs, num_queries, len(tgt_ids)).cpu()  # (B, Q, N)
        if not torch.isfinite(C).all():
            raise ValueError("outputs: the matching cost has NaN/inf entries: the predictions "
                             "(logits or boxes) are not finite, training has probably diverged")

        sizes = [len(t["boxes"]) for t in targets]
        indices = [linear_sum_assignment(c[b].numpy()) for b, c in enumerate(C.split(sizes, -1))]
        return [(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64))
                for i, j in indices]


def build_matcher(cfg) -> HungarianMatcher:
    return HungarianMatcher(cost_class=cfg.set_cost_class, cost_bbox=cfg.set_cost_bbox,
                            cost_giou=cfg.set_cost_giou, focal_loss=cfg.focal_loss, focal_alpha=cfg.focal_alpha)
