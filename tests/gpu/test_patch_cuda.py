"""A patched pipeline on CUDA: the Triton kernels inside real hooks agree with the eager backend.

Skipped without CUDA; bench/gpu_check.sh runs it on a lent GPU.
"""

import pipelines
import pytest
import torch

import fastrepulse

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CALL = {
    "prompt": ["a red cat", "a blue dog"],
    "num_images_per_prompt": 3,
    "num_inference_steps": 4,
    "height": pipelines.HEIGHT,
    "width": pipelines.WIDTH,
    "output_type": "latent",
}


def _generate(pipe) -> torch.Tensor:
    return pipe(generator=torch.Generator().manual_seed(0), **CALL).images


@pytest.mark.parametrize("site", ["attention", "block"])
def test_triton_hooks_match_the_torch_backend_on_cuda(site: str) -> None:
    pipe = pipelines.flux().to("cuda")
    base = _generate(pipe)
    with fastrepulse.patched(pipe, scale=0.0, backend="triton"):
        assert torch.equal(_generate(pipe), base)
    results = {}
    for backend in ("triton", "torch"):
        with fastrepulse.patched(pipe, scale=1000.0, steps="all", site=site, backend=backend):
            results[backend] = _generate(pipe)
    assert not torch.equal(results["triton"], base)
    torch.testing.assert_close(results["triton"], results["torch"], rtol=1e-3, atol=1e-3)
    assert torch.equal(_generate(pipe), base)
