"""labkit.metrics against values computed by hand or by scikit-learn."""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from labkit import metrics
from labkit.models import vgg


def test_count_params_of_known_layers():
    conv = nn.Conv2d(3, 8, 3, bias=False)
    assert metrics.count_params(conv) == 3 * 8 * 9
    lin = nn.Linear(10, 4)
    assert metrics.count_params(lin) == 10 * 4 + 4
    bn = nn.BatchNorm2d(5)  # running stats are buffers, not parameters
    assert metrics.count_params(bn) == 10
    seq = nn.Sequential(conv, lin)
    lin.bias.requires_grad_(False)
    assert metrics.count_params(seq) == 216 + 44
    assert metrics.count_params(seq, trainable_only=True) == 216 + 40


def test_count_nonzero_counts_conv_and_linear_weights_only():
    m = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3, 2))
    assert metrics.count_nonzero(m) == 6 + 6  # biases and BN excluded
    with torch.no_grad():
        m[0].weight[0].zero_()
        m[3].weight[1, 2] = 0
    assert metrics.count_nonzero(m) == 4 + 5


def test_flops_and_macs_of_linear_and_conv():
    assert metrics.flops(nn.Linear(20, 7), input_size=(5, 20)) == 2 * 20 * 7 * 5
    assert metrics.macs(nn.Linear(20, 7), input_size=(5, 20)) == 20 * 7 * 5
    # 3x3 conv, same padding: 2 * C_in * 9 * C_out * H * W
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    assert metrics.flops(conv, (1, 3, 8, 8)) == 2 * 3 * 9 * 4 * 8 * 8
    m = vgg(11, width=0.125)
    m.train()
    assert metrics.flops(m) > 0 and m.training  # mode restored


def test_serialized_size_grows_with_params_and_halves_in_fp16():
    small, big = nn.Linear(100, 100), nn.Linear(400, 400)
    s_small, s_big = metrics.serialized_size(small), metrics.serialized_size(big)
    assert s_small > 4 * 100 * 100 and s_big > 4 * 400 * 400  # fp32 payload + overhead
    assert s_big > 10 * s_small
    half = metrics.serialized_size(big, dtype=torch.float16)
    assert 0.45 < half / s_big < 0.55
    assert metrics.serialized_size(big.state_dict()) == s_big
    assert big.weight.dtype == torch.float32  # the model itself is not cast


def test_latency_is_a_positive_median():
    t = metrics.latency(nn.Linear(16, 4), input_size=(16,), repeats=5, warmup=1)
    assert 0 < t < 1.0
    with pytest.raises(ValueError, match="repeats"):
        metrics.latency(nn.Linear(16, 4), input_size=(16,), repeats=0)


class _Recorder(nn.Module):
    """Appends its name to a shared log on every forward pass; sleeps ``pause`` seconds."""

    def __init__(self, name: str, log: list, pause: float = 0.0) -> None:
        super().__init__()
        self.name, self.log, self.pause = name, log, pause
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        self.log.append((self.name, self.training, torch.is_inference_mode_enabled()))
        if self.pause:
            time.sleep(self.pause)
        return self.lin(x)


def test_latencies_interleave_rounds_in_rotating_order():
    log: list = []
    models = {n: _Recorder(n, log) for n in "abc"}
    models["b"].eval()
    out = metrics.latencies(models, batch_size=2, input_size=(4,), repeats=4, warmup=2)
    assert list(out) == ["a", "b", "c"] and all(t > 0 for t in out.values())
    order = [name for name, _, _ in log]
    assert order[:6] == ["a", "a", "b", "b", "c", "c"]                       # warm-up, model by model
    assert order[6:] == list("abc" "bca" "cab" "abc")                        # then one pass each per round
    assert all(not training and inference for _, training, inference in log)  # eval mode, no autograd
    assert [m.training for m in models.values()] == [True, False, True]      # modes restored


def test_latencies_tell_a_slow_model_from_a_fast_one():
    log: list = []
    out = metrics.latencies({"fast": _Recorder("fast", log), "slow": _Recorder("slow", log, pause=0.005)},
                            input_size=(4,), repeats=5, warmup=1)
    assert out["slow"] >= 0.005 > out["fast"]
    with pytest.raises(ValueError, match="at least one model"):
        metrics.latencies({})
    with pytest.raises(ValueError, match="repeats"):
        metrics.latencies({"m": nn.Linear(4, 2)}, input_size=(4,), repeats=0)


def test_accuracy():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert metrics.accuracy(logits, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    assert metrics.accuracy(torch.tensor([0, 1]), torch.tensor([0, 0])) == 0.5


def test_confusion_matrix_rows_are_true_classes():
    preds = torch.tensor([0, 1, 1, 2, 2, 2])
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    cm = metrics.confusion_matrix(preds, labels, 3)
    expected = torch.tensor([[1, 1, 1],
                             [0, 1, 1],
                             [0, 0, 1]])
    assert torch.equal(cm, expected)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        metrics.confusion_matrix(torch.tensor([3]), torch.tensor([0]), 3)


def test_confusion_matrix_of_no_sample():
    assert torch.equal(metrics.confusion_matrix(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 3),
                       torch.zeros(3, 3, dtype=torch.int64))


def test_macro_f1_is_not_in_labkit():
    """Lab 8 grades ``macro_f1``: labkit must not hand it over (the grader keeps its own copy)."""
    assert not hasattr(metrics, "macro_f1")


def test_model_device_and_as_state_dict():
    assert metrics.model_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert metrics.model_device(nn.ReLU()) == torch.device("cpu")  # no parameter, no buffer
    lin = nn.Linear(2, 3)
    assert metrics.as_state_dict(lin, "f").keys() == {"weight", "bias"}
    sd = {"w": torch.zeros(1)}
    assert metrics.as_state_dict(sd, "f") is sd
    with pytest.raises(TypeError, match="save_checkpoint needs a model or a state dict, got list"):
        metrics.as_state_dict([1, 2], "save_checkpoint")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_latency_on_cuda_measures_a_copy():
    m = vgg(11, width=0.125)
    assert metrics.latency(m, device="cuda", repeats=3, warmup=1) > 0
    assert next(m.parameters()).device.type == "cpu"  # the model itself did not move
