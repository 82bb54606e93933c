"""The two baselines users compare contextual repulsion with, applied in the same places of the sampler.

- CADS (Sadat et al., ICLR 2024): annealed Gaussian noise on the text conditioning of both guidance
  branches, ``y' = sqrt(gamma(t)) y + s sqrt(1 - gamma(t)) n``, rescaled to y's mean and std and mixed
  with psi. gamma is 0 at pure noise (t >= tau2), 1 for t <= tau1, linear in between.
- Particle Guidance (Corso et al., ICLR 2024): the latents of a group repel each other in every sampler
  step through the gradient of a pairwise RBF energy, computed by the same operator as contextual
  repulsion (`fastrepulse.repel` with one iteration).
"""

from __future__ import annotations

import torch

from fastrepulse.config import RepulsionConfig
from fastrepulse.repulsion import repel


def cads_gamma(t: torch.Tensor, tau1: float, tau2: float) -> torch.Tensor:
    """CADS signal weight at diffusion time t in [0, 1] (1 = pure noise), float64 on t's device."""
    return ((tau2 - t.to(torch.float64)) / (tau2 - tau1)).clamp(0.0, 1.0)


def cads_condition(
    condition: torch.Tensor, t: torch.Tensor, config: RepulsionConfig, generator: torch.Generator
) -> torch.Tensor:
    """The CADS-corrupted conditioning [N, ...] at time t (a 0-d tensor, read on its device: no host sync on a
    GPU): noise from `generator`, per-sample rescale, psi mix; `condition` itself, bit for bit, where gamma is 1."""
    gamma = cads_gamma(t.to(condition.device), config.cads_tau1, config.cads_tau2)  # where the timestep already is
    noise = torch.randn(condition.shape, generator=generator, device=condition.device, dtype=torch.float32)
    clean = condition.float()
    signal, spread = gamma.sqrt().float(), (config.scale * (1.0 - gamma).sqrt()).float()
    noisy = signal * clean + spread * noise
    if config.cads_rescale:
        dims = tuple(range(1, clean.dim()))
        rescaled = (noisy - noisy.mean(dims, keepdim=True)) / noisy.std(dims, keepdim=True)
        rescaled = rescaled * clean.std(dims, keepdim=True) + clean.mean(dims, keepdim=True)
        noisy = config.cads_psi * rescaled + (1.0 - config.cads_psi) * noisy
    return torch.where(gamma == 1.0, condition, noisy.to(condition.dtype))


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
