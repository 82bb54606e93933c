"""repel on several parts of the same samples (the text and image tokens of a joint sequence), in place in strided
views, and the pipeline's non-raising path that leaves a failed group as it was."""

import numpy as np
import pytest
import torch
from oracle import assert_matches_oracle, literal_loop
from test_repel_parity import calibrated_scale, prompt_like

from fastrepulse import repel
from fastrepulse.repulsion import Repulsion
from fastrepulse.status import MAY_OVERFLOW, NON_FINITE, SOLVED

BACKENDS = [("torch", "host"), ("triton", "host"), ("triton", "device"), ("reference", "host")]
HOST_BACKENDS = [backend for backend in BACKENDS if backend[1] == "host"]
"""The apply pass is the same whichever solver ran: the device solver (slow in Triton's interpreter) only where it
matters."""
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TEXT, IMAGE, WIDTH = 5, 9, 24
ITERATIONS = 6  # few: the device solver's Jacobi runs in Triton's interpreter here


def joint_sequences(groups: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    """[groups * size, TEXT + IMAGE, WIDTH]: prompt-like samples, one contiguous sequence each."""
    return prompt_like(groups * size, (TEXT + IMAGE, WIDTH), dtype)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize(("backend", "solver"), BACKENDS, ids=[f"{b}-{s}" for b, s in BACKENDS])
def test_parts_in_place_equal_the_whole_sequence_repelled(backend, solver, dtype):
    """One P from the sum of the parts' Gram matrices, applied to each part where it lies: the same as repelling
    the concatenated samples (the oracle), and nothing outside the views is touched."""
    joint = joint_sequences(2, 4, dtype)
    scale = calibrated_scale(joint, 4, "vendi", "cosine")
    expected = literal_loop(joint, scale=scale, iterations=ITERATIONS, group_size=4, objective="vendi", kernel="cosine")
    parts = [joint[:, :TEXT], joint[:, TEXT:]]
    original = joint.clone()

    result = repel(parts, out=parts, scale=scale, iterations=ITERATIONS, group_size=4, backend=backend, solver=solver)

    assert result[0] is parts[0] and result[1] is parts[1]
    assert not torch.equal(joint, original)
    assert_matches_oracle(joint, original, expected, 4, f"{backend}-{solver} parts in place")


@pytest.mark.parametrize(("backend", "solver"), HOST_BACKENDS, ids=[f"{b}-{s}" for b, s in HOST_BACKENDS])
def test_parts_out_of_place_fill_every_element(backend, solver):
    joint = joint_sequences(1, 4, torch.float32)
    scale = calibrated_scale(joint, 4, "vendi", "cosine")
    expected = literal_loop(joint, scale=scale, iterations=ITERATIONS, group_size=4, objective="vendi", kernel="cosine")
    outs = [torch.full((4, TEXT, WIDTH), float("nan")), torch.full((4, IMAGE, WIDTH), float("nan"))]

    repel(
        [joint[:, :TEXT], joint[:, TEXT:]], out=outs, scale=scale, iterations=ITERATIONS, backend=backend, solver=solver
    )
    fresh = repel(
        [joint[:, :TEXT], joint[:, TEXT:]], scale=scale, iterations=ITERATIONS, backend=backend, solver=solver
    )

    assert_matches_oracle(torch.cat(outs, dim=1), joint, expected, 4, f"{backend}-{solver} parts out of place")
    assert all(torch.equal(a, b) for a, b in zip(outs, fresh, strict=True))


@pytest.mark.parametrize(("backend", "solver"), HOST_BACKENDS, ids=[f"{b}-{s}" for b, s in HOST_BACKENDS])
def test_a_strided_text_slice_is_written_in_place(backend, solver):
    """The text slice of a joint sequence (row stride (TEXT + IMAGE) * WIDTH) is repelled where it lies: the text
    as if alone, the image tokens bit for bit as they were."""
    joint = joint_sequences(2, 4, torch.bfloat16)
    text = joint[:, :TEXT]
    alone = text.clone()
    scale = calibrated_scale(alone, 4, "vendi", "cosine")
    expected = literal_loop(alone, scale=scale, iterations=ITERATIONS, group_size=4, objective="vendi", kernel="cosine")
    image = joint[:, TEXT:].clone()

    assert (
        repel(text, out=text, scale=scale, iterations=ITERATIONS, group_size=4, backend=backend, solver=solver) is text
    )

    assert torch.equal(joint[:, TEXT:], image)
    assert_matches_oracle(joint[:, :TEXT], alone, expected, 4, f"{backend}-{solver} strided text")


def test_parts_of_different_samples_are_refused():
    with pytest.raises(ValueError, match="parts of the same samples"):
        repel([torch.randn(4, 3), torch.randn(6, 3)], scale=1.0)
    with pytest.raises(ValueError, match="parts of the same samples"):
        repel([torch.randn(4, 3), torch.randn(4, 3).double()], scale=1.0)
    with pytest.raises(TypeError, match="list of 2 tensors"):
        repel([torch.randn(4, 3), torch.randn(4, 3)], out=[torch.randn(4, 3)], scale=1.0)


@pytest.mark.parametrize(("backend", "solver"), BACKENDS[:3], ids=[f"{b}-{s}" for b, s in BACKENDS[:3]])
def test_not_strict_leaves_a_failed_group_as_it_was(backend, solver):
    """What a pipeline's hooks run: a group whose steps diverge is left bit for bit and reported in the status,
    the other groups are repelled as if alone; strict (repel itself) raises and writes nothing."""
    # cosine steps scale like scale / |c|^2: ~1e318 for the middle group, whose first step overflows; ~1e110 for
    # the others, whose steps stay finite (and then shrink, as |c| grows)
    x = (
        joint_sequences(3, 4, torch.float64)
        * torch.tensor([1e4, 1e-100, 1e4], dtype=torch.float64).repeat_interleave(4)[:, None, None]
    )
    scale = 1e120
    repulsion = Repulsion(scale, 3, "vendi", "cosine", backend, solver)
    original = x.clone()
    with pytest.raises(ValueError, match="diverged"):
        repulsion.run([x], [x], 4, strict=True)
    assert torch.equal(x, original)

    status = repulsion.run([x], [x], 4, strict=False)

    status = status.cpu().numpy() if isinstance(status, torch.Tensor) else status
    assert status.tolist() == [SOLVED, NON_FINITE, SOLVED]
    assert torch.equal(x[4:8], original[4:8])
    for group in (0, 2):
        rows = slice(4 * group, 4 * group + 4)
        alone = repel(original[rows], scale=scale, iterations=3, backend=backend, solver=solver)
        assert torch.equal(x[rows], alone)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_compiled_cpu_passes_match_the_torch_passes(dtype, monkeypatch):
    """On CPU float32/float64 tensors the torch backend runs Gram, solve and apply in one compiled call: the same
    update as its torch passes (formed in float64 there, in float32 here for float32), in place in a strided text
    slice, the image tokens untouched."""
    pytest.importorskip("numba")
    joint = joint_sequences(3, 4, dtype)
    scale = calibrated_scale(joint[:, :TEXT].clone(), 4, "vendi", "cosine")
    repulsion = Repulsion(scale, ITERATIONS, "vendi", "cosine", "torch", "host")
    results = []
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr("fastrepulse.repulsion.compiled_passes", lambda: None)
        x = joint.clone()
        text = x[:, :TEXT]
        assert repulsion.run([text], [text], 4, strict=False).tolist() == [SOLVED] * 3
        assert torch.equal(x[:, TEXT:], joint[:, TEXT:]) and not torch.equal(x, joint)
        results.append(x)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-6
    assert (results[0].double() - results[1].double()).abs().max() <= tolerance * joint.abs().max()


def test_compiled_cpu_passes_stage_the_groups_that_may_overflow():
    """A group whose bound exceeds the limit is staged in x's dtype: written (SOLVED) where it stays finite, left as
    it was (MAY_OVERFLOW) where it would not; strict writes nothing unless every group is SOLVED."""
    compiled_solver = pytest.importorskip("fastrepulse.compiled_solver")
    x = joint_sequences(2, 4, torch.float32).view(8, -1)
    options = {"scale": calibrated_scale(x, 4, "vendi", "cosine"), "iterations": ITERATIONS, "objective": "vendi"}
    expected = x.clone()
    compiled_solver.repel_rows_compiled(x.numpy(), expected.numpy(), 4, **options, kernel="cosine", limit=np.inf,
                                        strict=False)  # fmt: skip
    for strict in (True, False):
        out = x.clone()
        status = compiled_solver.repel_rows_compiled(x.numpy(), out.numpy(), 4, **options, kernel="cosine",
                                                     limit=1.0, strict=strict)  # fmt: skip
        assert status.tolist() == ([MAY_OVERFLOW] * 2 if strict else [SOLVED] * 2)
        assert torch.equal(out, x if strict else expected)
    ratio = 0.99 * torch.finfo(torch.float32).max / x.abs().max().item()
    huge = x.sign() * x.abs().max() * ratio  # every element at 0.99 of float32's largest: a 5% update overflows
    out = huge.clone()
    options["scale"] *= ratio**2  # cosine steps move samples by scale / |c|^2 of their norm
    status = compiled_solver.repel_rows_compiled(huge.numpy(), out.numpy(), 4, **options, kernel="cosine",
                                                 limit=float(torch.finfo(torch.float32).max), strict=False)  # fmt: skip
    assert status.tolist() == [MAY_OVERFLOW] * 2 and torch.equal(out, huge)
