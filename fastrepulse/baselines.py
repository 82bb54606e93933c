"""The two baselines users compare contextual repulsion with, applied in the same places of the sampler.

- CADS (Sadat et al., ICLR 2024): annealed Gaussian noise on the text conditioning of both guidance
  branches, ``y' = sqrt(gamma(t)) y + s sqrt(1 - gamma(t)) n``, rescaled to y's mean and std and mixed
  with psi. gamma is 0 at pure noise (t >= tau2), 1 for t <= tau1, linear in between.
- Particle Guidance (Corso et al., ICLR 2024): the latents of a group repel each other in every sampler
  step through the gradient of a pairwise RBF energy, computed by the same operator as contextual
  repulsion (`fastrepulse.repel` with one iteration).
"""

from __future__ import annotations

import math

import torch

from fastrepulse.config import RepulsionConfig
from fastrepulse.repulsion import repel


def cads_gamma(t: float, tau1: float, tau2: float) -> float:
    """CADS signal weight at diffusion time t in [0, 1] (1 = pure noise)."""
    return min(1.0, max(0.0, (tau2 - t) / (tau2 - tau1)))


def cads_condition(
    condition: torch.Tensor, t: float, config: RepulsionConfig, generator: torch.Generator
) -> torch.Tensor:
    """The CADS-corrupted conditioning [N, ...] at time t: noise from `generator`, per-sample rescale, psi mix."""
    gamma = cads_gamma(t, config.cads_tau1, config.cads_tau2)
    if gamma == 1.0:
        return condition
    noise = torch.randn(condition.shape, generator=generator, device=condition.device, dtype=torch.float32)
    clean = condition.float()
    noisy = math.sqrt(gamma) * clean + config.scale * math.sqrt(1.0 - gamma) * noise
    if config.cads_rescale:
        dims = tuple(range(1, clean.dim()))
        rescaled = (noisy - noisy.mean(dims, keepdim=True)) / noisy.std(dims, keepdim=True)
        rescaled = rescaled * clean.std(dims, keepdim=True) + clean.mean(dims, keepdim=True)
        noisy = config.cads_psi * rescaled + (1.0 - config.cads_psi) * noisy
    return noisy.to(condition.dtype)


def particle_guidance(
    model_output: torch.Tensor, sample: torch.Tensor, config: RepulsionConfig, group_size: int, sign: float
) -> torch.Tensor:
    """The model output with ``sign * scale * grad E(sample)`` added, E the group-wise repulsion energy.

    For noise, velocity and flow predictions (sign -1) any scheduler step then moves each latent along
    +grad E, by ``scale`` times the step's decrease of the noise level; for x0 predictions sign is +1.
    """
    position = sample.float()  # the force is the small difference of two repelled positions: keep its digits
    force = repel(
        position,
        scale=config.scale,
        iterations=1,
        group_size=group_size,
        objective=config.objective,
        kernel=config.kernel,
        backend=config.backend,
        solver=config.solver,
    )
    return model_output.add(force.sub_(position).to(model_output.dtype), alpha=sign)
