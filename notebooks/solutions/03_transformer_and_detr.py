"""Solutions to the exercises of ``03_transformer_and_detr.ipynb`` (same names as in the notebook)."""
import math

import torch
import torch.nn.functional as F


def attention_with_padding(q, k, v, key_padding_mask):
    """q (B, Lq, d), k (B, Lk, d), v (B, Lk, dv), key_padding_mask (B, Lk) True = padding -> (B, Lq, dv)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, Lq, Lk)
    scores = scores.masked_fill(key_padding_mask[:, None, :], float("-inf"))
    return scores.softmax(-1) @ v


def multi_head_attention(query, key, value, mha):
    """The notebook's hand-made ``nn.MultiheadAttention`` forward (used by ``decoder_layer_by_hand``)."""
    B, Lq, C = query.shape
    Lk, M = key.shape[1], mha.num_heads
    d = C // M
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    q = (query @ w_q.T + b_q).view(B, Lq, M, d).transpose(1, 2)
    k = (key @ w_k.T + b_k).view(B, Lk, M, d).transpose(1, 2)
    v = (value @ w_v.T + b_v).view(B, Lk, M, d).transpose(1, 2)
    weights = (q @ k.transpose(-2, -1) / math.sqrt(d)).softmax(-1)  # (B, M, Lq, Lk)
    out = (weights @ v).transpose(1, 2).reshape(B, Lq, C)
    return mha.out_proj(out), weights


def decoder_layer_by_hand(layer, tgt, memory, pos, query_pos):
    """tgt, query_pos (B, Q, C); memory, pos (B, HW, C) -> (B, Q, C)."""
    q = k = tgt + query_pos
    tgt = layer.norm1(tgt + multi_head_attention(q, k, tgt, layer.self_attn)[0])
    tgt = layer.norm2(tgt + multi_head_attention(tgt + query_pos, memory + pos, memory, layer.multihead_attn)[0])
    tgt = layer.norm3(tgt + layer.linear2(F.relu(layer.linear1(tgt))))
    return tgt


def detections(pred_logits, pred_boxes, image_sizes):
    """pred_logits (B, Q, C+1), pred_boxes (B, Q, 4), image_sizes (B, 2) as (h, w)
    -> scores (B, Q), labels (B, Q), boxes (B, Q, 4) as x0, y0, x1, y1 in pixels."""
    prob = pred_logits.softmax(-1)
    scores, labels = prob[..., :-1].max(-1)
    cx, cy, w, h = pred_boxes.unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    img_h, img_w = image_sizes.unbind(-1)
    scale = torch.stack([img_w, img_h, img_w, img_h], -1)[:, None, :].to(xyxy.dtype)  # (B, 1, 4)
    return scores, labels, xyxy * scale
