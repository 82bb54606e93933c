"""Diversity against fidelity on the scenes testbed: base, contextual repulsion, CADS and Particle Guidance (issue 13).

For each scenes model, group size B and seed, one pipeline call generates a group of B images for every benchmark
prompt (`fastrepulse.testbed.scene_prompts`). Image i of prompt p under seed s starts from the noise of its own
generator, seeded ``(s * 100 + p) * 1000 + i``, so every setting sees the same starting noise for the same
(s, p, B) and comparisons with base are paired over groups. CADS gets the seed too, for its conditioning noise.

Per (model, B, setting), over all groups of all seeds, from the shipped judge's readings and features:

- fidelity_pct: % of images whose named attributes the judge reads right (`scenes.satisfies`); fidelity_delta:
  minus base's, in points;
- entropy: bits per free attribute among a group's fitting images; entropy_ratio: total entropy over the data's at
  as many images (`fastrepulse.testbed.scene_diversity`: 1 follows the data, 0 is a collapse); coverage;
  entropy_gain_pct: mean per-group free-attribute entropy (its fitting images' entropies summed over the free
  attributes; 0 where fewer than two images fit) over base's on the same groups, - 1, with a 95% paired bootstrap
  interval over groups (undefined, NaN, where base has no entropy at all);
- vendi: mean over groups of the Vendi score (q=1, cosine kernel) of the judge's features; vendi_gain_pct likewise;
- pixel_spread: mean over groups of the mean pairwise distance of the images' pixels (RGB in [0, 1], per pixel
  RMS); pixel_gain_pct against base;
- seconds_per_group: wall time of the calls (after one untimed warm-up call per model and B) per group, and
  time_overhead_pct against base;
- meets_target: entropy gain >= 25% and Vendi gain >= 10% with fidelity at most 2 points below base.

A setting whose repulsion steps diverge gives a row marked diverged. Apart from the timings, the same arguments give
the same numbers. Outputs in --out-dir: scenes-diversity.csv, .md (the table and each method's best entropy gain
within the fidelity tolerance), .json (settings, versions, rows with per-group values), scenes-pareto.png (entropy
gain and Vendi gain against fidelity, one line per method and contextual configuration) and scenes-grid-{model}-b{B}
.png (the first seed's images: base beside the setting of the largest entropy gain within the tolerance).

    python bench/scenes_diversity.py                          # the sweep of docs/diversity.md
    python bench/scenes_diversity.py --first-seed 1000        # the confirmation seeds, written down beforehand
    python bench/scenes_diversity.py --quick                  # CI-sized
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import diffusers
import matplotlib
import torch
from diversity import MAX_GROUP_SIZE, generators, paired_gain, plot_grid

import fastrepulse
from fastrepulse import eval as metrics
from fastrepulse import testbed
from fastrepulse.testbed.judge import judge
from fastrepulse.testbed.scene_diversity import group_diversity, summary
from fastrepulse.testbed.scenes import satisfies, scene_prompts

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TARGET_ENTROPY_GAIN_PCT = 25.0
TARGET_VENDI_GAIN_PCT = 10.0
FIDELITY_TOLERANCE = 2.0
PROMPTS_PER_SEED = 100
"""Image i of prompt p under seed s starts from the noise of seed ``(s * PROMPTS_PER_SEED + p) * 1000 + i``."""
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "diversity" / "scenes"
LINE_STYLES = ("o-", "s--", "^:", "v-.", "D-", "x--")
"""Marker and line of each contextual configuration in the Pareto plot, in turn."""
COLORS = {"base": "black", "contextual": "#4c72b0", "cads": "#dd8452", "particle": "#55a868"}

Loader = Callable[[str], Any]


@dataclass(frozen=True)
class Setting:
    """One method configuration; contextual ones also name their steps, blocks and site."""

    method: str
    scale: float | None = None
    steps: int | str | None = None
    blocks: str | None = None
    site: str | None = None

    def options(self, seed: int) -> dict[str, Any]:
        """The `fastrepulse.patch` options (CADS draws its own noise from the seed)."""
        given = {"steps": self.steps, "blocks": self.blocks, "site": self.site}
        options = {"method": self.method, "scale": self.scale, **{k: v for k, v in given.items() if v is not None}}
        return {**options, "seed": seed} if self.method == "cads" else options


@dataclass
class Row:
    """One (model, B, setting): the metrics of the module docstring (None where diverged)."""

    model: str
    group_size: int
    method: str
    scale: float | None
    steps: int | str | None
    blocks: str | None
    site: str | None
    seeds: int
    groups: int
    diverged: bool = False
    fidelity_pct: float | None = None
    fidelity_delta: float | None = None
    entropy: float | None = None
    entropy_ratio: float | None = None
    coverage: float | None = None
    entropy_gain_pct: float | None = None
    entropy_gain_low_pct: float | None = None
    entropy_gain_high_pct: float | None = None
    vendi: float | None = None
    vendi_gain_pct: float | None = None
    vendi_gain_low_pct: float | None = None
    vendi_gain_high_pct: float | None = None
    pixel_spread: float | None = None
    pixel_gain_pct: float | None = None
    seconds_per_group: float | None = None
    time_overhead_pct: float | None = None
    meets_target: bool = False
    group_entropy: list[float] = field(default_factory=list, repr=False)  # JSON only: [S * P], seed-major
    group_vendi: list[float] = field(default_factory=list, repr=False)
    group_pixels: list[float] = field(default_factory=list, repr=False)


CSV_FIELDS = [name for name in Row.__dataclass_fields__ if not name.startswith("group_")]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["scenes-flux"])
    parser.add_argument("--group-sizes", nargs="+", type=int, default=[4, 8])
    parser.add_argument("--seeds", type=int, default=8, help="seeds per group size")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--contextual-scales", nargs="+", type=float, default=[1e3, 3e3, 1e4, 3e4])
    parser.add_argument("--contextual-steps", nargs="+", default=["1", "2", "5", "all"], help='ints or "all"')
    parser.add_argument("--contextual-blocks", nargs="+", default=["early", "middle", "late"])
    parser.add_argument("--contextual-sites", nargs="+", default=["attention", "block"])
    parser.add_argument(
        "--contextual-configs",
        nargs="+",
        help='explicit steps/blocks/site triples, e.g. "all/early/attention 5/late/block", instead of the product '
        "of the three lists above",
    )
    parser.add_argument("--cads-scales", nargs="+", type=float, default=[0.2, 0.4, 0.8, 1.6])
    parser.add_argument("--particle-scales", nargs="+", type=float, default=[3.0, 10.0, 30.0, 100.0])
    parser.add_argument("--quick", action="store_true", help="CI-sized: B=4, one seed, two prompts, 4 sampler steps")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.contextual_configs:
        triples = [config.split("/") for config in args.contextual_configs]
        if any(len(triple) != 3 for triple in triples):
            parser.error("--contextual-configs takes steps/blocks/site triples such as all/early/attention")
        args.contextual_configs = [(_steps(steps), blocks, site) for steps, blocks, site in triples]
    else:
        args.contextual_configs = list(
            itertools.product(map(_steps, args.contextual_steps), args.contextual_blocks, args.contextual_sites)
        )
    if args.quick:
        args.group_sizes, args.seeds = [4], 1
    if any(not 2 <= size < MAX_GROUP_SIZE for size in args.group_sizes) or args.seeds < 1:
        parser.error(f"group sizes must lie in [2, {MAX_GROUP_SIZE}) and seeds be positive")
    return args


def _steps(text: str) -> int | str:
    return text if text == "all" else int(text)


def settings_of(args: argparse.Namespace) -> list[Setting]:
    """Every setting, base first."""
    contextual = [
        Setting("contextual", scale, steps, blocks, site)
        for steps, blocks, site in args.contextual_configs
        for scale in args.contextual_scales
    ]
    baselines = [
        Setting(method, scale) for method in ("cads", "particle") for scale in getattr(args, f"{method}_scales")
    ]
    return [Setting("base"), *contextual, *baselines]


def call(pipe: Any, prompts: list, group_size: int, seed: int, quick: bool) -> tuple[torch.Tensor, float]:
    """Images [P * B, 3, H, W] in [0, 1] of every prompt under one seed, and the seconds of the call alone."""
    noise = generators(seed, range(len(prompts)), group_size, PROMPTS_PER_SEED)
    options = {"num_inference_steps": 4} if quick else {}
    start = time.perf_counter()
    out = pipe(
        prompt=[p.text for p in prompts], num_images_per_prompt=group_size, generator=noise, output_type="pt", **options
    )
    return out.images, time.perf_counter() - start


def run_setting(pipe: Any, args: argparse.Namespace, prompts: list, group_size: int, setting: Setting) -> Row:
    """Every seed's call under one setting, judged and scored (not yet against base)."""
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    row = Row(
        model=testbed_name(pipe),
        group_size=group_size,
        method=setting.method,
        scale=setting.scale,
        steps=setting.steps,
        blocks=setting.blocks,
        site=setting.site,
        seeds=args.seeds,
        groups=args.seeds * len(prompts),
    )
    fitting = total = 0
    diversities, seconds = [], 0.0
    for seed in seeds:
        try:
            if setting.method == "base":
                images, elapsed = call(pipe, prompts, group_size, seed, args.quick)
            else:
                with fastrepulse.patched(pipe, **setting.options(seed)):
                    images, elapsed = call(pipe, prompts, group_size, seed, args.quick)
        except ValueError as error:
            if "diverged" not in str(error):
                raise
            row.diverged = True
            return row
        seconds += elapsed
        readings, features = judge(images)
        groups = features.view(len(prompts), group_size, -1)
        row.group_vendi += metrics.vendi(groups).tolist()
        pixels = images.float().reshape(len(prompts), group_size, -1) / images[0].numel() ** 0.5
        row.group_pixels += metrics.mean_pairwise_distance(pixels).tolist()
        for index, prompt in enumerate(prompts):
            group = readings[index * group_size : (index + 1) * group_size]
            fitting += sum(satisfies(reading, prompt) for reading in group)
            total += group_size
            diversity = group_diversity(group, prompt)
            diversities.append(diversity)
            row.group_entropy.append(sum(diversity.entropy.values()) if diversity.fitting >= 2 else 0.0)
        first = images.reshape(len(prompts), group_size, *images.shape[1:])
        args.first_images.setdefault((row.model, group_size, setting), first)
    pooled = summary(diversities)
    row.fidelity_pct = 100 * fitting / total
    row.entropy, row.entropy_ratio, row.coverage = pooled["entropy"], pooled["entropy_ratio"], pooled["coverage"]
    row.vendi = sum(row.group_vendi) / len(row.group_vendi)
    row.pixel_spread = sum(row.group_pixels) / len(row.group_pixels)
    row.seconds_per_group = seconds / row.groups
    return row


def testbed_name(pipe: Any) -> str:
    return getattr(pipe, "testbed_name", type(pipe).__name__)


def against_base(row: Row, base: Row) -> Row:
    """Fill the paired gains and deltas of `row` against base's row of the same model and B."""

    def gain(values: list[float], reference: list[float]) -> tuple[float, float, float]:
        return paired_gain(torch.tensor(values, dtype=torch.float64), torch.tensor(reference, dtype=torch.float64))

    row.entropy_gain_pct, row.entropy_gain_low_pct, row.entropy_gain_high_pct = gain(
        row.group_entropy, base.group_entropy
    )
    row.vendi_gain_pct, row.vendi_gain_low_pct, row.vendi_gain_high_pct = gain(row.group_vendi, base.group_vendi)
    row.pixel_gain_pct = 100 * (row.pixel_spread / base.pixel_spread - 1)
    row.fidelity_delta = row.fidelity_pct - base.fidelity_pct
    row.time_overhead_pct = 100 * (row.seconds_per_group / base.seconds_per_group - 1)
    row.meets_target = (
        row.method != "base"
        and row.entropy_gain_pct >= TARGET_ENTROPY_GAIN_PCT
        and row.vendi_gain_pct >= TARGET_VENDI_GAIN_PCT
        and row.fidelity_delta >= -FIDELITY_TOLERANCE
    )
    return row


def summary_line(row: Row) -> str:
    setting = f"{row.model} B={row.group_size} {row.method}"
    if row.method == "contextual":
        setting += f" steps={row.steps} {row.blocks} {row.site}"
    setting += f" {row.scale:g}" if row.scale is not None else ""
    if row.diverged:
        return f"{setting}: diverged"
    return (
        f"{setting}: fidelity {row.fidelity_pct:.1f}% ({row.fidelity_delta:+.1f}), entropy {row.entropy:.3f} "
        f"(ratio {row.entropy_ratio:.2f}, {row.entropy_gain_pct:+.1f}%), vendi {row.vendi:.3f} "
        f"({row.vendi_gain_pct:+.1f}%), pixels {row.pixel_gain_pct:+.1f}%, {row.seconds_per_group:.3f} s/group"
    )


def best_gains(rows: list[Row]) -> dict[str, Row | None]:
    """Per method, the row of the largest entropy gain with fidelity within the tolerance (None: no row is)."""
    best: dict[str, Row | None] = {}
    for method in dict.fromkeys(row.method for row in rows if row.method != "base"):
        within = [r for r in rows if r.method == method and not r.diverged and r.fidelity_delta >= -FIDELITY_TOLERANCE]
        best[method] = max(within, key=lambda r: r.entropy_gain_pct, default=None)
    return best


def markdown(rows: list[Row], args: argparse.Namespace) -> str:
    lines = [
        f"Seeds {args.first_seed}..{args.first_seed + args.seeds - 1}, {len(scene_prompts())} benchmark prompts. "
        "Gains paired over the same groups, 95% bootstrap interval. **bold**: entropy gain >= "
        f"{TARGET_ENTROPY_GAIN_PCT:g}% and Vendi gain >= {TARGET_VENDI_GAIN_PCT:g}% with fidelity at most "
        f"{FIDELITY_TOLERANCE:g} points below base.",
        "",
        "| model | B | method | steps | blocks | site | scale | fidelity % | vs base | entropy (ratio) "
        "| entropy gain % | coverage | Vendi | Vendi gain % | pixel spread gain % | s / group | time vs base |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        head = (
            f"| {row.model} | {row.group_size} | {row.method} | {row.steps or '-'} | {row.blocks or '-'} "
            f"| {row.site or '-'} | {'-' if row.scale is None else f'{row.scale:g}'} |"
        )
        if row.diverged:
            lines.append(head + " diverged |" + " |" * 9)
            continue
        entropy_gain = (
            f"{row.entropy_gain_pct:+.1f} [{row.entropy_gain_low_pct:+.1f}, {row.entropy_gain_high_pct:+.1f}]"
        )
        vendi_gain = f"{row.vendi_gain_pct:+.1f} [{row.vendi_gain_low_pct:+.1f}, {row.vendi_gain_high_pct:+.1f}]"
        if row.meets_target:
            entropy_gain, vendi_gain = f"**{entropy_gain}**", f"**{vendi_gain}**"
        lines.append(
            f"{head} {row.fidelity_pct:.1f} | {row.fidelity_delta:+.1f} | {row.entropy:.3f} ({row.entropy_ratio:.2f}) "
            f"| {entropy_gain} | {row.coverage:.3f} | {row.vendi:.3f} | {vendi_gain} | {row.pixel_gain_pct:+.1f} "
            f"| {row.seconds_per_group:.3f} | {row.time_overhead_pct:+.1f}% |"
        )
    lines += ["", f"Largest entropy gain with fidelity within {FIDELITY_TOLERANCE:g} points of base:", ""]
    for (model, group_size), panel in panels(rows).items():
        best = [
            f"{method} {row.entropy_gain_pct:+.1f}% (Vendi {row.vendi_gain_pct:+.1f}%) at {describe(row)}"
            if row
            else f"{method} none"
            for method, row in best_gains(panel).items()
        ]
        lines.append(f"- {model}, B={group_size}: " + "; ".join(best))
    return "\n".join(lines) + "\n"


def describe(row: Row) -> str:
    text = f"scale {row.scale:g}"
    return text + (f", steps={row.steps}, {row.blocks} blocks, {row.site}" if row.method == "contextual" else "")


def panels(rows: list[Row]) -> dict[tuple[str, int], list[Row]]:
    grouped: dict[tuple[str, int], list[Row]] = {}
    for row in rows:
        grouped.setdefault((row.model, row.group_size), []).append(row)
    return grouped


def family(row: Row) -> str:
    """The line of the Pareto plot a row belongs to: its method, and for contextual its steps, blocks and site."""
    return f"contextual steps={row.steps} {row.blocks} {row.site}" if row.method == "contextual" else row.method


def plot_pareto(rows: list[Row], path: Path) -> None:
    """Entropy gain (top) and Vendi gain (bottom) against fidelity, one column per (model, B), one line per method
    or contextual configuration over its scales, base at the origin of the gains."""
    grouped = panels(rows)
    fig, axes = plt.subplots(2, len(grouped), figsize=(6 * len(grouped), 9), squeeze=False)
    for column, ((model, group_size), panel) in enumerate(grouped.items()):
        base = panel[0]
        for axis, (field_name, target) in zip(
            axes[:, column],
            (("entropy_gain_pct", TARGET_ENTROPY_GAIN_PCT), ("vendi_gain_pct", TARGET_VENDI_GAIN_PCT)),
            strict=True,
        ):
            sweeps: dict[str, list[Row]] = {}
            for row in panel[1:]:
                if not row.diverged:
                    sweeps.setdefault(family(row), []).append(row)
            for index, (name, sweep) in enumerate(sweeps.items()):
                contextual = sweep[0].method == "contextual"
                axis.plot(
                    [row.fidelity_pct for row in sweep],
                    [getattr(row, field_name) for row in sweep],
                    LINE_STYLES[index % len(LINE_STYLES)] if contextual else "o-",
                    color=COLORS[sweep[0].method],
                    alpha=0.6 if contextual else 1.0,
                    markersize=3,
                    label=name,
                )
            axis.plot(base.fidelity_pct, 0.0, "*", color=COLORS["base"], markersize=14, label="base")
            axis.axhline(target, color="grey", linestyle=":", linewidth=1)
            axis.axvline(base.fidelity_pct - FIDELITY_TOLERANCE, color="grey", linestyle=":", linewidth=1)
            axis.set_xlabel("fidelity (% of images with every named attribute right)")
            axis.set_ylabel(f"{field_name.removesuffix('_pct').replace('_', ' ')} (%) against base")
            axis.set_title(f"{model}, B={group_size}, {base.seeds} seeds")
        axes[0, column].legend(fontsize=5, ncol=2)
    fig.suptitle("dotted: the targets (gain) and base fidelity - 2 points")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None, loader: Loader | None = None) -> int:
    """Run the sweep and write every output; `loader(name)` gives a model's pipeline (default: the testbed's)."""
    args = parse_args(argv)
    loader = loader or testbed.pipeline
    args.out_dir.mkdir(parents=True, exist_ok=True)
    args.first_images = {}  # the first seed's images [P, B, 3, H, W] by (model, B, setting), for the grids
    prompts = scene_prompts()[:2] if args.quick else scene_prompts()
    rows: list[Row] = []
    for name in args.models:
        pipe = loader(name)
        pipe.set_progress_bar_config(disable=True)
        for group_size in args.group_sizes:
            call(pipe, prompts, group_size, args.first_seed, args.quick)  # warm-up, untimed
            base = None
            for setting in settings_of(args):
                row = run_setting(pipe, args, prompts, group_size, setting)
                base = base or row
                rows.append(row if row.diverged else against_base(row, base))
                print("  " + summary_line(rows[-1]), flush=True)

    stem = args.out_dir / "scenes-diversity"
    with stem.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in asdict(row).items() if k in CSV_FIELDS})
    table = markdown(rows, args)
    stem.with_suffix(".md").write_text(table)
    plot_pareto(rows, args.out_dir / "scenes-pareto.png")
    for (model, group_size), panel in panels(rows).items():
        best = best_gains(panel).get("contextual")
        if best is None:
            continue
        chosen = Setting(best.method, best.scale, best.steps, best.blocks, best.site)
        plot_grid(
            args.first_images[model, group_size, Setting("base")],
            args.first_images[model, group_size, chosen],
            [prompt.text for prompt in prompts],
            f"{model}, B={group_size}, seed {args.first_seed}: base | contextual, {describe(best)}",
            args.out_dir / f"scenes-grid-{model}-b{group_size}.png",
        )
    settings = {
        **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("first_images",)},
        "noise_seed": f"(seed * {PROMPTS_PER_SEED} + prompt) * {MAX_GROUP_SIZE} + image",
        "prompts": [p.text for p in prompts],
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "fastrepulse": version("fastrepulse"),
    }
    stem.with_suffix(".json").write_text(
        json.dumps({"settings": settings, "rows": [asdict(r) for r in rows]}, indent=1)
    )
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
