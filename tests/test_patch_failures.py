"""Inside a pipeline a group that cannot be repelled is left as it was, the call completes, and one warning per call
says where; with the device solver nothing inside the hooked forward waits for the device."""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pipelines
import pytest
import torch

import fastrepulse

CALL = {"num_inference_steps": 3, "height": pipelines.HEIGHT, "width": pipelines.WIDTH, "output_type": "latent"}
SOLVERS = [("torch", "host"), ("triton", "device")]
HOST_READS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "__array__")
"""Tensor methods that copy to the host (and wait for the device) when called on a CUDA tensor."""


def _generate(pipe) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    call = {**CALL, "num_images_per_prompt": 3, "max_sequence_length": 8}
    return pipe(prompt=["a red cat"], generator=generator, **call).images


def _fastrepulse_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if str(w.message).startswith("fastrepulse:")]


@pytest.mark.parametrize(("backend", "solver"), SOLVERS, ids=[f"{b}-{s}" for b, s in SOLVERS])
def test_diverging_steps_leave_the_images_as_without_repulsion(backend, solver):
    """scale=1e300 overflows every group's first step: each block leaves its groups as they were, so the images
    are the unpatched ones bit for bit, and each call warns once, naming every block and step."""
    pipe = pipelines.flux()
    base = _generate(pipe)
    fastrepulse.patch(pipe, scale=1e300, steps=2, iterations=3, blocks=[0, 2], backend=backend, solver=solver)
    for _ in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            images = _generate(pipe)
        assert torch.equal(images, base)
        messages = _fastrepulse_warnings(caught)
        assert len(messages) == 1, messages
        assert "the steps diverged (lower scale or raise iterations)" in messages[0]
        assert "block 0 at step(s) [0, 1]; block 2 at step(s) [0, 1]" in messages[0]
    with pytest.raises(ValueError, match="diverged"):  # repel called directly still raises
        fastrepulse.repel(torch.randn(4, 8), scale=1e300, iterations=3, backend="torch")


def test_a_call_that_succeeds_does_not_warn():
    pipe = pipelines.flux()
    fastrepulse.patch(pipe, scale=300.0, steps=1, iterations=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _generate(pipe)
    assert _fastrepulse_warnings(caught) == []


@contextmanager
def _count_host_reads(module: torch.nn.Module) -> Iterator[Counter]:
    """Count the host reads that fastrepulse's own code (not Triton's interpreter) makes while `module` runs."""
    counts: Counter = Counter()
    inside = [False]

    def counted(name: str, original):
        def wrapper(*args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if inside[0] and caller.startswith("fastrepulse"):
                counts[f"{caller}.{name}"] += 1
            return original(*args, **kwargs)

        return wrapper

    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}
    patched = {"tensor": torch.tensor, "synchronize": torch.cuda.synchronize}
    enter = module.register_forward_pre_hook(lambda *_: inside.__setitem__(0, True))
    leave = module.register_forward_hook(lambda *_: inside.__setitem__(0, False))
    try:
        for name, original in originals.items():
            setattr(torch.Tensor, name, counted(name, original))
        torch.tensor = counted("torch.tensor", patched["tensor"])  # a host-to-device copy for a device tensor
        torch.cuda.synchronize = counted("torch.cuda.synchronize", patched["synchronize"])
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        torch.tensor, torch.cuda.synchronize = patched["tensor"], patched["synchronize"]
        enter.remove()
        leave.remove()


def test_the_device_solver_never_reads_the_device_inside_the_forward():
    """With solver="device" the hooked forward makes no host read (on a GPU: no sync); the statuses are read once
    when the call ends. The counter itself is checked on the host solver, which must read the Gram matrix."""
    pipe = pipelines.flux()
    options = {"scale": 300.0, "steps": 2, "iterations": 3, "backend": "triton"}
    with fastrepulse.patched(pipe, solver="device", **options), _count_host_reads(pipe.transformer) as counts:
        _generate(pipe)
    assert counts == Counter()
    with fastrepulse.patched(pipe, solver="host", **options), _count_host_reads(pipe.transformer) as counts:
        _generate(pipe)
    assert counts["fastrepulse.repulsion.numpy"] > 0
