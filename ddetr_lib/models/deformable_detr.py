"""Deformable DETR: DETR with multi-scale deformable attention (Zhu et al., 2021).

    image -> backbone (C3, C4, C5) -> per level: 1x1 conv + GroupNorm to d
          (+ extra levels: 3x3 stride-2 conv + GroupNorm on C5, then on the previous)
          -> deformable transformer -> per query and decoder layer: class + box

What changes from DETR (``detr.py``):

* **Several feature levels** (strides 8, 16, 32, 64 by default) instead of C5 alone:
  small objects are found on the fine maps.
* **Sigmoid classifier**: ``num_classes`` independent logits trained with the focal
  loss; no "no object" logit (an empty query has all scores low). The bias starts at
  -log((1 - 0.01) / 0.01), i.e. every class at probability 0.01.
* **Boxes relative to reference points**: the box head predicts an offset in
  inverse-sigmoid space from the query's reference point,
  ``box = sigmoid(bbox_embed(h) + inverse_sigmoid(reference))``.
* One class head and one box head per decoder layer: the same module repeated
  (shared weights), or independent copies with iterative box refinement; two-stage
  adds one more pair for the encoder proposals.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ddetr_lib import box_ops
from ddetr_lib.models.deformable_transformer import DeformableTransformer, refine_boxes
from ddetr_lib.models.detr import MLP, check_target_sizes
from ddetr_lib.models.ms_deform_attn import MSDeformAttn
from ddetr_lib.models.transformer import clones
from ddetr_lib.utils import NestedTensor, to_nested_tensor


# GroupNorm after each input projection: 32 groups, as in the official code (8 channels
# per group at d = 256; d must be divisible by 32).
GROUPNORM_GROUPS = 32
# Initial box-size bias of the box head: w = h = sigmoid(-2) ~ 0.12 of the image, a
# middle-sized box to start from (centre offsets start at 0: the reference point).
INIT_BOX_SIZE_BIAS = -2.0
# Initial class bias: every class starts at probability 0.01 (focal loss prior).
PRIOR_PROB = 0.01


def input_projections(in_channels: list[int], hidden_dim: int, num_feature_levels: int) -> nn.ModuleList:
    """One projection to ``hidden_dim`` per feature level: a 1x1 conv + GroupNorm for each
    backbone level (``in_channels``, e.g. C3-C5), then a 3x3 stride-2 conv + GroupNorm for
    each extra level (on C5 first, then on the previous extra level). Convs: xavier, bias 0."""
    projs = [nn.Sequential(nn.Conv2d(c, hidden_dim, kernel_size=1), nn.GroupNorm(GROUPNORM_GROUPS, hidden_dim))
             for c in in_channels]
    channels = in_channels[-1]
    for _ in range(num_feature_levels - len(in_channels)):
        projs.append(nn.Sequential(nn.Conv2d(channels, hidden_dim, kernel_size=3, stride=2, padding=1),
                                   nn.GroupNorm(GROUPNORM_GROUPS, hidden_dim)))
        channels = hidden_dim
    for proj in projs:
        nn.init.xavier_uniform_(proj[0].weight, gain=1)
        nn.init.constant_(proj[0].bias, 0.0)
    return nn.ModuleList(projs)


class DeformableDETR(nn.Module):
    """The Deformable DETR detector.

    forward(samples) with samples a ``NestedTensor``, a list of (3, H, W) images or a
    (B, 3, H, W) tensor, returns::

        pred_logits  (B, Q, num_classes)   sigmoid logits (no "no object" class)
        pred_boxes   (B, Q, 4)             (cx, cy, w, h) in [0, 1] of the unpadded image
        aux_outputs  [{pred_logits, pred_boxes}] for decoder layers 0 .. num_decoder_layers-2 (if aux_loss)
        enc_outputs  {pred_logits (B, S, num_classes), pred_boxes (B, S, 4)}  (two-stage:
                     the encoder's per-token proposals)
    """

    def __init__(self, backbone: nn.Module, transformer: DeformableTransformer, num_classes: int,
                 num_queries: int, num_feature_levels: int, aux_loss: bool = True, with_box_refine: bool = False,
                 two_stage: bool = False):
        super().__init__()
        self.num_queries = num_queries
        self.num_classes = num_classes
        self.num_feature_levels = num_feature_levels
        self.aux_loss = aux_loss
        self.with_box_refine = with_box_refine
        self.two_stage = two_stage
        self.transformer = transformer
        hidden_dim = transformer.d_model
        # Registration order = the order of the official checkpoints' keys.
        self.class_embed = nn.Linear(hidden_dim, num_classes)  # made per-layer lists by _heads_per_layer
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        if not two_stage:
            self.query_embed = nn.Embedding(num_queries, hidden_dim * 2)  # (query_pos, tgt) per query
        backbone_channels = backbone.num_channels if num_feature_levels > 1 else backbone.num_channels[-1:]
        self.input_proj = input_projections(backbone_channels, hidden_dim, num_feature_levels)
        self.backbone = backbone
        self._heads_per_layer(self.class_embed, self.bbox_embed)

    def _heads_per_layer(self, class_embed: nn.Linear, bbox_embed: MLP):
        """Initialise the heads and give every decoder layer (and the two-stage encoder) one.

        Official initialisation: every class at probability PRIOR_PROB, box offsets 0 (a
        box starts on its reference point), box size sigmoid(INIT_BOX_SIZE_BIAS).
        Box refinement: independent copies (layer i's head refines layer i-1's box) that
        the decoder holds too; otherwise one head shared by all layers (still listed once
        per layer, as in the checkpoints). Two-stage: the last pair scores the encoder's
        proposals, and the size bias starts at 0 (the proposals carry the size).
        """
        nn.init.constant_(class_embed.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))
        nn.init.constant_(bbox_embed.layers[-1].weight, 0.0)
        nn.init.constant_(bbox_embed.layers[-1].bias, 0.0)
        decoder = self.transformer.decoder
        num_pred = decoder.num_layers + (1 if self.two_stage else 0)
        if self.with_box_refine:
            self.class_embed = clones(class_embed, num_pred)
            self.bbox_embed = clones(bbox_embed, num_pred)
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], INIT_BOX_SIZE_BIAS)
            decoder.bbox_embed = self.bbox_embed
            decoder.with_box_refine = True
        else:
            nn.init.constant_(bbox_embed.layers[-1].bias[2:], INIT_BOX_SIZE_BIAS)
            self.class_embed = nn.ModuleList([class_embed] * num_pred)
            self.bbox_embed = nn.ModuleList([bbox_embed] * num_pred)
            decoder.bbox_embed = None
        if self.two_stage:
            decoder.class_embed = self.class_embed
            # (Without box refinement the decoder holds the box heads only for the encoder.)
            decoder.bbox_embed = self.bbox_embed
            for box_embed in self.bbox_embed:
                nn.init.constant_(box_embed.layers[-1].bias[2:], 0.0)

    def _multi_scale_features(self, samples: NestedTensor):
        """-> srcs [(B, d, H_l, W_l)], masks [(B, H_l, W_l)], pos [(B, d, H_l, W_l)] for every level."""
        features, pos = self.backbone(samples)
        if self.num_feature_levels == 1:
            features, pos = features[-1:], pos[-1:]
        srcs, masks = [], []
        for level, feat in enumerate(features):
            src, mask = feat.decompose()
            srcs.append(self.input_proj[level](src))
            masks.append(mask)
        pos = list(pos)
        for level in range(len(srcs), self.num_feature_levels):
            # Extra level: stride-2 conv on C5 (first) or on the previous extra level.
            src = self.input_proj[level](features[-1].tensors if level == len(features) else srcs[-1])
            mask = F.interpolate(samples.mask[None].float(), size=src.shape[-2:])[0].to(torch.bool)
            srcs.append(src)
            masks.append(mask)
            pos.append(self.backbone[1](NestedTensor(src, mask)).to(src.dtype))
        return srcs, masks, pos

    def forward(self, samples):
        samples = to_nested_tensor(samples)
        srcs, masks, pos = self._multi_scale_features(samples)
        query_embed = None if self.two_stage else self.query_embed.weight
        hs, init_reference, inter_references, enc_class, enc_coord_unact = self.transformer(
            srcs, masks, pos, query_embed)  # hs: (num_decoder_layers, B, Q, C)

        outputs_classes, outputs_coords = [], []
        for layer in range(hs.shape[0]):  # decoder layers
            reference = init_reference if layer == 0 else inter_references[layer - 1]  # (B, Q, 2 or 4)
            outputs_classes.append(self.class_embed[layer](hs[layer]))  # (B, Q, num_classes)
            outputs_coords.append(refine_boxes(self.bbox_embed[layer](hs[layer]), reference))  # (B, Q, 4)
        outputs_class = torch.stack(outputs_classes)  # (num_decoder_layers, B, Q, num_classes)
        outputs_coord = torch.stack(outputs_coords)  # (num_decoder_layers, B, Q, 4)

        out = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b}
                                  for a, b in zip(outputs_class[:-1], outputs_coord[:-1])]
        if self.two_stage:
            out["enc_outputs"] = {"pred_logits": enc_class, "pred_boxes": enc_coord_unact.sigmoid()}
        return out


class PostProcessDeformable(nn.Module):
    """Turn Deformable DETR outputs into COCO-style detections.

    Every (query, class) pair is a candidate with score sigmoid(logit): keep the
    ``num_select`` best over all queries x classes (a query may appear with several
    classes); label = index % C, query = index // C. Boxes go to absolute
    (x0, y0, x1, y1) pixels of the original image.
    """

    def __init__(self, num_select: int = 100):
        super().__init__()
        self.num_select = num_select

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: torch.Tensor) -> list[dict]:
        """target_sizes: (B, 2) as (h, w). -> [{"scores": (K,), "labels": (K,), "boxes": (K, 4)}]"""
        out_logits, out_bbox = outputs["pred_logits"], outputs["pred_boxes"]
        check_target_sizes(target_sizes, len(out_logits))
        b, q, c = out_logits.shape
        prob = out_logits.sigmoid().reshape(b, q * c)  # (B, Q*C)
        scores, index = torch.topk(prob, min(self.num_select, q * c), dim=1)  # (B, K)
        labels = index % c
        query = torch.div(index, c, rounding_mode="floor")  # (B, K)
        boxes = box_ops.box_cxcywh_to_xyxy(out_bbox)  # (B, Q, 4)
        boxes = torch.gather(boxes, 1, query.unsqueeze(-1).expand(-1, -1, 4))  # (B, K, 4)
        boxes = box_ops.scale_boxes(boxes, target_sizes)
        return [{"scores": s, "labels": l, "boxes": bx} for s, l, bx in zip(scores, labels, boxes)]


def set_attention_backend(model: nn.Module, backend: str) -> nn.Module:
    """Run every ``MSDeformAttn`` of ``model`` with ``backend`` ("auto", "torch", "numba_cpu", ...)."""
    for m in model.modules():
        if isinstance(m, MSDeformAttn):
            m.backend = backend
    return model
