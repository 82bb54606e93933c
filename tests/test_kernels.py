"""The two Triton passes on their own, under the interpreter, against float64 references."""

import pytest
import torch
import triton
from oracle import assert_correctly_rounded

from fastrepulse.kernels import apply_update, gram, gram_partials, pick_apply_tiling, pick_tiling
from fastrepulse.kernels.tiling import MAX_FMA_ROWS, MIN_DOT_ROWS, TILE_BYTES

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


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", [(2, 3, 600), (4, 2, 333)], ids=shape_id)
def test_gram_partials_are_the_gram_of_each_share_of_l(shape, dtype):
    size, groups, length = shape
    x = torch.randn(size * groups, length).to(dtype)
    tiling = pick_tiling(size, length, dtype, x.device)
    share = tiling.chunks_per_split * tiling.block_l

    partials = gram_partials(x, size)

    acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert partials.dtype == acc_dtype and partials.shape == (groups, tiling.splits, size, size)
    assert tiling.splits > 1, "the case should cut L"
    assert torch.equal(gram(x, size), partials.sum(dim=1, dtype=torch.float64))
    for s in range(tiling.splits):
        expected = reference_gram(x[:, s * share : (s + 1) * share], size)
        err = (partials[:, s].double() - expected).norm() / expected.norm()
        assert err <= GRAM_TOLERANCE[dtype], f"{shape_id(shape)} {dtype} share {s}: relative error {err:.2e}"


def test_gram_partials_of_several_parts_fill_one_buffer_side_by_side():
    """Two parts of one sample write their shares into slices of one poisoned buffer: nothing outside either slice
    is touched, each slice is what the part's own partials are, and a slice with the wrong layout is refused."""
    parts = [torch.randn(6, 600), torch.randn(6, 333)]
    splits = [pick_tiling(3, part.shape[1], part.dtype, part.device).splits for part in parts]
    buffer = torch.full((2, sum(splits) + 1, 3, 3), float("nan"))

    gram_partials(parts[0], 3, out=buffer[:, : splits[0]])
    gram_partials(parts[1], 3, out=buffer[:, splits[0] : sum(splits)])

    assert torch.equal(buffer[:, : splits[0]], gram_partials(parts[0], 3))
    assert torch.equal(buffer[:, splits[0] : sum(splits)], gram_partials(parts[1], 3))
    assert buffer[:, sum(splits)].isnan().all()
    expected = reference_gram(torch.cat(parts, dim=1), 3)
    assert (buffer[:, :-1].sum(dim=1, dtype=torch.float64) - expected).norm() <= 1e-5 * expected.norm()
    with pytest.raises(ValueError, match="whose last three dimensions are contiguous"):
        gram_partials(parts[0], 3, out=buffer[:, : splits[0]].transpose(-1, -2))
    with pytest.raises(ValueError, match=rf"of shape \[2, {splits[0]}, 3, 3\]"):
        gram_partials(parts[0], 3, out=buffer[:, : splits[0] + 1])


# Group sizes on both sides of MAX_FMA_ROWS; L spans several tiles and ends in a partial one.
REAL_B_SIZES = [2, 3, 4, 5, 8, 16, 32]


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("size", REAL_B_SIZES, ids=[f"B{b}" for b in REAL_B_SIZES])
def test_apply_tiles_of_the_real_group_size_match_float64(size, dtype):
    tiling = pick_apply_tiling(size, 10**6, dtype)
    groups, length = 2, 2 * tiling.block_l + 37
    x = torch.randn(size * groups, length).to(dtype)
    mix = 0.3 * torch.randn(groups, size, size, dtype=torch.float64)
    out = torch.full_like(x, float("nan"))

    apply_update(x, mix, out)

    check_update(out, x, mix, f"B{size}-G{groups}-L{length} {dtype} {tiling}")


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("size", [3, 4, 16], ids=["B3", "B4", "B16"])
def test_apply_writes_the_text_slice_of_a_joint_sequence_in_place(size, dtype):
    """x = joint[:, :T].reshape(B, -1): rows of T * D elements with the row stride S * D of the joint [B, S, D]."""
    tokens, text, dim = 9, 5, 48
    joint = torch.randn(size, tokens, dim).to(dtype)
    rows = joint[:, :text].reshape(size, -1)
    assert rows.data_ptr() == joint.data_ptr() and rows.stride() == (tokens * dim, 1)
    x = rows.clone()
    image = joint[:, text:].clone()
    mix = 0.3 * torch.randn(1, size, size, dtype=torch.float64)

    apply_update(rows, mix, rows)

    check_update(joint[:, :text].reshape(size, -1), x, mix, f"B{size} {dtype} text slice in place")
    assert torch.equal(joint[:, text:], image), "the image tokens were written"
    assert torch.equal(joint[:, :text].reshape(size, -1), apply_update(x, mix, torch.empty_like(x)))


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("group_size", [1, 2, 3, 5, 7, 9, 15, 16, 17, 33, 64])
def test_apply_tiling_moves_a_tile_of_real_rows(group_size, dtype):
    tiling = pick_apply_tiling(group_size, 10**7, dtype)
    assert tiling.dot == (group_size > MAX_FMA_ROWS)
    assert tiling.block_b == max(triton.next_power_of_2(group_size), MIN_DOT_ROWS if tiling.dot else 1)
    if not tiling.dot:  # the power of 2 nearest to TILE_BYTES of real data; short rows: no wider than L
        real_bytes = group_size * tiling.block_l * dtype.itemsize
        assert TILE_BYTES / 2**0.5 <= real_bytes <= TILE_BYTES * 2**0.5, tiling
        assert pick_apply_tiling(group_size, 7, dtype).block_l == 8
