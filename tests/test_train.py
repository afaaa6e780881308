"""labkit.train: the training loop, its hooks, schedules, history and checkpoints."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from labkit.models import simple_cnn, vgg
from labkit.train import (History, Lookahead, correct_bn, evaluate, fit, load_checkpoint, make_sgd, precise_bn,
                          predict, save_checkpoint)


def blobs(n: int = 48, batch: int = 16, seed: int = 0,
          size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A tiny separable 2-class image problem: the class shifts the mean of channel 0.

    Returns a list of (float32 [B, 3, size, size], int64 [B]) batches, like labkit.data.Loader.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 3, size, size, generator=g) * 0.5
    x[:, 0] += (2 * y - 1).view(-1, 1, 1).float() * 1.5
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return simple_cnn(num_classes=2, width=4, depth=1)


def test_fit_learns_a_separable_problem():
    data = blobs()
    model = tiny()
    hist = fit(model, data, data, epochs=6, lr=0.05, device="cpu", progress=False)
    assert isinstance(hist, History) and len(hist) == 6
    assert list(hist[0]) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"]
    assert hist.column("epoch") == [1, 2, 3, 4, 5, 6]
    losses = hist.column("train_loss")
    assert losses[-1] < 0.5 * losses[0]
    assert hist.last["test_acc"] >= 0.9
    ev = evaluate(model, data, device="cpu")
    assert ev["n"] == 48 and ev["acc"] == pytest.approx(hist.last["test_acc"])
    logits, labels = predict(model, data)
    assert logits.shape == (48, 2) and logits.dtype == torch.float32 and labels.dtype == torch.int64
    assert (logits.argmax(1) == labels).float().mean().item() == pytest.approx(ev["acc"])
    assert model.training  # evaluate / predict restore the mode


def test_after_backward_runs_between_backward_and_step():
    events: list[str] = []
    snapshot: dict[str, torch.Tensor] = {}

    class LoggingSGD(torch.optim.SGD):
        def step(self, closure=None):
            events.append("step")
            return super().step(closure)

    def loss_fn(logits, labels, inputs):
        events.append("forward")
        snapshot.update({k: p.detach().clone() for k, p in model.named_parameters()})
        return nn.functional.cross_entropy(logits, labels)

    def hook(m):
        events.append("hook")
        for k, p in m.named_parameters():
            assert p.grad is not None, f"{k} has no gradient yet"
            assert torch.equal(p, snapshot[k]), f"{k} changed before the hook"

    model = tiny()
    opt = LoggingSGD(model.parameters(), lr=0.1)
    fit(model, blobs(n=32), epochs=1, optimizer=opt, loss_fn=loss_fn, after_backward=hook,
        device="cpu", progress=False)
    assert events == ["forward", "hook", "step"] * 2


def test_hook_that_edits_gradients_takes_effect():
    # zeroing all gradients in the hook must leave the weights where weight decay puts them
    model = tiny()
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(model, blobs(n=16), epochs=1, optimizer=opt,
        after_backward=lambda m: [p.grad.zero_() for p in m.parameters()],
        device="cpu", progress=False)
    for k, p in model.named_parameters():
        assert torch.equal(p, before[k])


def test_on_epoch_start_and_early_stopping():
    seen: list[int] = []

    class StopAfter:
        def __init__(self):
            self.values = []

        def step(self, value):
            self.values.append(value)
            return len(self.values) == 2

    stopper = StopAfter()
    hist = fit(tiny(), blobs(n=16), blobs(n=16), epochs=5, lr=0.01, on_epoch_start=seen.append,
               early_stopping=stopper, monitor="test_loss", device="cpu", progress=False)
    assert seen == [1, 2] and len(hist) == 2 and hist.stopped_early
    assert stopper.values == hist.column("test_loss")
    assert "stopped early after epoch 2" in hist.to_markdown()


def test_integer_milestones_decay_the_rate():
    hist = fit(tiny(), blobs(n=16), epochs=4, lr=0.1, milestones=[2, 3], device="cpu",
               progress=False)
    assert hist.column("lr") == pytest.approx([0.1, 0.1, 0.01, 0.001])


@pytest.mark.parametrize("bad", [[1.0], [0.5, 0.75], [0], [True]])
def test_float_or_non_positive_milestones_rejected(bad):
    with pytest.raises(ValueError, match="milestones must be positive integer epochs"):
        fit(tiny(), blobs(n=16), epochs=2, lr=0.1, milestones=bad, device="cpu", progress=False)


def test_named_schedulers():
    cos = fit(tiny(), blobs(n=16), epochs=3, lr=0.1, scheduler="cosine", device="cpu",
              progress=False).column("lr")
    assert cos[0] == pytest.approx(0.1) and cos[0] > cos[1] > cos[2]
    model = tiny()
    opt = make_sgd(model, 0.1)
    lrs: list[float] = []
    hist = fit(model, blobs(n=32, batch=4), epochs=2, optimizer=opt, scheduler="onecycle",
               after_backward=lambda m: lrs.append(opt.param_groups[0]["lr"]), device="cpu",
               progress=False)
    # OneCycleLR steps per batch (16 here): up from max_lr / 25 to 0.1, then far down
    assert len(lrs) == 16 and hist.column("lr")[0] == pytest.approx(0.1 / 25)
    assert max(lrs) == pytest.approx(0.1, rel=0.05) and lrs[-1] < 0.01
    assert lrs.index(max(lrs)) < 8
    with pytest.raises(ValueError, match="cosine"):
        fit(tiny(), blobs(n=16), epochs=1, lr=0.1, scheduler="triangle", device="cpu", progress=False)


def test_fit_is_deterministic_on_cpu():
    def run():
        torch.manual_seed(0)
        model = vgg(cfg=[8, "M", 16, "M", 16], num_classes=2)
        hist = fit(model, blobs(n=32), blobs(n=16), epochs=2, lr=0.05,
                   device="cpu", progress=False)
        return [{k: v for k, v in r.items() if k != "seconds"} for r in hist], model.state_dict()

    (rows_a, sd_a), (rows_b, sd_b) = run(), run()
    assert rows_a == rows_b
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_history_best_and_markdown():
    rows = [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 0.9, "test_acc": 0.6,
             "lr": 0.1, "seconds": 1.0},
            {"epoch": 2, "train_loss": 0.5, "train_acc": 0.8, "test_loss": 0.7, "test_acc": 0.7,
             "lr": 0.1, "seconds": 1.0},
            {"epoch": 3, "train_loss": 0.4, "train_acc": 0.9, "test_loss": 0.8, "test_acc": 0.7,
             "lr": 0.01, "seconds": 1.0}]
    h = History(rows=rows)
    assert h.best()["epoch"] == 2 and h.best_epoch == 2  # earliest of the tied best
    assert h.best("test_loss")["epoch"] == 2 and h.best("train_acc")["epoch"] == 3
    md = h.to_markdown().splitlines()
    assert md[0].startswith("| epoch | train_loss | train_acc (%)") and len(md) == 5
    assert "| 2 | 0.500 | 80.00 | 0.700 | 70.00 | 0.1 | 1.0 |" in md
    with pytest.raises(KeyError, match="columns"):
        h.column("acc")


def test_progress_bar_writes_to_stdout_only(capsys):
    fit(tiny(), blobs(n=16), epochs=1, lr=0.1, device="cpu", progress=True, desc="tiny")
    out, err = capsys.readouterr()
    assert err == ""
    assert "tiny" in out


def test_bad_arguments_get_one_clear_line():
    with pytest.raises(ValueError, match="not both"):
        fit(tiny(), blobs(n=16), epochs=1, lr=0.1, optimizer=make_sgd(tiny(), 0.1), device="cpu")
    with pytest.raises(ValueError, match="epochs"):
        fit(tiny(), blobs(n=16), epochs=0, lr=0.1, device="cpu")
    with pytest.raises(ValueError, match="no test_loader"):
        fit(tiny(), blobs(n=16), epochs=1, lr=0.1, early_stopping=object(), device="cpu")
    with pytest.raises(ValueError, match="amp=True needs a CUDA"):
        fit(tiny(), blobs(n=16), epochs=1, lr=0.1, device="cpu", amp=True)
    with pytest.raises(ValueError, match="lr must be"):
        make_sgd(tiny(), 0)


def test_make_sgd_defaults():
    opt = make_sgd(tiny(), 0.05)
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"], g["nesterov"]) == (0.05, 0.9, 5e-4, False)


def test_checkpoint_round_trip_is_atomic(tmp_path):
    model = vgg(11, width=0.125)
    rows = [{"epoch": 1, "train_loss": 0.7, "test_acc": None, "lr": 0.1}]  # History.rows
    path = save_checkpoint(tmp_path / "sub" / "ck.pt", model, cfg=model.cfg, acc=0.5, history=rows)
    assert path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["ck.pt"]  # no temp file left
    fresh = vgg(cfg=model.cfg)
    ck = load_checkpoint(path, fresh)
    assert ck["cfg"] == model.cfg and ck["acc"] == 0.5 and ck["history"] == rows
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  fresh.state_dict().values()))
    with pytest.raises(ValueError, match="does not fit this model"):
        load_checkpoint(path, vgg(13, width=0.125))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_failed_save_leaves_old_file_and_no_temp(tmp_path):
    path = save_checkpoint(tmp_path / "ck.pt", {"w": torch.ones(2)})
    with pytest.raises(Exception):
        save_checkpoint(path, {"w": torch.zeros(2)}, bad=lambda: None)  # lambdas don't pickle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(2))


def test_fit_with_labkit_loader_vgg11():
    """The real pipeline: labkit.data.Loader (augmenting, reshuffling) into a VGG-11."""
    data = pytest.importorskip("labkit.data")
    if not hasattr(data, "Loader"):
        pytest.skip("labkit.data.Loader not written yet")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(40) % 4
    images[:, 0] = (labels * 60).view(-1, 1, 1).to(torch.uint8)  # a learnable class signal
    ds = data.ImageData(images, labels, ["a", "b", "c", "d"], "digits")

    def run():
        torch.manual_seed(0)
        model = vgg(11, width=0.125, num_classes=4)
        train = data.Loader(ds, 16, train=True, device="cpu", seed=0)
        test = data.Loader(ds, 16, train=False, device="cpu")
        hist = fit(model, train, test, epochs=2, lr=0.05, device="cpu", progress=False)
        return hist.column("train_loss"), hist.column("test_acc")

    first = run()
    assert len(first[0]) == 2 and all(0 <= a <= 1 for a in first[1])
    assert run() == first  # seeded loader + seeded init: identical runs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_channels_last_path():
    data = [(x.cuda(), y.cuda()) for x, y in blobs(size=32)]
    torch.manual_seed(0)
    model = vgg(11, width=0.125, num_classes=2)
    hist = fit(model, data, data, epochs=4, lr=0.05, device="cuda", progress=False)
    assert next(model.parameters()).is_cuda
    assert model.feature[0].weight.is_contiguous()  # handed back in the default layout
    assert hist.column("train_loss")[-1] < hist.column("train_loss")[0]
    logits, labels = predict(model, data)
    assert logits.dtype == torch.float32 and logits.device.type == "cpu"
    # fp32 evaluation agrees with the bf16 one up to a few flipped borderline images
    assert abs(evaluate(model, data, amp=False)["acc"] - hist.last["test_acc"]) <= 0.1


# --------------------------------------------------------------------------- the airbench-style options
def test_lookahead_update_is_an_ema_that_resets_the_model():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    la = Lookahead(model)
    with torch.no_grad():
        model.weight.fill_(3.0)
    la.update(model, 0.75)  # avg = 0.75 * 1 + 0.25 * 3 = 1.5, and the model is reset to it
    assert torch.allclose(model.weight, torch.full((1, 2), 1.5))
    with torch.no_grad():
        model.weight.fill_(5.5)
    la.update(model, 0.0)  # decay 0: the average follows the model
    assert torch.allclose(model.weight, torch.full((1, 2), 5.5))
    with torch.no_grad():
        model.weight.fill_(-1.0)
    la.update(model, 1.0)  # decay 1: back to the average
    assert torch.allclose(model.weight, torch.full((1, 2), 5.5))
    assert Lookahead.decay(0, 100, 5) == 0.0
    assert Lookahead.decay(100, 100, 5) == pytest.approx(0.95 ** 5)
    with pytest.raises(ValueError, match="decay"):
        la.update(model, 1.5)


def test_lookahead_averages_batchnorm_statistics_too():
    model = vgg(cfg=[4], num_classes=2)
    la = Lookahead(model)
    bn = model.feature[1]
    with torch.no_grad():
        bn.running_mean.fill_(2.0)
    la.update(model, 0.5)
    assert torch.allclose(bn.running_mean, torch.ones(4))
    assert bn.num_batches_tracked.dtype == torch.int64  # integer buffers are left alone


def test_fit_with_lookahead_ends_on_the_averaged_weights():
    data = blobs()

    def run(lookahead):
        torch.manual_seed(0)
        model = tiny()
        hist = fit(model, data, data, epochs=3, lr=0.05, lookahead=lookahead, device="cpu",
                   progress=False)
        return model, hist

    plain, _ = run(None)
    avg, hist = run(2)
    assert hist.last["test_acc"] >= 0.9
    assert any(not torch.equal(a, b) for a, b in zip(plain.state_dict().values(),
                                                     avg.state_dict().values()))
    with pytest.raises(ValueError, match="lookahead"):
        fit(tiny(), data, epochs=1, lr=0.1, lookahead=0, device="cpu", progress=False)


def test_flip_tta_is_the_mean_of_the_two_logits():
    data = blobs(size=8)
    torch.manual_seed(0)
    model = vgg(cfg=[4, "M", 6], num_classes=2)
    model.eval()
    logits, _ = predict(model, data, tta_flip=True)
    x = torch.cat([b[0] for b in data])
    with torch.no_grad():
        expected = 0.5 * (model(x) + model(x.flip(3)))
    assert torch.allclose(logits, expected, atol=1e-6)
    plain, _ = predict(model, data)
    assert not torch.allclose(plain, logits)
    ev = evaluate(model, data, tta_flip=True)
    assert ev["acc"] == pytest.approx((expected.argmax(1) == torch.cat([b[1] for b in data])).float().mean().item())


def test_label_smoothing_and_nesterov_options_match_the_explicit_forms():
    data = blobs()

    def run(**kw):
        torch.manual_seed(0)
        model = tiny()
        hist = fit(model, data, epochs=2, device="cpu", progress=False, **kw)
        return hist.column("train_loss"), model.state_dict()

    smooth = lambda lg, y, x: nn.functional.cross_entropy(lg, y, label_smoothing=0.2)  # noqa: E731
    torch.manual_seed(0)
    m = tiny()
    opt = make_sgd(m, 0.05, nesterov=True)
    h = fit(m, data, epochs=2, optimizer=opt, loss_fn=smooth, device="cpu", progress=False)
    losses, sd = run(lr=0.05, nesterov=True, label_smoothing=0.2)
    assert losses == pytest.approx(h.column("train_loss"))
    assert all(torch.allclose(sd[k], m.state_dict()[k]) for k in sd)
    with pytest.raises(ValueError, match="label_smoothing applies to the default loss"):
        fit(tiny(), data, epochs=1, lr=0.1, loss_fn=smooth, label_smoothing=0.1, device="cpu")
    with pytest.raises(ValueError, match="nesterov"):
        fit(tiny(), data, epochs=1, optimizer=make_sgd(tiny(), 0.1), nesterov=True, device="cpu")


def _first_conv_layouts(model, data, **kw):
    """Fit ``model`` and return, per training forward pass, whether the first conv's input was NHWC."""
    seen = []
    handle = model.feature[0].register_forward_pre_hook(
        lambda mod, args: seen.append(bool(args[0].is_contiguous(memory_format=torch.channels_last))
                                      if mod.training else None))
    hist = fit(model, data, data, epochs=2, lr=0.05, device="cpu", progress=False, **kw)
    handle.remove()
    return hist, [s for s in seen if s is not None]


def _with_profile(monkeypatch, name):
    """Make ``labkit.profile.get_profile()`` (what fit's defaults read) return profile ``name``."""
    import labkit.profile as lp

    prof = lp.resolve({"LABKIT_PROFILE": name, "LABKIT_DATASET": "digits"})
    monkeypatch.setattr(lp, "get_profile", lambda: prof)
    return prof


def test_channels_last_by_default_under_fast_and_eval_seconds(monkeypatch):
    assert _with_profile(monkeypatch, "fast").sizes.channels_last
    data = blobs(size=8)
    torch.manual_seed(0)
    model = vgg(cfg=[4, "M", 6], num_classes=2)
    hist, layouts = _first_conv_layouts(model, data)
    assert layouts and all(layouts)            # every training batch ran NHWC (fast's default)
    assert model.feature[0].weight.is_contiguous()   # handed back in PyTorch's default layout
    model.feature[0].weight.detach().view(-1)        # so a student's .view(...) works after fit
    assert len(hist.eval_seconds) == 2
    assert all(0 <= e <= r["seconds"] for e, r in zip(hist.eval_seconds, hist))


def test_smoke_trains_nchw_by_default_and_an_explicit_choice_wins(monkeypatch):
    assert not _with_profile(monkeypatch, "smoke").sizes.channels_last
    data = blobs(size=8)
    torch.manual_seed(0)
    _, layouts = _first_conv_layouts(vgg(cfg=[4, "M", 6], num_classes=2), data)
    assert layouts and not any(layouts)
    _, layouts = _first_conv_layouts(vgg(cfg=[4, "M", 6], num_classes=2), data, channels_last=True)
    assert layouts and all(layouts)


def test_channels_last_off_trains_nchw_and_gives_the_same_model_up_to_rounding(monkeypatch):
    _with_profile(monkeypatch, "fast")
    data = blobs(size=8)
    torch.manual_seed(0)
    a = vgg(cfg=[4, "M", 6], num_classes=2)
    b = copy.deepcopy(a)
    _, on = _first_conv_layouts(a, data)
    _, off = _first_conv_layouts(b, data, channels_last=False)
    assert all(on) and not any(off)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        if pa.is_floating_point():
            assert torch.allclose(pa, pb, atol=1e-4), name


def test_fit_epoch_is_the_loop_fit_runs():
    import labkit.train as train

    calls: list[int] = []
    original = train.fit_epoch

    def spy(run, loader, epoch):
        calls.append(epoch)
        return original(run, loader, epoch)

    train.fit_epoch = spy
    try:
        fit(tiny(), blobs(n=16), epochs=3, lr=0.1, device="cpu", progress=False)
    finally:
        train.fit_epoch = original
    assert calls == [1, 2, 3]


def test_markdown_table_is_the_one_writer():
    from labkit.tables import markdown_table

    assert markdown_table(["a", "b"], [["1", "2"], ["3", "4"]]).splitlines() == [
        "| a | b |", "|---|---|", "| 1 | 2 |", "| 3 | 4 |"]
    assert markdown_table(["a"], []) == "| a |\n|---|"


def test_split_modules_are_reachable_from_labkit_train():
    """History, the optimiser helpers and the checkpoints live in their own modules; the
    notebooks reach them as ``labkit.train.X``, which must stay the same objects."""
    from labkit import checkpoints, history, optim, train

    assert train.History is history.History
    assert train.make_sgd is optim.make_sgd and train.Lookahead is optim.Lookahead
    assert train.save_checkpoint is checkpoints.save_checkpoint
    assert train.load_checkpoint is checkpoints.load_checkpoint
    assert all(hasattr(train, name) for name in train.__all__)


def test_precise_bn_is_the_plain_average_of_the_batch_statistics():
    # one BatchNorm2d after an identity: its statistics are those of the inputs themselves
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    bn = model[0]
    with torch.no_grad():
        bn.running_mean.fill_(7.0)  # stale values that must be replaced, not blended
    data = blobs(n=64, batch=16)
    model.eval()
    assert precise_bn(model, data, 3) == 3
    xs = [x for x, _ in data[:3]]
    means = torch.stack([x.mean(dim=(0, 2, 3)) for x in xs])
    vars_ = torch.stack([x.transpose(0, 1).reshape(3, -1).var(dim=1, unbiased=True) for x in xs])
    assert torch.allclose(bn.running_mean, means.mean(0), atol=1e-6)
    assert torch.allclose(bn.running_var, vars_.mean(0), atol=1e-5)
    assert bn.momentum == 0.1 and not model.training  # momentum and mode restored
    weight = model[2].weight.clone()
    precise_bn(model, data, 100)  # a shorter loader: all of it, no parameter moves
    assert torch.equal(weight, model[2].weight)


def test_precise_bn_rejects_bad_counts_and_empty_loaders():
    model = nn.Sequential(nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match="batches"):
        precise_bn(model, blobs(), 0)
    with torch.no_grad():
        model[0].running_mean.fill_(2.0)
    with pytest.raises(ValueError, match="no batches"):
        precise_bn(model, [], 4)
    assert torch.allclose(model[0].running_mean, torch.full((3,), 2.0))  # untouched
    assert precise_bn(nn.Linear(2, 2), blobs(), 2) == 0  # no BatchNorm: nothing to do


def test_correct_bn_moves_the_statistics_by_what_the_weights_changed():
    # conv (no bias) -> BN: doubling the weights doubles the batch mean (m -> 2m) and quadruples the
    # batch variance, so the running mean must move by m and the running variance grow 4x
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    with torch.no_grad():
        ref[1].running_mean.copy_(torch.tensor([0.3, -0.2, 0.1, 0.0]))
        ref[1].running_var.copy_(torch.tensor([2.0, 0.5, 1.0, 3.0]))
    ref.eval()
    changed = copy.deepcopy(ref)
    with torch.no_grad():
        changed[0].weight.mul_(2.0)
    data = blobs(n=64, batch=16)
    mean0, var0 = ref[1].running_mean.clone(), ref[1].running_var.clone()
    assert correct_bn(changed, ref, data, 3) == 3
    probe = copy.deepcopy(ref)
    precise_bn(probe, data, 3)
    m, v = probe[1].running_mean, probe[1].running_var   # the reference's batch statistics
    assert torch.allclose(changed[1].running_mean, mean0 + m, atol=1e-5)  # + (2m - m)
    assert torch.allclose(changed[1].running_var, var0 * 4.0, rtol=1e-4)
    # the reference and the statistics it was given are untouched; parameters never move
    assert torch.equal(ref[1].running_mean, mean0) and torch.equal(ref[1].running_var, var0)
    assert not changed.training and changed[1].momentum == 0.1
    # where the reference's batch variance is zero (a dead channel) the variance is kept
    dead = copy.deepcopy(ref)
    with torch.no_grad():
        dead[0].weight[1].zero_()
    dead_changed = copy.deepcopy(dead)
    with torch.no_grad():
        dead_changed[0].weight.mul_(3.0)
    correct_bn(dead_changed, dead, data, 2)
    assert dead_changed[1].running_var[1] == var0[1] and torch.isfinite(dead_changed[1].running_var).all()


def test_correct_bn_rejects_models_with_other_batchnorm_layers():
    a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    b = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5))
    with pytest.raises(ValueError, match="same BatchNorm layers"):
        correct_bn(a, b, blobs(), 2)


def test_fit_with_precise_bn_evaluates_on_recomputed_statistics():
    data = blobs()
    torch.manual_seed(0)
    model = tiny()
    hist = fit(model, data, data, epochs=2, lr=0.05, precise_bn=2, device="cpu", progress=False)
    bn = model[1]
    assert bn.momentum == 0.1
    model.eval()
    # the statistics the model ends with are those of the first two training batches
    with torch.no_grad():
        feats = [model[0](x) for x, _ in data[:2]]
    mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    assert torch.allclose(bn.running_mean, mean, atol=1e-5)
    assert hist.last["test_acc"] == pytest.approx(evaluate(model, data)["acc"])
    with pytest.raises(ValueError, match="precise_bn"):
        fit(tiny(), data, epochs=1, lr=0.1, precise_bn=-1, device="cpu", progress=False)
