"""labkit.layers: MaxPool2x2 is nn.MaxPool2d(2, 2), value for value, with or without gradients."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit import models
from labkit.layers import MaxPool2x2


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(torch.nan_to_num(a, nan=123.0), torch.nan_to_num(b, nan=123.0))


@pytest.mark.parametrize("shape", [(4, 16, 32, 32), (2, 3, 31, 31), (3, 5, 7), (1, 1, 2, 2), (2, 4, 9, 6)])
def test_inference_values_equal_max_pool2d(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    x[..., 0, 0] = float("nan")           # NaN propagates like max_pool2d
    x[..., 1, 1] = float("-inf")
    x = torch.relu(x) if len(shape) == 4 else x  # ties at 0, as after a ReLU
    with torch.inference_mode():
        assert _same(MaxPool2x2()(x), F.max_pool2d(x, 2))
    with torch.no_grad():
        assert _same(MaxPool2x2()(x), F.max_pool2d(x, 2))


def test_channels_last_stays_channels_last():
    x = torch.randn(2, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = MaxPool2x2()(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(y, F.max_pool2d(x, 2))


def test_training_takes_max_pool2ds_own_pass_and_gradient():
    """Where autograd records the pass, the gradient is max_pool2d's (one winner per window, even on ties)."""
    x = torch.tensor([[[[1.0, 1.0], [0.5, 1.0]]]], requires_grad=True)
    MaxPool2x2()(x).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    F.max_pool2d(x2, 2).sum().backward()
    assert torch.equal(x.grad, x2.grad) and x.grad.sum() == 1.0


def test_is_a_max_pool_for_code_that_looks_for_one():
    net = models.vgg(depth=11, width=0.125, num_classes=10)
    pools = [m for m in net.feature if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 4 and all(type(m) is MaxPool2x2 for m in pools)
    assert (pools[0].kernel_size, pools[0].stride, pools[0].padding, pools[0].ceil_mode) == (2, 2, 0, False)
    # FX traces it as the standard max-pool (quantization in lab 7 then pools int8 tensors as before)
    traced = torch.fx.symbolic_trace(copy.deepcopy(net).eval())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(traced(x), net.eval()(x))


def test_whole_vgg_output_unchanged_by_the_fast_path():
    torch.manual_seed(0)
    net = models.vgg(depth=11, width=0.25, num_classes=10).eval()
    slow = copy.deepcopy(net)
    for i, m in enumerate(slow.feature):
        if isinstance(m, MaxPool2x2):
            slow.feature[i] = nn.MaxPool2d(2, 2)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), slow(x))


def test_torchscript_compiles_a_labkit_vgg_and_gives_the_same_logits():
    """torch.jit.script used to fail on the fast path's FX check; scripted, the standard pool runs."""
    import warnings

    net = models.vgg(depth=11, width=0.125, num_classes=10).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice
        scripted = torch.jit.script(copy.deepcopy(net))
        frozen = torch.jit.freeze(torch.jit.script(copy.deepcopy(net)))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
        assert torch.equal(scripted(x), ref)
        assert torch.allclose(frozen(x), ref, atol=1e-5)  # freezing folds BatchNorm: float rounding
