"""End-to-end cost of repulsion in a whole pipeline call: base vs the paper-style loop vs fastrepulse.

Full-size Flux-dev and SD3.5-Large architectures with random weights (no checkpoints here), no text
encoders: the call gets prompt embeddings of the right shapes, already holding one group of B images
(so the transformer sees exactly what a real call sees; `group_size=B` states the grouping). Each
variant runs one warm-up call (Triton compilation) and `--repeats` timed calls; the median is kept.

    python bench/bench_e2e.py --model flux-dev --out e2e.json       # GPU: the published architectures
    python bench/bench_e2e.py --model tiny-flux --device cpu --out e2e.json   # CPU smoke run

JSON: {"device", versions, "e2e": [{model, variant, seconds, overhead_pct, peak_mem_delta_pct, scale}]}.
`seconds` is one pipeline call (one group of B images); overhead and memory are relative to "base".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import diffusers
import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)

import fastrepulse

FLUX_DEV = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
SD35_LARGE = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 38,
    "attention_head_dim": 64,
    "num_attention_heads": 38,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 2432,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 192,
    "qk_norm": "rms_norm",
}
VAE = {  # the 16-channel VAE of both; only the latent scaling and shift differ
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 16,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
FLUX_VAE = {**VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159}
SD35_VAE = {**VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609}
TINY_VAE = {  # two levels, 8 channels: a CPU-sized stand-in with the same latent layout
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "block_out_channels": (8, 8),
    "layers_per_block": 1,
    "norm_num_groups": 4,
}


@dataclass(frozen=True)
class Model:
    """One architecture and the call the paper times on it."""

    family: str  # "flux" or "sd3"
    transformer: dict[str, Any]
    vae: dict[str, Any]
    preset: str
    steps: int
    guidance: float
    text_tokens: int
    size: int = 512
    scheduler: dict[str, Any] = field(default_factory=dict)


FLUX_SCHEDULER = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15}
TINY = {"attention_head_dim": 8, "num_attention_heads": 4, "joint_attention_dim": 32, "pooled_projection_dim": 32}
TINY_FLUX = {**FLUX_DEV, **TINY, "num_layers": 2, "num_single_layers": 2, "axes_dims_rope": (2, 2, 4)}
TINY_SD3 = {**SD35_LARGE, **TINY, "num_layers": 3, "caption_projection_dim": 32, "sample_size": 32}
TINY_SD3["pos_embed_max_size"] = 32
MODELS = {
    "flux-dev": Model(
        "flux",
        FLUX_DEV,
        FLUX_VAE,
        "flux-dev",
        20,
        3.5,
        512,
        scheduler=FLUX_SCHEDULER,
    ),
    "sd3.5-large": Model(
        "sd3",
        SD35_LARGE,
        SD35_VAE,
        "sd3.5-large",
        28,
        3.5,
        333,
        scheduler={"shift": 3.0},
    ),
    "tiny-flux": Model(
        "flux", TINY_FLUX, {**FLUX_VAE, **TINY_VAE}, "flux-dev", 4, 3.5, 16, size=64, scheduler=FLUX_SCHEDULER
    ),
    "tiny-sd3": Model(
        "sd3", TINY_SD3, {**SD35_VAE, **TINY_VAE}, "sd3.5-large", 4, 3.5, 16, size=64, scheduler={"shift": 3.0}
    ),
}
VARIANTS = {
    "base": None,
    "reference": {"backend": "reference"},
    "fastrepulse": {"backend": "auto", "solver": "host"},
    "fastrepulse-device-solver": {"backend": "auto", "solver": "device"},
}
"""Variant name -> repel options (None: unpatched). backend "auto" is triton on CUDA; the host solver is the
default, the device solver the candidate this benchmark decides about."""


def variants_for(device: str) -> dict[str, dict[str, str] | None]:
    """The variants that run on `device`: the device solver is a Triton kernel, so CUDA only."""
    cuda = device.startswith("cuda")
    return {name: options for name, options in VARIANTS.items() if cuda or (options or {}).get("solver") != "device"}


@dataclass
class Record:
    model: str
    variant: str
    seconds: float
    overhead_pct: float
    peak_mem_delta_pct: float
    scale: float | None


def build_pipeline(model: Model, device: str, dtype: torch.dtype) -> Any:
    """The architecture with random weights, made directly on `device` in `dtype` (no float32 copy)."""
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            if model.family == "flux":
                transformer = FluxTransformer2DModel(**model.transformer)
            else:
                transformer = SD3Transformer2DModel(**model.transformer)
            vae = AutoencoderKL(**model.vae)
    finally:
        torch.set_default_dtype(default_dtype)
    scheduler = FlowMatchEulerDiscreteScheduler(**model.scheduler)
    pipeline = FluxPipeline if model.family == "flux" else StableDiffusion3Pipeline
    components = {"transformer": transformer, "vae": vae, "scheduler": scheduler}
    encoders = ["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"]
    if model.family == "sd3":
        encoders += ["text_encoder_3", "tokenizer_3"]
    pipe = pipeline(**components, **dict.fromkeys(encoders))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_arguments(model: Model, images: int, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """Prompt embeddings for one prompt repeated over `images` images, as the text encoders would give."""
    generator = torch.Generator(device="cpu").manual_seed(0)

    def embeddings(*shape: int) -> torch.Tensor:
        one = torch.randn(1, *shape, generator=generator)
        return one.expand(images, *shape).to(device=device, dtype=dtype)

    width, pooled = model.transformer["joint_attention_dim"], model.transformer["pooled_projection_dim"]
    call: dict[str, Any] = {
        "prompt_embeds": embeddings(model.text_tokens, width),
        "pooled_prompt_embeds": embeddings(pooled),
        "num_inference_steps": model.steps,
        "guidance_scale": model.guidance,
        "height": model.size,
        "width": model.size,
        "output_type": "pil",
    }
    if model.family == "sd3":  # true CFG: one call on [uncond ; cond]
        call["negative_prompt_embeds"] = embeddings(model.text_tokens, width)
        call["negative_pooled_prompt_embeds"] = embeddings(pooled)
    return call


def timed_call(pipe: Any, call: dict[str, Any], device: str) -> tuple[float, int]:
    """Seconds of one pipeline call and the peak memory it allocated (CUDA only; 0 elsewhere)."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    pipe(generator=torch.Generator(device="cpu").manual_seed(0), **call)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, torch.cuda.max_memory_allocated() if cuda else 0


def find_scale(run: Callable[[float], None], scale: float, attempts: int = 8) -> float:
    """The preset's scale, or a tenth of it (repeatedly) where random weights make the steps overshoot."""
    for _ in range(attempts):
        try:
            run(scale)
            return scale
        except ValueError as error:
            if "diverged" not in str(error):
                raise
            print(f"  scale {scale:g} diverges on random weights; trying {scale / 10:g}", flush=True)
            scale /= 10
    raise RuntimeError(f"repulsion diverged down to scale {scale:g}")


def bench_model(name: str, device: str, dtype: torch.dtype, images: int, repeats: int) -> list[Record]:
    model = MODELS[name]
    start = time.perf_counter()
    pipe = build_pipeline(model, device, dtype)
    print(f"  {name}: built in {time.perf_counter() - start:.1f} s", flush=True)  # where a short lease's time goes
    call = call_arguments(model, images, device, dtype)
    results: dict[str, tuple[float, int, float | None]] = {}
    scale: float | None = None
    for variant, options in variants_for(device).items():
        if options is None:
            timed_call(pipe, call, device)  # warm-up
            runs = [timed_call(pipe, call, device) for _ in range(repeats)]
            results[variant] = (statistics.median(s for s, _ in runs), max(m for _, m in runs), None)
            print(f"  {name} {variant}: {results[variant][0]:.3f} s", flush=True)
            continue

        def patched_run(value: float, options: dict[str, str] = options) -> None:
            with fastrepulse.patched(pipe, model.preset, scale=value, group_size=images, **options):
                timed_call(pipe, call, device)

        start = time.perf_counter()
        scale = find_scale(patched_run, scale or fastrepulse.PRESETS[model.preset].scale)  # doubles as warm-up
        print(f"  {name} {variant}: warm-up (compilation included) {time.perf_counter() - start:.1f} s", flush=True)
        with fastrepulse.patched(pipe, model.preset, scale=scale, group_size=images, **options):
            runs = [timed_call(pipe, call, device) for _ in range(repeats)]
        results[variant] = (statistics.median(s for s, _ in runs), max(m for _, m in runs), scale)
        print(f"  {name} {variant}: {results[variant][0]:.3f} s", flush=True)
    base_seconds, base_memory, _ = results["base"]
    records = []
    for variant, (seconds, memory, used_scale) in results.items():
        overhead = 100 * (seconds / base_seconds - 1)
        memory_delta = 100 * (memory / base_memory - 1) if base_memory else 0.0
        records.append(Record(name, variant, seconds, overhead, memory_delta, used_scale))
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", choices=sorted(MODELS), help="repeatable; default: both full")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=4, help="B, the images of the one prompt (default 4)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("needs a CUDA GPU (or --device cpu with a tiny model)", file=sys.stderr)
        return 2
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    records: list[Record] = []
    for name in args.model or ["flux-dev", "sd3.5-large"]:
        print(f"{name}: {MODELS[name].steps} steps, B={args.images}, {args.device}", flush=True)
        records += bench_model(name, args.device, dtype, args.images, args.repeats)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()  # the model is gone with bench_model's frame; free its memory for the next
        result = {
            "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "images": args.images,
            "e2e": [asdict(record) for record in records],
        }
        with open(args.out, "w") as f:  # after every model: a run cut short keeps what it measured
            json.dump(result, f, indent=1)
    print(f"\n{'model':12} {'variant':26} {'seconds':>8} {'overhead %':>10} {'peak mem %':>10} {'scale':>8}")
    for r in records:
        scale = f"{r.scale:.0e}" if r.scale is not None else "-"
        print(
            f"{r.model:12} {r.variant:26} {r.seconds:>8.3f} {r.overhead_pct:>10.2f} "
            f"{r.peak_mem_delta_pct:>10.2f} {scale:>8}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
