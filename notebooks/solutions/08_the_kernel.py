"""Solutions to the exercises of notebook 08 (the kernel)."""
import math

import torch
import torch.nn.functional as F


def sample_pixel(feature_map, H, W, x, y):
    """feature_map (H*W, D), row i*W + j is pixel (i, j); x, y floats in pixel coordinates -> (D,)."""
    x0, y0 = math.floor(x), math.floor(y)
    fx, fy = x - x0, y - y0
    out = torch.zeros(feature_map.shape[1], dtype=feature_map.dtype)
    for row, wy in ((y0, 1 - fy), (y0 + 1, fy)):
        for col, wx in ((x0, 1 - fx), (x0 + 1, fx)):
            if 0 <= row < H and 0 <= col < W:
                out += wy * wx * feature_map[row * W + col]
    return out


def grad_attention_weights(value, spatial_shapes, level_start_index, locations, weights, grad_out):
    """-> (N, Lq, M, L, P): dLoss/d attention_weights, given grad_out = dLoss/d output (N, Lq, M*D)."""
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = locations.shape
    g = grad_out.view(N, Lq, M, D)
    grads = []
    for l, ((h, w), start) in enumerate(zip(spatial_shapes.tolist(), level_start_index.tolist())):
        v = value[:, start:start + h * w].permute(0, 2, 3, 1).reshape(N * M, D, h, w)
        grid = 2 * locations[:, :, :, l].transpose(1, 2).reshape(N * M, Lq, P, 2) - 1
        s = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (N*M, D, Lq, P)
        s = s.view(N, M, D, Lq, P).permute(0, 3, 1, 4, 2)  # (N, Lq, M, P, D)
        grads.append((s * g[:, :, :, None, :]).sum(-1))  # (N, Lq, M, P)
    return torch.stack(grads, 3)  # (N, Lq, M, L, P)
