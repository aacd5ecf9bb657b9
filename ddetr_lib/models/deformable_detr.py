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

import copy
import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ddetr_lib import box_ops
from ddetr_lib.models.deformable_transformer import DeformableTransformer, inverse_sigmoid
from ddetr_lib.models.detr import MLP, check_target_sizes
from ddetr_lib.models.ms_deform_attn import MSDeformAttn
from ddetr_lib.utils import NestedTensor, to_nested_tensor


# GroupNorm after each input projection: 32 groups, as in the official code (8 channels
# per group at d = 256; d must be divisible by 32).
GROUPNORM_GROUPS = 32
# Initial box-size bias of the box head: w = h = sigmoid(-2) ~ 0.12 of the image, a
# middle-sized box to start from (centre offsets start at 0: the reference point).
INIT_BOX_SIZE_BIAS = -2.0
# Initial class bias: every class starts at probability 0.01 (focal loss prior).
PRIOR_PROB = 0.01


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

        class_embed = nn.Linear(hidden_dim, num_classes)
        bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        # Registered here (turned into per-layer lists below) so that the state dict
        # lists them in the order of the official checkpoints.
        self.class_embed, self.bbox_embed = class_embed, bbox_embed
        if not two_stage:
            self.query_embed = nn.Embedding(num_queries, hidden_dim * 2)  # (query_pos, tgt) per query

        # Input projections: backbone levels (1x1 conv), then extra levels (3x3, stride 2).
        if num_feature_levels > 1:
            projs = [nn.Sequential(nn.Conv2d(c, hidden_dim, kernel_size=1), nn.GroupNorm(GROUPNORM_GROUPS, hidden_dim))
                     for c in backbone.num_channels]
            in_channels = backbone.num_channels[-1]
            for _ in range(num_feature_levels - len(backbone.num_channels)):
                projs.append(nn.Sequential(nn.Conv2d(in_channels, hidden_dim, kernel_size=3, stride=2, padding=1),
                                           nn.GroupNorm(GROUPNORM_GROUPS, hidden_dim)))
                in_channels = hidden_dim
        else:  # single scale: C5 only
            projs = [nn.Sequential(nn.Conv2d(backbone.num_channels[-1], hidden_dim, kernel_size=1),
                                   nn.GroupNorm(GROUPNORM_GROUPS, hidden_dim))]
        self.input_proj = nn.ModuleList(projs)
        self.backbone = backbone

        # Initialisation (as the official code): every class at probability 0.01 at first,
        # box offsets 0 (the box starts on the reference point), projections xavier.
        nn.init.constant_(class_embed.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))
        nn.init.constant_(bbox_embed.layers[-1].weight, 0.0)
        nn.init.constant_(bbox_embed.layers[-1].bias, 0.0)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0.0)

        num_pred = transformer.decoder.num_layers + (1 if two_stage else 0)
        if with_box_refine:
            # Independent heads: layer i's box head refines layer i-1's box.
            self.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(num_pred))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(num_pred))
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], INIT_BOX_SIZE_BIAS)
            self.transformer.decoder.bbox_embed = self.bbox_embed
            self.transformer.decoder.with_box_refine = True
        else:
            # One head shared by all layers (listed once per layer, as in the checkpoints).
            nn.init.constant_(bbox_embed.layers[-1].bias[2:], INIT_BOX_SIZE_BIAS)
            self.class_embed = nn.ModuleList([class_embed] * num_pred)
            self.bbox_embed = nn.ModuleList([bbox_embed] * num_pred)
            self.transformer.decoder.bbox_embed = None
        if two_stage:
            # The encoder scores its proposals with the last class / box head.
            self.transformer.decoder.class_embed = self.class_embed
            # (Without box refinement the decoder holds the box heads only for the encoder.)
            self.transformer.decoder.bbox_embed = self.bbox_embed
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
            reference = inverse_sigmoid(init_reference if layer == 0 else inter_references[layer - 1])
            outputs_classes.append(self.class_embed[layer](hs[layer]))  # (B, Q, num_classes)
            delta = self.bbox_embed[layer](hs[layer])  # (B, Q, 4)
            if reference.shape[-1] == 4:
                coord = delta + reference
            else:  # a point reference: only the centre is offset
                coord = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
            outputs_coords.append(coord.sigmoid())
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


# ----------------------------------------------------------------------------- capture
@contextmanager
def capture_deformable(model: nn.Module):
    """Record what deformable attention did in every forward pass inside the block.

        with capture_deformable(model) as rec:
            out = model(samples)
        rec["encoder"][l] / rec["decoder"][l]: dicts for encoder / decoder layer l with
            sampling_locations (N, Lq, M, L, P, 2)  (x, y) in [0, 1] of the PADDED map
            attention_weights  (N, Lq, M, L, P)     softmaxed over L*P per head
            reference_points   (N, Lq, L, 2 or 4)   as given to the attention (padded coords)
        rec["spatial_shapes"] (L, 2), rec["level_start_index"] (L,), rec["valid_ratios"] (N, L, 2),
        rec["masks"] [(N, H_l, W_l)] True on padding
        rec["decoder_reference_boxes"][l]  (N, Q, 2 or 4) reference of decoder layer l
                                           (valid-image coordinates)
        rec["proposals"]  two-stage only: {boxes (N, S, 4), logits (N, S, C), valid (N, S),
                          topk_indices (N, Q)}

    Only detached copies of tensors the forward pass computes anyway are stored, so the
    outputs are exactly those without capture; outside the block every hook is ``None``.
    Each new forward pass replaces the record.
    """
    rec = {}

    def reset():
        rec.clear()
        rec.update({"encoder": [], "decoder": [], "decoder_reference_boxes": [], "proposals": None})

    reset()

    def record_transformer(kind: str, value):
        if kind == "shapes":  # a new forward pass starts
            reset()
            rec.update({k: (v.detach() if torch.is_tensor(v) else [m.detach() for m in v])
                        for k, v in value.items()})
        elif kind == "encoder_reference_points":
            pass  # the encoder layers record the reference points they receive
        elif kind == "decoder_reference_points":
            rec["decoder_reference_boxes"].append(value.detach())
        elif kind == "proposals":
            rec["proposals"] = {k: v.detach() for k, v in value.items()}

    def make_attn_recorder(stage: str):
        def record(reference_points, locations, weights):
            rec[stage].append({"sampling_locations": locations.detach(), "attention_weights": weights.detach(),
                               "reference_points": reference_points.detach()})
        return record

    transformers = [m for m in model.modules() if isinstance(m, DeformableTransformer)]
    if not transformers:
        raise ValueError("model: no DeformableTransformer inside; use capture_attention for DETR")
    hooked = []
    for t in transformers:
        t.record = record_transformer
        hooked.append(t)
        for layer in t.encoder.layers:
            layer.self_attn.record_attention = make_attn_recorder("encoder")
            hooked.append(layer.self_attn)
        for layer in t.decoder.layers:
            layer.cross_attn.record_attention = make_attn_recorder("decoder")
            hooked.append(layer.cross_attn)
    try:
        yield rec
    finally:
        for m in hooked:
            for name in ("record", "record_attention"):
                if name in m.__dict__:
                    del m.__dict__[name]  # back to the class default (None)


def set_attention_backend(model: nn.Module, backend: str) -> nn.Module:
    """Run every ``MSDeformAttn`` of ``model`` with ``backend`` ("auto", "torch", "numba_cpu", ...)."""
    for m in model.modules():
        if isinstance(m, MSDeformAttn):
            m.backend = backend
    return model
