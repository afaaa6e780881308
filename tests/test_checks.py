"""labkit.checks: feedback text, and that patched comparators cannot fake a pass."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.testing

from labkit import checks
from labkit.checks import check_close, check_equal, check_raises, check_true, restore_comparators


@pytest.fixture(autouse=True)
def always_restore():
    yield
    restore_comparators()  # never leak a patch into other tests


def test_check_close_passes_and_prints_both_values(capsys):
    check_close(torch.tensor([1.0, 2.0]), [1.0, 2.0 + 1e-8], name="x")
    out = capsys.readouterr().out
    assert "x: yours [1.0, 2.0]" in out and "expected" in out


def test_check_close_reports_wrong_values_and_shapes():
    with pytest.raises(AssertionError, match=r"v: got \[1.0, 2.5\], expected \[1.0, 2.0\]"):
        check_close(torch.tensor([1.0, 2.5]), torch.tensor([1.0, 2.0]), name="v", quiet=True)
    with pytest.raises(AssertionError, match=r"shape \(3,\) but expected \(2,\)"):
        check_close(torch.zeros(3), torch.zeros(2), quiet=True)
    with pytest.raises(AssertionError, match="got None"):
        check_close(None, 1.0, quiet=True)
    with pytest.raises(AssertionError):
        check_close(float("nan"), 1.0, quiet=True)


def test_restore_comparators_undoes_patches():
    real = (torch.allclose, np.allclose, torch.testing.assert_close, math.isclose)
    torch.allclose = lambda *a, **k: True
    np.allclose = lambda *a, **k: True
    torch.testing.assert_close = lambda *a, **k: None
    math.isclose = lambda *a, **k: True
    patched = restore_comparators()
    assert set(patched) == {"torch.allclose", "numpy.allclose", "torch.testing.assert_close",
                            "math.isclose"}
    assert (torch.allclose, np.allclose, torch.testing.assert_close, math.isclose) == real
    assert not torch.allclose(torch.zeros(1), torch.ones(1))
    assert restore_comparators() == []


def test_check_close_fails_even_when_allclose_is_patched():
    torch.allclose = lambda *a, **k: True
    torch.equal = lambda *a, **k: True
    np.allclose = lambda *a, **k: True
    with pytest.raises(AssertionError):
        check_close(torch.tensor([1.0]), torch.tensor([2.0]), quiet=True)
    with pytest.raises(AssertionError):
        check_equal(torch.tensor([1, 2]), torch.tensor([1, 3]), quiet=True)


def test_check_equal():
    check_equal(torch.tensor([1, 2]), torch.tensor([1.0, 2.0]), quiet=True)  # dtype-independent
    check_equal([8, "M"], [8, "M"], quiet=True)
    with pytest.raises(AssertionError):
        check_equal((8, "M"), [8, "M"], quiet=True)  # a tuple is not the expected list
    with pytest.raises(AssertionError, match="cfg: got 3, expected 4"):
        check_equal(3, 4, name="cfg", quiet=True)


def test_check_true_and_check_raises(capsys):
    check_true(1 == 1, "never shown")
    with pytest.raises(AssertionError, match="must be positive"):
        check_true(False, "must be positive")
    check_raises(ValueError, int, "x", name="int('x')")
    assert "raised ValueError as expected" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="did not raise"):
        check_raises(ValueError, int, "3")
    with pytest.raises(AssertionError, match="raised TypeError"):
        check_raises(ValueError, int, None)


def test_originals_were_captured_at_import():
    assert checks._ORIGINALS[(torch, "allclose")] is torch.allclose


def test_random_vgg_is_deterministic_non_trivial_and_in_eval_mode():
    a, b = checks.random_vgg([4, "M", 6], num_classes=5, seed=3), checks.random_vgg([4, "M", 6], num_classes=5, seed=3)
    assert not a.training and a.classifier.out_features == 5
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    bns = [m for m in a.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 2
    for bn in bns:
        assert bn.weight.min() >= 0.5 and bn.weight.max() <= 1.5
        assert bn.running_var.min() >= 0.3 and bn.running_mean.abs().max() <= 1.0
        assert int(bn.num_batches_tracked) == 7
    grey = checks.random_vgg([2, "M"], in_channels=1)
    assert grey(torch.zeros(1, 1, 8, 8)).shape == (1, 3)
