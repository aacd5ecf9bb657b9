"""DETR: detection as direct set prediction (Carion et al., 2020).

    image -> backbone (C5) -> 1x1 conv to hidden_dim -> transformer encoder
          -> decoder with Q learned object queries -> per query: class + box

Each of the Q queries predicts either an object (one of ``num_classes`` class logits
and a box) or "no object" (an extra, last logit). There is no anchor, no NMS: the
Hungarian matcher (``matcher.py``) assigns targets to queries one-to-one during
training, so the model learns to predict each object exactly once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ddetr_lib import box_ops
from ddetr_lib.utils import to_nested_tensor


class MLP(nn.Module):
    """A plain multi-layer perceptron with ReLU between layers (none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        self.num_layers = num_layers
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return x


class DETR(nn.Module):
    """The DETR detector.

    forward(samples) with samples a ``NestedTensor``, a list of (3, H, W) images or a
    (B, 3, H, W) tensor, returns::

        pred_logits  (B, Q, num_classes + 1)   the last logit is "no object"
        pred_boxes   (B, Q, 4)                 (cx, cy, w, h) in [0, 1], relative to the
                                               unpadded image
        aux_outputs  [{pred_logits, pred_boxes}] for decoder layers 0 .. num_decoder_layers-2 (if aux_loss)
    """

    def __init__(self, backbone: nn.Module, transformer: nn.Module, num_classes: int, num_queries: int,
                 aux_loss: bool = False):
        super().__init__()
        self.num_queries = num_queries
        self.num_classes = num_classes
        self.transformer = transformer
        hidden_dim = transformer.d_model
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)  # the learned object queries
        self.input_proj = nn.Conv2d(backbone.num_channels[-1], hidden_dim, kernel_size=1)
        self.backbone = backbone
        self.aux_loss = aux_loss

    def forward(self, samples):
        samples = to_nested_tensor(samples)
        features, pos = self.backbone(samples)
        src, mask = features[-1].decompose()  # (B, C5, H, W), (B, H, W)
        hs = self.transformer(self.input_proj(src), mask, self.query_embed.weight, pos[-1])[0]  # (num_decoder_layers, B, Q, C)

        outputs_class = self.class_embed(hs)  # (num_decoder_layers, B, Q, num_classes + 1)
        outputs_coord = self.bbox_embed(hs).sigmoid()  # (num_decoder_layers, B, Q, 4)
        out = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
        if self.aux_loss:
            out["aux_outputs"] = self._set_aux_loss(outputs_class, outputs_coord)
        return out

    @torch.jit.unused
    def _set_aux_loss(self, outputs_class, outputs_coord):
        return [{"pred_logits": a, "pred_boxes": b} for a, b in zip(outputs_class[:-1], outputs_coord[:-1])]


def check_target_sizes(target_sizes: torch.Tensor, batch_size: int) -> None:
    """A postprocessor's ``target_sizes`` must be (B, 2) rows of (h, w), one per image."""
    if target_sizes.dim() != 2 or target_sizes.shape[1] != 2:
        raise ValueError(f"target_sizes: expected (B, 2) as (h, w), got {tuple(target_sizes.shape)}")
    if len(target_sizes) != batch_size:
        raise ValueError(f"target_sizes: {len(target_sizes)} sizes for a batch of {batch_size}")


class PostProcess(nn.Module):
    """Turn DETR outputs into COCO-style detections.

    For each query: softmax over the C+1 logits, drop "no object", keep the best class
    and its probability as the score; boxes go from normalised (cx, cy, w, h) to
    absolute (x0, y0, x1, y1) pixels of the ORIGINAL image size.
    """

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: torch.Tensor) -> list[dict]:
        """target_sizes: (B, 2) as (h, w). -> [{"scores": (Q,), "labels": (Q,), "boxes": (Q, 4)}]"""
        out_logits, out_bbox = outputs["pred_logits"], outputs["pred_boxes"]
        check_target_sizes(target_sizes, len(out_logits))
        prob = F.softmax(out_logits, -1)
        scores, labels = prob[..., :-1].max(-1)  # (B, Q), (B, Q)
        boxes = box_ops.scale_boxes(box_ops.box_cxcywh_to_xyxy(out_bbox), target_sizes)  # (B, Q, 4)
        return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, boxes)]
