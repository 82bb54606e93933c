"""Does a scenes model collapse what a prompt leaves free? Within-group free-attribute entropy at several guidance
scales, beside the data's (issue 13, item 4).

For each benchmark prompt (`fastrepulse.testbed.scene_prompts`) and seed, one group of B images; image i of prompt p
under seed s starts from the noise of generator ``(s * 100 + p) * 1000 + i``. The judge reads every image; per group,
the images that fit the prompt give each free attribute's entropy, set against the mean entropy of as many scenes
drawn from the data (`fastrepulse.testbed.scene_diversity`): ratio 1 follows the data, 0 is a collapse. The "data"
row judges rendered true scenes of each prompt the same way (the judge's own errors included).

    python bench/scenes_typicality.py                          # scenes-flux, B = 8, 4 seeds, CFG 1 and 3
    python bench/scenes_typicality.py --cfg 1 2 3 5 --seeds 8 --out docs/scenes/typicality.md
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from diversity import generators
from scenes_diversity import PROMPTS_PER_SEED

from fastrepulse.testbed import pipeline
from fastrepulse.testbed.judge import judge
from fastrepulse.testbed.scene_diversity import group_diversity, summary
from fastrepulse.testbed.scenes import ScenePrompt, render, sample_scene, satisfies, scene_prompts


def readings_of_model(pipe, prompts: Sequence[ScenePrompt], group_size: int, seed: int, cfg: float) -> list[list]:
    """The judge's readings of one call: per prompt, its group's B readings."""
    out = pipe(
        prompt=[prompt.text for prompt in prompts],
        num_images_per_prompt=group_size,
        generator=generators(seed, range(len(prompts)), group_size, PROMPTS_PER_SEED),
        **{"true_cfg_scale" if "true_cfg_scale" in pipe.call_defaults else "guidance_scale": cfg},
    )
    found = judge(out.images)[0]
    return [found[index * group_size : (index + 1) * group_size] for index in range(len(prompts))]


def readings_of_data(prompts: Sequence[ScenePrompt], group_size: int, seed: int) -> list[list]:
    """The judge's readings of true scenes of each prompt, rendered."""
    rng = random.Random(seed)
    drawn = [[sample_scene(rng, prompt) for _ in range(group_size)] for prompt in prompts]
    found = judge([render(scene) for group in drawn for scene in group])[0]
    return [found[index * group_size : (index + 1) * group_size] for index in range(len(prompts))]


KINDS = ("background", "position", "colour", "shape", "size")


def row(label: str, groups: list[tuple[ScenePrompt, list]]) -> str:
    """One markdown row: fidelity, the pooled entropy summary and coverage, then the ratio per kind of attribute."""
    images = [(prompt, reading) for prompt, readings in groups for reading in readings]
    fidelity = 100 * sum(satisfies(reading, prompt) for prompt, reading in images) / len(images)
    diversities = [group_diversity(readings, prompt) for prompt, readings in groups]
    pooled = summary(diversities)
    scored = [group for group in diversities if group.fitting >= 2]
    ratios = []
    for kind in KINDS:
        found = sum(value for group in scored for (_, key), value in group.entropy.items() if key == kind)
        expected = sum(value for group in scored for (_, key), value in group.data_entropy.items() if key == kind)
        ratios.append(f"{found / expected:.2f}" if expected else "-")
    return (
        f"| {label} | {fidelity:.1f} | {pooled['entropy']:.3f} | {pooled['data_entropy']:.3f} "
        f"| {pooled['entropy_ratio']:.3f} | {pooled['coverage']:.3f} | {' | '.join(ratios)} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="scenes-flux")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--cfg", nargs="+", type=float, default=[1.0, 3.0])
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    prompts = scene_prompts()
    pipe = pipeline(args.model)
    lines = [
        f"{args.model}, groups of {args.group_size}, {args.seeds} seeds x {len(prompts)} benchmark prompts. Entropy: "
        "bits per free attribute among the images that fit the prompt; data: the mean at as many draws.",
        "",
        "| images | fidelity % | entropy | data entropy | ratio | coverage | "
        + " | ".join(f"{kind} ratio" for kind in KINDS)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(KINDS),
    ]
    data = [
        group
        for seed in range(args.seeds)
        for group in zip(prompts, readings_of_data(prompts, args.group_size, 10**6 + seed), strict=True)
    ]
    lines.append(row("data (rendered, judged)", data))
    for cfg in args.cfg:
        groups = [
            group
            for seed in range(args.seeds)
            for group in zip(prompts, readings_of_model(pipe, prompts, args.group_size, seed, cfg), strict=True)
        ]
        lines.append(row(f"{args.model}, CFG {cfg:g}", groups))
        print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
