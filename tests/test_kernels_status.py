"""The apply kernel's status input: groups the device solver did not solve are written as they were, bit for bit."""

import pytest
import torch
from test_kernels import DTYPES, check_update

from fastrepulse.kernels import apply_update
from fastrepulse.kernels.solve import NON_FINITE, NOT_CONVERGED, SOLVED

BITS = {torch.float64: torch.int64, torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
STATUSES = {"non-finite": NON_FINITE, "not-converged": NOT_CONVERGED}


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The bit patterns, so that -0.0 and 0.0 differ and NaN equals itself."""
    return tensor.view(BITS[tensor.dtype])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter, on the NaN rows
@pytest.mark.parametrize("in_place", [False, True], ids=["out-of-place", "in-place"])
@pytest.mark.parametrize("code", STATUSES.values(), ids=STATUSES.keys())
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("size", [4, 16], ids=["B4-fma", "B16-dot"])
def test_an_unsolved_group_is_left_bit_identical(size, dtype, code, in_place):
    groups, length, poisoned = 3, 300, 1
    x = torch.randn(groups * size, length).to(dtype)
    rows = slice(poisoned * size, (poisoned + 1) * size)
    x[rows][0, :3] = torch.tensor([-0.0, float("inf"), float("-inf")])  # x + 0 would not keep -0.0; 0 * inf is NaN
    mix = 0.3 * torch.randn(groups, size, size, dtype=torch.float64)
    mix[poisoned, 1:3] = float("nan")  # what a diverged solve leaves
    status = torch.full((groups,), SOLVED, dtype=torch.int32)
    status[poisoned] = code
    original = x.clone()
    out = x if in_place else torch.full_like(x, float("nan"))

    apply_update(x, mix, out, status=status)

    assert torch.equal(bits(out[rows]), bits(original[rows])), f"group {poisoned} (status {code}) was changed"
    solved = [g for g in range(groups) if g != poisoned]
    expected_rows = torch.cat([original[g * size : (g + 1) * size] for g in solved])
    result_rows = torch.cat([out[g * size : (g + 1) * size] for g in solved])
    check_update(result_rows, expected_rows, mix[solved], f"B{size} {dtype} status {code} solved groups")


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("size", [3, 16], ids=["B3-fma", "B16-dot"])
def test_an_all_solved_status_changes_nothing(size, dtype):
    x = torch.randn(2 * size, 200).to(dtype)
    mix = 0.3 * torch.randn(2, size, size, dtype=torch.float64)
    expected = apply_update(x, mix, torch.empty_like(x))

    result = apply_update(x, mix, torch.empty_like(x), status=torch.zeros(2, dtype=torch.int32))

    assert torch.equal(bits(result), bits(expected))


def test_a_status_of_the_wrong_shape_or_dtype_is_refused():
    x = torch.randn(8, 10)
    mix = torch.zeros(2, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"status must be int32 \[2\], got torch.int64"):
        apply_update(x, mix, x, status=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"status must be int32 \[2\], got torch.int32 \(3,\)"):
        apply_update(x, mix, x, status=torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="out must have unit stride along L"):
        apply_update(x, mix, torch.empty(10, 8).T)
