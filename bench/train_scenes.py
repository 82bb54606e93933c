"""Train the scenes testbed's pipelines on rendered colour scenes and write their weights into the package.

    python bench/train_scenes.py                                # VAE, then the Flux model: into weights/
    python bench/train_scenes.py --model scenes-sd3 --vae-from fastrepulse/testbed/weights/scenes-flux.safetensors
    python bench/train_scenes.py --resume fastrepulse/testbed/weights/scenes-flux.safetensors --lr 3e-4 \
        --steps 4000 --seed 1 --threads 1                       # then continue it: the shipped Flux weights
    python bench/train_scenes.py --model scenes-chroma --vae-from fastrepulse/testbed/weights/scenes-flux.safetensors \
        --steps 8000                                            # Chroma, on Flux's VAE

Seeded and reproducible bit for bit with the same arguments and thread count: three runs of VAE and SD3 stages on
2 threads, and eleven of a Flux stage on 1 thread, trained the same weights. Compare weights by the digest printed
(`fastrepulse.testbed.models.weights_digest`), not by the file's bytes: safetensors writes its metadata in an order
that changes from run to run.

Training scenes are drawn fresh from `fastrepulse.testbed.scenes` (every attribute free), each described by a
prompt that names each attribute with probability `--named` and the background with `--background`
(`scenes.describe`), so every prompt's free attributes follow the data's exact distribution.

- The VAE learns to reconstruct the scenes: MSE with object pixels weighted up (objects cover a few percent of the
  frame; a small object's pixels weigh more, so that it counts as much as a large one) and a small KL term. Its
  latents' mean and spread become the pipeline's shift and scale.
- The transformer learns rectified flow as the FlowMatchEulerDiscreteScheduler samples it (x_sigma = (1 - sigma)
  x + sigma noise, velocity noise - x) with sigma uniform in (0, 1), so the first sampler steps, which decide the
  background and the layout, are trained as often as the last; the prompt is dropped to "" for 10% of the samples
  (classifier-free guidance), and an exponential moving average of its weights is shipped.

Each stage prints what the shipped judge reads: on VAE reconstructions of held-out scenes, and on generated images
of the benchmark prompts (fidelity: the share whose named attributes are all right).
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from train_testbed import descend, ship, velocity

from fastrepulse.testbed.judge import accuracy, judge
from fastrepulse.testbed.models import WEIGHTS, latent_statistics, load_weights, pipeline, state_of
from fastrepulse.testbed.scene_models import CALL_DEFAULTS, TEXT_TOKENS
from fastrepulse.testbed.scenes import (
    BACKGROUNDS,
    CELL,
    GRID,
    POSITIONS,
    SIZES,
    describe,
    render,
    sample_scene,
    satisfies,
    scene_prompts,
    to_array,
)

PROMPT_DROPOUT = 0.1
OBJECT_WEIGHT = 10.0
"""Extra weight of object pixels in the VAE's loss."""
HELD_OUT_SEED = 10**6 + 1


def _images(scenes: list) -> torch.Tensor:
    """Rendered scenes in the VAE's [-1, 1] convention, [N, 3, 48, 48]."""
    return torch.from_numpy(to_array([render(scene) for scene in scenes])) * 2 - 1


def _object_weights(scenes: list, images: torch.Tensor) -> torch.Tensor:
    """Per pixel [N, 1, H, W]: 1 on the background; where a pixel differs from its scene's background, 1 plus
    OBJECT_WEIGHT times (largest size / its object's size)^2, so that every object weighs as much as a large one."""
    background = torch.tensor([BACKGROUNDS[scene.background] for scene in scenes], dtype=torch.float32)
    background = (background / 255 * 2 - 1)[:, :, None, None]
    differs = ((images - background).abs().amax(1, keepdim=True) > 0.05).float()
    largest = max(SIZES.values())
    per_cell = torch.zeros(len(scenes), 1, GRID, GRID)
    for index, scene in enumerate(scenes):
        for obj in scene.objects:
            cell = POSITIONS.index(obj.position)
            per_cell[index, 0, cell // GRID, cell % GRID] = (largest / SIZES[obj.size]) ** 2
    return 1 + OBJECT_WEIGHT * differs * per_cell.repeat_interleave(CELL, 2).repeat_interleave(CELL, 3)


def _schedule(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over 5% of the steps, then a cosine down to 5% of the peak."""
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def reconstruction_accuracy(pipe, count: int = 500) -> dict[str, float]:
    """What the judge reads right on VAE reconstructions (posterior means) of held-out scenes."""
    rng = random.Random(HELD_OUT_SEED)
    held_out = [sample_scene(rng) for _ in range(count)]
    with torch.no_grad():
        decoded = pipe.vae.decode(pipe.vae.encode(_images(held_out)).latent_dist.mean).sample
    found, _ = judge((decoded + 1) / 2)
    return accuracy(found, held_out)


def train_vae(pipe, steps: int, batch: int, seed: int) -> None:
    """Fit the VAE to fresh scenes, then set its latent shift and scale to unit statistics."""
    rng, generator = random.Random(seed), torch.Generator().manual_seed(seed)
    vae = pipe.vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = _schedule(optimizer, steps)
    start = time.perf_counter()
    for step in range(steps):
        drawn = [sample_scene(rng) for _ in range(batch)]
        x = _images(drawn)
        posterior = vae.encode(x).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        error = (vae.decode(latents).sample - x).square() * _object_weights(drawn, x)
        loss = error.mean() + 1e-4 * posterior.kl().mean() / x[0].numel()
        descend(vae, optimizer, schedule, loss, step)
        if step % 250 == 0 or step == steps - 1:
            print(f"  vae step {step:5d}: loss {loss.item():.5f} ({time.perf_counter() - start:.0f} s)", flush=True)
    vae.eval().requires_grad_(False)
    rng = random.Random(seed + 1)
    with torch.no_grad():
        latents = vae.encode(_images([sample_scene(rng) for _ in range(2000)])).latent_dist.mean
    vae.register_to_config(shift_factor=latents.mean().item(), scaling_factor=1.0 / latents.std().item())
    scores = reconstruction_accuracy(pipe)
    print("  vae reconstructions, judge:", ", ".join(f"{key} {value:.1%}" for key, value in scores.items()), flush=True)


def _encode_text(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Text embeddings as the pipeline computes them for its transformer, and the pooled embeddings (Chroma: the
    text's attention mask)."""
    with torch.no_grad():
        if pipe.testbed_name == "scenes-chroma":
            embeds, _, mask, *_ = pipe.encode_prompt(
                prompts, do_classifier_free_guidance=False, max_sequence_length=TEXT_TOKENS
            )
            return embeds, mask
        if pipe.testbed_name == "scenes-sd3":
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompts, prompts, prompts, do_classifier_free_guidance=False, max_sequence_length=TEXT_TOKENS
            )
        else:
            embeds, pooled, _ = pipe.encode_prompt(prompts, prompt_2=None, max_sequence_length=TEXT_TOKENS)
    return embeds, pooled


def _velocity(pipe, noisy: torch.Tensor, sigma: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor):
    """The transformer's velocity for latents [N, 16, 6, 6], called exactly as the pipeline calls it (`pooled`:
    Chroma's text mask)."""
    if pipe.testbed_name != "scenes-chroma":
        return velocity(pipe, "sd3" if pipe.testbed_name == "scenes-sd3" else "flux", noisy, sigma, embeds, pooled)
    n, c, h, w = noisy.shape
    packed = pipe._pack_latents(noisy, n, c, h, w)
    out = pipe.transformer(
        hidden_states=packed,
        timestep=sigma,
        encoder_hidden_states=embeds,
        txt_ids=torch.zeros(embeds.shape[1], 3),
        img_ids=pipe._prepare_latent_image_ids(n, h // 2, w // 2, noisy.device, noisy.dtype),
        attention_mask=pipe._prepare_attention_mask(n, packed.shape[1], noisy.dtype, pooled),
    ).sample
    return pipe._unpack_latents(out, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor, pipe.vae_scale_factor)


def train_transformer(
    pipe, steps: int, batch: int, seed: int, named: float, background: float, lr: float = 1e-3
) -> None:
    """Rectified flow with prompt dropout on fresh described scenes, at peak learning rate `lr`; the transformer ends
    with its moving-average weights."""
    rng, generator = random.Random(seed), torch.Generator().manual_seed(seed)
    transformer = pipe.transformer.train().requires_grad_(True)
    average = copy.deepcopy(transformer).requires_grad_(False)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=lr, weight_decay=0.01)
    schedule = _schedule(optimizer, steps)
    shift, scale = pipe.vae.config.shift_factor, pipe.vae.config.scaling_factor
    start = time.perf_counter()
    for step in range(steps):
        drawn = [sample_scene(rng) for _ in range(batch)]
        prompts = [describe(scene, rng, named, background) if rng.random() >= PROMPT_DROPOUT else "" for scene in drawn]
        embeds, pooled = _encode_text(pipe, prompts)
        with torch.no_grad():
            posterior = pipe.vae.encode(_images(drawn)).latent_dist
            clean = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator) - shift
            clean = clean * scale
        sigma = torch.rand(batch, generator=generator)
        noise = torch.randn(clean.shape, generator=generator)
        noisy = (1 - sigma.view(-1, 1, 1, 1)) * clean + sigma.view(-1, 1, 1, 1) * noise
        loss = F.mse_loss(_velocity(pipe, noisy, sigma, embeds, pooled), noise - clean)
        descend(transformer, optimizer, schedule, loss, step, average)
        if step % 250 == 0 or step == steps - 1:
            print(
                f"  {pipe.testbed_name} step {step:5d}: loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    transformer.load_state_dict(average.state_dict())
    transformer.eval().requires_grad_(False)


def check_fidelity(pipe, images_per_prompt: int = 8, seed: int = 0) -> float:
    """Share (%) of generated images whose named attributes the judge reads right, over the benchmark prompts."""
    prompts = scene_prompts()
    out = pipe(
        prompt=[prompt.text for prompt in prompts],
        num_images_per_prompt=images_per_prompt,
        generator=torch.Generator().manual_seed(seed),
    )
    found = judge(out.images)[0]
    expected = [prompt for prompt in prompts for _ in range(images_per_prompt)]
    return 100.0 * sum(satisfies(reading, prompt) for reading, prompt in zip(found, expected, strict=True)) / len(found)


def _load(pipe, path: Path, component: str | None = None) -> None:
    """Load a pipeline's weights file into `pipe`: one component's weights, or (None) every component's; the VAE's
    latent shift and scale come with the VAE."""
    prefix = f"{component}." if component else ""
    with safe_open(path, "pt") as weights:
        keys = [key for key in weights.keys() if key.startswith(prefix)]  # noqa: SIM118 (no __iter__)
        state, latents = {key: weights.get_tensor(key) for key in keys}, weights.metadata()
    if component is None:
        load_weights(pipe, state, latents)
        return
    getattr(pipe, component).load_state_dict({key.removeprefix(prefix): value.float() for key, value in state.items()})
    if component == "vae":
        pipe.vae.register_to_config(**{key: float(value) for key, value in latents.items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="scenes-flux", choices=sorted(CALL_DEFAULTS))
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--vae-from", type=Path, help="take the VAE from this pipeline's weights instead of training")
    parser.add_argument(
        "--resume", type=Path, help="start from this pipeline's weights, its VAE and transformer: a continued run"
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="the transformer's peak learning rate")
    parser.add_argument("--vae-steps", type=int, default=5000)
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5000, help="transformer training steps")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--named", type=float, default=0.7, help="chance that a prompt names each attribute")
    parser.add_argument("--background", type=float, default=0.5, help="chance that a prompt names the background")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the weights depend on it)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        pipe = pipeline(args.model, trained=False)
    vae_path = args.resume or args.vae_from or args.out / f"{args.model}-vae.safetensors"
    if not (args.resume or args.vae_from):
        print(f"vae: {args.vae_steps} steps, batch {args.vae_batch}", flush=True)
        train_vae(pipe, args.vae_steps, args.vae_batch, args.seed)
        save_file(state_of(pipe), vae_path, metadata=latent_statistics(pipe))
    # the transformer learns the latents of the shipped float16 VAE; a continued run takes every component (the
    # text encoders are seeded, not trained: another --seed would draw others)
    _load(pipe, vae_path, None if args.resume else "vae")
    pipe.vae.requires_grad_(False)
    print(f"{args.model}: {args.steps} steps, batch {args.batch}", flush=True)
    train_transformer(pipe, args.steps, args.batch, args.seed + 1, args.named, args.background, args.lr)
    ship(pipe, args.out / f"{args.model}.safetensors", start)
    print(f"{args.model}: fidelity {check_fidelity(pipe):.1f}% (8 images per benchmark prompt, seed 0)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
