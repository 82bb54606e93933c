"""Diversity against fidelity on the testbed: base, contextual repulsion, CADS and Particle Guidance (issue 4).

For each testbed model (Flux and SD3 layouts), group size B and seed, one pipeline call generates all
requested digits at once: the prompts ``PROMPT.format(digit=d)``, B images each. A group is one digit's
B images of one call. Repulsion couples the samples of a group, so a seed names the whole group: image i
of digit d under seed s starts from the noise of its own generator, seeded ``(s * 10 + d) * 1000 + i``,
and every method sees the same starting noise for the same (s, d, B). Comparisons with base are paired
over these groups. CADS gets the seed too, for its conditioning noise.

Per (model, B, method, scale), over all groups of all seeds:

- vendi: mean over groups of the Vendi score (q=1, cosine kernel) of the group's classifier features
  (`fastrepulse.testbed.classify`, 64 wide), in [1, B];
- vendi_gain_pct: mean(vendi) / mean(base vendi on the same groups) - 1, in %, with a 95% paired
  bootstrap interval over groups (2000 resamples, seeded);
- fidelity_pct: % of images classified as the requested digit; fidelity_delta: minus base's, in points;
- kid: KID (cubic kernel, classifier features) of each digit's generated images against the real digits
  of that digit, averaged over digits; fid: FID of all generated images against the real digits of the
  requested digits, pooled, only where both sets have more samples than features (else empty). The real
  digits are the held-out split of `fastrepulse.testbed.digits` (the classifier never trained on them;
  `--reference all` takes all 1,797);
- pairwise_distance: mean over groups of the mean pairwise Euclidean distance of the features;
- seconds_per_group: wall time of the pipeline calls (only the call is timed, after one untimed warm-up
  call per model and B) divided by the groups per call; time_overhead_pct against base;
- meets_target: gain >= 10% with fidelity at most 3 points below base (the issue's target).

A scale that makes the repulsion steps diverge gives a row marked diverged, without metrics. Apart from
the timings, the same arguments give the same numbers.

Outputs in --out-dir: diversity.csv (all rows), diversity.md (the table and the best gain per method
within the fidelity tolerance, for docs/diversity.md), diversity.json (settings, versions, rows with
per-group Vendi scores and labels), pareto-vendi-fidelity.png and pareto-vendi-kid.png (one panel per
model and B; one line per method over its scale sweep, base as a star), grid-{model}-b{B}.png (the first
seed's images, base beside contextual repulsion at the scale of largest gain with fidelity within the
tolerance, which meets the target if any scale does; else the smallest scale; or --grid-scale).

    python bench/diversity.py                                  # the full sweep on both testbed models
    python bench/diversity.py --quick --models flux            # CI-sized: B=4, 2 seeds
    python bench/diversity.py --contextual-scales 1e4 1e5 --steps 2 --iterations 50 --blocks early
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import diffusers
import matplotlib
import torch

import fastrepulse
from fastrepulse import eval as metrics
from fastrepulse import testbed
from fastrepulse.testbed.classifier import FEATURES
from fastrepulse.testbed.digits import digits as real_digits
from fastrepulse.testbed.digits import split

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PROMPT = testbed.PROMPT
METHODS = ("contextual", "cads", "particle")
DEFAULT_SCALES = {  # the sweeps of docs/diversity.md: each method from no visible effect to a fidelity collapse
    "contextual": [3e3, 1e4, 3e4, 1e5],
    "cads": [0.4, 0.8, 1.6, 3.2],
    "particle": [3.0, 10.0, 30.0, 100.0],
}
DEFAULT_SEEDS = {4: 12, 8: 6}
QUICK_SEEDS = 2
TARGET_GAIN_PCT = 10.0
FIDELITY_TOLERANCE = 3.0
BOOTSTRAP_RESAMPLES = 2000
MAX_GROUP_SIZE = 1000  # image i of a group seeds its generator with offset i: keeps groups' seeds apart
COLORS = {"base": "black", "contextual": "#4c72b0", "cads": "#dd8452", "particle": "#55a868"}
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "diversity"

Loader = Callable[[str], Any]


@dataclass
class Samples:
    """What one setting generated over all seeds: labels [S, P, B], features [S, P, B, F], timing, first images."""

    labels: torch.Tensor
    features: torch.Tensor
    seconds_per_group: float
    first_images: torch.Tensor  # [P, B, C, H, W]: the first seed's images, for the grid


@dataclass
class Row:
    """One (model, B, method, scale): the metrics of the module docstring (None where diverged or not defined)."""

    model: str
    group_size: int
    method: str
    scale: float | None
    seeds: int
    groups: int
    diverged: bool = False
    vendi: float | None = None
    vendi_gain_pct: float | None = None
    vendi_gain_low_pct: float | None = None
    vendi_gain_high_pct: float | None = None
    fidelity_pct: float | None = None
    fidelity_delta: float | None = None
    kid: float | None = None
    fid: float | None = None
    pairwise_distance: float | None = None
    seconds_per_group: float | None = None
    time_overhead_pct: float | None = None
    meets_target: bool = False
    group_vendi: list[float] = field(default_factory=list, repr=False)  # JSON only: [S * P], seed-major
    labels: list = field(default_factory=list, repr=False)  # JSON only: [S][P][B]


CSV_FIELDS = [name for name in Row.__dataclass_fields__ if name not in ("group_vendi", "labels")]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["flux", "sd3"], help="testbed models (default: flux sd3)")
    parser.add_argument("--group-sizes", nargs="+", type=int, help="images per prompt, B (default: 4 8)")
    parser.add_argument(
        "--seeds", nargs="+", type=int, help="seeds per group size, one count or one per size (default: 12 6)"
    )
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--digits", nargs="+", type=int, default=list(range(10)), help="default: all ten")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="base always runs")
    for method, scales in DEFAULT_SCALES.items():
        parser.add_argument(f"--{method}-scales", nargs="+", type=float, default=scales, help=f"default: {scales}")
    parser.add_argument("--steps", type=_steps, help='contextual: repelled sampler steps, int or "all"')
    parser.add_argument("--iterations", type=int, help="contextual: ascent steps per block")
    parser.add_argument("--site", choices=["attention", "block"], help="contextual: where the text is repelled")
    parser.add_argument("--blocks", type=_blocks, help="contextual: all, early, middle, late or indices 0,3,5")
    parser.add_argument("--inference-steps", type=int, help="sampler steps (default: the pipeline's own)")
    parser.add_argument("--size", type=int, help="image height and width (default: the pipeline's own)")
    parser.add_argument("--max-sequence-length", type=int, help="T5 text tokens (default: the pipeline's own)")
    parser.add_argument("--reference", choices=["held-out", "all"], default="held-out", help="real digits for KID/FID")
    parser.add_argument("--grid-scale", type=float, help="contextual scale of the image grid (default: see above)")
    parser.add_argument("--quick", action="store_true", help=f"CI-sized: B=4 and {QUICK_SEEDS} seeds unless given")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.group_sizes is None:
        args.group_sizes = [4] if args.quick else list(DEFAULT_SEEDS)
    if args.seeds is None:
        args.seeds = [QUICK_SEEDS if args.quick else DEFAULT_SEEDS.get(size, 8) for size in args.group_sizes]
    elif len(args.seeds) == 1:
        args.seeds = args.seeds * len(args.group_sizes)
    if len(args.seeds) != len(args.group_sizes):
        parser.error("--seeds takes one count or one per group size")
    if any(not 2 <= size < MAX_GROUP_SIZE for size in args.group_sizes):
        parser.error(f"group sizes must lie in [2, {MAX_GROUP_SIZE})")
    if any(count < 1 for count in args.seeds) or any(not 0 <= digit <= 9 for digit in args.digits):
        parser.error("seed counts must be positive and digits in 0..9")
    return args


def _steps(text: str) -> int | str:
    return text if text == "all" else int(text)


def _blocks(text: str) -> str | list[int]:
    return text if text in ("all", "early", "middle", "late") else [int(index) for index in text.split(",")]


def settings_of(args: argparse.Namespace) -> list[tuple[str, float | None]]:
    """(method, scale) of every setting, base first."""
    sweeps = [(method, scale) for method in args.methods for scale in getattr(args, f"{method}_scales")]
    return [("base", None), *sweeps]


def patch_options(args: argparse.Namespace, method: str, scale: float, seed: int) -> dict[str, Any]:
    """The `fastrepulse.patch` options of one setting and seed (CADS draws its own noise from the seed)."""
    if method == "cads":
        return {"method": method, "scale": scale, "seed": seed}
    if method == "particle":
        return {"method": method, "scale": scale}
    given = {"steps": args.steps, "iterations": args.iterations, "site": args.site, "blocks": args.blocks}
    return {"method": method, "scale": scale, **{name: value for name, value in given.items() if value is not None}}


def generators(seed: int, prompts: Sequence[int], group_size: int, prompts_per_seed: int = 10) -> list[torch.Generator]:
    """One generator per image, seeded ``(seed * prompts_per_seed + prompt) * MAX_GROUP_SIZE + image``, so that a
    group's starting noise depends only on (seed, prompt, B); `prompts` are the prompts' indices (the digits)."""
    return [
        torch.Generator().manual_seed((seed * prompts_per_seed + prompt) * MAX_GROUP_SIZE + image)
        for prompt in prompts
        for image in range(group_size)
    ]


def call(pipe: Any, args: argparse.Namespace, group_size: int, seed: int) -> tuple[torch.Tensor, float]:
    """Images [P * B, C, H, W] in [0, 1] of all digits under one seed, and the seconds of the call alone."""
    options: dict[str, Any] = {
        "num_inference_steps": args.inference_steps,
        "height": args.size,
        "width": args.size,
        "max_sequence_length": args.max_sequence_length,
    }
    options = {name: value for name, value in options.items() if value is not None}
    prompts = [PROMPT.format(digit=digit) for digit in args.digits]
    noise = generators(seed, args.digits, group_size)
    start = time.perf_counter()
    images = pipe(prompt=prompts, num_images_per_prompt=group_size, generator=noise, output_type="pt", **options)
    return images.images, time.perf_counter() - start


def generate(
    pipe: Any, args: argparse.Namespace, group_size: int, seeds: range, method: str, scale: float | None
) -> Samples | None:
    """Every seed's call under one setting, classified; None if the repulsion steps diverge."""
    labels, features, seconds, first_images = [], [], 0.0, None
    for seed in seeds:
        try:
            if method == "base":
                images, elapsed = call(pipe, args, group_size, seed)
            else:
                with fastrepulse.patched(pipe, **patch_options(args, method, scale, seed)):
                    images, elapsed = call(pipe, args, group_size, seed)
        except ValueError as error:
            if "diverged" not in str(error):
                raise
            print(f"    {method} scale {scale:g} diverged: {error}", flush=True)
            return None
        predicted, seen = testbed.classify(images)
        labels.append(predicted.view(len(args.digits), group_size))
        features.append(seen.view(len(args.digits), group_size, -1))
        seconds += elapsed
        if first_images is None:
            first_images = images.reshape(len(args.digits), group_size, *images.shape[1:]).float().cpu()
    return Samples(torch.stack(labels), torch.stack(features), seconds / (len(seeds) * len(args.digits)), first_images)


def references(which: str) -> dict[int, torch.Tensor]:
    """Classifier features [n, F] of the real digits of each class: the held-out split, or all."""
    images, labels = real_digits()
    if which == "held-out":
        held_out = split(labels)[1]
        images, labels = images[held_out], labels[held_out]
    features = testbed.classify(images)[1]
    return {digit: features[labels == digit] for digit in range(10)}


def paired_gain(vendi: torch.Tensor, base: torch.Tensor) -> tuple[float, float, float]:
    """Relative gain in % of the mean Vendi over base's on the same groups [G], and its 95% bootstrap interval."""
    resamples = torch.randint(len(vendi), (BOOTSTRAP_RESAMPLES, len(vendi)), generator=torch.Generator().manual_seed(0))
    gains = 100.0 * (vendi[resamples].mean(1) / base[resamples].mean(1) - 1.0)
    low, high = torch.quantile(gains, torch.tensor([0.025, 0.975], dtype=gains.dtype)).tolist()
    return 100.0 * (vendi.mean() / base.mean() - 1.0).item(), low, high


def score(
    row: Row, samples: Samples, base: Row | None, digits: Sequence[int], reference: dict[int, torch.Tensor]
) -> Row:
    """Fill the metrics of `row` from its samples; base is the row of the same model and B (None: row is base)."""
    seeds, prompts, group_size, width = samples.features.shape
    groups = samples.features.reshape(seeds * prompts, group_size, width)
    group_vendi = metrics.vendi(groups)
    requested = torch.tensor(list(digits)).view(1, prompts, 1).expand_as(samples.labels)
    row.group_vendi = group_vendi.tolist()
    row.labels = samples.labels.tolist()
    row.vendi = group_vendi.mean().item()
    row.fidelity_pct = 100.0 * metrics.fidelity(samples.labels.flatten(), requested.flatten())
    row.kid = sum(
        metrics.kid(samples.features[:, p].reshape(-1, width), reference[digit])[0] for p, digit in enumerate(digits)
    ) / len(digits)
    generated = samples.features.reshape(-1, width)
    real = torch.cat([reference[digit] for digit in digits])
    row.fid = metrics.fid(generated, real) if min(len(generated), len(real)) > FEATURES else None
    row.pairwise_distance = metrics.mean_pairwise_distance(groups).mean().item()
    row.seconds_per_group = samples.seconds_per_group
    base = base or row
    row.vendi_gain_pct, row.vendi_gain_low_pct, row.vendi_gain_high_pct = paired_gain(
        group_vendi, torch.tensor(base.group_vendi, dtype=torch.float64)
    )
    row.fidelity_delta = row.fidelity_pct - base.fidelity_pct
    row.time_overhead_pct = 100.0 * (row.seconds_per_group / base.seconds_per_group - 1.0)
    row.meets_target = (
        row.method != "base" and row.vendi_gain_pct >= TARGET_GAIN_PCT and row.fidelity_delta >= -FIDELITY_TOLERANCE
    )
    return row


def run_model(
    name: str, loader: Loader, args: argparse.Namespace, reference: dict[int, torch.Tensor]
) -> tuple[list[Row], dict[tuple[int, str, float | None], torch.Tensor]]:
    """All rows of one model, and the first seed's images of base and contextual settings, by (B, method, scale)."""
    pipe = loader(name)
    pipe.set_progress_bar_config(disable=True)
    rows, first_images = [], {}
    for group_size, seed_count in zip(args.group_sizes, args.seeds, strict=True):
        seeds = range(args.first_seed, args.first_seed + seed_count)
        call(pipe, args, group_size, seeds[0])  # warm-up, untimed
        base = None
        for method, scale in settings_of(args):
            samples = generate(pipe, args, group_size, seeds, method, scale)
            row = Row(name, group_size, method, scale, seed_count, seed_count * len(args.digits))
            if samples is None:
                row.diverged = True
            else:
                row = score(row, samples, base, args.digits, reference)
                if method in ("base", "contextual"):
                    first_images[group_size, method, scale] = samples.first_images
            base = base or row
            rows.append(row)
            print("  " + summary_line(row), flush=True)
    return rows, first_images


def summary_line(row: Row) -> str:
    setting = f"{row.model} B={row.group_size} {row.method}" + (f" {row.scale:g}" if row.scale is not None else "")
    if row.diverged:
        return f"{setting}: diverged"
    return (
        f"{setting}: vendi {row.vendi:.3f} ({row.vendi_gain_pct:+.1f}%), fidelity {row.fidelity_pct:.1f}%, "
        f"kid {row.kid:.4g}, {row.seconds_per_group:.3f} s/group"
    )


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {name: "" if value is None else value for name, value in asdict(row).items() if name in CSV_FIELDS}
            )


def best_gains(rows: list[Row]) -> dict[str, Row | None]:
    """Per method, the row of the largest Vendi gain with fidelity within the tolerance of base (None: no scale is)."""
    best: dict[str, Row | None] = {}
    for method in dict.fromkeys(row.method for row in rows if row.method != "base"):
        within = [
            row
            for row in rows
            if row.method == method and not row.diverged and row.fidelity_delta >= -FIDELITY_TOLERANCE
        ]
        best[method] = max(within, key=lambda row: row.vendi_gain_pct, default=None)
    return best


def markdown(rows: list[Row], args: argparse.Namespace) -> str:
    """The results table, and per model and B the best gain of each method within the fidelity tolerance."""
    lines = [
        f"Digits {' '.join(map(str, args.digits))}; seeds from {args.first_seed}; KID/FID against the "
        f"{args.reference} real digits. Gain: paired over the same groups, 95% bootstrap interval. "
        f"**bold**: gain >= {TARGET_GAIN_PCT:g}% with fidelity at most {FIDELITY_TOLERANCE:g} points below base.",
        "",
        "| model | B | seeds | method | scale | Vendi | gain % [95% CI] | fidelity % | vs base | KID | FID "
        "| pairwise dist | s / group | time vs base |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        scale = "-" if row.scale is None else f"{row.scale:g}"
        head = f"| {row.model} | {row.group_size} | {row.seeds} | {row.method} | {scale} |"
        if row.diverged:
            lines.append(head + " diverged |" + " |" * 8)
            continue
        gain = f"{row.vendi_gain_pct:+.1f} [{row.vendi_gain_low_pct:+.1f}, {row.vendi_gain_high_pct:+.1f}]"
        gain = f"**{gain}**" if row.meets_target else gain
        fid = "-" if row.fid is None else f"{row.fid:.2f}"
        lines.append(
            f"{head} {row.vendi:.3f} | {gain} | {row.fidelity_pct:.1f} | {row.fidelity_delta:+.1f} | {row.kid:.4g} "
            f"| {fid} | {row.pairwise_distance:.3f} | {row.seconds_per_group:.3f} | {row.time_overhead_pct:+.1f}% |"
        )
    lines += ["", f"Best Vendi gain with fidelity within {FIDELITY_TOLERANCE:g} points of base:", ""]
    for (model, group_size), panel in panels(rows).items():
        best = [
            f"{method} {row.vendi_gain_pct:+.1f}% at {row.scale:g}" if row else f"{method} none"
            for method, row in best_gains(panel).items()
        ]
        lines.append(f"- {model}, B={group_size}: " + "; ".join(best))
    return "\n".join(lines) + "\n"


def panels(rows: list[Row]) -> dict[tuple[str, int], list[Row]]:
    grouped: dict[tuple[str, int], list[Row]] = {}
    for row in rows:
        grouped.setdefault((row.model, row.group_size), []).append(row)
    return grouped


def plot_pareto(rows: list[Row], x_field: str, x_label: str, path: Path) -> None:
    """Vendi against `x_field`, one panel per (model, B), one line per method over its sweep, base as a star."""
    grouped = panels(rows)
    models = list(dict.fromkeys(model for model, _ in grouped))
    sizes = list(dict.fromkeys(size for _, size in grouped))
    fig, axes = plt.subplots(len(models), len(sizes), figsize=(5.5 * len(sizes), 4.2 * len(models)), squeeze=False)
    for (model, group_size), panel in grouped.items():
        ax = axes[models.index(model)][sizes.index(group_size)]
        base = panel[0]
        for method in dict.fromkeys(row.method for row in panel[1:]):
            sweep = [row for row in panel if row.method == method and not row.diverged]
            xs = [getattr(row, x_field) for row in sweep]
            ax.plot(xs, [row.vendi for row in sweep], "o-", color=COLORS[method], label=method, markersize=4)
            for x, row in zip(xs, sweep, strict=True):
                ax.annotate(f"{row.scale:g}", (x, row.vendi), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.plot(getattr(base, x_field), base.vendi, "*", color=COLORS["base"], markersize=14, label="base")
        ax.axhline(base.vendi * (1 + TARGET_GAIN_PCT / 100), color="grey", linestyle=":", linewidth=1)
        if x_field == "fidelity_pct":
            ax.axvline(base.fidelity_pct - FIDELITY_TOLERANCE, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{model}, B={group_size}, {base.seeds} seeds")
        ax.set_xlabel(x_label)
        ax.set_ylabel("feature Vendi (mean over groups)")
        ax.legend(fontsize=7)
    fig.suptitle(
        f"dotted: base Vendi +{TARGET_GAIN_PCT:g}%" + (", base fidelity -3" if x_field == "fidelity_pct" else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def grid_scale(panel: list[Row], forced: float | None) -> float | None:
    """The contextual scale of the grid: forced, else the best gain within the fidelity tolerance, else the smallest."""
    if forced is not None:
        return forced
    best = best_gains(panel).get("contextual")
    sweep = [row.scale for row in panel if row.method == "contextual" and not row.diverged]
    return best.scale if best else min(sweep, default=None)


def plot_grid(
    base: torch.Tensor,
    repelled: torch.Tensor,
    row_labels: Sequence[str],
    title: str,
    path: Path,
    repelled_label: str = "contextual",
) -> None:
    """Base images [P, B, C, H, W] left of repelled ones, one labelled row per prompt, a blank column between."""
    prompts, group_size, _, height, width = base.shape

    def cell(tensor: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(tensor.clamp(0, 1), (2, 2, 2, 2), value=1.0)

    gap = torch.ones(prompts, 1, *cell(base[0, 0]).shape)
    tiles = torch.cat([cell(base), gap, cell(repelled)], dim=1)  # [P, 2B + 1, C, h, w]
    mosaic = tiles.permute(0, 3, 1, 4, 2).reshape(prompts * tiles.shape[3], tiles.shape[1] * tiles.shape[4], -1)
    inches = max(0.55, tiles.shape[-1] / 60)  # a tile: 0.55 inch for digits, larger for larger images
    fig, ax = plt.subplots(figsize=(0.5 + inches * tiles.shape[1], 0.6 + inches * prompts))
    image = mosaic.squeeze(-1).numpy() if mosaic.shape[-1] == 1 else mosaic.numpy()
    ax.imshow(image, cmap="gray", interpolation="nearest")
    row_height, column_width = tiles.shape[3], tiles.shape[4]
    ax.set_yticks([(p + 0.5) * row_height for p in range(prompts)], list(row_labels), fontsize=7)
    ax.set_xticks(
        [group_size * column_width / 2, (group_size + 1 + group_size / 2) * column_width], ["base", repelled_label]
    )
    ax.tick_params(length=0)
    ax.set_title(textwrap.fill(title, 80), fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv: Sequence[str] | None = None, loader: Loader | None = None) -> int:
    """Run the sweep and write every output; `loader(name)` gives the pipeline of a model (default: the testbed's)."""
    args = parse_args(argv)
    loader = loader or testbed.pipeline
    args.out_dir.mkdir(parents=True, exist_ok=True)
    reference = references(args.reference)
    rows: list[Row] = []
    images: dict[tuple[str, int, str, float | None], torch.Tensor] = {}
    for name in args.models:
        print(f"{name}: B={args.group_sizes}, seeds={args.seeds}, digits={args.digits}", flush=True)
        model_rows, model_images = run_model(name, loader, args, reference)
        rows += model_rows
        images.update({(name, *key): value for key, value in model_images.items()})

    write_csv(rows, args.out_dir / "diversity.csv")
    table = markdown(rows, args)
    (args.out_dir / "diversity.md").write_text(table)
    plot_pareto(
        rows,
        "fidelity_pct",
        "fidelity (% classified as the requested digit)",
        args.out_dir / "pareto-vendi-fidelity.png",
    )
    plot_pareto(rows, "kid", "KID against real digits (lower is better)", args.out_dir / "pareto-vendi-kid.png")
    for (model, group_size), panel in panels(rows).items():
        scale = grid_scale(panel, args.grid_scale)
        if (model, group_size, "contextual", scale) in images:
            title = f"{model}, B={group_size}, seed {args.first_seed}: base | contextual repulsion, scale {scale:g}"
            plot_grid(
                images[model, group_size, "base", None],
                images[model, group_size, "contextual", scale],
                [str(digit) for digit in args.digits],
                title,
                args.out_dir / f"grid-{model}-b{group_size}.png",
            )
    settings = {
        **{name: str(value) if isinstance(value, Path) else value for name, value in vars(args).items()},
        "prompt": PROMPT,
        "noise_seed": f"(seed * 10 + digit) * {MAX_GROUP_SIZE} + image",
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "fastrepulse": version("fastrepulse"),
    }
    result = {"settings": settings, "rows": [asdict(row) for row in rows]}
    (args.out_dir / "diversity.json").write_text(json.dumps(result, indent=1))
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
