"""Solutions to the exercises of notebook 07 (multi-scale deformable attention)."""
import torch


def start_index(spatial_shapes):
    """(L, 2) int64 rows (H_l, W_l) -> (L,) int64: where each level starts in the flattened sequence."""
    sizes = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def valid_ratio(mask):
    """mask (B, H, W) bool, True on padding at the bottom/right -> (B, 2) float as (w, h)."""
    _, H, W = mask.shape
    valid_cols = (~mask[:, 0, :]).sum(1).float()
    valid_rows = (~mask[:, :, 0]).sum(1).float()
    return torch.stack([valid_cols / W, valid_rows / H], -1)


def flatten_levels(maps):
    """[(B, C, H_l, W_l)] -> (B, S, C), levels one after the other, each row by row."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], 1)
