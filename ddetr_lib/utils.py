"""Small shared pieces: the padded-batch container and distributed helpers."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist


class NestedTensor:
    """A batch of images of different sizes, padded to one size.

    ``tensors``: (B, 3, H, W), the images top-left aligned and zero padded.
    ``mask``:    (B, H, W) bool, True on padding (pixels that are not image).
    """

    def __init__(self, tensors: torch.Tensor, mask: torch.Tensor):
        self.tensors = tensors
        self.mask = mask

    def to(self, device, non_blocking: bool = False) -> "NestedTensor":
        return NestedTensor(
            self.tensors.to(device, non_blocking=non_blocking),
            self.mask.to(device, non_blocking=non_blocking),
        )

    def decompose(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tensors, self.mask

    def image_sizes(self) -> torch.Tensor:
        """(B, 2) unpadded (h, w) of each image, read back from the mask."""
        valid = ~self.mask
        h = valid[:, :, 0].sum(1)
        w = valid[:, 0, :].sum(1)
        return torch.stack([h, w], dim=1)

    def __repr__(self) -> str:
        return f"NestedTensor(tensors={tuple(self.tensors.shape)}, mask={tuple(self.mask.shape)})"


def nested_tensor_from_tensor_list(images: Sequence[torch.Tensor]) -> NestedTensor:
    """Pad a list of (3, H_i, W_i) images into a NestedTensor (B, 3, H, W) + mask (B, H, W)."""
    if len(images) == 0:
        raise ValueError("images: expected at least one image")
    for i, img in enumerate(images):
        if not isinstance(img, torch.Tensor) or img.dim() != 3:
            raise ValueError(f"images[{i}]: expected a (C, H, W) tensor, got {getattr(img, 'shape', type(img))}")
    c = images[0].shape[0]
    h = max(img.shape[1] for img in images)
    w = max(img.shape[2] for img in images)
    b = len(images)
    tensors = images[0].new_zeros((b, c, h, w))
    mask = torch.ones((b, h, w), dtype=torch.bool, device=images[0].device)
    for img, pad_img, m in zip(images, tensors, mask):
        pad_img[:, : img.shape[1], : img.shape[2]].copy_(img)
        m[: img.shape[1], : img.shape[2]] = False
    return NestedTensor(tensors, mask)


def to_nested_tensor(samples) -> NestedTensor:
    """Accept a NestedTensor, a list of (3, H, W) tensors or a (B, 3, H, W) tensor."""
    if isinstance(samples, NestedTensor):
        return samples
    if isinstance(samples, torch.Tensor) and samples.dim() == 4:
        mask = torch.zeros(samples.shape[0], *samples.shape[2:], dtype=torch.bool, device=samples.device)
        return NestedTensor(samples, mask)
    if isinstance(samples, (list, tuple)):
        return nested_tensor_from_tensor_list(samples)
    raise ValueError(f"samples: expected a NestedTensor, a list of (3, H, W) tensors or a (B, 3, H, W) tensor, got {type(samples)}")


# --------------------------------------------------------------------------- distributed
def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def all_gather_object(obj) -> list:
    """Gather any picklable object from every process (a list of world-size items)."""
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def num_boxes_across_processes(targets, device) -> float:
    """Average number of target boxes per process, at least 1: the loss normaliser of DETR."""
    n = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    if is_dist_avail_and_initialized():
        dist.all_reduce(n)
    return torch.clamp(n / get_world_size(), min=1).item()
