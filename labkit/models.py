"""Every model the labs build, by name (:func:`build_model`), all sized for 32x32 inputs by default.

* The network-slimming :class:`VGG`, :func:`vgg` and the airbench-style :func:`slim_vgg` live in
  :mod:`labkit.vgg`; their names are importable from here too (``labkit.models.VGG`` & co.).
* :func:`resnet18` / :func:`shufflenet_v2` wrap torchvision with an optional
  32x32 stem; :func:`mobilenet_v1` and :func:`simple_cnn` are small students for distillation.

Every model maps float32 images ``[B, C, H, W]`` to logits ``[B, num_classes]``.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from labkit.layers import MaxPool2x2
from labkit.vgg import (SLIM_CFG, VGG, VGG_CFGS, check_positive_int, scale_cfg, slim_vgg, vgg,
                        whitening_weights)

__all__ = ["VGG_CFGS", "SLIM_CFG", "scale_cfg", "VGG", "vgg", "slim_vgg", "whitening_weights",
           "resnet18", "mobilenet_v1",
           "simple_cnn", "shufflenet_v2", "build_model", "MODEL_NAMES"]


def _small_resnet_stem(model: nn.Module) -> None:
    """Swap the ImageNet stem (7x7 stride-2 conv + max-pool) for a 3x3 stride-1 conv.

    On 32x32 inputs the ImageNet stem shrinks the map to 8x8 before the first block, which
    costs several points of accuracy (this is the usual CIFAR variant of ResNet).
    """
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()


def _torchvision_resnet(builder: Callable[..., nn.Module], num_classes: int, small_input: bool,
                        weights: Any) -> nn.Module:
    num_classes = check_positive_int(num_classes, "num_classes")
    if weights is None:
        model = builder(weights=None, num_classes=num_classes)
    else:
        # Pretrained heads have 1000 outputs; build as published, then give it a fresh head.
        model = builder(weights=weights)
        if model.fc.out_features != num_classes:
            model.fc = nn.Linear(model.fc.in_features, num_classes)
    if small_input:
        _small_resnet_stem(model)  # note: replaces a pretrained conv1 with a fresh one
    return model


def resnet18(num_classes: int = 10, small_input: bool = True, weights: Any = None) -> nn.Module:
    """torchvision ResNet-18; ``small_input`` uses a 3x3 stride-1 stem and no max-pool (32x32).

    ``weights`` is passed to torchvision (e.g. ``"IMAGENET1K_V1"``); the files must already be
    in the torch hub cache because nothing is downloaded while the labs run.
    """
    import torchvision

    return _torchvision_resnet(torchvision.models.resnet18, num_classes, small_input, weights)


def shufflenet_v2(num_classes: int = 10, small_input: bool = True) -> nn.Module:
    """torchvision ShuffleNet-V2 x0.5; ``small_input``: stride-1 first conv and no max-pool."""
    import torchvision

    num_classes = check_positive_int(num_classes, "num_classes")
    model = torchvision.models.shufflenet_v2_x0_5(weights=None, num_classes=num_classes)
    if small_input:
        model.conv1[0].stride = (1, 1)
        model.maxpool = nn.Identity()
    return model


class _MobileBlock(nn.Sequential):
    """MobileNet-V1 block: depthwise 3x3 + BN + ReLU, then pointwise 1x1 + BN + ReLU.

    ``[B, c_in, H, W]`` -> ``[B, c_out, H / stride, W / stride]``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
            nn.BatchNorm2d(c_in), nn.ReLU(inplace=True),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        )


# (output channels, stride) of the 13 blocks; the CIFAR variant keeps stride 1 in the stem
_MOBILENET_V1_CFG: list[tuple[int, int]] = [
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
]


class _MobileNetV1(nn.Module):
    def __init__(self, num_classes: int, width: float) -> None:
        super().__init__()

        def ch(c: int) -> int:
            return max(1, int(round(c * width)))

        c_in = ch(32)
        layers: list[nn.Module] = [nn.Conv2d(3, c_in, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(c_in), nn.ReLU(inplace=True)]
        for c_out, stride in _MOBILENET_V1_CFG:
            layers.append(_MobileBlock(c_in, ch(c_out), stride))
            c_in = ch(c_out)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> logits ``[B, num_classes]``."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenet_v1(num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """MobileNet-V1 for 32x32 inputs (stride-1 stem; 4 stride-2 blocks: 32 -> 2).

    ``width`` multiplies every channel count (the paper's alpha).
    """
    num_classes = check_positive_int(num_classes, "num_classes")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ValueError(f"width must be a number > 0 (e.g. 0.25), got {width!r}")
    return _MobileNetV1(num_classes, float(width))


def simple_cnn(num_classes: int = 10, width: int = 32, depth: int = 3) -> nn.Module:
    """A plain CNN: ``depth`` blocks of conv3x3 + BN + ReLU + max-pool, channels
    ``width * 2**i``, then global average pooling and a linear layer.

    ``[B, 3, H, W]`` -> ``[B, num_classes]``; H and W must be divisible by ``2**depth``.
    """
    num_classes = check_positive_int(num_classes, "num_classes")
    width = check_positive_int(width, "width")
    depth = check_positive_int(depth, "depth")
    layers: list[nn.Module] = []
    c_in = 3
    for i in range(depth):
        c_out = width * 2**i
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                   nn.ReLU(inplace=True), MaxPool2x2()]
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


def _vgg_depth(depth: int) -> Callable[..., VGG]:
    def build(width: float = 1.0, num_classes: int = 10, cfg: Sequence | None = None) -> VGG:
        return vgg(depth=depth, width=width, num_classes=num_classes, cfg=cfg)

    build.__name__ = f"vgg{depth}"
    build.__doc__ = f"VGG-{depth} (see :func:`vgg`)."
    return build


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "vgg": vgg,
    "slim_vgg": slim_vgg,
    **{f"vgg{d}": _vgg_depth(d) for d in VGG_CFGS},
    "resnet18": resnet18,
    "mobilenet_v1": mobilenet_v1,
    "simple_cnn": simple_cnn,
    "shufflenet_v2": shufflenet_v2,
}
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by name, e.g. ``build_model("vgg11", width=0.25, num_classes=10)``."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    builder = _REGISTRY[key]
    try:
        inspect.signature(builder).bind(**kwargs)
    except TypeError:
        valid = ", ".join(inspect.signature(builder).parameters)
        raise TypeError(f"build_model({name!r}) got arguments {sorted(kwargs)}; "
                        f"{key} accepts: {valid}") from None
    return builder(**kwargs)
