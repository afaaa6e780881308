"""autograder.execute: the output caps of GuardedExecute, on a plain (unsandboxed) kernel with a 1 MiB cap.

The sandboxed versions of the same attacks run in the tiny class (fixtures ``output_flood`` and
``huge_message`` in tests/grading_fixtures.py); these check the mechanism alone, in seconds.
"""
from __future__ import annotations

import nbformat
import zmq

from autograder.execute import OUTPUT_LIMIT, CappedKernelManager, GuardedExecute

MIB = 1024 ** 2


def _run(*sources: str) -> list[list[dict]]:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    ex = GuardedExecute(timeout=60, max_output_bytes=MIB)
    nb, _ = ex.preprocess(nb, {})
    return [c.outputs for c in nb.cells]


def test_clients_refuse_frames_over_the_cap() -> None:
    km = CappedKernelManager(max_message_bytes=3 * MIB)
    kc = km.client()
    try:
        assert kc.context.getsockopt(zmq.MAXMSGSIZE) == 3 * MIB
    finally:
        kc.context.destroy(linger=0)
    assert GuardedExecute().kernel_manager_class is CappedKernelManager


def test_one_message_over_the_cap_is_dropped_and_the_kernel_stopped() -> None:
    before, huge, after = _run("print('before')",
                               "from IPython.display import display\n"
                               "display({'text/plain': 'y' * 3_000_000}, raw=True)\nprint('same cell')",
                               "print('after')")
    assert [o.get("text") for o in before] == ["before\n"]
    assert huge[0]["ename"] == OUTPUT_LIMIT and "a message larger than 1 MiB" in huge[0]["evalue"]
    assert not any("y" * 100 in str(o) for o in huge)
    assert [o.get("ename") for o in after] == ["NotRun"] and "too much output" in after[0]["evalue"]


def test_many_messages_over_the_cap_are_dropped_as_they_come() -> None:
    flood, after = _run("from IPython.display import display\n_s = 'z' * 100_000\n"
                        "for _ in range(40):\n    display({'text/plain': _s}, raw=True)",
                        "print('after')")
    assert flood[0]["ename"] == OUTPUT_LIMIT and "more than 1 MiB of output" in flood[0]["evalue"]
    kept = sum(len(o.get("data", {}).get("text/plain", "")) for o in flood)
    assert 0 < kept <= MIB  # what came before the cap stays, nothing after it
    assert [o.get("ename") for o in after] == ["NotRun"]


def test_ordinary_output_is_untouched() -> None:
    (out,) = _run("for i in range(3):\n    print(i)\n'x' * 1000")
    assert "".join(o.get("text", "") for o in out if o["output_type"] == "stream") == "0\n1\n2\n"
    assert out[-1]["data"]["text/plain"] == repr("x" * 1000)
