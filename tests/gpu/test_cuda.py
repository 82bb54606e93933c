"""The compiled kernels on a real GPU at model sizes, against float64 (repel's parity on CUDA is in
tests/test_repel_parity.py). Skipped without CUDA; bench/gpu_check.sh runs it on a lent GPU.
"""

import pytest
import torch
from test_kernels import check_update
from test_repel_parity import DTYPES

from fastrepulse.kernels import apply_update, gram

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Per-sample sizes of the real models: Flux text, SD3.5-Large text, Flux single-stream at 512 px.
MODEL_LENGTHS = {"flux-text": 512 * 3072, "sd35-text": 333 * 2432, "flux-single": 1536 * 3072}
GRAM_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5, torch.float64: 1e-12}


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("group_size", [2, 3, 4, 8, 16, 20, 64])
@pytest.mark.parametrize("model", MODEL_LENGTHS)
def test_cuda_kernels_at_model_sizes(model, group_size, dtype):
    length = MODEL_LENGTHS[model] + (group_size % 3)  # ragged tails too
    if dtype == torch.float64 and group_size * length > 2e8:
        pytest.skip("float64 copy of a large group does not add coverage")
    x = (torch.randn(1, length, device="cuda") + torch.randn(2 * group_size, length, device="cuda")).to(dtype)
    rows = x.to(torch.float64).view(2, group_size, length)
    expected_gram = rows @ rows.mT
    mix = 0.05 * torch.randn(2, group_size, group_size, dtype=torch.float64, device="cuda")
    out = torch.full_like(x, float("nan"))

    result_gram = gram(x, group_size)
    apply_update(x, mix, out)

    gram_err = (result_gram - expected_gram).norm() / expected_gram.norm()
    assert gram_err <= GRAM_TOLERANCE[dtype], f"{model} B{group_size} {dtype}: Gram error {gram_err:.2e}"
    check_update(out, x, mix, f"{model} B{group_size} {dtype}")
    assert torch.equal(result_gram, gram(x, group_size)), "Gram not bitwise reproducible"


def test_cuda_offsets_beyond_int32():
    """24 samples of 1e8 elements: 2.4e9 elements, so the last rows sit beyond 2^31 elements."""
    size, length = 24, 10**8
    x = torch.randn(size, length, device="cuda", dtype=torch.bfloat16)
    mix = 0.05 * torch.randn(1, size, size, dtype=torch.float64, device="cuda")

    result_gram = gram(x, size)
    out = apply_update(x, mix, torch.empty_like(x))

    check_update(out[:, -4096:], x[:, -4096:], mix, "apply beyond 2^31")
    last = x[-2:].to(torch.float64)
    expected_gram = last @ last.T
    gram_err = ((result_gram[0, -2:, -2:] - expected_gram).abs() / expected_gram.diagonal().max()).max()
    assert gram_err <= 1e-5, f"Gram beyond 2^31: relative error {gram_err:.2e}"
