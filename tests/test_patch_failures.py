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


ALLOCATIONS = ("empty", "empty_like", "zeros", "zeros_like", "ones", "full", "cat", "stack")
"""torch functions that allocate memory (device memory for device tensors)."""


@contextmanager
def _count_calls(module: torch.nn.Module, methods: tuple[str, ...], functions: tuple[str, ...]) -> Iterator[Counter]:
    """Count the calls of these torch.Tensor methods and torch functions that fastrepulse's own code (not Triton's
    interpreter) makes while `module` runs."""
    counts: Counter = Counter()
    inside = [False]

    def counted(name: str, original):
        def wrapper(*args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if inside[0] and caller.startswith("fastrepulse"):
                counts[f"{caller}.{name}"] += 1
            return original(*args, **kwargs)

        return wrapper

    owners = [(torch.Tensor, name) for name in methods]
    owners += [(torch.cuda, name[5:]) if name.startswith("cuda.") else (torch, name) for name in functions]
    originals = [(owner, name, getattr(owner, name)) for owner, name in owners]
    enter = module.register_forward_pre_hook(lambda *_: inside.__setitem__(0, True))
    leave = module.register_forward_hook(lambda *_: inside.__setitem__(0, False))
    try:
        for owner, name, original in originals:
            setattr(owner, name, counted(name, original))
        yield counts
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
        enter.remove()
        leave.remove()


def _count_host_reads(module: torch.nn.Module) -> Iterator[Counter]:
    """The host reads and host-to-device copies (`torch.tensor` of a device tensor), and syncs."""
    return _count_calls(module, HOST_READS, ("tensor", "cuda.synchronize"))


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


def test_the_device_solver_allocates_nothing_inside_the_forward_after_the_first_call():
    """With solver="device" the Gram partials, P - I and the statuses live in workspaces that the pipeline's later
    calls reuse: the second call's hooked forwards allocate nothing (their buffers stay put), and its
    images are the first call's. The first call must allocate: that checks the counter."""
    pipe = pipelines.flux()
    options = {"scale": 300.0, "steps": 2, "iterations": 3, "backend": "triton", "solver": "device"}
    with fastrepulse.patched(pipe, **options):
        with _count_calls(pipe.transformer, (), ALLOCATIONS) as first:
            images = _generate(pipe)
        with _count_calls(pipe.transformer, (), ALLOCATIONS) as second:
            again = _generate(pipe)
    assert first["fastrepulse.workspace.empty"] > 0, first
    assert second == Counter()
    assert torch.equal(again, images)
