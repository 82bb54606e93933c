"""`fastrepulse generate`: one prompt, a base row and a repulsion row from the same seeds, as a labelled grid."""

from __future__ import annotations

import argparse
import inspect
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import torch
from PIL import Image, ImageDraw, ImageFont

from fastrepulse.config import METHODS, PRESETS, RepulsionConfig, make_config
from fastrepulse.patching import patch

DEFAULT_PRESETS = {
    "FluxKontextPipeline": "flux-kontext",
    "FluxPipeline": "flux-dev",
    "StableDiffusion3Pipeline": "sd3.5-large",
    **dict.fromkeys(
        [
            "QwenImagePipeline",
            "QwenImageImg2ImgPipeline",
            "QwenImageInpaintPipeline",
            "QwenImageEditPipeline",
            "QwenImageEditPlusPipeline",
        ],
        "qwen-image",
    ),
    "Flux2Pipeline": "flux2-dev",  # not Klein: its width is not the dev model's
    "ChromaPipeline": "chroma",
    "LongCatImagePipeline": "longcat-image",
    "OvisImagePipeline": "ovis-image",
    "BriaPipeline": "bria",
    "ZImagePipeline": "z-image",
    "HiDreamImagePipeline": "hidream",
    "Lumina2Pipeline": "lumina2",
    "Krea2Pipeline": "krea2",
    "HunyuanImagePipeline": "hunyuan-image",
    "CogView4Pipeline": "cogview4",
    "AuraFlowPipeline": "auraflow",
}
"""The preset `generate` starts from for a pipeline class from a folder or the hub, when --preset is not given."""

MIN_CELL = 256  # small images (the testbed's) are enlarged with nearest-neighbour sampling so they can be seen
LABEL_WIDTH = 220
GAP = 4  # white pixels between images
TITLE_HEIGHT = 28
TESTBED_PRESETS = {
    "scenes-flux": "scenes",
    "scenes-sd3": "scenes",
    "scenes-chroma": "scenes",
    "testbed-flux": "testbed",
    "testbed-sd3": "testbed",
}
"""The models shipped in the package (fastrepulse.testbed), trained here on rendered colour scenes and on real
handwritten digits, and the preset `generate` starts from for each: known before they load, so it is checked before."""
TESTBED_MODELS = tuple(TESTBED_PRESETS)
DEFAULT_MODEL = "scenes-flux"
DEFAULT_PROMPT = "a red circle"
DIGITS_PROMPT = "a handwritten 7"
"""The default prompt of the digits testbed (embedded as testbed-flux and testbed-sd3, or saved to a folder)."""
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
LIBRARY_NOISE = (
    "requires torchvision (not installed); falling back to",  # transformers 5, on import: processors nothing here uses
    "`torch_dtype` is deprecated",  # transformers 4.57: load_pipeline passes torch_dtype, which every release takes
)
"""Parts of the transformers log messages that `generate` drops while it runs."""


class _Parser(argparse.ArgumentParser):
    """An argparse parser that reports an error in one line: the usage of `generate` runs to several and buries it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fastrepulse` command.

    Options are checked before the model loads, as far as they can be without it (a bad one: exit status 2 and one
    line on stderr), and the grid file is written only once both rows are made.
    """
    parser, generate = _parsers()
    args = parser.parse_args(argv)
    testbed = args.model in TESTBED_MODELS
    if testbed and args.prompt is None:
        args.prompt = _default_prompt(args.model.removeprefix("testbed-"))
    try:
        image_format, call = _check_call(args, testbed)
        repulsion = None
        if testbed or args.preset:  # the preset is known before the model loads
            repulsion = _repulsion(args, TESTBED_PRESETS.get(args.model))
        else:
            _check_options(args)
    except ValueError as error:
        generate.error(str(error))
    with _without_library_noise():
        if testbed:
            _warn_unless_known(args.model, args.prompt)
        try:
            pipe = load_pipeline(args.model, args.device, args.dtype)
            preset, config = repulsion or _repulsion(args, _pipeline_preset(pipe))
            if args.image and "image" not in inspect.signature(pipe.__call__).parameters:
                raise ValueError(
                    f"{type(pipe).__name__} takes no --image; drop it, or pass an image-conditioned --model"
                )
            call.setdefault("prompt", _default_prompt(getattr(pipe, "testbed_name", None)))
            handle = patch(pipe, config)
        except (OSError, ValueError, TypeError) as error:
            print(f"fastrepulse: {error}", file=sys.stderr)
            return 2
        try:
            repelled = _generate(pipe, "repulsion", call, args.seed)
        finally:
            handle.remove()
        label = f"{config.method}\nscale {config.scale:g}" + (f"\n{preset}" if preset else "")
        rows = {"base": _generate(pipe, "base", call, args.seed), label: repelled}
    try:
        _save(grid(rows, title=call["prompt"]), args.out, image_format)
    except OSError as error:
        print(f"fastrepulse: could not write {args.out}: {error}", file=sys.stderr)
        return 2
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
        pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=torch_dtype).to(device)
    from fastrepulse.testbed.models import TESTBED_MARKER, from_saved

    testbed = DiffusionPipeline.load_config(model).get(TESTBED_MARKER)
    return pipe if testbed is None else from_saved(pipe, testbed)


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


def _parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The `fastrepulse` parser and its `generate` subparser."""
    parser = argparse.ArgumentParser(prog="fastrepulse", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    generate = commands.add_parser("generate", help="write a base-vs-repulsion grid for one prompt")
    generate.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"diffusers pipeline folder or hub id, or an embedded testbed model: {', '.join(TESTBED_MODELS)} "
        "(default: %(default)s)",
    )
    generate.add_argument(
        "--prompt", help=f"default: {DEFAULT_PROMPT!r}, or {DIGITS_PROMPT!r} for the digits testbed (testbed-*)"
    )
    generate.add_argument("--images", type=int, default=4, help="images per row, one group (default 4)")
    generate.add_argument("--preset", choices=sorted(PRESETS), help="default: chosen from the pipeline class")
    generate.add_argument("--method", choices=METHODS, default=None, help="default: contextual")
    generate.add_argument("--scale", type=float, help="overrides the preset's scale")
    generate.add_argument("--steps", type=_steps, help='repelled sampler steps, an int or "all"; overrides the preset')
    generate.add_argument("--iterations", type=int, help="ascent steps per block; overrides the preset")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--num-inference-steps", type=_positive, help="sampler steps (default: the pipeline's)")
    generate.add_argument("--guidance-scale", type=float, help="default: the pipeline's")
    generate.add_argument("--height", type=_positive)
    generate.add_argument("--width", type=_positive)
    generate.add_argument("--image", help="input image, for image-conditioned pipelines such as Flux-Kontext")
    generate.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    generate.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on CUDA, fp32 on CPU")
    generate.add_argument("--out", type=Path, default=Path("grid.png"), help="image file (default: %(default)s)")
    return parser, generate


def _positive(text: str) -> int:
    """An argparse type: an int >= 1 (image sizes, sampler steps)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}")
    return value


def _steps(text: str) -> int | str:
    """An argparse type: an int or "all"; RepulsionConfig checks the range."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'must be an int >= 1 or "all", got {text!r}') from None


def _check_call(args: argparse.Namespace, testbed: bool) -> tuple[str, dict[str, Any]]:
    """The PIL format of --out and the pipeline call's arguments; raises ValueError on the first bad option."""
    if args.images < 2:
        raise ValueError("--images must be at least 2: repulsion acts between the images of one prompt")
    _check_device(args.device)
    image_format = _image_format(args.out)
    if args.image and testbed:
        raise ValueError("the testbed models take no --image; drop it, or pass an image-conditioned --model")
    return image_format, _call_arguments(args)


def _check_options(args: argparse.Namespace) -> None:
    """Raise ValueError on a bad --method, --scale, --steps or --iterations, with the preset still unknown (it comes
    from the pipeline's class, known once the model loads): the fields alone, a missing scale standing in as 0."""
    make_config(None, args.method, {**_options(args), "scale": 0.0 if args.scale is None else args.scale})


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The RepulsionConfig fields given on the command line (None: not given)."""
    return {"scale": args.scale, "steps": args.steps, "iterations": args.iterations}


def _repulsion(args: argparse.Namespace, class_preset: str | None) -> tuple[str | None, RepulsionConfig]:
    """The preset and configuration `generate` patches with: each option given overrides one field of --preset, else
    of the pipeline class's preset, which --method drops when it picks a method that preset is not for."""
    preset = args.preset or class_preset
    if args.preset is None and preset is not None and args.method not in (None, PRESETS[preset].method):
        preset = None
    return preset, make_config(preset, args.method, _options(args))


def _pipeline_preset(pipe: Any) -> str | None:
    """The preset `generate` starts from for a loaded pipeline: a testbed's own (a folder that save_pretrained wrote
    loads as the testbed, `fastrepulse.testbed.models.from_saved`), else its class's."""
    name = getattr(pipe, "testbed_name", None)
    if name is None:
        return DEFAULT_PRESETS.get(type(pipe).__name__)
    return TESTBED_PRESETS[name if name.startswith("scenes-") else f"testbed-{name}"]


def _check_device(device: str) -> None:
    """Raise ValueError unless `device` names a device this machine has."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device must be a torch device such as cpu, cuda or cuda:1, got {device!r}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA is not available on this machine; use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        last = torch.cuda.device_count() - 1
        raise ValueError(f"--device {device}: this machine has no such CUDA device; use cuda:0 to cuda:{last}")


def _image_format(out: Path) -> str:
    """The PIL format to write `out` in; raises ValueError unless PIL can write an RGB image of that extension into
    `out`'s directory, so that a bad --out fails before the model loads, not after the images are made."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; name an image file in it, e.g. --out {out / 'grid.png'}")
    if not out.suffix:
        raise ValueError(f"--out {out} has no extension, which names the image format; end it in .png or .jpg")
    image_format = Image.registered_extensions().get(out.suffix.lower())
    try:
        if image_format is None:
            raise KeyError(out.suffix)
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=image_format)
    except (KeyError, OSError, ValueError):
        raise ValueError(f"--out {out}: PIL cannot write {out.suffix} images; end it in .png or .jpg") from None
    try:
        tempfile.TemporaryFile(dir=out.parent).close()
    except FileNotFoundError:
        raise ValueError(f"--out {out}: the folder {out.parent} does not exist; create it first") from None
    except OSError as error:
        raise ValueError(
            f"--out {out}: cannot write in {out.parent} ({error.strerror}); choose another --out"
        ) from None
    return image_format


def _save(image: Image.Image, out: Path, image_format: str) -> None:
    """Write `image` to `out` whole or not at all: into a hidden file beside it, then renamed over `out`."""
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as file:
            image.save(file, format=image_format)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def _without_library_noise() -> Iterator[None]:
    """Drop the LIBRARY_NOISE messages for the length of the block, on transformers' own log handler, so that library
    users keep every message."""
    from transformers.utils import logging as transformers_logging

    def _not_noise(record: logging.LogRecord) -> bool:
        return not any(noise in record.getMessage() for noise in LIBRARY_NOISE)

    handlers = transformers_logging.get_logger().handlers
    for handler in handlers:
        handler.addFilter(_not_noise)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(_not_noise)


def _warn_unless_known(model: str, prompt: str) -> None:
    """One line on stderr when a testbed model gets a prompt it was never trained on; it still runs."""
    if model.startswith("scenes-"):
        from fastrepulse.testbed.scene_models import VOCABULARY

        unknown = [word for word in prompt.split() if word not in VOCABULARY]
        if unknown:
            message = (
                f'the scene models know the words of prompts such as "a small red circle at the top left on a gray '
                f'background" ({", ".join(VOCABULARY)}), not {", ".join(map(repr, unknown))}; generating anyway'
            )
            print(f"fastrepulse: warning: {message}", file=sys.stderr)
        return
    from fastrepulse.testbed import PROMPT

    if prompt not in {PROMPT.format(digit=digit) for digit in range(10)}:
        known = PROMPT.format(digit="<digit>")
        message = f'the testbed models only know the prompts "{known}" (0 to 9); generating {prompt!r} anyway'
        print(f"fastrepulse: warning: {message}", file=sys.stderr)


def _call_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline call's arguments; raises ValueError when --image cannot be read."""
    call: dict[str, Any] = {"num_images_per_prompt": args.images}
    optional = {
        "prompt": args.prompt,  # None: the model's default, known once it loads
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": args.guidance_scale,
        "height": args.height,
        "width": args.width,
    }
    call.update({name: value for name, value in optional.items() if value is not None})
    if args.image:
        try:
            call["image"] = Image.open(args.image).convert("RGB")
        except OSError as error:
            raise ValueError(f"--image {args.image}: {error.strerror or error}; pass an image file") from None
    return call


def _default_prompt(testbed_name: str | None) -> str:
    """The prompt `generate` draws without --prompt: a digit for the digits testbed ("flux", "sd3"), else a red
    circle, which the scenes models know and any text-to-image model can draw."""
    return DIGITS_PROMPT if testbed_name in ("flux", "sd3") else DEFAULT_PROMPT


def _generate(pipe: Any, description: str, call: dict[str, Any], seed: int) -> list[Image.Image]:
    pipe.set_progress_bar_config(desc=description)
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    return pipe(generator=generator, output_type="pil", **call).images


if __name__ == "__main__":
    sys.exit(main())
