"""Backbone: a CNN that turns the image into feature maps, plus their position encodings.

DETR uses a ResNet and keeps only the last stage ("C5", stride 32, 2048 channels for
ResNet-50). Deformable DETR also uses C3 and C4 (strides 8 and 16): pass
``return_interm_layers=True``.

Two ResNet flavours:

* ``resnet50`` / ``resnet18`` from torchvision, as in the official recipe: ImageNet
  weights, ``FrozenBatchNorm2d`` (batch statistics are useless with 2 images per GPU,
  so the pretrained ones are kept as constants) and the stem and ``layer1`` frozen
  (only ``layer2``-``layer4`` are fine-tuned).
* ``toy``: a small ResNet made of torchvision ``BasicBlock``s for CPU experiments.
  It is trained from scratch, so it uses ordinary, trainable ``BatchNorm2d`` and
  freezes nothing: frozen random statistics or frozen random layers would cripple it.

The padding mask follows the features down: it is resized (nearest) to each feature
map, so that every feature pixel knows whether it looks at image or at padding.

``Joiner`` chains the backbone and the position encoding in an ``nn.Sequential``, so
parameter names are ``backbone.0.body.*``, exactly those of the official checkpoints.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock
from torchvision.ops import FrozenBatchNorm2d

from ddetr_lib.models.position_encoding import build_position_encoding
from ddetr_lib.utils import NestedTensor

# Output channels of layer2, layer3, layer4 (C3, C4, C5) of the torchvision ResNets.
_RESNET_CHANNELS = {
    "resnet18": [128, 256, 512],
    "resnet34": [128, 256, 512],
    "resnet50": [512, 1024, 2048],
    "resnet101": [512, 1024, 2048],
}


class BackboneBase(nn.Module):
    """Wrap a ResNet-like ``body`` (children conv1, bn1, relu, [maxpool], layer1..layer4).

    Returns, for each requested stage, a ``NestedTensor`` of features (B, C_l, H_l, W_l)
    and mask (B, H_l, W_l).
    """

    def __init__(self, body: nn.Module, train_backbone: bool, freeze_stem_and_layer1: bool,
                 return_interm_layers: bool, channels: list[int], strides: list[int]):
        super().__init__()
        for name, parameter in body.named_parameters():
            trainable = train_backbone
            if freeze_stem_and_layer1 and not name.startswith(("layer2", "layer3", "layer4")):
                trainable = False
            if not trainable:
                parameter.requires_grad_(False)
        # channels / strides are given for (C3, C4, C5) = (layer2, layer3, layer4).
        if return_interm_layers:
            return_layers = {"layer2": "0", "layer3": "1", "layer4": "2"}
            self.num_channels, self.strides = list(channels), list(strides)
        else:
            return_layers = {"layer4": "0"}
            self.num_channels, self.strides = [channels[-1]], [strides[-1]]
        # IntermediateLayerGetter keeps the children up to layer4 (drops avgpool / fc)
        # and returns the outputs of the named ones.
        self.body = IntermediateLayerGetter(body, return_layers=return_layers)

    def forward(self, tensor_list: NestedTensor) -> list[NestedTensor]:
        xs = self.body(tensor_list.tensors)  # {"0": (B, C, H/s, W/s), ...}
        m = tensor_list.mask  # (B, H, W)
        out = []
        for x in xs.values():
            mask = F.interpolate(m[None].float(), size=x.shape[-2:])[0].to(torch.bool)  # (B, H_l, W_l)
            out.append(NestedTensor(x, mask))
        return out


def _torchvision_resnet(name: str, pretrained: bool, frozen_batchnorm: bool, dilation: bool) -> nn.Module:
    weights = None
    if pretrained:
        # torchvision's original ImageNet weights (V1), those of the official recipe.
        weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
    norm_layer = FrozenBatchNorm2d if frozen_batchnorm else nn.BatchNorm2d
    return getattr(torchvision.models, name)(
        weights=weights, replace_stride_with_dilation=[False, False, dilation], norm_layer=norm_layer
    )


class ToyResNet(nn.Module):
    """A small ResNet for CPU experiments: light stem (one 3x3 conv, stride 2), then four
    stages of one ``BasicBlock`` each, each halving the resolution: strides 4, 8, 16, 32.

    ``widths``: the four stage widths. ``dilation=True`` keeps layer4 at stride 16 (the
    toy analogue of DETR's DC5 variant: a finer last feature map).
    """

    def __init__(self, widths=(16, 32, 64, 128), dilation: bool = False):
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"toy_widths: expected 4 stage widths, got {widths}")
        w0 = widths[0]
        self.conv1 = nn.Conv2d(3, w0, kernel_size=3, stride=2, padding=1, bias=False)  # stride 2
        self.bn1 = nn.BatchNorm2d(w0)
        self.relu = nn.ReLU(inplace=True)
        in_ch = w0
        for i, w in enumerate(widths):
            stride = 1 if (i == 3 and dilation) else 2
            downsample = nn.Sequential(
                nn.Conv2d(in_ch, w, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(w)
            ) if (stride != 1 or in_ch != w) else None
            self.add_module(f"layer{i + 1}", nn.Sequential(BasicBlock(in_ch, w, stride, downsample)))
            in_ch = w
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x


class Backbone(BackboneBase):
    """The configured backbone: torchvision ResNet (official recipe) or the toy ResNet."""

    def __init__(self, name: str, train_backbone: bool, return_interm_layers: bool, dilation: bool,
                 pretrained: bool = False, frozen_batchnorm: bool = True, toy_widths=(16, 32, 64, 128)):
        last_stride = 16 if dilation else 32
        if name == "toy":
            if pretrained:
                raise ValueError("pretrained_backbone: the toy backbone has no pretrained weights")
            if frozen_batchnorm:
                raise ValueError("frozen_batchnorm: the toy backbone is trained from scratch and needs "
                                 "ordinary BatchNorm (set frozen_batchnorm=False)")
            body = ToyResNet(toy_widths, dilation=dilation)
            channels = list(toy_widths[1:])
            freeze_stem_and_layer1 = False
        elif name in _RESNET_CHANNELS:
            body = _torchvision_resnet(name, pretrained, frozen_batchnorm, dilation)
            channels = _RESNET_CHANNELS[name]
            # The official setting: with pretrained (frozen-norm) weights, only layer2-4 train.
            freeze_stem_and_layer1 = frozen_batchnorm
        else:
            raise ValueError(f"backbone: unknown {name!r}; use 'resnet50', 'resnet18' or 'toy'")
        super().__init__(body, train_backbone, freeze_stem_and_layer1, return_interm_layers,
                         channels, strides=[8, 16, last_stride])


class Joiner(nn.Sequential):
    """Backbone followed by position encoding: ``Joiner(backbone, pos)(x) -> (features, pos)``.

    features: list of ``NestedTensor`` (B, C_l, H_l, W_l) with masks (B, H_l, W_l);
    pos:      list of (B, hidden_dim, H_l, W_l), one per level.
    """

    def __init__(self, backbone: nn.Module, position_embedding: nn.Module):
        super().__init__(backbone, position_embedding)
        self.num_channels = backbone.num_channels
        self.strides = backbone.strides

    def forward(self, tensor_list: NestedTensor):
        features = self[0](tensor_list)
        pos = [self[1](f).to(f.tensors.dtype) for f in features]
        return features, pos


def build_backbone(cfg, return_interm_layers: bool = False) -> Joiner:
    """Backbone + position encoding from the config (C5 only unless ``return_interm_layers``)."""
    position_embedding = build_position_encoding(cfg)
    backbone = Backbone(
        cfg.backbone,
        train_backbone=cfg.train_backbone,
        return_interm_layers=return_interm_layers,
        dilation=cfg.dilation,
        pretrained=cfg.pretrained_backbone,
        frozen_batchnorm=cfg.frozen_batchnorm,
        toy_widths=tuple(cfg.toy_widths),
    )
    return Joiner(backbone, position_embedding)
