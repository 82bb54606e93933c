"""Train the testbed's Flux and SD3 pipelines on the real digits and write their weights into the package.

    python bench/train_testbed.py                # both models, into fastrepulse/testbed/weights/
    python bench/train_testbed.py --model flux --out /tmp/w

Seeded: the same arguments and thread count give the same weights, bit for bit. The VAE is trained once
(reconstruction plus a small KL term) and shared by both models; the text encoders keep their seeded
random weights (fixed features the transformer learns to read). Each transformer learns rectified flow
(the FlowMatchEulerDiscreteScheduler's convention: x_sigma = (1 - sigma) x + sigma noise, velocity
noise - x, sigma drawn logit-normal) on the training split, with the prompt dropped to "" for 10% of the
samples so that classifier-free guidance works, and an exponential moving average of its weights is
shipped. About 8 minutes per model on one CPU core; a rerun reproduced the shipped Flux weights bit for bit.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from fastrepulse.eval import fidelity
from fastrepulse.testbed import classify, digits, split
from fastrepulse.testbed.models import (
    CALL_DEFAULTS,
    PROMPT,
    WEIGHTS,
    latent_statistics,
    load_weights,
    pipeline,
    state_of,
    weights_digest,
)

PROMPT_DROPOUT = 0.1


def train_vae(pipe, images: torch.Tensor, steps: int, batch: int, generator: torch.Generator) -> None:
    """Fit the VAE to reconstruct the digits, then set its latent shift and scale to unit statistics."""
    vae = pipe.vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    for step in range(steps):
        x = images[torch.randint(len(images), (batch,), generator=generator)]
        posterior = vae.encode(x).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        loss = F.mse_loss(vae.decode(latents).sample, x) + 1e-4 * posterior.kl().mean() / x[0].numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"  vae step {step:5d}: loss {loss.item():.5f}", flush=True)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mean
    vae.register_to_config(shift_factor=latents.mean().item(), scaling_factor=1.0 / latents.std().item())


def encode_latents(pipe, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Normalised latents [N, 1, 8, 8] as the pipelines denoise them, one posterior sample per image."""
    with torch.no_grad():
        posterior = pipe.vae.encode(images).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
    return (latents - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor


def prompt_table(pipe, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Text embeddings [11, T, D] and pooled embeddings [11, P] of the ten digit prompts and "" (index 10)."""
    prompts = [PROMPT.format(digit=d) for d in range(10)] + [""]
    length = CALL_DEFAULTS[name]["max_sequence_length"]
    with torch.no_grad():
        if name == "flux":
            embeds, pooled, _ = pipe.encode_prompt(prompts, prompt_2=None, max_sequence_length=length)
        else:
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompts, prompts, prompts, do_classifier_free_guidance=False, max_sequence_length=length
            )
    return embeds, pooled


def velocity(pipe, name: str, noisy: torch.Tensor, sigma: torch.Tensor, embeds, pooled) -> torch.Tensor:
    """The transformer's velocity for latents [N, 1, 8, 8], called exactly as the pipeline calls it."""
    transformer = pipe.transformer
    if name == "sd3":
        return transformer(
            hidden_states=noisy, encoder_hidden_states=embeds, pooled_projections=pooled, timestep=sigma * 1000
        ).sample
    n, c, h, w = noisy.shape
    packed = pipe._pack_latents(noisy, n, c, h, w)
    image_ids = pipe._prepare_latent_image_ids(n, h // 2, w // 2, noisy.device, noisy.dtype)
    text_ids = torch.zeros(embeds.shape[1], 3)
    out = transformer(
        hidden_states=packed,
        encoder_hidden_states=embeds,
        pooled_projections=pooled,
        timestep=sigma,
        img_ids=image_ids,
        txt_ids=text_ids,
    ).sample
    return pipe._unpack_latents(out, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor, pipe.vae_scale_factor)


def train_transformer(
    pipe, name: str, latents: torch.Tensor, labels: torch.Tensor, steps: int, batch: int, generator: torch.Generator
) -> None:
    """Rectified flow with prompt dropout; the transformer ends with its moving-average weights."""
    embeds, pooled = prompt_table(pipe, name)
    transformer = pipe.transformer.train().requires_grad_(True)
    average = copy.deepcopy(transformer).requires_grad_(False)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=1e-3, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1 - s / steps)
    )
    for step in range(steps):
        index = torch.randint(len(latents), (batch,), generator=generator)
        clean, prompt = latents[index], labels[index].clone()
        prompt[torch.rand(batch, generator=generator) < PROMPT_DROPOUT] = 10
        sigma = torch.sigmoid(torch.randn(batch, generator=generator))
        noise = torch.randn(clean.shape, generator=generator)
        noisy = (1 - sigma.view(-1, 1, 1, 1)) * clean + sigma.view(-1, 1, 1, 1) * noise
        loss = F.mse_loss(velocity(pipe, name, noisy, sigma, embeds[prompt], pooled[prompt]), noise - clean)
        descend(transformer, optimizer, schedule, loss, step, average)
        if step % 500 == 0 or step == steps - 1:
            print(f"  {name} step {step:5d}: loss {loss.item():.4f}", flush=True)
    transformer.load_state_dict(average.state_dict())
    transformer.eval().requires_grad_(False)


def descend(module, optimizer, schedule, loss: torch.Tensor, step: int, average=None) -> None:
    """One optimizer step of `module` on `loss` (gradients clipped to norm 1), then, if given, its moving average
    `average` moved towards it (decay warming up to 0.999)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    if average is None:
        return
    decay = min(0.999, (1 + step) / (10 + step))
    with torch.no_grad():
        for kept, current in zip(average.parameters(), module.parameters(), strict=True):
            kept.lerp_(current, 1 - decay)


def ship(pipe, path: Path, start: float) -> None:
    """Write the pipeline's float16 weights to `path` and load them back, so that what is judged next is what ships;
    print the file's size, its weights' digest (`weights_digest`) and the seconds since `start`."""
    save_file(state_of(pipe), path, metadata=latent_statistics(pipe))
    load_weights(pipe, load_file(path), latent_statistics(pipe))
    size_mb = path.stat().st_size / 2**20
    print(
        f"{path.stem}: wrote {path} ({size_mb:.2f} MiB, weights sha256 {weights_digest(path)}) "
        f"after {time.perf_counter() - start:.0f} s"
    )


def check_fidelity(pipe, images_per_digit: int = 8) -> float:
    """Share (%) of generated digits that the testbed classifier reads as the requested digit."""
    prompts = [PROMPT.format(digit=d) for d in range(10)]
    out = pipe(prompt=prompts, num_images_per_prompt=images_per_digit, generator=torch.Generator().manual_seed(0))
    labels, _ = classify(out.images)
    return 100.0 * fidelity(labels, torch.arange(10).repeat_interleave(images_per_digit))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", choices=sorted(CALL_DEFAULTS), help="repeatable; default: both")
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=3000, help="transformer training steps")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="the weights depend on it, bit for bit")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    images, labels = digits()
    train, _ = split(labels)
    images, labels = 2 * images[train, None] - 1, labels[train]  # the VAE's [-1, 1] convention
    generator = torch.Generator().manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    print(f"vae: {args.vae_steps} steps on {len(images)} training digits", flush=True)
    shared = pipeline("flux", trained=False)
    train_vae(shared, images, args.vae_steps, args.batch, generator)
    for name in args.model or sorted(CALL_DEFAULTS):
        # Each model its own generator: training one alone gives the same weights as training both.
        generator = torch.Generator().manual_seed(args.seed + 1 + sorted(CALL_DEFAULTS).index(name))
        pipe = pipeline(name, trained=False)
        pipe.vae.load_state_dict(shared.vae.state_dict())
        pipe.vae.register_to_config(**{key: shared.vae.config[key] for key in ("shift_factor", "scaling_factor")})
        latents = encode_latents(pipe, images, generator)
        print(f"{name}: {args.steps} steps, batch {args.batch}", flush=True)
        train_transformer(pipe, name, latents, labels, args.steps, args.batch, generator)
        ship(pipe, args.out / f"{name}.safetensors", start)
        print(f"{name}: fidelity {check_fidelity(pipe):.1f}% (8 images per digit, seed 0)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
