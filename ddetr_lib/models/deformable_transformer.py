"""The deformable transformer of Deformable DETR (Zhu et al., 2021).

Same plan as DETR's transformer (encoder over image features, decoder over object
queries), with every attention over the image replaced by multi-scale deformable
attention (``MSDeformAttn``):

* **Multi-scale input.** The L feature maps (C3-C5 and extra stride-2 levels) are
  flattened and concatenated into one token sequence of length S = sum_l H_l*W_l.
  A learned *level embedding* ``level_embed[l]`` is added to the sine position
  encoding so that a token knows which level it comes from.
* **Encoder.** Each pixel is a query whose reference point is its own centre; it
  samples P points per head in every level (so information flows across scales
  without an FPN). Post-norm layers: attention + norm1, FFN + norm2.
* **Decoder.** Each object query has a content part ``tgt`` and a positional part
  ``query_pos`` (the learned ``query_embed`` of size 2*d, split in two). Its
  reference point is ``sigmoid(Linear(query_pos))``. A layer is: self-attention among
  queries (ordinary ``nn.MultiheadAttention``) + norm2, deformable cross-attention
  into the encoder memory + norm1, FFN + norm3 (norm names as in the official code).
* **Iterative box refinement** (``with_box_refine``): every decoder layer's box head
  predicts a correction in inverse-sigmoid space to the previous layer's box, which
  becomes the next layer's reference box (detached: each layer learns its own step).
* **Two-stage** (``two_stage``): the encoder proposes one box per token (centred on
  the pixel, size 0.05 * 2^l); the encoder's heads score and refine them, and the top
  ``num_queries`` boxes become the decoder's reference boxes and, via a sine
  embedding, its queries.

Coordinates: reference points are normalised by the *valid* (unpadded) image, while
the sampling kernel works in coordinates of the *padded* map. ``valid_ratios``
(the valid fraction of each level's width and height) converts between the two:
``ref_padded = ref_valid * valid_ratio``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ddetr_lib.box_ops import inverse_sigmoid
from ddetr_lib.kernels import level_start_index_from_shapes
from ddetr_lib.models.ms_deform_attn import MSDeformAttn
from ddetr_lib.models.position_encoding import sine_encoding
from ddetr_lib.models.transformer import clones, with_pos_embed


def refine_boxes(delta: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A box head's output relative to a reference, as a box.

    delta: (..., 4) from ``bbox_embed``; reference: (..., 4) boxes or (..., 2) points,
    (cx, cy, w, h) / (x, y) in [0, 1]. -> (..., 4) = sigmoid(delta + inverse_sigmoid(reference)):
    the head predicts a correction in inverse-sigmoid space. A point reference moves only
    the centre; w and h then come from the head alone.
    """
    reference = inverse_sigmoid(reference)
    if reference.shape[-1] == 4:
        return (delta + reference).sigmoid()
    return torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1).sigmoid()


def get_valid_ratio(mask: torch.Tensor) -> torch.Tensor:
    """Valid fraction of a padded map: mask (B, H, W) True on padding -> (B, 2) as (w, h).

    Padding is at the bottom and right, so the first column counts the valid rows and
    the first row the valid columns.
    """
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1)  # (B,)
    valid_w = (~mask[:, 0, :]).sum(1)  # (B,)
    return torch.stack([valid_w.float() / w, valid_h.float() / h], -1)  # (B, 2)


def encoder_reference_points(spatial_shapes, valid_ratios: torch.Tensor) -> torch.Tensor:
    """Reference points of the encoder queries: every pixel's centre.

    spatial_shapes: (L, 2) rows (H_l, W_l); valid_ratios: (B, L, 2) as (w, h).
    -> (B, S, L, 2) as (x, y): the centre of pixel (i, j) of level l is
    ((j + 0.5) / W_valid_l, (i + 0.5) / H_valid_l) in the valid image, then mapped to
    each level's padded coordinates by its valid ratio.
    """
    refs = []
    for level, (h, w) in enumerate(spatial_shapes.tolist()):
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, dtype=valid_ratios.dtype, device=valid_ratios.device),
            torch.linspace(0.5, w - 0.5, w, dtype=valid_ratios.dtype, device=valid_ratios.device),
            indexing="ij",
        )  # (H, W) each
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * h)  # (B, HW)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * w)  # (B, HW)
        refs.append(torch.stack((ref_x, ref_y), -1))  # (B, HW, 2)
    reference_points = torch.cat(refs, 1)  # (B, S, 2) normalised by the valid image
    return reference_points[:, :, None] * valid_ratios[:, None]  # (B, S, L, 2)


class DeformableTransformerEncoderLayer(nn.Module):
    """Deformable self-attention of every pixel around itself, then an FFN (post-norm)."""

    def __init__(self, d_model=256, dim_feedforward=1024, dropout=0.1, num_feature_levels=4, nheads=8, n_points=4):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, num_feature_levels, nheads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask=None):
        # src, pos: (B, S, C); reference_points: (B, S, L, 2); padding_mask: (B, S)
        src2 = self.self_attn(with_pos_embed(src, pos), reference_points, src, spatial_shapes, level_start_index,
                              padding_mask)
        src = self.norm1(src + self.dropout1(src2))
        src2 = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(src2))


class DeformableTransformerEncoder(nn.Module):
    def __init__(self, encoder_layer: nn.Module, num_layers: int):
        super().__init__()
        self.layers = clones(encoder_layer, num_layers)
        self.num_layers = num_layers

    def forward(self, src, spatial_shapes, level_start_index, valid_ratios, pos=None, padding_mask=None):
        reference_points = encoder_reference_points(spatial_shapes, valid_ratios)  # (B, S, L, 2)
        output = src
        for layer in self.layers:
            output = layer(output, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return output  # (B, S, C)


class DeformableTransformerDecoderLayer(nn.Module):
    """Self-attention among queries (+ norm2), deformable cross-attention into the
    memory around each query's reference point (+ norm1), FFN (+ norm3)."""

    def __init__(self, d_model=256, dim_feedforward=1024, dropout=0.1, num_feature_levels=4, nheads=8, n_points=4):
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, num_feature_levels, nheads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt, query_pos, reference_points, src, spatial_shapes, level_start_index,
                src_padding_mask=None):
        # tgt, query_pos: (B, Q, C); reference_points: (B, Q, L, 2 or 4); src: (B, S, C)
        q = k = with_pos_embed(tgt, query_pos)
        tgt2 = self.self_attn(q, k, tgt, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.cross_attn(with_pos_embed(tgt, query_pos), reference_points, src, spatial_shapes,
                               level_start_index, src_padding_mask)
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        tgt2 = self.linear2(self.dropout3(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(tgt2))


class DeformableTransformerDecoder(nn.Module):
    """The decoder; returns every layer's output and the reference points it used next.

    ``bbox_embed`` (set by ``DeformableDETR`` with box refinement) is the list of
    per-layer box heads; ``class_embed`` (two-stage) the list of class heads. They are
    the detector's own heads, registered here too (so they appear in the state dict
    under ``transformer.decoder.*`` as in the official checkpoints).
    """

    def __init__(self, decoder_layer: nn.Module, num_layers: int):
        super().__init__()
        self.layers = clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.bbox_embed = None
        self.class_embed = None
        self.with_box_refine = False  # refine reference boxes with bbox_embed layer by layer

    def forward(self, tgt, reference_points, src, spatial_shapes, level_start_index, valid_ratios,
                query_pos=None, src_padding_mask=None):
        """tgt, query_pos: (B, Q, C); reference_points: (B, Q, 2) points or (B, Q, 4) boxes,
        normalised by the valid image; valid_ratios: (B, L, 2).
        -> hs (num_layers, B, Q, C), references (num_layers, B, Q, 2 or 4): the reference
        each layer hands to the next (unchanged without box refinement)."""
        output = tgt
        intermediate, intermediate_refs = [], []
        for i, layer in enumerate(self.layers):
            if reference_points.shape[-1] == 4:
                scale = torch.cat([valid_ratios, valid_ratios], -1)[:, None]  # (B, 1, L, 4)
            else:
                scale = valid_ratios[:, None]  # (B, 1, L, 2)
            reference_points_input = reference_points[:, :, None] * scale  # (B, Q, L, 2 or 4)
            output = layer(output, query_pos, reference_points_input, src, spatial_shapes, level_start_index,
                           src_padding_mask)
            if self.with_box_refine:
                # This layer's box becomes the next layer's reference box; no gradient
                # through the chain of boxes (each layer learns its own step).
                reference_points = refine_boxes(self.bbox_embed[i](output), reference_points).detach()
            intermediate.append(output)
            intermediate_refs.append(reference_points)
        return torch.stack(intermediate), torch.stack(intermediate_refs)


def proposal_pos_embed(proposals: torch.Tensor, num_pos_feats: int = 128, temperature: float = 10000.0):
    """Sine embedding of boxes (two-stage queries): (B, K, 4) unsigmoided -> (B, K, 4 * num_pos_feats).

    Each of (cx, cy, w, h) in [0, 1] is scaled to [0, 2*pi] and encoded like the image
    position encoding (even channels sin, odd cos).
    """
    angles = proposals.sigmoid() * (2 * math.pi)  # (B, K, 4)
    pos = sine_encoding(angles, num_pos_feats, temperature)  # (B, K, 4, F)
    return pos.flatten(2).to(proposals.dtype)  # (B, K, 4F)


# Two-stage proposals: pixel centres of level l with side 0.05 * 2^l of the image
# (5% on the finest level, doubling with each coarser level, as the stride doubles),
# kept only if centre and size lie in (0.01, 0.99): boxes at the border or as large as
# the image give inverse_sigmoid values near +-inf.
PROPOSAL_BASE_SIZE = 0.05
PROPOSAL_VALID_RANGE = (0.01, 0.99)


def encoder_proposals(mask_flatten: torch.Tensor, spatial_shapes: torch.Tensor):
    """Two-stage: one box proposal per encoder token.

    mask_flatten: (B, S) True on padding; spatial_shapes (L, 2).
    -> proposals (B, S, 4) in inverse-sigmoid space, +inf where invalid;
       valid (B, S, 1) bool: inside the image, not padding, centre and size in (0.01, 0.99).
    Pixel (i, j) of level l proposes the box centred on it, ((j+0.5)/W_valid, (i+0.5)/H_valid),
    of width and height 0.05 * 2^l.
    """
    b = mask_flatten.shape[0]
    proposals, start = [], 0
    for level, (h, w) in enumerate(spatial_shapes.tolist()):
        mask_l = mask_flatten[:, start:start + h * w].view(b, h, w)
        valid_h = (~mask_l[:, :, 0]).sum(1)  # (B,)
        valid_w = (~mask_l[:, 0, :]).sum(1)  # (B,)
        grid_y, grid_x = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=mask_flatten.device),
            torch.arange(w, dtype=torch.float32, device=mask_flatten.device), indexing="ij")
        grid = torch.stack([grid_x, grid_y], -1)  # (H, W, 2) as (x, y)
        scale = torch.stack([valid_w, valid_h], -1).view(b, 1, 1, 2).float()
        centre = (grid[None] + 0.5) / scale  # (B, H, W, 2)
        wh = torch.full_like(centre, PROPOSAL_BASE_SIZE * (2.0 ** level))
        proposals.append(torch.cat([centre, wh], -1).view(b, -1, 4))
        start += h * w
    proposals = torch.cat(proposals, 1)  # (B, S, 4)
    low, high = PROPOSAL_VALID_RANGE
    valid = ((proposals > low) & (proposals < high)).all(-1, keepdim=True) & ~mask_flatten[..., None]
    proposals = inverse_sigmoid(proposals).masked_fill(~valid, float("inf"))
    return proposals, valid


class DeformableTransformer(nn.Module):
    """forward(srcs, masks, pos_embeds, query_embed) with per-level lists
    srcs [(B, C, H_l, W_l)], masks [(B, H_l, W_l)], pos_embeds [(B, C, H_l, W_l)],
    query_embed (Q, 2C) (None for two-stage) ->
    hs (num_decoder_layers, B, Q, C), init_reference (B, Q, 2 or 4), inter_references
    (num_decoder_layers, B, Q, 2 or 4), enc_outputs_class (B, S, num_classes) or None,
    enc_outputs_coord_unact (B, S, 4) or None.

    The steps, one method each: ``flatten_levels`` (L maps -> one sequence of S tokens),
    the encoder, then the decoder's queries: ``learned_queries`` (one-stage) or
    ``two_stage_queries`` (encoder proposals, ranked by ``select_proposals``).
    """

    def __init__(self, d_model=256, nheads=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=1024,
                 dropout=0.1, num_feature_levels=4, dec_n_points=4, enc_n_points=4, two_stage=False,
                 two_stage_num_proposals=300):
        super().__init__()
        self.d_model = d_model
        self.nheads = nheads
        self.two_stage = two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        self.num_feature_levels = num_feature_levels

        encoder_layer = DeformableTransformerEncoderLayer(d_model, dim_feedforward, dropout, num_feature_levels,
                                                          nheads, enc_n_points)
        self.encoder = DeformableTransformerEncoder(encoder_layer, num_encoder_layers)
        decoder_layer = DeformableTransformerDecoderLayer(d_model, dim_feedforward, dropout, num_feature_levels,
                                                          nheads, dec_n_points)
        self.decoder = DeformableTransformerDecoder(decoder_layer, num_decoder_layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))  # (L, C)
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points = nn.Linear(d_model, 2)
        self._reset_parameters()

    def _reset_parameters(self):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.constant_(self.reference_points.bias, 0.0)
        nn.init.normal_(self.level_embed)

    def flatten_levels(self, srcs, masks, pos_embeds):
        """Flatten every level and concatenate: one sequence of S = sum_l H_l*W_l tokens.

        -> src_flatten (B, S, C), mask_flatten (B, S), pos_flatten (B, S, C) (position + level
        embedding), spatial_shapes (L, 2) rows (H_l, W_l), level_start_index (L,), valid_ratios (B, L, 2).
        """
        src_flatten, mask_flatten, pos_flatten, shapes = [], [], [], []
        for level, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
            _, _, h, w = src.shape
            shapes.append((h, w))
            src_flatten.append(src.flatten(2).transpose(1, 2))  # (B, HW, C)
            mask_flatten.append(mask.flatten(1))  # (B, HW)
            pos_flatten.append(pos.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1))
        src_flatten = torch.cat(src_flatten, 1)  # (B, S, C)
        mask_flatten = torch.cat(mask_flatten, 1)  # (B, S)
        pos_flatten = torch.cat(pos_flatten, 1)  # (B, S, C)
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src_flatten.device)  # (L, 2)
        level_start_index = level_start_index_from_shapes(spatial_shapes)  # (L,)
        valid_ratios = torch.stack([get_valid_ratio(m) for m in masks], 1).to(src_flatten.dtype)  # (B, L, 2)
        return src_flatten, mask_flatten, pos_flatten, spatial_shapes, level_start_index, valid_ratios

    def learned_queries(self, query_embed, batch_size: int):
        """One-stage: query_embed (Q, 2C) -> query_pos, tgt (B, Q, C) and reference points
        (B, Q, 2) = sigmoid(Linear(query_pos))."""
        query_pos, tgt = torch.split(query_embed, self.d_model, dim=1)  # (Q, C) each
        query_pos = query_pos.unsqueeze(0).expand(batch_size, -1, -1)  # (B, Q, C)
        tgt = tgt.unsqueeze(0).expand(batch_size, -1, -1)
        reference_points = self.reference_points(query_pos).sigmoid()  # (B, Q, 2)
        return query_pos, tgt, reference_points

    def select_proposals(self, enc_outputs_class, enc_outputs_coord_unact):
        """Two-stage: keep the ``two_stage_num_proposals`` proposals with the highest first
        logit (class-agnostic "object here" score, as in the official code).

        -> topk (B, K) token indices, their boxes (B, K, 4) in inverse-sigmoid space (detached:
        the decoder does not train the encoder's boxes through its queries).
        """
        k = min(self.two_stage_num_proposals, enc_outputs_class.shape[1])
        topk = torch.topk(enc_outputs_class[..., 0], k, dim=1)[1]  # (B, K)
        topk_coords_unact = torch.gather(enc_outputs_coord_unact, 1,
                                         topk.unsqueeze(-1).expand(-1, -1, 4)).detach()  # (B, K, 4)
        return topk, topk_coords_unact

    def two_stage_queries(self, memory, mask_flatten, spatial_shapes):
        """Two-stage: every encoder token proposes a box; the best become the decoder's queries.

        -> enc_outputs_class (B, S, num_classes), enc_outputs_coord_unact (B, S, 4), and for the
        decoder query_pos, tgt (B, K, C) (a sine embedding of the boxes) and reference boxes (B, K, 4).
        """
        proposals, valid = encoder_proposals(mask_flatten, spatial_shapes)  # (B, S, 4), (B, S, 1)
        output_memory = memory.masked_fill(~valid, 0.0)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))  # (B, S, C)
        # The last class / box head (index num_decoder_layers) belongs to the encoder.
        enc_outputs_class = self.decoder.class_embed[self.decoder.num_layers](output_memory)
        enc_outputs_coord_unact = self.decoder.bbox_embed[self.decoder.num_layers](output_memory) + proposals
        _, topk_coords_unact = self.select_proposals(enc_outputs_class, enc_outputs_coord_unact)
        reference_points = topk_coords_unact.sigmoid()  # (B, K, 4)
        pos_trans_out = self.pos_trans_norm(self.pos_trans(proposal_pos_embed(topk_coords_unact,
                                                                              self.d_model // 2)))
        query_pos, tgt = torch.split(pos_trans_out, self.d_model, dim=2)  # (B, K, C) each
        return enc_outputs_class, enc_outputs_coord_unact, query_pos, tgt, reference_points

    def forward(self, srcs, masks, pos_embeds, query_embed=None):
        if not self.two_stage and query_embed is None:
            raise ValueError("query_embed: required unless two_stage")
        src_flatten, mask_flatten, pos_flatten, spatial_shapes, level_start_index, valid_ratios = \
            self.flatten_levels(srcs, masks, pos_embeds)
        memory = self.encoder(src_flatten, spatial_shapes, level_start_index, valid_ratios, pos_flatten,
                              mask_flatten)  # (B, S, C)

        enc_outputs_class = enc_outputs_coord_unact = None
        if self.two_stage:
            enc_outputs_class, enc_outputs_coord_unact, query_pos, tgt, reference_points = \
                self.two_stage_queries(memory, mask_flatten, spatial_shapes)
        else:
            query_pos, tgt, reference_points = self.learned_queries(query_embed, memory.shape[0])

        hs, inter_references = self.decoder(tgt, reference_points, memory, spatial_shapes, level_start_index,
                                            valid_ratios, query_pos, mask_flatten)
        return hs, reference_points, inter_references, enc_outputs_class, enc_outputs_coord_unact


def build_deformable_transformer(cfg) -> DeformableTransformer:
    return DeformableTransformer(
        d_model=cfg.hidden_dim,
        nheads=cfg.nheads,
        num_encoder_layers=cfg.enc_layers,
        num_decoder_layers=cfg.dec_layers,
        dim_feedforward=cfg.dim_feedforward,
        dropout=cfg.dropout,
        num_feature_levels=cfg.num_feature_levels,
        dec_n_points=cfg.dec_n_points,
        enc_n_points=cfg.enc_n_points,
        two_stage=cfg.two_stage,
        two_stage_num_proposals=cfg.num_queries,
    )
