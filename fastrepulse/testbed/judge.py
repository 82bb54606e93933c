"""The scene judge: an attribute recognizer trained on rendered ground truth (`bench/train_judge.py`), shipped in
the package. It reads each cell of the 3 x 3 grid (empty, or a shape with its colour and size) and the background;
its features, one vector per image, are what the benchmark's feature-Vendi is computed on.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from fastrepulse.testbed.scenes import BACKGROUNDS, COLOURS, GRID, POSITIONS, SHAPES, SIZE, SIZES, Scene, to_array

WEIGHTS = Path(__file__).with_name("weights") / "scenes-judge.safetensors"
CELL_CLASSES = ("empty", *SHAPES)
STAGES = ((32,), (64, 64), (96,), (128,))
"""Channels of the 3x3 convolutions of each stage; a 2x2 max-pool ends each (48 -> 24 -> 12 -> 6 -> 3 px)."""
FEATURES = STAGES[-1][-1] * GRID * GRID
"""Width of the judge's features: its last feature map, one vector per cell, flattened."""


class SceneJudge(torch.nn.Module):
    """Convolutions (3x3, batch norm, ReLU) in four stages, each ending in a 2x2 max-pool, down to one 128-wide
    vector per cell of the grid (48 px / 16 = 3); per cell a 1x1 convolution gives the shape-or-empty, colour and
    size logits, and the pooled map the background's. Input [N, 3, 48, 48] in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        width = 3
        for stage in STAGES:
            for channels in stage:
                layers += [torch.nn.Conv2d(width, channels, 3, padding=1, bias=False), torch.nn.BatchNorm2d(channels)]
                layers.append(torch.nn.ReLU())
                width = channels
            layers.append(torch.nn.MaxPool2d(2))
        self.body = torch.nn.Sequential(*layers)
        self.cells = torch.nn.Conv2d(width, len(CELL_CLASSES) + len(COLOURS) + len(SIZES), 1)
        self.background = torch.nn.Linear(width, len(BACKGROUNDS))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cell logits [N, 9, classes + colours + sizes], background logits [N, 4], features [N, FEATURES]."""
        hidden = self.body(images)
        cells = self.cells(hidden).flatten(2).transpose(1, 2)
        return cells, self.background(hidden.mean((2, 3))), hidden.flatten(1)


def split_cells(cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cell logits as (shape-or-empty, colour, size) logits."""
    return cells.split((len(CELL_CLASSES), len(COLOURS), len(SIZES)), dim=-1)


def targets(scenes: Sequence[Scene]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Labels of scenes: per cell shape-or-empty [N, 9], colour and size [N, 9] (-100 where empty), background [N]."""
    count = len(scenes)
    shape = torch.zeros(count, GRID * GRID, dtype=torch.long)
    colour = torch.full((count, GRID * GRID), -100, dtype=torch.long)
    size = torch.full((count, GRID * GRID), -100, dtype=torch.long)
    for index, scene in enumerate(scenes):
        for obj in scene.objects:
            cell = POSITIONS.index(obj.position)
            shape[index, cell] = CELL_CLASSES.index(obj.shape)
            colour[index, cell] = list(COLOURS).index(obj.colour)
            size[index, cell] = list(SIZES).index(obj.size)
    background = torch.tensor([list(BACKGROUNDS).index(scene.background) for scene in scenes])
    return shape, colour, size, background


@functools.cache
def _shipped() -> SceneJudge:
    model = SceneJudge()
    model.load_state_dict(load_file(WEIGHTS))
    return model.eval()


def to_input(images: torch.Tensor | Sequence[Image.Image]) -> torch.Tensor:
    """Images as the judge sees them: [N, 3, 48, 48] in [0, 1]. PIL images (any size: resized with a box filter)
    or a float tensor [N, 3, H, W] in [0, 1], as diffusers' ``output_type="pt"`` gives."""
    if isinstance(images, torch.Tensor):
        if not images.is_floating_point() or images.dim() != 4 or images.shape[1] != 3 or len(images) == 0:
            raise ValueError(
                f"images must be a float tensor [N, 3, H, W] in [0, 1], got {images.dtype} {tuple(images.shape)}"
            )
        pixels = images.float().clamp(0, 1)
        return pixels if pixels.shape[-2:] == (SIZE, SIZE) else F.interpolate(pixels, (SIZE, SIZE), mode="area")
    if len(images) == 0:
        raise ValueError("images must hold at least one image")
    resized = [
        image if image.size == (SIZE, SIZE) else image.resize((SIZE, SIZE), Image.Resampling.BOX) for image in images
    ]
    return torch.from_numpy(to_array(resized))


@torch.no_grad()
def judge(
    images: torch.Tensor | Sequence[Image.Image], model: SceneJudge | None = None
) -> tuple[list[dict], torch.Tensor]:
    """The attributes the judge reads in each image (as `Scene.attributes`: its background and one dict per
    object, in reading order of the cells) and its features [N, FEATURES]."""
    cells, background, features = (model or _shipped())(to_input(images))
    shape, colour, size = (logits.argmax(-1) for logits in split_cells(cells))
    found = []
    for index in range(len(cells)):
        objects = [
            {
                "shape": CELL_CLASSES[shape[index, cell]],
                "colour": list(COLOURS)[colour[index, cell]],
                "size": list(SIZES)[size[index, cell]],
                "position": POSITIONS[cell],
            }
            for cell in range(GRID * GRID)
            if shape[index, cell] != 0
        ]
        found.append({"background": list(BACKGROUNDS)[background[index].argmax()], "objects": objects})
    return found, features


def scene_attributes(images: torch.Tensor | Sequence[Image.Image]) -> list[dict]:
    """The judge's attributes per image: its background and one dict per object (shape, colour, size, position)."""
    return judge(images)[0]


def accuracy(found: Sequence[dict], scenes: Sequence[Scene]) -> dict[str, float]:
    """Share of objects whose each attribute the judge read right (an object missed or invented counts as wrong in
    every attribute), of scenes whose object count and background it read right, and of wholly right scenes."""
    right = dict.fromkeys(("shape", "colour", "size", "position"), 0)
    objects = count = background = whole = 0
    for reading, scene in zip(found, scenes, strict=True):
        by_cell = {obj["position"]: obj for obj in reading["objects"]}
        for obj in scene.objects:
            seen = by_cell.get(obj.position)
            objects += 1
            for key in right:
                right[key] += seen is not None and seen[key] == getattr(obj, key)
        count += len(reading["objects"]) == len(scene.objects)
        background += reading["background"] == scene.background
        whole += reading == scene.attributes()
    result = {key: value / objects for key, value in right.items()}
    return {
        **result,
        "count": count / len(scenes),
        "background": background / len(scenes),
        "scene": whole / len(scenes),
    }
