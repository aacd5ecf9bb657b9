"""Load the official DETR / Deformable DETR checkpoints into our models.

An official checkpoint file is ``{"model": state_dict, "args": argparse.Namespace, ...}``.
Our modules use the same names and shapes, so loading is a plain strict
``load_state_dict``. Two things need care:

* Safety: ``torch.load`` unpickles. We load with ``weights_only=True``, which only
  rebuilds tensors and plain containers, and allow exactly one extra class,
  ``argparse.Namespace`` (it restores a dict of plain values); any other pickled class
  is refused.
* Fine-tuning on another dataset: the class head (``class_embed``) has one row per
  class (plus "no object" for DETR), so its shape depends on ``num_classes``. A
  mismatch raises a ``ValueError`` that explains it; ``reinit_class_head=True`` drops the
  checkpoint's class head(s) and keeps the model's freshly initialised ones, loading
  everything else strictly.
"""
from __future__ import annotations

import argparse
import os
import pickle

import torch
from torch import nn


def _is_class_head(key: str) -> bool:
    # DETR: class_embed.*; Deformable DETR: class_embed.{i}.* and
    # transformer.decoder.class_embed.{i}.* (two-stage).
    return "class_embed" in key


def read_official_state_dict(path_or_state_dict) -> dict:
    """The model state dict of an official checkpoint file (or of an already loaded dict)."""
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                ckpt = torch.load(path_or_state_dict, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(
                f"{os.fspath(path_or_state_dict)}: refused to load: the file contains pickled objects other "
                f"than tensors, plain containers and argparse.Namespace ({e})"
            ) from e
    else:
        ckpt = path_or_state_dict
    if not isinstance(ckpt, dict):
        raise ValueError(f"path_or_state_dict: expected a checkpoint dict, got {type(ckpt).__name__}")
    state_dict = ckpt["model"] if "model" in ckpt else ckpt
    if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError("path_or_state_dict: no 'model' state dict of tensors found in the checkpoint")
    return state_dict


def load_official_checkpoint(model: nn.Module, path_or_state_dict, strict: bool = True,
                             reinit_class_head: bool = False) -> tuple[list[str], list[str]]:
    """Load an official checkpoint into ``model``. Returns (missing_keys, unexpected_keys).

    ``reinit_class_head=True``: ignore the checkpoint's class head(s) (for fine-tuning
    on a dataset with another ``num_classes``); they are then not reported as missing.
    """
    state_dict = dict(read_official_state_dict(path_or_state_dict))
    own = model.state_dict()

    if reinit_class_head:
        state_dict = {k: v for k, v in state_dict.items() if not _is_class_head(k)}
        result = model.load_state_dict(state_dict, strict=False)
        missing = [k for k in result.missing_keys if not _is_class_head(k)]
        unexpected = list(result.unexpected_keys)
        if strict and (missing or unexpected):
            raise RuntimeError(f"checkpoint does not match the model (besides the class head): "
                               f"missing keys {missing}, unexpected keys {unexpected}")
        return missing, unexpected

    head_mismatch = [k for k in state_dict if _is_class_head(k) and k in own
                     and state_dict[k].shape != own[k].shape]
    if head_mismatch:
        key = next((k for k in head_mismatch if k.endswith("weight")), head_mismatch[0])
        n_ckpt, n_model = state_dict[key].shape[0], own[key].shape[0]
        extra = getattr(model, "num_classes", None)
        extra = f" (num_classes={extra})" if extra is not None else ""
        raise ValueError(
            f"the checkpoint's class head has {n_ckpt} outputs but the model's has {n_model}{extra} "
            f"({key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(own[key].shape)}): "
            f"the model was built with a different num_classes. To fine-tune the checkpoint on your "
            f"classes, pass reinit_class_head=True: everything else is loaded and the class head keeps "
            f"its fresh initialisation. (The official COCO checkpoints use num_classes=91.)"
        )
    result = model.load_state_dict(state_dict, strict=strict)
    return list(result.missing_keys), list(result.unexpected_keys)
