"""labkit.models and labkit.vgg: the network-slimming VGG, slim_vgg and the torchvision / small students."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit.layers import MaxPool2x2
from labkit import models
from labkit.models import VGG, VGG_CFGS, build_model, scale_cfg, vgg

X = torch.randn(2, 3, 32, 32)


def convs(m: nn.Module) -> list[nn.Conv2d]:
    return [x for x in m.modules() if isinstance(x, nn.Conv2d)]


def test_vgg_cfgs_match_network_slimming():
    assert VGG_CFGS[19] == [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                            512, 512, 512, 512, "M", 512, 512, 512, 512]
    # depth counts the original VGG's 3 fully connected layers (slimming keeps one)
    for depth, cfg in VGG_CFGS.items():
        assert sum(v != "M" for v in cfg) + 3 == depth


@pytest.mark.parametrize("depth", sorted(VGG_CFGS))
def test_vgg_each_depth_forward_and_cfg_round_trip(depth):
    m = vgg(depth, width=0.125, num_classes=7)
    assert m.cfg == scale_cfg(VGG_CFGS[depth], 0.125)
    assert m(X).shape == (2, 7)
    # rebuilding from the stored cfg gives the same architecture: the state dict loads
    again = VGG(m.cfg, num_classes=7)
    again.load_state_dict(m.state_dict())
    assert [c.out_channels for c in convs(m)] == [v for v in m.cfg if v != "M"]
    assert m.classifier.in_features == m.cfg[-1]


def test_vgg_layer_structure_and_init():
    m = vgg(11, width=0.125)
    kinds = [type(x) for x in m.feature]
    assert kinds[:4] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, MaxPool2x2]  # an nn.MaxPool2d(2, 2), faster at inference
    assert isinstance(m.feature[3], nn.MaxPool2d)
    for c in convs(m):
        assert c.bias is None and c.kernel_size == (3, 3) and c.padding == (1, 1)
    for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 0.5) and torch.all(bn.bias == 0)
    assert torch.all(m.classifier.bias == 0)
    assert 0.005 < m.classifier.weight.std().item() < 0.02
    # He init with fan_out: std ~ sqrt(2 / (9 * out_channels)) on the widest conv
    big = vgg(11).feature[-3]
    expected = (2 / (9 * big.out_channels)) ** 0.5
    assert abs(big.weight.std().item() / expected - 1) < 0.05


def test_vgg_from_arbitrary_pruned_cfg():
    cfg = [3, "M", 17, 1, "M", 5, 9, "M", 2]
    m = VGG(cfg, num_classes=4)
    assert m(X).shape == (2, 4)
    assert [c.out_channels for c in convs(m)] == [3, 17, 1, 5, 9, 2]
    assert vgg(depth=19, width=0.5, cfg=cfg).cfg == cfg  # cfg wins over depth / width
    assert VGG([torch.tensor(4), "M", 6]).cfg == [4, "M", 6]  # counts from tensor.sum() work


@pytest.mark.parametrize("bad", [[0, "M"], [4.0], [True], ["M"], "64,M"])
def test_vgg_rejects_bad_cfg(bad):
    with pytest.raises(ValueError, match="cfg"):
        VGG(bad)


def test_scale_cfg_rounds_and_keeps_at_least_one():
    assert scale_cfg([64, "M", 128, 3], 0.125) == [8, "M", 16, 1]
    assert scale_cfg([10], 0.26) == [3]
    with pytest.raises(ValueError, match="width"):
        scale_cfg([64], 0)


def test_resnets_small_input_stem():
    m = models.resnet18(num_classes=5)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert isinstance(m.maxpool, nn.Identity)
    m.eval()
    with torch.no_grad():
        assert m(X[:1]).shape == (1, 5)
    assert models.resnet18(num_classes=5, small_input=False).conv1.kernel_size == (7, 7)


def test_mobilenet_v1_is_depthwise_separable():
    m = models.mobilenet_v1(num_classes=10, width=0.25)
    assert m(X).shape == (2, 10)
    depthwise = [c for c in convs(m) if c.groups > 1]
    assert len(depthwise) == 13
    assert all(c.groups == c.in_channels == c.out_channels for c in depthwise)
    pointwise = [c for c in convs(m) if c.kernel_size == (1, 1)]
    assert len(pointwise) == 13
    # fewer parameters than the same net with full 3x3 convs
    assert sum(p.numel() for p in m.parameters()) < sum(
        9 * c.out_channels * c.in_channels for c in pointwise)


def test_shufflenet_and_simple_cnn():
    s = models.shufflenet_v2(num_classes=6)
    assert s(X).shape == (2, 6)
    assert s.conv1[0].stride == (1, 1) and isinstance(s.maxpool, nn.Identity)
    c = models.simple_cnn(num_classes=4, width=4, depth=2)
    assert c(X).shape == (2, 4)
    assert [x.out_channels for x in convs(c)] == [4, 8]


def test_build_model_registry():
    assert isinstance(build_model("vgg11", width=0.125), VGG)
    assert build_model("VGG13", width=0.125).cfg == scale_cfg(VGG_CFGS[13], 0.125)
    with pytest.raises(ValueError, match="valid names: .*resnet18"):
        build_model("alexnet")
    with pytest.raises(TypeError, match="accepts"):
        build_model("simple_cnn", widht=3)


# --------------------------------------------------------------------------- slim_vgg (airbench-style)
def test_slim_vgg_structure_and_cfg_round_trip():
    m = models.slim_vgg(width=0.25, num_classes=7)
    assert m.cfg == [24, 16, "M", 16, 64, "M", 64, 64, "M", 64]
    assert m(X).shape == (2, 7)
    first = m.feature[0]
    assert first.kernel_size == (2, 2) and first.padding == (0, 0) and not first.weight.requires_grad
    kinds = [type(x) for x in m.feature]
    assert kinds[:3] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]  # conv -> BN -> ReLU, like vgg
    assert all(bn.momentum == 0.6 for bn in m.modules() if isinstance(bn, nn.BatchNorm2d))
    assert isinstance(m.pool, nn.AdaptiveMaxPool2d)
    again = models.slim_vgg(cfg=m.cfg, num_classes=7)
    again.load_state_dict(m.state_dict())
    pruned = build_model("slim_vgg", cfg=[5, 3, "M", 2, 9, "M", 1, 4, "M", 3], num_classes=7)
    assert pruned(X).shape == (2, 7) and pruned.feature[0].weight.shape == (5, 3, 2, 2)
    with pytest.raises(ValueError, match="whiten"):
        VGG(["M", 4], whiten=True)


def test_whitening_is_deterministic_and_whitens_patches():
    g = torch.Generator().manual_seed(0)
    mix = torch.tensor([[1.0, 0.8, 0.3], [0.0, 1.0, 0.5], [0.0, 0.0, 0.2]])
    images = torch.einsum("dc,nchw->ndhw", mix, torch.randn(64, 3, 16, 16, generator=g))
    images = images + 0.5 * images.roll(1, dims=3)  # neighbouring pixels correlated
    w1 = models.whitening_weights(images, 2)
    w2 = models.whitening_weights(images.clone(), 2)
    assert w1.shape == (24, 3, 2, 2) and torch.equal(w1, w2)
    assert torch.equal(w1[12:], -w1[:12])
    exact = models.whitening_weights(images, 2, eps=1e-9)  # eps shrinks only tiny eigenvalues
    out = nn.functional.conv2d(images, exact[:12])  # [N, 12, 15, 15]
    flat = out.permute(1, 0, 2, 3).reshape(12, -1)
    cov = flat @ flat.T / flat.shape[1]
    assert torch.allclose(cov, torch.eye(12), atol=1e-3)  # unit variance, uncorrelated
    m = models.slim_vgg(width=0.125)
    m.init_whitening(images)
    assert torch.equal(m.feature[0].weight, w1)
    with pytest.raises(ValueError, match="whiten=True"):
        vgg(11, width=0.125).init_whitening(images)


def test_vgg_family_lives_in_labkit_vgg_and_is_reachable_from_models():
    from labkit import vgg as vgg_module

    for name in vgg_module.__all__:
        assert getattr(models, name) is getattr(vgg_module, name)
    assert set(models.__all__) <= set(dir(models))
