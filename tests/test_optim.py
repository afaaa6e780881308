"""labkit.optim: Muon (orthogonalised conv updates + SGD for the rest) and the linear schedule."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit.models import slim_vgg
from labkit.optim import Muon, make_muon, newton_schulz
from labkit.train import fit
from tests.test_train import blobs, tiny


def _with_singular_values(s: list[float], m: int, n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``U diag(s) V^T`` of shape ``[m, n]`` with random orthonormal ``U``, ``V``; also ``U``, ``V``."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, len(s), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(s), generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.T, u, v


@pytest.mark.parametrize("shape", [(4, 12), (12, 4)])
def test_newton_schulz_keeps_the_singular_vectors_and_flattens_the_spectrum(shape):
    # singular values spread 5x (0.2 .. 1.0): after three steps all lie in [0.5, 1.5], the
    # singular vectors are the input's (U^T X V is diagonal), the output is float32 [m, n]
    g, u, v = _with_singular_values([1.0, 0.7, 0.4, 0.2], *shape)
    x = newton_schulz(g)
    assert x.shape == shape and x.dtype == torch.float32
    core = u.T @ x.double() @ v
    off = core - torch.diag(torch.diagonal(core))
    assert off.abs().max().item() < 1e-5
    sv = torch.diagonal(core)
    assert sv.min().item() > 0.5 and sv.max().item() < 1.5, sv
    # scale-free: the input's norm does not matter
    torch.testing.assert_close(newton_schulz(1e4 * g), x, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz(torch.ones(2, 3, 4))


def test_muon_orthogonal_step_is_rescale_then_newton_schulz_of_the_nesterov_direction():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 2, 3, 3))
    start = w.detach().clone()
    opt = Muon([w], lr=0.1, momentum=0.5, nesterov=True, orthogonal=True)
    g1, g2 = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    w.grad = g1.clone()
    opt.step()
    expect = start * 2.0 / start.norm() - 0.1 * newton_schulz((g1 + 0.5 * g1).reshape(4, -1)).view(4, 2, 3, 3)
    torch.testing.assert_close(w.detach(), expect)
    w.grad = g2.clone()
    opt.step()
    buf = 0.5 * g1 + g2
    expect = expect * 2.0 / expect.norm() - 0.1 * newton_schulz((g2 + 0.5 * buf).reshape(4, -1)).view(4, 2, 3, 3)
    torch.testing.assert_close(w.detach(), expect)
    # the step does not depend on the gradient's scale (mean or summed loss alike)
    a, b = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    for p, k in ((a, 1.0), (b, 1000.0)):
        p.grad = k * g1
        Muon([p], lr=0.1, orthogonal=True).step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-4, atol=1e-5)


def test_muon_plain_groups_are_torch_sgd():
    torch.manual_seed(1)
    a = nn.Parameter(torch.randn(5))
    b = nn.Parameter(a.detach().clone())
    mine = Muon([a], lr=0.05, momentum=0.85, nesterov=True, weight_decay=0.01)
    ref = torch.optim.SGD([b], lr=0.05, momentum=0.85, nesterov=True, weight_decay=0.01)
    for k in range(3):
        g = torch.randn(5)
        a.grad, b.grad = g.clone(), g.clone()
        mine.step()
        ref.step()
        torch.testing.assert_close(a.detach(), b.detach())


def test_make_muon_groups_filters_head_and_the_rest():
    model = slim_vgg(width=0.125)
    opt = make_muon(model, lr=0.2, sgd_lr=10.0, head_lr=0.5, weight_decay=1e-3)
    ortho, head, rest = opt.param_groups
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [id(p) for p in ortho["params"]] == [id(m.weight) for m in convs[1:]]  # whitening conv frozen
    assert ortho["orthogonal"] and ortho["lr"] == 0.2 and ortho["weight_decay"] == 0.0
    assert {id(p) for p in head["params"]} == {id(p) for p in model.classifier.parameters()}
    assert head["lr"] == 0.5 and head["weight_decay"] == pytest.approx(1e-3 / 0.5)
    bns = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    assert {id(p) for p in rest["params"]} == {id(p) for p in bns}
    assert rest["lr"] == 10.0 and rest["weight_decay"] == pytest.approx(1e-3 / 10.0)
    assert not head["orthogonal"] and not rest["orthogonal"]
    with pytest.raises(ValueError, match="head_lr"):
        make_muon(model, lr=0.2, sgd_lr=1.0, head_lr=0)
    with pytest.raises(ValueError, match=">= 2 dimensions"):
        Muon([nn.Parameter(torch.ones(3))], lr=0.1, orthogonal=True)


def test_linear_schedule_falls_from_the_rate_to_zero_per_batch():
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lrs: list[float] = []
    fit(model, blobs(n=32, batch=4), epochs=2, optimizer=opt, scheduler="linear",
        after_backward=lambda m: lrs.append(opt.param_groups[0]["lr"]), device="cpu", progress=False)
    assert lrs == pytest.approx([0.1 * (1 - k / 16) for k in range(16)])


def test_fit_with_muon_learns_the_separable_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    data = blobs()
    opt = make_muon(model, lr=0.1, sgd_lr=0.1, head_lr=0.1)
    hist = fit(model, data, data, epochs=6, optimizer=opt, scheduler="linear", device="cpu", progress=False)
    assert hist.last["test_acc"] >= 0.9
    assert hist.column("train_loss")[-1] < 0.5 * hist.column("train_loss")[0]
