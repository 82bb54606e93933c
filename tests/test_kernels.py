"""The two Triton passes on their own, under the interpreter, against float64 references."""

import pytest
import torch
from oracle import assert_correctly_rounded

from fastrepulse.kernels import apply_update, gram, pick_tiling

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GRAM_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5}
APPLY_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-6}  # 16-bit results: correctly rounded
# (B, groups, L): odd sizes, L shorter than a tile, several splits, B above 16 and at 64.
SHAPES = [(2, 3, 231), (3, 1, 7), (5, 2, 1000), (8, 1, 4097), (16, 2, 777), (20, 1, 300), (64, 1, 129)]


def shape_id(shape):
    return "B{}-G{}-L{}".format(*shape)


def reference_gram(x: torch.Tensor, group_size: int) -> torch.Tensor:
    rows = x.to(torch.float64).view(-1, group_size, x.shape[1])
    return rows @ rows.mT


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_gram_matches_float64(shape, dtype):
    size, groups, length = shape
    x = torch.randn(size * groups, length).to(dtype)
    expected = reference_gram(x, size)

    result = gram(x, size)

    assert result.dtype == torch.float64 and result.shape == (groups, size, size)
    err = (result - expected).norm() / expected.norm()
    assert err <= GRAM_TOLERANCE[dtype], f"{shape_id(shape)} {dtype}: relative Gram error {err:.2e}"


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_apply_matches_float64(shape, dtype):
    size, groups, length = shape
    x = torch.randn(size * groups, length).to(dtype)
    mix = 0.3 * torch.randn(groups, size, size, dtype=torch.float64)
    out = torch.full_like(x, float("nan"))

    apply_update(x, mix, out)

    check_update(out, x, mix, f"{shape_id(shape)} {dtype}")


MIX_PRECISION = 2.0**-16
"""16-bit x: the mixing matrix travels as a high and a low 16-bit part, about 16 bits of it."""


def check_update(out: torch.Tensor, x: torch.Tensor, mix: torch.Tensor, label: str) -> None:
    """out = x + mix @ x per group: 16-bit correctly rounded up to the mix's precision, wider by relative error."""
    groups, size, _ = mix.shape
    rows = x.to(torch.float64).view(groups, size, -1)
    expected_update = (mix @ rows).view_as(x)
    if x.element_size() == 2:
        slack = MIX_PRECISION * (mix.abs() @ rows.abs()).view_as(x) + 2.0**-22 * rows.abs().view_as(x)
        assert_correctly_rounded(out, rows.view_as(x) + expected_update, slack, label)
        return
    update = out.to(torch.float64) - x.to(torch.float64)
    assert torch.isfinite(update).all(), f"{label}: unwritten output elements"
    err = (update - expected_update).norm() / expected_update.norm()
    assert err <= APPLY_TOLERANCE[x.dtype], f"{label}: relative update error {err:.2e}"


def test_apply_in_place_matches_out_of_place():
    x = torch.randn(8, 999, dtype=torch.bfloat16)
    mix = 0.2 * torch.randn(2, 4, 4, dtype=torch.float64)
    expected = apply_update(x, mix, torch.empty_like(x))

    apply_update(x, mix, x)

    assert torch.equal(x, expected)


def test_apply_strided_rows():
    """Rows with a stride larger than L (a column slice) are read and written in place of a copy."""
    storage = torch.randn(6, 500)
    x = storage[:, 100:400]
    mix = 0.2 * torch.randn(2, 3, 3, dtype=torch.float64)
    expected = apply_update(x.contiguous(), mix, torch.empty(6, 300))
    untouched = storage[:, :100].clone()

    apply_update(x, mix, x)

    assert torch.equal(x, expected)
    assert torch.equal(storage[:, :100], untouched)


def test_gram_of_a_group_does_not_depend_on_other_groups():
    x = torch.randn(12, 5000, dtype=torch.float32)

    together = gram(x, 4)

    assert torch.equal(together[1:2], gram(x[4:8].clone(), 4))


@pytest.mark.parametrize("length", [1, 15, 4096, 4097, 10**8])
@pytest.mark.parametrize("group_size", [2, 8, 16, 33, 64])
def test_tiling_covers_every_column_once(group_size, length):
    tiling = pick_tiling(group_size, length, torch.bfloat16, torch.device("cpu"))
    covered = tiling.splits * tiling.chunks_per_split * tiling.block_l
    assert tiling.block_b >= max(16, group_size) and tiling.block_l >= 16
    assert covered >= length > (tiling.splits - 1) * tiling.chunks_per_split * tiling.block_l
