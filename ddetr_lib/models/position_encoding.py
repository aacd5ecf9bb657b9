"""Position encodings: where each feature-map pixel is, as a vector.

Attention is permutation invariant: without help, the transformer cannot tell the
top-left pixel from the bottom-right one. DETR adds a position vector to the queries
and keys of every attention layer. Two variants, as in the paper:

* ``PositionEmbeddingSine`` (the default): the 2-D generalisation of the
  "Attention is all you need" encoding. Half of the channels encode y, half encode x.
  Positions are counted *over the real image only* (cumulative sums over the
  non-padded mask), then normalised to ``(0, 2*pi]`` so that an image padded into a
  larger batch gets the same encoding as the image on its own (Deformable DETR's
  official code first subtracts 0.5 from the count: ``offset=-0.5``)::

      y_embed[i, j] = (number of valid rows up to i + offset) / (valid height + eps) * 2*pi
      pos_y = sine_encoding(y_embed): pos_y[..., 2k] = sin(y_embed / dim_t[2k]),
                                      pos_y[..., 2k+1] = cos(y_embed / dim_t[2k+1]),
      dim_t[k] = temperature ** (2 * (k // 2) / num_pos_feats)

  and the same for x; the output concatenates ``(pos_y, pos_x)`` on the channel axis.
* ``PositionEmbeddingLearned``: a learned table of 50 row and 50 column vectors.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ddetr_lib.utils import NestedTensor


def sine_encoding(coords: torch.Tensor, num_pos_feats: int = 128, temperature: float = 10000.0) -> torch.Tensor:
    """The sine/cosine encoding of each scalar in ``coords`` (already scaled, e.g. to
    [0, 2*pi]): (...) -> (..., num_pos_feats), even channels sin, odd channels cos::

        dim_t[k]      = temperature ** (2 * (k // 2) / num_pos_feats)
        out[..., 2k]   = sin(coords / dim_t[2k]),   out[..., 2k+1] = cos(coords / dim_t[2k+1])

    Used for pixel positions here and for box coordinates by the two-stage decoder queries.
    """
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=coords.device)  # (F,)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    angles = coords[..., None] / dim_t  # (..., F)
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)  # (..., F)


class PositionEmbeddingSine(nn.Module):
    """Fixed sine/cosine encoding of (y, x), normalised by the unpadded image size."""

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True,
                 scale: float | None = None, offset: float = 0.0):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("scale: only meaningful with normalize=True")
        self.num_pos_feats = num_pos_feats
        # Deformable DETR's official code shifts the 1-based count by -0.5 before
        # normalising (the pixel centre); DETR's does not (offset 0).
        self.offset = offset
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: NestedTensor) -> torch.Tensor:
        mask = x.mask  # (B, H, W), True on padding
        not_mask = ~mask
        # 1-based position of each pixel counted over valid pixels only.
        y_embed = not_mask.cumsum(1, dtype=torch.float32)  # (B, H, W)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)  # (B, H, W)
        if self.normalize:
            eps = 1e-6
            # The last valid row / column holds the valid size: divide to get (0, 1].
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + eps) * self.scale

        pos_x = sine_encoding(x_embed, self.num_pos_feats, self.temperature)  # (B, H, W, F)
        pos_y = sine_encoding(y_embed, self.num_pos_feats, self.temperature)  # (B, H, W, F)
        pos = torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # (B, 2F, H, W)
        return pos.to(x.tensors.dtype)


class PositionEmbeddingLearned(nn.Module):
    """Learned absolute encoding: a row vector plus a column vector per position (up to 50)."""

    def __init__(self, num_pos_feats: int = 128, max_positions: int = 50):
        super().__init__()
        self.row_embed = nn.Embedding(max_positions, num_pos_feats)
        self.col_embed = nn.Embedding(max_positions, num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, x: NestedTensor) -> torch.Tensor:
        b = x.tensors.shape[0]
        h, w = x.tensors.shape[-2:]
        if h > self.row_embed.num_embeddings or w > self.col_embed.num_embeddings:
            raise ValueError(
                f"x: feature map {h}x{w} is larger than the learned table "
                f"({self.row_embed.num_embeddings} positions); use the sine encoding"
            )
        device = x.tensors.device
        x_emb = self.col_embed(torch.arange(w, device=device))  # (W, F)
        y_emb = self.row_embed(torch.arange(h, device=device))  # (H, F)
        pos = torch.cat([
            x_emb.unsqueeze(0).expand(h, w, -1),  # (H, W, F)
            y_emb.unsqueeze(1).expand(h, w, -1),  # (H, W, F)
        ], dim=-1)  # (H, W, 2F)
        return pos.permute(2, 0, 1).unsqueeze(0).expand(b, -1, -1, -1)  # (B, 2F, H, W)


def build_position_encoding(cfg) -> nn.Module:
    """``cfg.position_embedding``: ``"sine"`` (alias ``"v2"``) or ``"learned"`` (alias ``"v3"``)."""
    n_steps = cfg.hidden_dim // 2
    if cfg.position_embedding in ("sine", "v2"):
        # Deformable DETR (official code) encodes pixel centres: offset -0.5; DETR 0.
        return PositionEmbeddingSine(n_steps, normalize=True, offset=cfg.position_embedding_offset)
    if cfg.position_embedding in ("learned", "v3"):
        return PositionEmbeddingLearned(n_steps)
    raise ValueError(f"position_embedding: unknown {cfg.position_embedding!r}; use 'sine' or 'learned'")
