"""Exercise checks for ``notebooks/03_transformer_and_detr.ipynb``.

    from ddetr_lib.course import checks_03
    checks_03.check_attention_with_padding(my_fn)   # prints PASS / FAIL (+ hint) / TODO

Each check compares the learner's function with an independent reference on a few small
cases: PyTorch's fused ``F.scaled_dot_product_attention``, the library's
``TransformerDecoderLayer`` and ``PostProcess``.
Solutions: ``notebooks/solutions/03_transformer_and_detr.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ddetr_lib.course import CheckResult, check_function


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference_padded_attention(q, k, v, key_padding_mask):
    # attn_mask for scaled_dot_product_attention: True = may attend (the opposite of padding)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=~key_padding_mask[:, None, :])


def check_attention_with_padding(fn) -> CheckResult:
    """``fn(q (B, Lq, d), k (B, Lk, d), v (B, Lk, dv), key_padding_mask (B, Lk)) -> (B, Lq, dv)``."""
    g = _gen(3)
    cases = []
    for b, lq, lk, d, dv in ((1, 1, 3, 2, 1), (2, 4, 6, 8, 3), (3, 5, 10, 16, 4)):
        mask = torch.zeros(b, lk, dtype=torch.bool)
        for i in range(b):
            mask[i, lk - i * (lk // 4):] = i > 0  # image 0 unpadded, the others padded at the end
        cases.append((torch.randn(b, lq, d, generator=g), torch.randn(b, lk, d, generator=g),
                      torch.randn(b, lk, dv, generator=g), mask))
    return check_function(
        "attention with a padding mask", fn, cases, _reference_padded_attention,
        hint="Hint: divide the scores by sqrt(d), set the scores of padded keys to -inf "
             "(scores.masked_fill(mask[:, None, :], float('-inf'))) BEFORE the softmax, so the "
             "remaining weights still sum to 1; multiplying weights by 0 afterwards does not renormalise.")


def _reference_decoder_layer(layer, tgt, memory, pos, query_pos):
    with torch.no_grad():
        return layer(tgt, memory, pos=pos, query_pos=query_pos)


def check_decoder_layer(fn) -> CheckResult:
    """``fn(layer, tgt (B, Q, C), memory (B, HW, C), pos (B, HW, C), query_pos (B, Q, C)) -> (B, Q, C)``
    redoes a post-norm ``TransformerDecoderLayer`` (dropout 0) with the layer's own weights."""
    from ddetr_lib.models.transformer import TransformerDecoderLayer

    torch.manual_seed(0)
    cases = []
    for b, q, hw, c, heads in ((1, 3, 4, 8, 2), (2, 5, 12, 16, 4)):
        layer = TransformerDecoderLayer(c, heads, dim_feedforward=2 * c, dropout=0.0).eval()
        g = _gen(10 + b)
        tgt = torch.randn(b, q, c, generator=g) if b > 1 else torch.zeros(b, q, c)  # layer 0 starts at zeros
        cases.append((layer, tgt, torch.randn(b, hw, c, generator=g), torch.randn(b, hw, c, generator=g),
                      torch.randn(b, q, c, generator=g)))

    def call(layer, *tensors):
        with torch.no_grad():
            return fn(layer, *tensors)

    return check_function(
        "decoder layer by hand", call, cases, _reference_decoder_layer, atol=1e-5, rtol=1e-4,
        hint="Hint: three post-norm blocks, x = norm(x + block(x)). Self-attention: queries and keys "
             "tgt + query_pos, values tgt. Cross-attention: queries tgt + query_pos, keys memory + pos, "
             "values memory (no positions on values). Then norm3(x + linear2(relu(linear1(x)))).")


def _reference_detections(pred_logits, pred_boxes, image_sizes):
    from ddetr_lib.models import PostProcess

    out = PostProcess()({"pred_logits": pred_logits, "pred_boxes": pred_boxes}, image_sizes)
    return (torch.stack([o["scores"] for o in out]), torch.stack([o["labels"] for o in out]),
            torch.stack([o["boxes"] for o in out]))


def check_detections(fn) -> CheckResult:
    """``fn(pred_logits (B, Q, C+1), pred_boxes (B, Q, 4), image_sizes (B, 2) as (h, w))
    -> (scores (B, Q), labels (B, Q), boxes (B, Q, 4) x0 y0 x1 y1 pixels)``."""
    g = _gen(7)
    # case 0: the no-object logit is the largest for every query (an untrained or empty image)
    logits0 = torch.tensor([[[0.5, 1.0, 0.2, 4.0], [2.0, 0.1, 0.3, 3.0]]])
    boxes0 = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]])
    cases = [
        (logits0, boxes0, torch.tensor([[100, 200]])),
        (torch.randn(2, 6, 6, generator=g) * 3, torch.rand(2, 6, 4, generator=g) * 0.5 + 0.1,
         torch.tensor([[113, 117], [128, 96]])),
    ]
    return check_function(
        "detections from DETR outputs", fn, cases, _reference_detections,
        hint="Hint: softmax over ALL C+1 logits first, then drop the last column (no object) and take "
             "max(-1) for score and label; boxes: cx - w/2 ... then multiply x by the image WIDTH and y by "
             "the HEIGHT (image_sizes rows are (h, w)).")
