"""What every figure needs: a forward pass with capture, and the confident queries.

Coordinates: every figure draws the *unpadded* image over the extent ``(0, W, H, 0)``
(pixel (i, j) covers [j, j+1] x [i, i+1]; see :func:`~ddetr_lib.viz.images.show_image`).
Positions the model gives are normalised by the unpadded image, so a figure can be drawn
on the image the model saw or on the original, larger one: only its size is used.

    run = run_with_capture(model, [image_a, image_b])   # one forward pass, everything recorded
    run.outputs, run.record, run.inputs, run.kind        # kind: "detr" or "deformable"
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ddetr_lib.viz.images import IMAGENET_MEAN, IMAGENET_STD, to_numpy_image


def model_input(image) -> torch.Tensor:
    """An image as the model takes it: (3, H, W) float, ImageNet-normalised.

    A float tensor is taken to be normalised already (what the dataset returns); a uint8
    tensor, PIL image, (H, W, 3) array or file path is scaled to [0, 1] and normalised.
    No resizing: resize first if the model expects a given size.
    """
    if isinstance(image, torch.Tensor) and image.is_floating_point():
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"images: expected (3, H, W) tensors, got {tuple(image.shape)}")
        return image
    if isinstance(image, (str,)) or hasattr(image, "__fspath__"):
        from PIL import Image

        with Image.open(image) as im:
            image = im.convert("RGB")
    pixels = to_numpy_image(image)  # (H, W, 3) uint8
    x = torch.from_numpy(np.array(pixels, copy=True)).permute(2, 0, 1).float() / 255.0  # (3, H, W)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


@dataclass
class CapturedRun:
    """One forward pass and what the capture recorded (see ``run_with_capture``)."""

    outputs: dict  # the model's outputs (pred_logits, pred_boxes, aux_outputs, ...)
    record: dict  # capture_attention's maps (DETR) or capture_deformable's record
    inputs: list  # the (3, H, W) normalised tensors fed to the model (unpadded)
    kind: str  # "detr" or "deformable"

    @property
    def focal(self) -> bool:
        """Deformable DETR scores classes with sigmoids, DETR with a softmax (last = no object)."""
        return self.kind == "deformable"


def model_kind(model) -> str:
    """``"deformable"`` for a Deformable DETR, ``"detr"`` for DETR (else ValueError)."""
    from ddetr_lib.models import DETR, DeformableDETR

    if isinstance(model, DeformableDETR):
        return "deformable"
    if isinstance(model, DETR):
        return "detr"
    raise ValueError(f"model: expected a DETR or DeformableDETR, got {type(model).__name__}")


@torch.no_grad()
def run_with_capture(model, images) -> CapturedRun:
    """Run ``model`` (in eval mode) on ``images`` and record its attention.

    images: a list of images of any size (see :func:`model_input`; they are padded into one
    batch). Uses ``capture_attention`` for DETR and ``capture_deformable`` for Deformable DETR.
    """
    from ddetr_lib.models import capture_attention, capture_deformable

    if not isinstance(images, (list, tuple)) or not images:
        raise ValueError("images: expected a non-empty list of images")
    kind = model_kind(model)
    device = next(model.parameters()).device
    inputs = [model_input(im) for im in images]
    capture = capture_deformable if kind == "deformable" else capture_attention
    was_training = model.training
    model.eval()
    try:
        with capture(model) as record:
            outputs = model([x.to(device) for x in inputs])
    finally:
        model.train(was_training)
    outputs = _to_cpu(outputs)
    record = _to_cpu(record)
    return CapturedRun(outputs=outputs, record=record, inputs=inputs, kind=kind)


def _to_cpu(obj):
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def query_scores(outputs: dict, batch_index: int = 0, focal_loss: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's best class and its probability: ``(scores (Q,), labels (Q,))`` for image ``batch_index``.

    focal_loss=True (Deformable DETR): sigmoid per class; False (DETR): softmax without the
    last ("no object") class.
    """
    logits = outputs["pred_logits"][batch_index].detach().float().cpu()  # (Q, C)
    prob = logits.sigmoid() if focal_loss else logits.softmax(-1)[:, :-1]
    return prob.max(-1)


def confident_queries(outputs: dict, batch_index: int = 0, focal_loss: bool = True, score_threshold: float = 0.3,
                      min_queries: int = 1, max_queries: int | None = None) -> torch.Tensor:
    """Indices of the queries scoring at least ``score_threshold``, best first.

    When fewer pass (an untrained model), the ``min_queries`` best are returned instead, so
    that a figure is never empty; ``max_queries`` caps the number.
    """
    scores, _ = query_scores(outputs, batch_index, focal_loss)
    order = scores.argsort(descending=True)
    keep = order[scores[order] >= score_threshold]
    if len(keep) < min_queries:
        keep = order[:min_queries]
    if max_queries is not None:
        keep = keep[:max_queries]
    return keep

