"""Test set-up: Triton kernels run under the interpreter on CPU tensors, every test from one chosen seed."""

import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

# `python -m pytest` puts the working directory on sys.path. From the repository root, its kernels/ folder (installed
# as fastrepulse.kernels) would then shadow the PyPI distribution `kernels`, which transformers 5.25 requires.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [entry for entry in sys.path if Path(entry or os.curdir).resolve() != ROOT]

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime import interpreter  # noqa: E402


def _bf16_to_fp32(handle: interpreter.TensorHandle) -> interpreter.TensorHandle:
    bits = handle.data.astype(np.uint32) << 16
    return interpreter.TensorHandle(bits.view(np.float32), tl.float32)


def _interpreter_dot_with_bf16(original):
    """Triton 3.6's interpreter multiplies bfloat16 operands as raw uint16 bits; upcast them first (exact)."""

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype.scalar == tl.bfloat16:
            a = _bf16_to_fp32(a)
        if b.dtype.scalar == tl.bfloat16:
            b = _bf16_to_fp32(b)
        return original(self, a, b, d, input_precision, max_num_imprecise_acc)

    return create_dot


def _interpreter_cast_with_rounding(original):
    """Triton 3.6's interpreter truncates float32 -> bfloat16; CUDA rounds to nearest even, so do that."""

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = np.ascontiguousarray(src.data, dtype=np.float32).view(np.uint32).astype(np.uint64)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            return interpreter.TensorHandle(rounded, tl.bfloat16)
        return original(self, src, dst_type)

    return cast_impl


# Both shims fix the interpreter's arithmetic only; the kernels' code is what runs on the GPU.
interpreter.InterpreterBuilder.create_dot = _interpreter_dot_with_bf16(interpreter.InterpreterBuilder.create_dot)
interpreter.InterpreterBuilder.cast_impl = _interpreter_cast_with_rounding(interpreter.InterpreterBuilder.cast_impl)


SEED = int(os.environ.get("FASTREPULSE_TEST_SEED", "0"))
"""Every test starts from this seed, whatever its name or order: the tolerances must hold for any seed
(FASTREPULSE_TEST_SEED=k picks another), not for inputs that a test's name happened to draw."""


def pytest_report_header() -> str:
    return f"fastrepulse test seed: {SEED} (FASTREPULSE_TEST_SEED)"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(SEED)


@pytest.fixture(autouse=True)
def _poison_empty(monkeypatch):
    """torch.empty / empty_like return NaN-filled float tensors, so anything a kernel leaves unwritten shows."""
    empty, empty_like = torch.empty, torch.empty_like

    def poisoned(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poisoned(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poisoned(empty_like(*a, **k)))
