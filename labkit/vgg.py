"""The VGG that labs 3-5 train, prune and fine-tune (re-exported by :mod:`labkit.models`).

* :class:`VGG` is the network-slimming VGG (Liu et al., "Learning Efficient Convolutional
  Networks through Network Slimming", ICCV 2017; reference code
  ``Eric-mingjie/network-slimming``, ``models/vgg.py``): 3x3 conv (no bias) + BatchNorm + ReLU
  blocks, ``'M'`` = 2x2 max-pool (:class:`labkit.layers.MaxPool2x2`), global average pooling and one linear classifier. It can be
  built from *any* channel list, which is how a pruned network is re-instantiated.
* :func:`slim_vgg` is the same VGG with what airbench (Keller Jordan, "94% on CIFAR-10 in 3.29
  seconds on a single GPU", 2024; ``KellerJordan/cifar10-airbench``) found pays off on CIFAR-10:
  a frozen 2x2 patch-whitening first convolution (:func:`whitening_weights`), a
  wide-then-narrow channel list with few pools, max-pooled features and a tunable BatchNorm
  momentum. Its blocks are still conv -> BatchNorm -> ReLU (the whitening conv included), so
  network slimming's sparsity training and channel pruning apply unchanged.

Every model maps float32 images ``[B, C, H, W]`` to logits ``[B, num_classes]``.
"""
from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from labkit.layers import MaxPool2x2

__all__ = ["VGG_CFGS", "SLIM_CFG", "scale_cfg", "VGG", "vgg", "slim_vgg", "whitening_weights",
           "check_positive_int"]

# network-slimming ``defaultcfg``: ints are conv output channels, 'M' a 2x2 max-pool.
VGG_CFGS: dict[int, list] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512],
}

# slim_vgg's channel list (airbench's block widths 64 / 256 / 256 in VGG order): the first entry
# is the whitening conv (2 x 3 x 2 x 2 = 24 channels: each whitened direction and its negative).
SLIM_CFG: list = [24, 64, "M", 64, 256, "M", 256, 256, "M", 256]


def check_positive_int(value: Any, what: str) -> int:
    """``value`` as a Python int, or one clear ``ValueError`` (every model builder's check)."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    try:
        out = operator.index(value)  # ints, numpy ints, 0-d integer tensors; not floats
    except TypeError:
        raise ValueError(f"{what} must be a positive integer, got {value!r} "
                         f"({type(value).__name__})") from None
    if out < 1:
        raise ValueError(f"{what} must be a positive integer, got {out}")
    return out


def _normalize_cfg(cfg: Sequence) -> list:
    """Validate a VGG channel list and return it as plain ints and ``'M'``."""
    if isinstance(cfg, (str, bytes)) or not isinstance(cfg, Sequence):
        raise ValueError(f"cfg must be a list of channel counts and 'M', got {type(cfg).__name__}")
    out: list = []
    for i, v in enumerate(cfg):
        out.append("M" if v == "M" else check_positive_int(v, f"cfg[{i}]"))
    if not any(v != "M" for v in out):
        raise ValueError("cfg must contain at least one channel count (e.g. [64, 'M', 128])")
    return out


def _last_channels(cfg: list) -> int:
    return next(v for v in reversed(cfg) if v != "M")


def scale_cfg(cfg: Sequence, width: float) -> list:
    """Multiply every channel count of ``cfg`` by ``width`` (rounded, at least 1); ``'M'`` kept.

    >>> scale_cfg([64, 'M', 128], 0.125)
    [8, 'M', 16]
    """
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ValueError(f"width must be a number > 0 (e.g. 0.25), got {width!r}")
    return ["M" if v == "M" else max(1, int(round(v * width))) for v in _normalize_cfg(cfg)]


class VGG(nn.Module):
    """Network-slimming VGG for small images.

    Args:
        cfg: channel counts and ``'M'`` (max-pool), e.g. ``VGG_CFGS[19]`` or a pruned list.
        num_classes: size of the output.
        in_channels: channels of the input images.

    Shapes: input float ``[B, in_channels, H, W]`` (H, W divisible by 2 per ``'M'``),
    output logits ``[B, num_classes]``.
    """

    def __init__(self, cfg: Sequence, num_classes: int = 10, in_channels: int = 3, *,
                 whiten: bool = False, bn_momentum: float = 0.1, head_pool: str = "avg",
                 logit_scale: float = 1.0, dirac: bool = False) -> None:
        super().__init__()
        self.cfg: list = _normalize_cfg(cfg)
        num_classes = check_positive_int(num_classes, "num_classes")
        in_channels = check_positive_int(in_channels, "in_channels")
        if head_pool not in ("avg", "max"):
            raise ValueError(f"head_pool must be 'avg' or 'max', got {head_pool!r}")
        if not 0.0 < bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in (0, 1], got {bn_momentum!r}")
        if whiten and self.cfg[0] == "M":
            raise ValueError("whiten=True needs a channel count (the whitening conv) first in cfg")
        self.whiten = bool(whiten)
        self.logit_scale = float(logit_scale)
        self.feature = self._make_layers(self.cfg, in_channels, self.whiten, bn_momentum)
        # The reference uses AvgPool2d(2) on a 2x2 map; adaptive pooling gives the same on
        # 32x32 inputs and also accepts other input sizes.
        self.pool = nn.AdaptiveAvgPool2d(1) if head_pool == "avg" else nn.AdaptiveMaxPool2d(1)
        self.classifier = nn.Linear(_last_channels(self.cfg), num_classes)
        self._initialize_weights()
        if dirac:
            self._dirac_init()
        if self.whiten:
            self.feature[0].weight.requires_grad_(False)  # frozen; set by init_whitening

    @staticmethod
    def _make_layers(cfg: list, in_channels: int, whiten: bool = False,
                     bn_momentum: float = 0.1) -> nn.Sequential:
        layers: list[nn.Module] = []
        for v in cfg:
            if v == "M":
                layers.append(MaxPool2x2())  # nn.MaxPool2d(2, 2), faster at inference
            else:
                # no conv bias: the following BatchNorm's beta plays that role. The whitening
                # conv (first, with whiten=True) sees 2x2 patches without padding: 32 -> 31.
                k, pad = (2, 0) if whiten and not layers else (3, 1)
                layers += [nn.Conv2d(in_channels, v, kernel_size=k, padding=pad, bias=False),
                           nn.BatchNorm2d(v, momentum=bn_momentum), nn.ReLU(inplace=True)]
                in_channels = v
        return nn.Sequential(*layers)

    @torch.no_grad()
    def _dirac_init(self) -> None:
        # airbench: the first min(C_in, C_out) filters of every 3x3 conv start as identities
        # (each passes its input channel through), the rest keep their random init.
        for m in self.feature:
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                n = min(m.in_channels, m.out_channels)
                nn.init.dirac_(m.weight[:n, :n])

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the frozen first conv to :func:`whitening_weights` of ``images`` (float
        ``[N, C, H, W]``, normalised like the training batches; a few thousand are enough).

        With ``whiten=True`` the first conv has 2 x C x 2 x 2 outputs; after pruning fewer, and
        the pruned network gets its kept filters from the pruning code like any other conv.
        """
        if not self.whiten:
            raise ValueError("this VGG was built without whiten=True")
        conv = self.feature[0]
        w = whitening_weights(images, conv.kernel_size[0], eps).to(conv.weight)
        if w.shape != conv.weight.shape:
            raise ValueError(f"the whitening conv has shape {tuple(conv.weight.shape)}, the "
                             f"whitening of these images {tuple(w.shape)}: init before pruning")
        conv.weight.copy_(w)

    def _initialize_weights(self) -> None:
        # Same as the reference: He init (fan_out), BN gamma 0.5 (as in the slimming paper's
        # code, so that the L1 penalty starts from a common scale), small classifier weights.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 0.5)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> logits ``[B, num_classes]``."""
        x = self.pool(self.feature(x))
        x = self.classifier(torch.flatten(x, 1))
        return x * self.logit_scale if self.logit_scale != 1.0 else x


def vgg(depth: int = 19, width: float = 1.0, num_classes: int = 10,
        cfg: Sequence | None = None) -> VGG:
    """A :class:`VGG` of ``depth`` in {11, 13, 16, 19} with channels scaled by ``width``.

    If ``cfg`` is given (e.g. a pruned channel list) it is used exactly as it is, and
    ``depth`` / ``width`` are ignored: a pruned cfg already holds the final channel counts.
    """
    if cfg is None:
        if depth not in VGG_CFGS:
            raise ValueError(f"VGG depth {depth!r} is not available; use one of "
                             f"{', '.join(map(str, VGG_CFGS))}")
        cfg = scale_cfg(VGG_CFGS[depth], width)
    return VGG(cfg, num_classes=num_classes)


def whitening_weights(images: torch.Tensor, kernel_size: int = 2, eps: float = 5e-4) -> torch.Tensor:
    """Conv weights ``[2 K, C, k, k]`` (``K = C k^2``) that whiten the ``k x k`` patches of ``images``.

    The patch covariance ``S = P^T P / n`` (uncentred: the images are already normalised) has
    eigenvectors ``v_i`` and eigenvalues ``l_i``; filter ``i`` is ``v_i / sqrt(l_i + eps)`` (largest
    eigenvalue first) and filter ``K + i`` its negative, so the outputs have about unit variance and
    are uncorrelated, and a ReLU after them keeps both signs. Computed in float64 on the CPU, with
    the sign of each eigenvector fixed (its largest-magnitude entry positive): the same images
    always give the same weights.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    k = check_positive_int(kernel_size, "kernel_size")
    x = images.detach().to("cpu", torch.float64)
    c = x.shape[1]
    patches = x.unfold(2, k, 1).unfold(3, k, 1)                    # [N, C, H', W', k, k]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
    cov = patches.T @ patches / patches.shape[0]
    evals, evecs = torch.linalg.eigh(cov)                           # ascending
    evals, evecs = evals.flip(0), evecs.flip(1)
    sign = torch.sign(evecs.gather(0, evecs.abs().argmax(0, keepdim=True)))
    evecs = evecs * sign
    filters = (evecs / torch.sqrt(evals.clamp_min(0) + eps)).T.reshape(c * k * k, c, k, k)
    return torch.cat([filters, -filters]).float()


def slim_vgg(width: float = 1.0, num_classes: int = 10, cfg: Sequence | None = None,
             bn_momentum: float = 0.6, head_pool: str = "max", logit_scale: float = 1.0,
             dirac: bool = True) -> VGG:
    """The airbench-style slimmable VGG: a frozen 2x2 whitening conv (call
    ``model.init_whitening(images)`` before training), then :data:`SLIM_CFG` with every width
    but the whitening conv's multiplied by ``width``; a max-pooled head (``logit_scale``: airbench
    multiplies the logits by 1/9, which together with its 64x BatchNorm-bias learning rate did not
    train here, where the BatchNorm scales must stay trainable for network slimming); BatchNorm
    momentum 0.6; 3x3 convs with partly identity (dirac) init.

    ``cfg`` (e.g. a pruned channel list) is used exactly as it is; ``width`` is then ignored.
    """
    if cfg is None:
        cfg = [SLIM_CFG[0], *scale_cfg(SLIM_CFG[1:], width)]
    return VGG(cfg, num_classes=num_classes, whiten=True, bn_momentum=bn_momentum,
               head_pool=head_pool, logit_scale=logit_scale, dirac=dirac)
