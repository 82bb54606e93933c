"""Draw docs/groups.png: how fastrepulse splits a denoiser batch into repulsion groups.

Run: python docs/groups.py (needs matplotlib, the `bench` extra).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

PROMPT_COLOURS = ["#4c72b0", "#dd8452"]
LAYOUTS = [
    ("Flux-dev (guidance embedded): one call per step", [[("cond", 0), ("cond", 1)]]),
    ("Flux true CFG: two calls per step", [[("cond", 0), ("cond", 1)], [("uncond", 0), ("uncond", 1)]]),
    ("SD3 / SD3.5 CFG: one call on [uncond ; cond]", [[("uncond", 0), ("uncond", 1), ("cond", 0), ("cond", 1)]]),
]
IMAGES = 3


def main() -> None:
    figure, axes = plt.subplots(len(LAYOUTS), 1, figsize=(9, 4.6))
    for axis, (title, calls) in zip(axes, LAYOUTS, strict=True):
        x = 0.0
        for call in calls:
            for branch, prompt in call:
                hatch = "//" if branch == "uncond" else None
                axis.add_patch(
                    Rectangle((x, 0), IMAGES, 1, facecolor="none", edgecolor="black", linewidth=2.2, zorder=3)
                )
                for image in range(IMAGES):
                    colour = PROMPT_COLOURS[prompt]
                    axis.add_patch(Rectangle((x + image, 0), 1, 1, facecolor=colour, edgecolor="white", hatch=hatch))
                    axis.text(x + image + 0.5, 0.5, f"p{prompt}\n#{image}", ha="center", va="center", fontsize=7)
                axis.text(x + IMAGES / 2, 1.12, f"{branch} group", ha="center", fontsize=8)
                x += IMAGES
            x += 1.0  # gap between separate transformer calls
        axis.set_xlim(-0.2, 14.2)
        axis.set_ylim(-0.1, 1.5)
        axis.set_title(title, fontsize=10, loc="left")
        axis.axis("off")
    figure.suptitle(
        "2 prompts x 3 images: each framed group repels only within itself (num_images_per_prompt = group size)",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(Path(__file__).with_name("groups.png"), dpi=110)


if __name__ == "__main__":
    main()
