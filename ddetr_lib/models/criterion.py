"""The set loss of DETR (and, with ``focal_loss=True``, of Deformable DETR).

1. Match: the Hungarian matcher pairs each target with one query.
2. Classify every query: matched queries toward their target's class, the others
   toward "no object".
     - DETR: softmax cross-entropy over C+1 classes; the "no object" class is
       down-weighted by ``eos_coef`` (most queries are empty) via ``empty_weight``.
     - Deformable DETR: sigmoid focal loss over C independent logits with one-hot
       targets (an empty query is simply all-zeros), no extra class.
3. Regress the matched boxes: L1 on (cx, cy, w, h) and 1 - GIoU, each summed over the
   matched pairs and divided by the number of target boxes in the batch (averaged over
   processes, so every GPU uses the same normaliser).
4. Repeat 1-3 for every earlier decoder layer (auxiliary losses, suffix ``_{i}``)
   and, for two-stage Deformable DETR, for the encoder proposals (suffix ``_enc``,
   class-agnostic: every target counts as class 0).

``cardinality_error`` (|predicted non-empty queries - targets|) and ``class_error``
(100 - accuracy on matched queries) are logged, not optimised.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from ddetr_lib.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from ddetr_lib.utils import num_boxes_across_processes


@torch.no_grad()
def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy in percent of logits (N, C) against labels (N,)."""
    if target.numel() == 0:
        return torch.zeros([], device=output.device)
    return (output.argmax(-1) == target).float().mean() * 100


class SetCriterion(nn.Module):
    """Hungarian matching + classification and box losses.

    num_classes: number of object classes C (logits are C+1 wide for DETR, C wide with
        ``focal_loss``); weight_dict: loss name -> weight (``_{i}`` aux copies included);
    losses: which of "labels", "boxes", "cardinality" to compute.
    """

    def __init__(self, num_classes: int, matcher: nn.Module, weight_dict: dict, eos_coef: float = 0.1,
                 losses=("labels", "boxes", "cardinality"), focal_loss: bool = False,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = list(losses)
        self.focal_loss = focal_loss
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        if not focal_loss:
            empty_weight = torch.ones(num_classes + 1)
            empty_weight[-1] = eos_coef  # the "no object" class
            self.register_buffer("empty_weight", empty_weight)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _get_src_permutation_idx(indices):
        """(batch index, query index) of every matched query, flattened over the batch."""
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        return batch_idx, src_idx

    # ------------------------------------------------------------------ losses
    def loss_labels(self, outputs, targets, indices, num_boxes, log=True):
        src_logits = outputs["pred_logits"]  # (B, Q, C+1) or (B, Q, C) with focal loss
        idx = self._get_src_permutation_idx(indices)
        target_classes_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).long()
        # Every query's target class: "no object" (index num_classes) unless matched.
        target_classes = torch.full(src_logits.shape[:2], self.num_classes, dtype=torch.int64,
                                    device=src_logits.device)  # (B, Q)
        target_classes[idx] = target_classes_o.to(src_logits.device)

        if self.focal_loss:
            # One-hot over C+1 then drop the last column: empty queries are all zeros.
            onehot = F.one_hot(target_classes, self.num_classes + 1)[..., :-1].to(src_logits.dtype)
            loss = sigmoid_focal_loss(src_logits, onehot, alpha=self.focal_alpha, gamma=self.focal_gamma,
                                      reduction="none")  # (B, Q, C)
            # As the official code: mean over queries, sum, / num_boxes, x Q.
            loss_ce = loss.mean(1).sum() / num_boxes * src_logits.shape[1]
        else:
            loss_ce = F.cross_entropy(src_logits.transpose(1, 2), target_classes,
                                      self.empty_weight.to(src_logits.dtype))
        losses = {"loss_ce": loss_ce}
        if log:
            losses["class_error"] = 100 - accuracy(src_logits[idx], target_classes_o.to(src_logits.device))
        return losses

    @torch.no_grad()
    def loss_cardinality(self, outputs, targets, indices, num_boxes):
        """Absolute error in the number of predicted objects (logged only, no gradient)."""
        logits = outputs["pred_logits"]
        tgt_lengths = torch.as_tensor([len(t["labels"]) for t in targets], device=logits.device)
        if self.focal_loss:
            # No "no object" logit: a query predicts an object if some class has p > 0.5.
            card_pred = (logits.sigmoid().max(-1).values > 0.5).sum(1)
        else:
            card_pred = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1)
        return {"cardinality_error": F.l1_loss(card_pred.float(), tgt_lengths.float())}

    def loss_boxes(self, outputs, targets, indices, num_boxes):
        idx = self._get_src_permutation_idx(indices)
        src_boxes = outputs["pred_boxes"][idx]  # (N_matched, 4)
        target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(src_boxes)
        loss_bbox = F.l1_loss(src_boxes, target_boxes, reduction="none")
        # GIoU of each matched pair: the diagonal of the pairwise matrix.
        giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(target_boxes)))
        return {"loss_bbox": loss_bbox.sum() / num_boxes, "loss_giou": (1 - giou).sum() / num_boxes}

    def get_loss(self, loss, outputs, targets, indices, num_boxes, **kwargs):
        loss_map = {"labels": self.loss_labels, "cardinality": self.loss_cardinality, "boxes": self.loss_boxes}
        if loss not in loss_map:
            raise ValueError(f"losses: unknown {loss!r}; choose from {sorted(loss_map)}")
        return loss_map[loss](outputs, targets, indices, num_boxes, **kwargs)

    def forward(self, outputs: dict, targets: list[dict]) -> dict:
        """outputs: the model's dict; targets: list of dicts with labels (N_b,) and boxes (N_b, 4)."""
        outputs_without_aux = {k: v for k, v in outputs.items() if k not in ("aux_outputs", "enc_outputs")}
        indices = self.matcher(outputs_without_aux, targets)
        device = outputs["pred_logits"].device
        num_boxes = num_boxes_across_processes(targets, device)

        losses = {}
        for loss in self.losses:
            losses.update(self.get_loss(loss, outputs, targets, indices, num_boxes))

        # Auxiliary losses: the same, on each earlier decoder layer, with its own matching.
        for i, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
            indices = self.matcher(aux_outputs, targets)
            for loss in self.losses:
                kwargs = {"log": False} if loss == "labels" else {}
                l_dict = self.get_loss(loss, aux_outputs, targets, indices, num_boxes, **kwargs)
                losses.update({f"{k}_{i}": v for k, v in l_dict.items()})

        # Two-stage: the encoder's proposals, matched class-agnostically (every target
        # gets label 0: the encoder only says "object here", as in the official code).
        if "enc_outputs" in outputs:
            enc_outputs = outputs["enc_outputs"]
            bin_targets = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            indices = self.matcher(enc_outputs, bin_targets)
            for loss in self.losses:
                kwargs = {"log": False} if loss == "labels" else {}
                l_dict = self.get_loss(loss, enc_outputs, bin_targets, indices, num_boxes, **kwargs)
                losses.update({f"{k}_enc": v for k, v in l_dict.items()})
        return losses


def build_weight_dict(cfg) -> dict:
    weight_dict = {"loss_ce": cfg.cls_loss_coef, "loss_bbox": cfg.bbox_loss_coef, "loss_giou": cfg.giou_loss_coef}
    if cfg.aux_loss:
        aux = {}
        for i in range(cfg.dec_layers - 1):
            aux.update({f"{k}_{i}": v for k, v in weight_dict.items()})
        if cfg.two_stage:  # the encoder's proposals (two-stage Deformable DETR)
            aux.update({f"{k}_enc": v for k, v in weight_dict.items()})
        weight_dict.update(aux)
    return weight_dict
