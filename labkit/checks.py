"""Helpers for self-checks and hidden tests in the notebooks.

Every check prints the student's value beside the expected one and raises
``AssertionError`` with both on failure, so feedback says what was wrong.

The comparison functions that tests rely on are captured when this module is
first imported (in each notebook's locked setup cell, before any student code
runs). A student cell that replaces ``torch.allclose``, ``torch.equal``,
``torch.testing.assert_close`` or ``numpy.allclose`` therefore cannot make a
test pass: the checks use the captured originals, and every test cell calls
:func:`restore_comparators` first so other code sees the real functions too.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.testing

# Captured at import time; see the module docstring.
_ORIGINALS: dict[tuple[Any, str], Any] = {
    (torch, "allclose"): torch.allclose,
    (torch, "equal"): torch.equal,
    (torch, "isclose"): torch.isclose,
    (torch.testing, "assert_close"): torch.testing.assert_close,
    (np, "allclose"): np.allclose,
    (np, "isclose"): np.isclose,
    (np, "array_equal"): np.array_equal,
    (np.testing, "assert_allclose"): np.testing.assert_allclose,
    (math, "isclose"): math.isclose,
}
_allclose = torch.allclose
_equal = torch.equal
_isnan = torch.isnan
_abs = torch.Tensor.abs


def restore_comparators() -> list[str]:
    """Put back any comparison function a cell replaced; returns the names that were patched."""
    patched = []
    for (owner, name), original in _ORIGINALS.items():
        if getattr(owner, name, None) is not original:
            setattr(owner, name, original)
            patched.append(f"{owner.__name__}.{name}")
    return patched


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu")
    return torch.as_tensor(np.asarray(x))


def _short(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return str(x.tolist()) if x.numel() <= 12 else f"tensor(shape={tuple(x.shape)})"
    return repr(x)


def check_close(actual: Any, expected: Any, atol: float = 1e-6, rtol: float = 0.0,
                name: str = "value", equal_nan: bool = False, quiet: bool = False) -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` element-wise (same shape)."""
    if actual is None:
        raise AssertionError(f"{name}: got None (did the function forget to return?)")
    a, e = _as_tensor(actual).double(), _as_tensor(expected).double()
    if tuple(a.shape) != tuple(e.shape):
        raise AssertionError(f"{name}: shape {tuple(a.shape)} but expected {tuple(e.shape)}")
    ok = _allclose(a, e, atol=atol, rtol=rtol, equal_nan=equal_nan)
    if not quiet:
        print(f"{name}: yours {_short(actual)}  expected {_short(expected)}  (atol {atol:g})")
    if not ok:
        raise AssertionError(f"{name}: got {_short(actual)}, expected {_short(expected)} "
                             f"(tolerance atol={atol:g}, rtol={rtol:g})")


def check_equal(actual: Any, expected: Any, name: str = "value", quiet: bool = False) -> None:
    """Assert exact equality (tensors: same shape, dtype-independent values; others: ``==``)."""
    if isinstance(actual, torch.Tensor) or isinstance(expected, torch.Tensor):
        a, e = _as_tensor(actual), _as_tensor(expected)
        ok = tuple(a.shape) == tuple(e.shape) and _equal(a.to(e.dtype), e)
    elif isinstance(expected, (list, tuple)):  # a tuple is not the list it looks like
        ok = type(actual) is type(expected) and actual == expected
    else:
        ok = actual == expected
    if not quiet:
        print(f"{name}: yours {_short(actual)}  expected {_short(expected)}")
    if not ok:
        raise AssertionError(f"{name}: got {_short(actual)}, expected {_short(expected)}")


def check_true(condition: Any, message: str) -> None:
    """Assert a condition; ``message`` says what was expected."""
    if not bool(condition):
        raise AssertionError(message)


def check_raises(exc: type[BaseException], fn, *args, name: str = "call", **kwargs) -> None:
    """Assert that ``fn(*args, **kwargs)`` raises ``exc``."""
    try:
        fn(*args, **kwargs)
    except exc:
        print(f"{name}: raised {exc.__name__} as expected")
        return
    except Exception as other:  # noqa: BLE001 - reported to the student
        raise AssertionError(f"{name}: raised {type(other).__name__}: {other}, expected {exc.__name__}") from None
    raise AssertionError(f"{name}: did not raise, expected {exc.__name__}")


def passed(what: str) -> None:
    """The last line of a passing self-check."""
    print(f"✓ {what}: all checks passed")


# ---------------------------------------------------------------------------- hidden-check helpers
# Used by the hidden regions of test cells (``hidden_checks(rec)``, see notebooks/README.md):
# they put a student's module and the reference into the same known state and record plain
# values. They decide nothing: the grader's judge compares the two records.

_PARAM_LAYERS = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)


def fill_deterministic(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every floating parameter and buffer of ``module`` a value from ``seed`` (in place).

    Weights ~ N(0, 0.5²); BatchNorm scales and running variances in [0.5, 1.5) (positive, as
    trained ones are); biases and running means ~ N(0, 0.3²). Two modules with the same layers,
    created in the same order, end up identical whatever their initialisation was.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in module.modules():
            is_bn = isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)
            tensors = list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False))
            for name, t in tensors:
                if not t.is_floating_point():
                    continue
                if name == "running_var" or (is_bn and name == "weight"):
                    t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
                elif name in ("bias", "running_mean"):
                    t.copy_(torch.randn(t.shape, generator=gen) * 0.3)
                else:
                    t.copy_(torch.randn(t.shape, generator=gen) * 0.5)
    return module


def layer_summary(module: torch.nn.Module) -> list[tuple]:
    """The Conv2d / Linear / BatchNorm layers of ``module`` in registration order, as plain tuples.

    Conv2d: ``("Conv2d", in, out, kernel, stride, padding, groups, has_bias)``; Linear:
    ``("Linear", in, out, has_bias)``; BatchNorm: ``(type, num_features)``. Activations and
    pooling are left out, so ``nn.ReLU()`` modules and ``torch.relu`` calls look the same.
    """
    out = []
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            out.append(("Conv2d", m.in_channels, m.out_channels, tuple(m.kernel_size), tuple(m.stride),
                        tuple(m.padding) if not isinstance(m.padding, str) else m.padding, m.groups,
                        m.bias is not None))
        elif isinstance(m, torch.nn.Linear):
            out.append(("Linear", m.in_features, m.out_features, m.bias is not None))
        elif isinstance(m, _PARAM_LAYERS):
            out.append((type(m).__name__, m.num_features))
    return out


def random_vgg(cfg: list, num_classes: int = 3, in_channels: int = 3, seed: int = 0) -> torch.nn.Module:
    """A :class:`labkit.models.VGG` of ``cfg`` in eval mode whose every value is non-trivial, for
    visible self-checks of pruning and checkpoint code.

    Seeds torch's global generator with ``seed``, builds the VGG, then draws BatchNorm
    gamma ~ U(0.5, 1.5), beta ~ U(-0.5, 0.5), running mean ~ U(-1, 1), running var ~ U(0.3, 3)
    and Linear weight and bias ~ N(0, 1); ``num_batches_tracked`` is set to 7.
    """
    from labkit.models import VGG

    torch.manual_seed(seed)
    model = VGG(cfg=cfg, num_classes=num_classes, in_channels=in_channels)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
                mod.running_mean.uniform_(-1.0, 1.0)
                mod.running_var.uniform_(0.3, 3.0)
                mod.num_batches_tracked.fill_(7)
            elif isinstance(mod, torch.nn.Linear):
                mod.weight.normal_()
                mod.bias.normal_()
    return model.eval()


def record_module(rec: Any, name: str, module: torch.nn.Module, x: torch.Tensor, seed: int,
                  atol: float = 1e-5) -> None:
    """Record ``module``'s layers, parameter count and outputs on ``x`` in eval and train mode.

    The module is first put into a known state with :func:`fill_deterministic` (``seed``), so
    the reference and a student's module give the same outputs exactly when they compute the
    same function.
    """
    rec.check(f"{name}: layers", lambda: layer_summary(module))
    rec.check(f"{name}: parameter count", lambda: sum(p.numel() for p in module.parameters()))
    fill_deterministic(module, seed)
    with torch.no_grad():
        module.eval()
        rec.check(f"{name}: output in eval mode", lambda: module(x), atol=atol)
        module.train()
        rec.check(f"{name}: output in train mode", lambda: module(x), atol=10 * atol)
