"""Looking inside a model: record what its attention did, without touching the model.

The models carry no recording code. ``capture_attention`` (DETR) and
``capture_deformable`` (Deformable DETR) attach PyTorch forward hooks for the
duration of a ``with`` block and remove them afterwards:

    with capture_deformable(model) as rec:
        out = model(images)
    rec["encoder"][0]["sampling_locations"]    # where encoder layer 0's queries looked

Outside the block a model has no hooks at all, so it runs exactly as if this module
did not exist. Inside, the hooks only read the inputs and outputs of sub-modules and
call the same small functions the model uses (``MSDeformAttn.sampling_points``,
``encoder_proposals``, ``DeformableTransformer.select_proposals``) on the same
inputs, so every recorded value is the one the forward pass used.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ddetr_lib.models.deformable_transformer import DeformableTransformer, encoder_proposals
from ddetr_lib.models.transformer import Transformer


def _arg(args: tuple, kwargs: dict, index: int, name: str):
    """The argument ``name`` of a hooked call, passed by position ``index`` or by keyword."""
    return kwargs[name] if name in kwargs else args[index]


@contextmanager
def _hooked(recorder, modules: list[nn.Module]):
    """Attach ``recorder`` to each of ``modules``; remove every hook when the block ends."""
    handles = []
    try:
        for module in modules:
            handles += recorder.attach(module)
        yield recorder.record
    finally:
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------------------------- DETR
class AttentionRecorder:
    """Forward hooks that collect DETR's attention maps into ``self.record``."""

    def __init__(self):
        self.record = {"encoder": [], "decoder_self": [], "decoder_cross": [], "shape": None, "mask": None}

    def attach(self, transformer: Transformer) -> list:
        handles = [transformer.register_forward_pre_hook(self.new_pass, with_kwargs=True)]
        attentions = [(layer.self_attn, "encoder") for layer in transformer.encoder.layers]
        for layer in transformer.decoder.layers:
            attentions += [(layer.self_attn, "decoder_self"), (layer.multihead_attn, "decoder_cross")]
        for attn, kind in attentions:
            # prepend: other pre-hooks (e.g. a user's) see the call as it is really made
            handles.append(attn.register_forward_pre_hook(self.ask_for_weights, with_kwargs=True, prepend=True))
            handles.append(attn.register_forward_hook(self.weights_of(kind), with_kwargs=True))
        return handles

    def new_pass(self, module, args, kwargs):
        """Transformer.forward(src, mask, query_embed, pos_embed): start afresh."""
        mask = _arg(args, kwargs, 1, "mask")  # (B, H, W)
        for key in ("encoder", "decoder_self", "decoder_cross"):
            self.record[key] = []
        self.record["mask"] = mask.detach()
        self.record["shape"] = tuple(mask.shape[-2:])

    @staticmethod
    def ask_for_weights(module, args, kwargs):
        """Make nn.MultiheadAttention return its per-head weights."""
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    def weights_of(self, kind: str):
        def keep(module, args, kwargs, output):
            self.record[kind].append(output[1].detach())  # (B, heads, L_query, L_key)
        return keep


@contextmanager
def capture_attention(model: nn.Module):
    """Record the attention maps of every forward pass run inside the ``with`` block.

        with capture_attention(model) as maps:
            out = model(samples)
        maps["encoder"][l]        # (B, heads, HW, HW)  encoder self-attention of layer l
        maps["decoder_self"][l]   # (B, heads, Q, Q)    query-to-query attention
        maps["decoder_cross"][l]  # (B, heads, Q, HW)   query-to-pixel attention
        maps["shape"]             # (H, W) of the feature map: reshape HW -> (H, W)
        maps["mask"]              # (B, H, W) True on padding (those keys get weight 0)

    Rows are indexed by the attending token (a pixel, or an object query), columns by
    the attended one, pixels in row-major order. Outside the block (and by default) the
    layers call ``nn.MultiheadAttention`` with ``need_weights=False`` and nothing is
    computed or stored; inside, a hook asks each attention for its per-head weights
    (``need_weights=True``: PyTorch's explicit softmax(QK^T)V path, equal to the fused
    one up to float rounding). Each new forward pass inside the block replaces the maps.
    """
    transformers = [m for m in model.modules() if isinstance(m, Transformer)]
    if not transformers:
        raise ValueError("model: no DETR Transformer inside; use capture_deformable for Deformable DETR")
    with _hooked(AttentionRecorder(), transformers) as maps:
        yield maps


# ----------------------------------------------------------------------------- Deformable DETR
class DeformableRecorder:
    """Forward hooks that collect what Deformable DETR's attention did into ``self.record``."""

    def __init__(self):
        self.record = {"encoder": [], "decoder": [], "decoder_reference_boxes": [], "proposals": None}
        self.padding_mask = None  # (N, S) of the current pass, for the two-stage proposals

    def attach(self, transformer: DeformableTransformer) -> list:
        handles = [transformer.register_forward_pre_hook(self.new_pass, with_kwargs=True),
                   transformer.register_forward_hook(self.proposals, with_kwargs=True),
                   transformer.encoder.register_forward_pre_hook(self.encoder_inputs, with_kwargs=True),
                   transformer.decoder.register_forward_hook(self.decoder_references, with_kwargs=True)]
        for layer in transformer.encoder.layers:
            handles.append(layer.self_attn.register_forward_hook(self.sampling_of("encoder"), with_kwargs=True))
        for layer in transformer.decoder.layers:
            handles.append(layer.cross_attn.register_forward_hook(self.sampling_of("decoder"), with_kwargs=True))
        return handles

    def new_pass(self, module, args, kwargs):
        """DeformableTransformer.forward(srcs, masks, pos_embeds, query_embed): start afresh."""
        self.record.clear()
        self.record.update({"encoder": [], "decoder": [], "decoder_reference_boxes": [], "proposals": None,
                            "masks": [m.detach() for m in _arg(args, kwargs, 1, "masks")]})

    def encoder_inputs(self, module, args, kwargs):
        """DeformableTransformerEncoder.forward(src, spatial_shapes, level_start_index, valid_ratios,
        pos, padding_mask): the token layout of this pass."""
        self.record["spatial_shapes"] = _arg(args, kwargs, 1, "spatial_shapes").detach()
        self.record["level_start_index"] = _arg(args, kwargs, 2, "level_start_index").detach()
        self.record["valid_ratios"] = _arg(args, kwargs, 3, "valid_ratios").detach()
        self.padding_mask = _arg(args, kwargs, 5, "padding_mask")

    def sampling_of(self, stage: str):
        def keep(module, args, kwargs, output):
            # MSDeformAttn.forward(query, reference_points, input_flatten, spatial_shapes, ...): the
            # same sampling_points call as the forward pass, on the same inputs.
            query = _arg(args, kwargs, 0, "query")
            reference_points = _arg(args, kwargs, 1, "reference_points")
            with torch.no_grad():
                locations, weights = module.sampling_points(query, reference_points,
                                                            _arg(args, kwargs, 3, "spatial_shapes"))
            self.record[stage].append({"sampling_locations": locations, "attention_weights": weights,
                                       "reference_points": reference_points.detach()})
        return keep

    def decoder_references(self, module, args, kwargs, output):
        """DeformableTransformerDecoder.forward(tgt, reference_points, ...) -> (hs, references):
        layer 0 used the input reference, layer l the reference handed on by layer l-1."""
        first = _arg(args, kwargs, 1, "reference_points")
        self.record["decoder_reference_boxes"] = [first.detach()] + [r.detach() for r in output[1][:-1]]

    def proposals(self, module, args, kwargs, output):
        """DeformableTransformer.forward -> (hs, init_reference, inter_references, enc_outputs_class,
        enc_outputs_coord_unact): the two-stage proposals, scored, and the ones kept."""
        enc_class, enc_coord_unact = output[3], output[4]
        if enc_class is None:  # one-stage
            return
        with torch.no_grad():
            valid = encoder_proposals(self.padding_mask, self.record["spatial_shapes"])[1]  # (N, S, 1)
            topk = module.select_proposals(enc_class, enc_coord_unact)[0]  # (N, Q)
        self.record["proposals"] = {"boxes": enc_coord_unact.detach().sigmoid(), "logits": enc_class.detach(),
                                    "valid": valid[..., 0], "topk_indices": topk}


@contextmanager
def capture_deformable(model: nn.Module):
    """Record what deformable attention did in every forward pass inside the block.

        with capture_deformable(model) as rec:
            out = model(samples)
        rec["encoder"][l] / rec["decoder"][l]: dicts for encoder / decoder layer l with
            sampling_locations (N, Lq, M, L, P, 2)  (x, y) in [0, 1] of the PADDED map
            attention_weights  (N, Lq, M, L, P)     softmaxed over L*P per head
            reference_points   (N, Lq, L, 2 or 4)   as given to the attention (padded coords)
        rec["spatial_shapes"] (L, 2), rec["level_start_index"] (L,), rec["valid_ratios"] (N, L, 2),
        rec["masks"] [(N, H_l, W_l)] True on padding
        rec["decoder_reference_boxes"][l]  (N, Q, 2 or 4) reference of decoder layer l
                                           (valid-image coordinates)
        rec["proposals"]  two-stage only: {boxes (N, S, 4), logits (N, S, C), valid (N, S),
                          topk_indices (N, Q)}

    (M heads, L feature levels, P sampling points per head and level, S = sum of the
    levels' H_l * W_l tokens, Q queries.) Only detached copies of tensors the forward
    pass computes anyway are stored, so the outputs are exactly those without capture;
    outside the block the model has no hooks. Each new forward pass replaces the record.
    """
    transformers = [m for m in model.modules() if isinstance(m, DeformableTransformer)]
    if not transformers:
        raise ValueError("model: no DeformableTransformer inside; use capture_attention for DETR")
    with _hooked(DeformableRecorder(), transformers) as rec:
        yield rec
