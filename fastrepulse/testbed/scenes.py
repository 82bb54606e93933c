"""Colour scenes: one or two shapes on a background, rendered procedurally, with prompts that leave attributes free.

A scene is a background colour and one or two objects, each a shape, colour and size in one cell of a 3 x 3 grid
(at a seeded place within it), so two objects never overlap. Every attribute a prompt leaves free is drawn
uniformly and independently: the cell (two objects: an ordered pair of distinct cells), the size, the shape, the
colour among those that are not the background's, the background among those that are not an object's. These
distributions are exact (`free_distribution`), so the entropy a group of images could reach is known.

Images are rendered at 4x with PIL and box-filtered down to `SIZE` x `SIZE`: edges anti-aliased as a camera's
would be, and deterministic (no randomness but the scene's own).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SIZE = 48
"""Side of a rendered scene, in pixels."""
GRID = 3
"""Cells per side: an object's position is its cell."""
CELL = SIZE // GRID
SUPERSAMPLE = 4

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 225),
    "yellow": (235, 205, 35),
    "purple": (145, 60, 190),
    "orange": (245, 135, 25),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240),
    "black": (20, 20, 20),
    "gray": (125, 125, 125),
    "yellow": COLOURS["yellow"],
}
SIZES: dict[str, int] = {"small": 6, "medium": 10, "large": 14}
"""Extent of an object (bounding box side) in pixels of a `SIZE` scene."""
POSITIONS = tuple(f"{row} {column}" for row in ("top", "middle", "bottom") for column in ("left", "centre", "right"))
"""The cells, row by row: "top left" .. "bottom right"."""
ATTRIBUTES = ("shape", "colour", "size", "position")
"""What an object has; a scene has these for each object, and a background."""


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    position: str


@dataclass(frozen=True)
class Scene:
    """A background and its objects, listed in reading order of their cells (top left first)."""

    background: str
    objects: tuple[SceneObject, ...]
    offsets: tuple[tuple[int, int], ...] = field(default=(), compare=False)
    """Each object's place within its cell in pixels (x, y from the cell's top left), set when drawn."""

    def attributes(self) -> dict:
        """As `fastrepulse.testbed.scene_attributes` reports a scene: its background and one dict per object."""
        return {"background": self.background, "objects": [vars(obj).copy() for obj in self.objects]}


@dataclass(frozen=True)
class ScenePrompt:
    """A prompt and the attributes it names: per object a dict of the named ones (the rest are free)."""

    text: str
    objects: tuple[dict[str, str], ...]
    background: str | None = None


def prompt_text(objects: Sequence[dict[str, str]], background: str | None = None) -> str:
    """The prompt that names these attributes: "a small red circle at the top left and a square on a gray
    background"."""
    phrases = []
    for named in objects:
        words = [named[key] for key in ("size", "colour") if key in named]
        words = [*words, named.get("shape", "shape")]
        phrase = " ".join(["an" if words[0][0] in "aeiou" else "a", *words])
        if "position" in named:
            phrase += f" at the {named['position']}"
        phrases.append(phrase)
    text = " and ".join(phrases)
    return f"{text} on a {background} background" if background else text


def scene_prompts() -> list[ScenePrompt]:
    """The benchmark's prompts: one and two objects, naming some attributes and leaving the others free."""
    named = [
        ({"colour": "red", "shape": "circle"},),
        ({"colour": "blue", "shape": "square"},),
        ({"shape": "triangle"},),
        ({"colour": "green"},),
        ({"size": "small", "colour": "purple", "shape": "diamond"},),
        ({"colour": "orange", "shape": "circle", "position": "top left"},),
        ({"colour": "red", "shape": "circle"}, {"colour": "green", "shape": "triangle"}),
        ({"shape": "square"}, {"shape": "diamond"}),
    ]
    backgrounds = [None, None, None, None, "gray", None, None, "white"]
    return [ScenePrompt(prompt_text(objs, bg), objs, bg) for objs, bg in zip(named, backgrounds, strict=True)]


def describe(scene: Scene, rng: random.Random, named: float = 0.5, background: float = 0.3) -> str:
    """A training prompt for `scene`: each object's attributes named with probability `named` each, the background
    with `background`, the objects in either order."""
    objects = [{key: getattr(obj, key) for key in ATTRIBUTES if rng.random() < named} for obj in scene.objects]
    rng.shuffle(objects)
    return prompt_text(objects, scene.background if rng.random() < background else None)


def satisfies(attributes: dict, prompt: ScenePrompt) -> bool:
    """Whether a scene's attributes (as `Scene.attributes` or the judge gives them) fit everything `prompt` names:
    as many objects, each named object one of them, the named background."""
    return matched_objects(attributes, prompt) is not None


def matched_objects(attributes: dict, prompt: ScenePrompt) -> list[dict] | None:
    """The scene's objects in the prompt's order (the first order, from reading order, that fits), or None where the
    scene does not fit the prompt (`satisfies`)."""
    found = attributes["objects"]
    if len(found) != len(prompt.objects) or prompt.background not in (None, attributes["background"]):
        return None

    def fits(obj: dict, named: dict[str, str]) -> bool:
        return all(obj[key] == value for key, value in named.items())

    for order in itertools.permutations(found):
        if all(fits(obj, named) for obj, named in zip(order, prompt.objects, strict=True)):
            return list(order)
    return None


def check_prompt(prompt: ScenePrompt) -> None:
    """Raise ValueError for a prompt no scene fits: an unknown attribute value, two objects in one cell, an object
    of the background's colour, more objects than two."""
    options = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES), "position": POSITIONS}
    if not 1 <= len(prompt.objects) <= 2:
        raise ValueError(f"a scene holds one or two objects, the prompt names {len(prompt.objects)}")
    for named in prompt.objects:
        for key, value in named.items():
            if value not in options.get(key, ()):
                raise ValueError(f"{key} must be one of {options.get(key, ATTRIBUTES)}, got {value!r}")
        if prompt.background is not None and named.get("colour") == prompt.background:
            raise ValueError(f"an object cannot have the background's colour ({prompt.background})")
    if prompt.background is not None and prompt.background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {tuple(BACKGROUNDS)}, got {prompt.background!r}")
    cells = [named["position"] for named in prompt.objects if "position" in named]
    if len(set(cells)) != len(cells):
        raise ValueError(f"two objects cannot share a cell ({cells[0]})")


def sample_scene(rng: random.Random, prompt: ScenePrompt | None = None) -> Scene:
    """A scene drawn from the exact distribution of the attributes `prompt` leaves free (without one: one or two
    objects, every attribute free)."""
    if prompt is None:
        prompt = ScenePrompt("", tuple({} for _ in range(rng.choice((1, 2)))))
    named, background = prompt.objects, prompt.background
    taken = [POSITIONS.index(spec["position"]) for spec in named if "position" in spec]
    free_cells = rng.sample([cell for cell in range(GRID * GRID) if cell not in taken], len(named) - len(taken))
    drawn = []
    for spec in named:
        cell = POSITIONS.index(spec["position"]) if "position" in spec else free_cells.pop()
        colour = spec.get("colour") or rng.choice([c for c in COLOURS if c != background])
        shape, size = spec.get("shape") or rng.choice(SHAPES), spec.get("size") or rng.choice(tuple(SIZES))
        drawn.append(SceneObject(shape, colour, size, POSITIONS[cell]))
    if background is None:
        background = rng.choice([b for b in BACKGROUNDS if b not in {obj.colour for obj in drawn}])
    ordered = sorted(drawn, key=lambda obj: POSITIONS.index(obj.position))
    offsets = tuple((rng.randint(0, CELL - SIZES[obj.size]), rng.randint(0, CELL - SIZES[obj.size])) for obj in ordered)
    return Scene(background, tuple(ordered), offsets)


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image of `SIZE` x `SIZE`."""
    scale = SUPERSAMPLE
    image = Image.new("RGB", (SIZE * scale, SIZE * scale), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    offsets = scene.offsets or tuple(((CELL - SIZES[o.size]) // 2,) * 2 for o in scene.objects)
    for obj, (dx, dy) in zip(scene.objects, offsets, strict=True):
        cell = POSITIONS.index(obj.position)
        left, top = (cell % GRID) * CELL + dx, (cell // GRID) * CELL + dy
        _draw_shape(draw, obj.shape, COLOURS[obj.colour], left * scale, top * scale, SIZES[obj.size] * scale)
    return image.resize((SIZE, SIZE), Image.Resampling.BOX)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, colour: tuple[int, int, int], x: int, y: int, side: int):
    box = (x, y, x + side - 1, y + side - 1)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        inset = round(side * 0.1)  # a square as heavy as the circle of the same extent, nearly
        draw.rectangle((x + inset, y + inset, x + side - 1 - inset, y + side - 1 - inset), fill=colour)
    elif shape == "triangle":
        draw.polygon([(x + side / 2, y), (x + side - 1, y + side - 1), (x, y + side - 1)], fill=colour)
    elif shape == "diamond":
        middle = side / 2
        draw.polygon(
            [(x + middle, y), (x + side - 1, y + middle), (x + middle, y + side - 1), (x, y + middle)], fill=colour
        )
    else:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def scenes(count: int, seed: int, prompt: ScenePrompt | None = None) -> Iterator[Scene]:
    """`count` scenes from one seed (all attributes free, or those `prompt` leaves free)."""
    rng = random.Random(seed)
    for _ in range(count):
        yield sample_scene(rng, prompt)


def to_array(images: Sequence[Image.Image]) -> np.ndarray:
    """Images as float32 [N, 3, SIZE, SIZE] in [0, 1]."""
    return np.stack([np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255 for image in images])


def free_distribution(prompt: ScenePrompt) -> dict[tuple[int | None, str], dict[str, float]]:
    """The exact distribution scenes draw each attribute `prompt` leaves free from: (object index in the prompt, or
    None for the background, attribute) -> value -> probability."""
    named, background = prompt.objects, prompt.background
    result: dict[tuple[int | None, str], dict[str, float]] = {}
    taken = [spec["position"] for spec in named if "position" in spec]
    colour_options = []
    for index, spec in enumerate(named):
        options = {
            "shape": SHAPES,
            "colour": tuple(c for c in COLOURS if c != background),
            "size": tuple(SIZES),
            "position": tuple(p for p in POSITIONS if p not in taken),
        }
        for key, values in options.items():
            if key not in spec:
                result[index, key] = dict.fromkeys(values, 1.0 / len(values))
        colour_options.append((spec["colour"],) if "colour" in spec else options["colour"])
    if background is None:  # uniform among the backgrounds no object has the colour of
        weights = dict.fromkeys(BACKGROUNDS, 0.0)
        combinations = list(itertools.product(*colour_options))
        for colours in combinations:
            allowed = [b for b in BACKGROUNDS if b not in colours]
            for b in allowed:
                weights[b] += 1.0 / len(combinations) / len(allowed)
        result[None, "background"] = weights
    return result
