"""labkit.allocator: freed tensor memory stays in the process (no page faults for every step)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

# A fresh interpreter per case: glibc's settings are per process and cannot be undone.
PROBE = r"""
import os, sys, torch
from labkit.allocator import keep_freed_memory, minor_faults as faults
on = keep_freed_memory() if sys.argv[1] == "keep" else False
again = keep_freed_memory() if sys.argv[1] == "keep" else False
for _ in range(30):
    torch.ones(10_000_000).sum()  # warm: the heap grows by a few blocks while it settles
f0 = faults()
for _ in range(20):
    torch.ones(10_000_000).sum()  # 40 MB: above glibc's largest dynamic mmap threshold (32 MB)
print(on, again, faults() - f0)
"""

linux_glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                                 reason="glibc's mallopt only")


def _probe(mode: str, **env: str) -> tuple[bool, bool, int]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LABKIT_KEEP_FREED_MEMORY")}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**clean, **env, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    return out[0] == "True", out[1] == "True", int(out[2])


@linux_glibc
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    on, again, kept = _probe("keep")
    _, _, default = _probe("default")
    assert on and again
    # 20 blocks of 40 MB: 9,766 faults each with the defaults (4 kB pages); once the heap has
    # settled (it grew by 2-7 blocks over the first 20 in probes), not one whole block faults in
    assert default > 20 * 5_000 and kept < 9_766, (kept, default)


@linux_glibc
@pytest.mark.parametrize("env", [{"LABKIT_KEEP_FREED_MEMORY": "0"}, {"MALLOC_TRIM_THRESHOLD_": "1000000"},
                                 {"MALLOC_MMAP_THRESHOLD_": "1000000"}])
def test_the_users_own_settings_win(env):
    on, again, _ = _probe("keep", **env)
    assert not on and not again


def test_fit_and_setup_notebook_apply_it(monkeypatch):
    import labkit.allocator as allocator
    from labkit import profile, train

    calls: list[int] = []
    monkeypatch.setattr(train, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(2) or True)
    import torch
    from torch.utils.data import TensorDataset, DataLoader

    loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))), batch_size=4)
    train.fit(torch.nn.Linear(4, 2), loader, epochs=1, lr=0.1, progress=False, monitor="train_loss")
    monkeypatch.setenv("LABKIT_PROFILE", "smoke")
    profile.setup_notebook()
    assert calls == [1, 2]
