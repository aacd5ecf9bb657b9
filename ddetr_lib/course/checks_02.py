"""Exercise checks for ``notebooks/02_backbone_and_positions.ipynb``.

    from ddetr_lib.course import checks_02
    checks_02.check_feature_size(my_feature_size)   # prints PASS / FAIL (+ hint) / TODO

The references are the library's own pieces (the toy ResNet run on an empty image,
torchvision's ``FrozenBatchNorm2d``, the backbone's mask resize), so a pass means
"does what the model does". Solutions: ``notebooks/solutions/02_backbone_and_positions.py``.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torchvision.ops import FrozenBatchNorm2d

from ddetr_lib.course import CheckResult, check_function

_STAGE = {4: "layer1", 8: "layer2", 16: "layer3", 32: "layer4"}


@functools.lru_cache(maxsize=1)
def _tiny_toy_resnet():
    from ddetr_lib.models.backbone import ToyResNet

    return ToyResNet((1, 1, 1, 1)).eval()  # widths do not change sizes: 1 channel is enough


@torch.no_grad()
def _feature_size_by_running(size: int, stride: int) -> int:
    """Side of the stride-``stride`` feature map of a ``size`` x ``size`` image, measured by running the toy ResNet."""
    net = _tiny_toy_resnet()
    x = net.relu(net.bn1(net.conv1(torch.zeros(1, 3, size, size))))
    for s, name in _STAGE.items():
        x = getattr(net, name)(x)
        if s == stride:
            return int(x.shape[-1])
    raise ValueError(f"stride: expected one of {sorted(_STAGE)}, got {stride}")


def check_feature_size(fn) -> CheckResult:
    """``fn(size: int, stride: int) -> int``: side of the feature map at that stride."""
    cases = [(128, 8), (128, 32), (100, 32), (97, 8), (33, 16), (1, 4), (801, 32)]
    return check_function(
        "feature-map size", fn, cases, _feature_size_by_running,
        hint="Hint: every stride-2 layer (3x3 conv, padding 1) maps n pixels to ceil(n / 2): it rounds UP, "
             "so a partial last cell still gets a feature (100 px at stride 32 gives 4, not 3). Return an int.")


def _frozen_bn_reference(x, weight, bias, running_mean, running_var):
    bn = FrozenBatchNorm2d(x.shape[1])  # eps 1e-5
    bn.weight.copy_(weight)
    bn.bias.copy_(bias)
    bn.running_mean.copy_(running_mean)
    bn.running_var.copy_(running_var)
    return bn(x)


def _bn_case(b, c, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g) * 3 + 1
    return (x, torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g),
            torch.randn(c, generator=g), torch.rand(c, generator=g) * 2 + 1e-3)


def check_frozen_batchnorm(fn) -> CheckResult:
    """``fn(x (B, C, H, W), weight, bias, running_mean, running_var (C,)) -> (B, C, H, W)``, eps = 1e-5."""
    cases = [
        (torch.ones(1, 1, 1, 1), torch.tensor([2.0]), torch.tensor([0.5]), torch.tensor([0.0]), torch.tensor([1.0])),
        _bn_case(2, 3, 4, 5, 0),
        _bn_case(1, 4, 2, 2, 1),  # one image: batch statistics would be meaningless here
        (torch.randn(2, 2, 3, 3), torch.ones(2), torch.zeros(2), torch.zeros(2), torch.tensor([1e-6, 1e-6])),
    ]
    return check_function(
        "frozen BatchNorm", fn, cases, _frozen_bn_reference,
        hint="Hint: use the STORED statistics, never the batch's: y = (x - running_mean) / sqrt(running_var + 1e-5) "
             "* weight + bias, with each (C,) vector reshaped to (1, C, 1, 1) so it broadcasts over B, H, W; "
             "don't forget eps (a channel with a tiny variance shows it).")


def _mask_reference(mask, size):
    # What BackboneBase.forward does to the padding mask of every feature map.
    return F.interpolate(mask[None].float(), size=size)[0].to(torch.bool)


def _padded_mask(sizes, h, w):
    mask = torch.ones(len(sizes), h, w, dtype=torch.bool)
    for i, (hi, wi) in enumerate(sizes):
        mask[i, :hi, :wi] = False
    return mask


def check_downsample_mask(fn) -> CheckResult:
    """``fn(mask (B, H, W) bool, size (h, w)) -> (B, h, w) bool``, nearest-neighbour resize."""
    cases = [
        (_padded_mask([(8, 8), (4, 6)], 8, 8), (4, 4)),
        (_padded_mask([(37, 50), (30, 21)], 37, 50), (5, 7)),  # sizes that strides do not divide
        (_padded_mask([(20, 13)], 20, 20), (3, 3)),
    ]
    return check_function(
        "mask down-sampling", fn, cases, _mask_reference,
        hint="Hint: F.interpolate works on float (N, C, H, W) tensors: add a channel axis, convert to float, "
             "resize with the default mode 'nearest' to `size`, then drop the axis and convert back to bool.")
