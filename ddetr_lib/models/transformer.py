"""The DETR transformer: an encoder over image features, a decoder over object queries.

Differences from the original "Attention is all you need" transformer, as in DETR:

* positional encodings are added to the queries and keys of EVERY attention layer
  (never to the values), rather than once to the input;
* the decoder input ("target") starts at zero; what tells the object queries apart is
  their learned positional part ``query_pos`` (``DETR.query_embed``);
* the decoder returns every layer's output (after the shared final LayerNorm) so that
  each layer can get its own auxiliary loss.

Layers are post-norm (``x = norm(x + sublayer(x))``) as published; ``pre_norm=True``
gives the pre-norm variant (``x = x + sublayer(norm(x))``, plus a final encoder norm).

Tensors are batch-first: sequences are (B, L, C). ``nn.MultiheadAttention`` is used
directly so that parameter names match the official checkpoints
(``self_attn.in_proj_weight`` ...). By default it is called with ``need_weights=False``
(the fast, fused path); ``capture_attention(model)`` (``capture.py``) asks for the
weights with forward hooks while it is active.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def with_pos_embed(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    """Add the positional encoding (queries and keys get it; values never do)."""
    return x if pos is None else x + pos


def clones(module: nn.Module, n: int) -> nn.ModuleList:
    """``n`` independent copies of ``module`` (the layers of an encoder or decoder)."""
    return nn.ModuleList(copy.deepcopy(module) for _ in range(n))


class TransformerEncoderLayer(nn.Module):
    """Self-attention over all feature pixels, then a feed-forward network."""

    def __init__(self, d_model: int, nheads: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 pre_norm: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def _ffn(self, x):
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def _self_attention(self, x, pos, key_padding_mask):
        q = k = with_pos_embed(x, pos)
        return self.self_attn(q, k, x, key_padding_mask=key_padding_mask, need_weights=False)[0]

    def forward(self, src, src_key_padding_mask=None, pos=None):
        # src, pos: (B, HW, C); src_key_padding_mask: (B, HW), True on padding
        if self.pre_norm:
            src = src + self.dropout1(self._self_attention(self.norm1(src), pos, src_key_padding_mask))
            src = src + self.dropout2(self._ffn(self.norm2(src)))
            return src
        src = self.norm1(src + self.dropout1(self._self_attention(src, pos, src_key_padding_mask)))
        src = self.norm2(src + self.dropout2(self._ffn(src)))
        return src


class TransformerDecoderLayer(nn.Module):
    """Self-attention among queries, cross-attention from queries to the encoder memory, FFN."""

    def __init__(self, d_model: int, nheads: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 pre_norm: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def _ffn(self, x):
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def _self_attention(self, x, query_pos):
        q = k = with_pos_embed(x, query_pos)
        return self.self_attn(q, k, x, need_weights=False)[0]

    def _cross_attention(self, x, query_pos, memory, pos, memory_key_padding_mask):
        return self.multihead_attn(with_pos_embed(x, query_pos), with_pos_embed(memory, pos), memory,
                                   key_padding_mask=memory_key_padding_mask, need_weights=False)[0]

    def forward(self, tgt, memory, memory_key_padding_mask=None, pos=None, query_pos=None):
        # tgt, query_pos: (B, Q, C); memory, pos: (B, HW, C); memory_key_padding_mask: (B, HW)
        if self.pre_norm:
            tgt = tgt + self.dropout1(self._self_attention(self.norm1(tgt), query_pos))
            tgt = tgt + self.dropout2(self._cross_attention(self.norm2(tgt), query_pos, memory, pos,
                                                            memory_key_padding_mask))
            tgt = tgt + self.dropout3(self._ffn(self.norm3(tgt)))
            return tgt
        tgt = self.norm1(tgt + self.dropout1(self._self_attention(tgt, query_pos)))
        tgt = self.norm2(tgt + self.dropout2(self._cross_attention(tgt, query_pos, memory, pos,
                                                                   memory_key_padding_mask)))
        tgt = self.norm3(tgt + self.dropout3(self._ffn(tgt)))
        return tgt


class TransformerEncoder(nn.Module):
    def __init__(self, encoder_layer: nn.Module, num_layers: int, norm: nn.Module | None = None):
        super().__init__()
        self.layers = clones(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm  # only with pre-norm layers

    def forward(self, src, src_key_padding_mask=None, pos=None):
        output = src
        for layer in self.layers:
            output = layer(output, src_key_padding_mask=src_key_padding_mask, pos=pos)
        if self.norm is not None:
            output = self.norm(output)
        return output


class TransformerDecoder(nn.Module):
    def __init__(self, decoder_layer: nn.Module, num_layers: int, norm: nn.Module,
                 return_intermediate: bool = False):
        super().__init__()
        self.layers = clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm
        self.return_intermediate = return_intermediate

    def forward(self, tgt, memory, memory_key_padding_mask=None, pos=None, query_pos=None):
        """-> (num_layers, B, Q, C) if ``return_intermediate`` else (1, B, Q, C)."""
        output = tgt
        intermediate = []
        for layer in self.layers:
            output = layer(output, memory, memory_key_padding_mask=memory_key_padding_mask,
                           pos=pos, query_pos=query_pos)
            if self.return_intermediate:
                intermediate.append(self.norm(output))
        if self.return_intermediate:
            return torch.stack(intermediate)
        return self.norm(output).unsqueeze(0)


class Transformer(nn.Module):
    """Encoder-decoder transformer of DETR.

    forward(src (B, C, H, W), mask (B, H, W), query_embed (Q, C), pos_embed (B, C, H, W))
    -> hs (num_decoder_layers or 1, B, Q, C), memory (B, C, H, W)
    """

    def __init__(self, d_model: int = 512, nheads: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1,
                 pre_norm: bool = False, return_intermediate_dec: bool = False):
        super().__init__()
        encoder_layer = TransformerEncoderLayer(d_model, nheads, dim_feedforward, dropout, pre_norm)
        encoder_norm = nn.LayerNorm(d_model) if pre_norm else None
        self.encoder = TransformerEncoder(encoder_layer, num_encoder_layers, encoder_norm)
        decoder_layer = TransformerDecoderLayer(d_model, nheads, dim_feedforward, dropout, pre_norm)
        self.decoder = TransformerDecoder(decoder_layer, num_decoder_layers, nn.LayerNorm(d_model),
                                          return_intermediate=return_intermediate_dec)
        self.d_model = d_model
        self.nheads = nheads
        self._reset_parameters()

    def _reset_parameters(self):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src, mask, query_embed, pos_embed):
        b, c, h, w = src.shape
        src = src.flatten(2).transpose(1, 2)  # (B, HW, C)
        pos_embed = pos_embed.flatten(2).transpose(1, 2)  # (B, HW, C)
        mask = mask.flatten(1)  # (B, HW)
        query_pos = query_embed.unsqueeze(0).expand(b, -1, -1)  # (B, Q, C)
        tgt = torch.zeros_like(query_pos)  # the decoder starts from nothing but positions

        memory = self.encoder(src, src_key_padding_mask=mask, pos=pos_embed)  # (B, HW, C)
        hs = self.decoder(tgt, memory, memory_key_padding_mask=mask, pos=pos_embed,
                          query_pos=query_pos)  # (num_decoder_layers, B, Q, C)
        return hs, memory.transpose(1, 2).reshape(b, c, h, w)


def build_transformer(cfg) -> Transformer:
    return Transformer(
        d_model=cfg.hidden_dim,
        nheads=cfg.nheads,
        num_encoder_layers=cfg.enc_layers,
        num_decoder_layers=cfg.dec_layers,
        dim_feedforward=cfg.dim_feedforward,
        dropout=cfg.dropout,
        pre_norm=cfg.pre_norm,
        return_intermediate_dec=True,
    )
