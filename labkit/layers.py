"""Layers the labkit models share.

:class:`MaxPool2x2` is ``nn.MaxPool2d(2, 2)`` with a faster inference pass on CPUs. PyTorch's
CPU max-pool kernel is slow on small channel counts in the NCHW layout: on two cores, pooling a
``[64, 16, 32, 32]`` batch took 2.7 ms, as long as the 3x3 convolution before it and 35 times
as long as the BatchNorm after it (0.07 ms), although it reads the same million values once.
Two elementwise maxima of strided views (rows, then columns) give exactly the same values in
0.18 ms (0.07 ms against 0.34 ms in channels-last). In the VGGs of labs 4-5, whose first layers
run at full resolution and are the ones channel pruning thins least, the pools took a third
of an unpruned network's inference time; they hid most of what pruning gains.

Only inference takes the fast path. With gradients it is slower (a VGG-11 training step took
213 ms against 125 ms: the backward pass of strided maxima is costly) and, where two values
tie, ``torch.maximum`` splits the gradient between them where max-pooling gives it to one. So
whenever autograd records the pass, and for quantized tensors, FX tracing and TorchScript, the
standard ``nn.MaxPool2d`` forward runs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MaxPool2x2"]


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(kernel_size=2, stride=2)``: ``[..., H, W]`` -> ``[..., H // 2, W // 2]``.

    Identical values (NaN propagates, an odd last row or column is dropped, as in floor mode);
    an instance of ``nn.MaxPool2d``, so code that looks for max-pools (``cfg`` building,
    quantization, FLOP counting) treats it as one. Faster when no gradient is recorded.
    """

    def __init__(self) -> None:
        super().__init__(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles only this branch (_eager is @jit.unused)
            return F.max_pool2d(x, 2, 2)  # and knows no super()
        return self._eager(x)

    @torch.jit.unused
    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        if (isinstance(x, torch.fx.Proxy) or x.is_quantized or x.dim() < 3
                or (torch.is_grad_enabled() and x.requires_grad)):
            return super().forward(x)
        h, w = x.shape[-2:]
        if h < 2 or w < 2:
            return super().forward(x)  # its own error message for a too-small input
        x = x[..., : h - h % 2, : w - w % 2]
        rows = torch.maximum(x[..., ::2, :], x[..., 1::2, :])        # [..., H // 2, W]
        return torch.maximum(rows[..., ::2], rows[..., 1::2])        # [..., H // 2, W // 2]
