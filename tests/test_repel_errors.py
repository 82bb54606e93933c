"""Bad input: a clear error that names the problem, raised before x or out is touched."""

import pytest
import torch

import fastrepulse.repulsion
from fastrepulse import repel

BACKENDS = ["torch", "triton", "reference"]


def samples(dtype=torch.float32):
    return torch.randn(8, 6, 10, dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_sample_is_named_and_nothing_written(bad, backend):
    x = samples(torch.bfloat16)
    x[5, 2, 3] = bad
    original = x.clone()
    out = torch.full_like(x, 7.0)

    with pytest.raises(ValueError, match=r"NaN or Inf.*sample\(s\) \[5\]"):
        repel(x, scale=10.0, group_size=4, backend=backend, out=out)
    with pytest.raises(ValueError, match=r"NaN or Inf"):
        repel(x, scale=10.0, group_size=4, backend=backend, out=x)

    assert torch.equal(x.view(torch.int16), original.view(torch.int16))
    assert (out == 7.0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_sample_under_cosine_is_named(backend):
    x = samples()
    x[2] = 0.0
    original = x.clone()

    with pytest.raises(ValueError, match=r"sample\(s\) \[2\].*all zeros.*kernel='rbf'"):
        repel(x, scale=10.0, backend=backend, out=x)

    assert torch.equal(x, original)
    assert torch.isfinite(repel(x, scale=10.0, kernel="rbf", backend=backend)).all()


def test_group_size_must_divide_batch():
    with pytest.raises(ValueError, match=r"group_size=3 does not divide the 8 samples"):
        repel(samples(), scale=1.0, group_size=3)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64])
def test_non_float_dtypes_are_refused(dtype):
    with pytest.raises(TypeError, match=r"bfloat16, float16, float32 or float64.*x\.float\(\)"):
        repel(torch.ones(4, 3, dtype=dtype), scale=1.0)


@pytest.mark.parametrize(
    "out",
    [torch.empty(8, 6, 11), torch.empty(8, 6, 10, dtype=torch.float64), torch.empty(8, 6, 10, device="meta")],
    ids=["shape", "dtype", "device"],
)
def test_mismatched_out_is_refused(out):
    with pytest.raises(TypeError, match=r"out must match x"):
        repel(samples(), scale=1.0, out=out)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"scale": -1.0}, "scale must be a finite number >= 0"),
        ({"scale": float("nan")}, "scale must be a finite number >= 0"),
        ({"scale": 1.0, "iterations": 2.5}, "iterations must be an int >= 0"),
        ({"scale": 1.0, "objective": "entropy"}, "objective must be one of"),
        ({"scale": 1.0, "kernel": "laplace"}, "kernel must be one of"),
        ({"scale": 1.0, "backend": "cuda"}, "backend must be one of"),
        ({"scale": 1.0, "group_size": 0}, "group_size must be a positive int"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        repel(samples(), **kwargs)


def test_triton_backend_on_cpu_without_interpreter_explains(monkeypatch):
    monkeypatch.setattr(fastrepulse.repulsion, "_interpreting", lambda: False)
    with pytest.raises(ValueError, match=r"runs on CUDA tensors.*backend='torch'"):
        repel(samples(), scale=1.0, backend="triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_divergence_is_reported_before_writing(backend):
    x = samples()
    original = x.clone()
    with pytest.raises(ValueError, match=r"diverged.*lower scale or raise iterations"):
        repel(x, scale=1e300, iterations=5, backend=backend, out=x)
    assert torch.equal(x, original)


@pytest.mark.parametrize(
    ("backend", "solver"), [("torch", "host"), ("triton", "host"), ("triton", "device"), ("reference", "host")]
)
def test_a_result_beyond_the_dtype_is_refused_before_writing(backend, solver):
    """fp16 at scale 1e12: the exact update is finite in float64 but beyond fp16's 65504; before, inf was written."""
    x = torch.randn(4, 16).half()
    original = x.clone()
    out = torch.full_like(x, 7.0)
    with pytest.raises(ValueError, match=r"exceed the range of torch.float16 \(largest 65504\): lower scale"):
        repel(x, scale=1e12, backend=backend, solver=solver, out=x)
    with pytest.raises(ValueError, match=r"exceed the range of torch.float16"):
        repel(x, scale=1e12, backend=backend, solver=solver, out=out)
    assert torch.equal(x.view(torch.int16), original.view(torch.int16)) and (out == 7.0).all()
    wide = repel(x.float(), scale=1e12, backend=backend, solver=solver)  # the same update fits in float32
    assert torch.isfinite(wide).all() and wide.abs().max() > torch.finfo(torch.float16).max


@pytest.mark.parametrize("settings", [{"scale": 0.0}, {"iterations": 0}, {"group_size": 1}], ids=str)
def test_a_no_op_passes_its_input_through_unchecked(settings):
    """Documented: with nothing to compute, repel copies x (NaN included) and checks nothing."""
    x = samples()
    x[1, 2, 3] = float("nan")
    options = {"scale": 10.0, "group_size": 4, **settings}
    assert torch.equal(repel(x, **options).isnan(), x.isnan())
