"""`fastrepulse generate`: one prompt, a base row and a repulsion row from the same seeds, as a labelled grid."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from fastrepulse.config import METHODS, PRESETS
from fastrepulse.patching import patch

DEFAULT_PRESETS = {
    "TestbedFluxPipeline": "testbed",
    "TestbedSD3Pipeline": "testbed",
    "FluxKontextPipeline": "flux-kontext",
    "FluxPipeline": "flux-dev",
    "StableDiffusion3Pipeline": "sd3.5-large",
}
"""The preset `generate` uses for a pipeline class when neither --preset nor --scale is given."""

MIN_CELL = 256  # small images (the testbed's) are enlarged with nearest-neighbour sampling so they can be seen
LABEL_WIDTH = 220
GAP = 4  # white pixels between images
TITLE_HEIGHT = 28
TESTBED_MODELS = ("testbed-flux", "testbed-sd3")
"""The digit models shipped in the package (fastrepulse.testbed), trained here on real handwritten digits."""
DEFAULT_PROMPT = "a handwritten 7"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fastrepulse` command."""
    parser = argparse.ArgumentParser(prog="fastrepulse", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="write a base-vs-repulsion grid for one prompt")
    generate.add_argument(
        "--model",
        default=TESTBED_MODELS[0],
        help=f"diffusers pipeline folder or hub id, or an embedded testbed model: {', '.join(TESTBED_MODELS)} "
        "(default: %(default)s)",
    )
    generate.add_argument("--prompt", default=DEFAULT_PROMPT, help="default: %(default)r")
    generate.add_argument("--images", type=int, default=4, help="images per row, one group (default 4)")
    generate.add_argument("--preset", choices=sorted(PRESETS), help="default: chosen from the pipeline class")
    generate.add_argument("--method", choices=METHODS, default=None, help="default: contextual")
    generate.add_argument("--scale", type=float, help="overrides the preset's scale")
    generate.add_argument("--steps", type=int, help="repelled sampler steps; overrides the preset")
    generate.add_argument("--iterations", type=int, help="ascent steps per block; overrides the preset")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--num-inference-steps", type=int, help="sampler steps (default: the pipeline's)")
    generate.add_argument("--guidance-scale", type=float, help="default: the pipeline's")
    generate.add_argument("--height", type=int)
    generate.add_argument("--width", type=int)
    generate.add_argument("--image", help="input image, for image-conditioned pipelines such as Flux-Kontext")
    generate.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    generate.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on CUDA, fp32 on CPU")
    generate.add_argument("--out", default="grid.png")
    args = parser.parse_args(argv)
    if args.images < 2:
        parser.error("--images must be at least 2: repulsion acts between the images of one prompt")
    try:
        pipe = load_pipeline(args.model, args.device, args.dtype)
    except (OSError, ValueError, TypeError) as error:
        print(f"fastrepulse: {error}", file=sys.stderr)
        return 2
    preset = args.preset
    if preset is None and args.scale is None and (args.method or "contextual") == "contextual":
        preset = DEFAULT_PRESETS.get(type(pipe).__name__)
    options = {"method": args.method, "scale": args.scale, "steps": args.steps, "iterations": args.iterations}
    try:
        handle = patch(pipe, preset, **options)
    except (TypeError, ValueError) as error:
        print(f"fastrepulse: {error}", file=sys.stderr)
        return 2
    call = _call_arguments(args)
    config = handle.config
    try:
        repelled = _generate(pipe, "repulsion", call, args.seed)
    finally:
        handle.remove()
    label = f"{config.method}\nscale {config.scale:g}" + (f"\n{preset}" if preset else "")
    rows = {"base": _generate(pipe, "base", call, args.seed), label: repelled}
    grid(rows, title=args.prompt).save(args.out)
    print(f"wrote {args.out}: {args.images} images per row, seed {args.seed}")
    return 0


def load_pipeline(model: str, device: str, dtype: str | None) -> Any:
    """A diffusers pipeline from a folder or hub id, or an embedded testbed model, on `device`."""
    from diffusers import DiffusionPipeline

    torch_dtype = DTYPES[dtype] if dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    if model in TESTBED_MODELS:
        from fastrepulse.testbed import pipeline

        pipe = pipeline(model.removeprefix("testbed-")).to(device)
        if torch_dtype != torch.float32:
            pipe.to(dtype=torch_dtype)
        pipe.set_progress_bar_config(disable=False)
        return pipe
    with warnings.catch_warnings():  # torch_dtype: the keyword every supported release takes (newer ones prefer dtype)
        warnings.filterwarnings("ignore", message="`torch_dtype` is deprecated", category=FutureWarning)
        return DiffusionPipeline.from_pretrained(model, torch_dtype=torch_dtype).to(device)


def grid(rows: dict[str, list[Image.Image]], title: str) -> Image.Image:
    """One labelled row per entry of `rows`, images enlarged to at least MIN_CELL pixels, `title` on top."""
    first = next(iter(rows.values()))[0]
    zoom = max(1, -(-MIN_CELL // max(first.size)))
    cell_w, cell_h = first.width * zoom, first.height * zoom
    columns = max(len(images) for images in rows.values())
    size = (LABEL_WIDTH + columns * (cell_w + GAP), TITLE_HEIGHT + len(rows) * (cell_h + GAP))
    canvas = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=18)
    draw.text((8, 4), title, fill="black", font=font)
    for row, (label, images) in enumerate(rows.items()):
        top = TITLE_HEIGHT + row * (cell_h + GAP)
        draw.multiline_text((8, top + 8), label, fill="black", font=font)
        for column, image in enumerate(images):
            canvas.paste(
                image.convert("RGB").resize((cell_w, cell_h), Image.NEAREST),
                (LABEL_WIDTH + column * (cell_w + GAP), top),
            )
    return canvas


def _call_arguments(args: argparse.Namespace) -> dict[str, Any]:
    call: dict[str, Any] = {"prompt": args.prompt, "num_images_per_prompt": args.images}
    optional = {
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": args.guidance_scale,
        "height": args.height,
        "width": args.width,
    }
    call.update({name: value for name, value in optional.items() if value is not None})
    if args.image:
        call["image"] = Image.open(args.image).convert("RGB")
    return call


def _generate(pipe: Any, description: str, call: dict[str, Any], seed: int) -> list[Image.Image]:
    pipe.set_progress_bar_config(desc=description)
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    return pipe(generator=generator, output_type="pil", **call).images


if __name__ == "__main__":
    sys.exit(main())
