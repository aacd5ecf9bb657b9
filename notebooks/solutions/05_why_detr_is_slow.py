"""Solutions to the exercises of ``05_why_detr_is_slow.ipynb`` (same names as in the notebook)."""
import math

import torch


def attention_matrix_bytes(image_h, image_w, stride, num_heads, batch_size=1, bytes_per_element=4):
    """-> int: bytes of the (batch, heads, N, N) attention weights, N = ceil(h / stride) * ceil(w / stride)."""
    n = math.ceil(image_h / stride) * math.ceil(image_w / stride)
    return batch_size * num_heads * n * n * bytes_per_element


def attention_entropy(weights):
    """weights (..., N_keys), rows summing to 1 -> entropy (...) in nats."""
    return -torch.special.xlogy(weights, weights).sum(-1)
