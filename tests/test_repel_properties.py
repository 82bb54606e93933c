"""What repel guarantees beyond parity: diversity rises, no-op cases are exact, layout does not matter."""

import pytest
import torch
from oracle import group_vendi
from test_repel_parity import PAIRS, calibrated_scale, prompt_like

from fastrepulse import repel

BACKENDS = ["torch", "triton", "reference"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("objective,kernel", PAIRS, ids=[f"{o}-{k}" for o, k in PAIRS])
def test_vendi_of_every_group_rises(objective, kernel, backend):
    x = prompt_like(12, (9, 40), torch.float32)
    scale = calibrated_scale(x, 4, objective, kernel)

    result = repel(x, scale=scale, group_size=4, objective=objective, kernel=kernel, backend=backend)

    # rbf: the bandwidth of the objective, fixed from the input
    before, after = group_vendi(x, 4, kernel), group_vendi(result, 4, kernel, bandwidth_from=x)
    assert (after > before * 1.01).all(), f"Vendi per group before {before.tolist()} after {after.tolist()}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "settings",
    [{"scale": 0.0}, {"scale": 0, "iterations": 100}, {"scale": 1e3, "iterations": 0}, {"scale": 1e3, "group_size": 1}],
    ids=["scale0", "int-scale0", "iterations0", "group1"],
)
def test_no_op_settings_return_x_bit_for_bit(settings, backend):
    x = torch.randn(6, 5, 7, dtype=torch.bfloat16)
    original = x.clone()

    result = repel(x, backend=backend, **settings)
    in_place = repel(x, backend=backend, out=x, **settings)

    assert result is not x and torch.equal(result, original)
    assert in_place is x and torch.equal(x, original)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_group_result_does_not_depend_on_other_groups(backend):
    x = prompt_like(12, (20, 30), torch.bfloat16)
    together = repel(x, scale=40.0, group_size=4, backend=backend)
    alone = repel(x[4:8].clone(), scale=40.0, backend=backend)
    assert torch.equal(together[4:8], alone)


@pytest.mark.parametrize("backend", BACKENDS)
def test_in_place_equals_out_of_place(backend):
    x = prompt_like(6, (11, 13), torch.float16)
    expected = repel(x, scale=30.0, group_size=3, backend=backend)

    result = repel(x, scale=30.0, group_size=3, backend=backend, out=x)

    assert result is x and torch.equal(x, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input_and_out(backend):
    base = prompt_like(8, (16, 24), torch.float32)
    expected = repel(base, scale=30.0, group_size=4, backend=backend)
    x = base.transpose(1, 2).contiguous().transpose(1, 2)  # same values, column-major storage
    out = torch.full((8, 24, 16), float("nan")).transpose(1, 2)

    result = repel(x, scale=30.0, group_size=4, backend=backend, out=out)

    assert result is out and torch.equal(out, expected)
    assert torch.equal(repel(x, scale=30.0, group_size=4, backend=backend), expected)
    sliced = torch.cat([base, base], dim=2)[:, :, :24]
    assert torch.equal(repel(sliced, scale=30.0, group_size=4, backend=backend), expected)


def test_in_place_on_non_contiguous_x():
    storage = prompt_like(6, (10, 40), torch.float32)
    expected = repel(storage[:, :, ::2].contiguous(), scale=25.0, group_size=3, backend="triton")
    x = storage[:, :, ::2]

    repel(x, scale=25.0, group_size=3, backend="triton", out=x)

    assert torch.equal(x, expected)


def test_auto_backend_on_cpu_is_torch():
    x = prompt_like(4, (8, 8), torch.float32)
    assert torch.equal(repel(x, scale=10.0), repel(x, scale=10.0, backend="torch"))


def test_result_keeps_shape_dtype_and_device():
    x = prompt_like(4, (3, 5, 7), torch.float16)
    result = repel(x, scale=10.0, backend="triton")
    assert (result.shape, result.dtype, result.device) == (x.shape, x.dtype, x.device)
    assert result.is_contiguous()
