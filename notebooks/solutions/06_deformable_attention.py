"""Solutions to the exercises of notebook 06 (deformable attention)."""
import math

import torch


def bilinear_sample(value, loc):
    """value (H, W, D), loc (2,) as (x, y) in [0, 1] -> (D,): bilinear, zero outside the map."""
    H, W, D = value.shape
    u = loc[0].item() * W - 0.5
    v = loc[1].item() * H - 0.5
    u0, v0 = math.floor(u), math.floor(v)
    a, b = u - u0, v - v0
    out = torch.zeros(D, dtype=value.dtype)
    for col, row, weight in ((u0, v0, (1 - a) * (1 - b)), (u0 + 1, v0, a * (1 - b)),
                             (u0, v0 + 1, (1 - a) * b), (u0 + 1, v0 + 1, a * b)):
        if 0 <= col < W and 0 <= row < H:
            out += weight * value[row, col]
    return out


def offsets_to_locations(ref, offsets, H, W):
    """ref (Q, 2) as (x, y) in [0, 1]; offsets (Q, M, K, 2) in pixels -> locations (Q, M, K, 2)."""
    scale = torch.tensor([W, H], dtype=offsets.dtype)
    return ref[:, None, None, :] + offsets / scale


def initial_offsets(n_heads, n_points):
    """(M, K, 2): head m on angle 2*pi*m/M (larger |component| scaled to 1), point k at (k+1) steps."""
    angles = torch.arange(n_heads) * (2 * math.pi / n_heads)
    direction = torch.stack([angles.cos(), angles.sin()], -1)  # (M, 2)
    direction = direction / direction.abs().max(-1, keepdim=True).values
    steps = torch.arange(1, n_points + 1, dtype=torch.float32)  # (K,)
    return direction[:, None, :] * steps[None, :, None]  # (M, K, 2)
