"""Exercise checks for ``notebooks/05_why_detr_is_slow.ipynb``.

    from ddetr_lib.course import checks_05
    checks_05.check_attention_entropy(my_fn)   # prints PASS / FAIL (+ hint) / TODO

References: the attention weights that ``nn.MultiheadAttention`` really returns (their
size), and ``torch.distributions.Categorical(...).entropy()``.
Solutions: ``notebooks/solutions/05_why_detr_is_slow.py``.
"""
from __future__ import annotations

import torch
from torch import nn

from ddetr_lib.course import CheckResult, check_function


def _measured_attention_bytes(image_h, image_w, stride, num_heads, batch_size=1, bytes_per_element=4):
    # Build the feature map's token sequence and let nn.MultiheadAttention produce the weights.
    h = -(-image_h // stride)
    w = -(-image_w // stride)
    tokens = torch.zeros(batch_size, h * w, 4 * num_heads)
    mha = nn.MultiheadAttention(4 * num_heads, num_heads, batch_first=True)
    with torch.no_grad():
        _, weights = mha(tokens, tokens, tokens, need_weights=True, average_attn_weights=False)
    return int(weights.numel() * bytes_per_element)


def check_attention_matrix_bytes(fn) -> CheckResult:
    """``fn(image_h, image_w, stride, num_heads, batch_size=1, bytes_per_element=4) -> int``."""
    cases = [
        (64, 64, 16, 1, 1, 4),     # a 4x4 map: 16 x 16 weights
        (64, 96, 16, 2, 1, 4),     # not square
        (100, 130, 32, 8, 2, 4),   # sizes that do not divide: the map is 4 x 5 (rounded up)
        (128, 128, 16, 4, 3, 2),   # a batch, bf16 / fp16 weights
    ]
    return check_function(
        "attention matrix bytes", fn, cases, _measured_attention_bytes,
        hint="Hint: N = ceil(h / stride) * ceil(w / stride) feature pixels (math.ceil, or -(-h // stride)); "
             "the weights are (batch, heads, N, N): bytes = batch * heads * N * N * bytes_per_element. "
             "N is squared: every pixel attends to every pixel.")


def _reference_entropy(weights):
    return torch.distributions.Categorical(probs=weights).entropy()


def check_attention_entropy(fn) -> CheckResult:
    """``fn(weights (..., N) rows summing to 1) -> (...)`` entropy in nats, 0 log 0 = 0."""
    g = torch.Generator().manual_seed(8)
    padded = torch.rand(2, 3, 10, generator=g)
    padded[0, :, 7:] = 0  # padded keys: weight exactly 0
    padded = padded / padded.sum(-1, keepdim=True)
    cases = [
        (torch.full((1, 8), 1 / 8),),                              # uniform: log 8
        (torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]),),       # one-hot: 0; half-half: log 2
        (torch.randn(2, 4, 5, 6, generator=g).softmax(-1),),       # (B, heads, Lq, Lk)
        (padded,),
    ]

    def call(weights):
        out = fn(weights)
        if torch.is_tensor(out) and torch.isnan(out).any():
            raise ValueError(f"the result has {int(torch.isnan(out).sum())} NaN value(s) (0 * log 0?)")
        return out

    return check_function(
        "attention entropy", call, cases, _reference_entropy,
        hint="Hint: H = -(w * log w).sum(-1) with the NATURAL log; where w == 0 the term is 0, but "
             "0 * log(0) is 0 * -inf = nan in PyTorch: use torch.special.xlogy(w, w) or "
             "w * w.clamp_min(1e-30).log(). Sum over the last axis only.")
