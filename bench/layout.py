"""``python -m bench.layout``: training images/s in NCHW vs NHWC (channels_last) on this machine.

Why ``labkit.train.fit`` trains NHWC by default under ``fast`` and ``full``: for each model the labs
train, a few SGD steps on random 32x32 images in both layouts, alternating, best of ``--rounds`` kept
(the machine may be shared). Prints one line per model with both rates and their ratio.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
from torch import nn

from labkit import models

# (what it is, builder, batch size): the models and batch sizes of the labs under `fast`
MODELS: list[tuple[str, Callable[[], nn.Module], int]] = [
    ("VGG-11 w0.25, batch 256 (labs 3-5)", lambda: models.vgg(11, width=0.25, num_classes=10), 256),
    ("VGG-11 w0.5, batch 256 (teachers)", lambda: models.vgg(11, width=0.5, num_classes=10), 256),
    ("simple_cnn w16, batch 256 (lab 1)", lambda: models.simple_cnn(10, width=16), 256),
    ("MobileNet v1, batch 256 (lab 6)", lambda: models.mobilenet_v1(num_classes=10), 256),
    ("ResNet-18 ImageNet stem, batch 32 (lab 1 transfer)", lambda: models.resnet18(10, small_input=False), 32),
    ("ResNet-18 ImageNet stem, batch 256 (lab 1 source)", lambda: models.resnet18(10, small_input=False), 256),
]


def images_per_s(make: Callable[[], nn.Module], batch: int, nhwc: bool, steps: int = 12, warmup: int = 3) -> float:
    """Training images/s of ``steps`` SGD steps on random ``[batch, 3, 32, 32]`` inputs (fp32, CPU)."""
    torch.manual_seed(0)
    model = make().train()
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    if nhwc:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return batch * steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.layout", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; images/s of training, best of {args.rounds}")
    for name, make, batch in MODELS:
        rates = [(images_per_s(make, batch, False, args.steps), images_per_s(make, batch, True, args.steps))
                 for _ in range(args.rounds)]
        nchw, nhwc = max(r[0] for r in rates), max(r[1] for r in rates)
        print(f"{name:<52} NCHW {nchw:7.0f}  NHWC {nhwc:7.0f}  ratio {nhwc / nchw:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
