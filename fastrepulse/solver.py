"""All `iterations` ascent steps of every group, run on B x B matrices in float64.

After any number of steps the samples are C = P C0, so the Gram matrix follows as G = P G0 P^T
and a step ``C <- C + s W C`` is ``P <- (I + s W) P``, ``G <- (I + s W) G (I + s W)`` (W is
symmetric). The big tensor is never touched: the caller applies ``X + (P - I) X`` once.
"""

from __future__ import annotations

import torch

from fastrepulse.forces import force_matrix, rbf_bandwidth


def solve(gram: torch.Tensor, *, scale: float, iterations: int, objective: str, kernel: str) -> torch.Tensor:
    """Mixing matrices P - I [G, B, B] (float64) of `iterations` steps of size scale / iterations.

    Args:
        gram: Gram matrices [G, B, B] of the groups' flattened samples, any float dtype (upcast to
            float64); cosine needs a positive diagonal.
        scale, iterations, objective, kernel: as in `fastrepulse.repel`.

    Returns:
        ``P - I`` in float64 on gram's device: the update of the samples is ``(P - I) C0``.
    """
    gram = gram.to(torch.float64)
    bandwidth = rbf_bandwidth(gram) if kernel == "rbf" else None
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    step = scale / iterations
    mixing = eye.expand_as(gram)
    for _ in range(iterations):
        transform = torch.add(eye, force_matrix(gram, objective, kernel, bandwidth), alpha=step)
        mixing = transform @ mixing
        gram = transform @ gram @ transform
    return mixing - eye
