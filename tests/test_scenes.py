"""The colour-scene testbed's data and its judge: exact free-attribute distributions, renders, the shipped judge."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import SEED

from fastrepulse.testbed.judge import FEATURES, accuracy, judge, scene_attributes
from fastrepulse.testbed.scenes import (
    BACKGROUNDS,
    CELL,
    COLOURS,
    GRID,
    POSITIONS,
    SIZE,
    SIZES,
    ScenePrompt,
    check_prompt,
    free_distribution,
    render,
    sample_scene,
    satisfies,
    scene_prompts,
    scenes,
)

HELD_OUT = 10**7 + SEED
"""Scenes the judge never saw: bench/train_judge.py draws from seeds 0 .. 7 and 10**6."""


def test_renders_are_deterministic_and_draw_each_object_in_its_colour_and_cell() -> None:
    drawn = list(scenes(50, SEED))
    for scene in drawn:
        image = render(scene)
        assert image.size == (SIZE, SIZE) and image.mode == "RGB"
        assert image.tobytes() == render(scene).tobytes()
        pixels = torch.from_numpy(np.asarray(image)).int()
        for obj, (dx, dy) in zip(scene.objects, scene.offsets, strict=True):
            cell = POSITIONS.index(obj.position)
            middle = SIZES[obj.size] // 2
            x, y = (cell % GRID) * CELL + dx + middle, (cell // GRID) * CELL + dy + middle + 1
            assert (pixels[y, x] - torch.tensor(COLOURS[obj.colour])).abs().max() <= 8, (scene, obj)
        corner = [(0, 0), (0, SIZE - 1), (SIZE - 1, 0), (SIZE - 1, SIZE - 1)]
        assert any(tuple(pixels[y, x].tolist()) == BACKGROUNDS[scene.background] for y, x in corner)


def test_prompts_fix_what_they_name() -> None:
    rng = random.Random(SEED)
    for prompt in scene_prompts():
        check_prompt(prompt)
        for _ in range(20):
            scene = sample_scene(rng, prompt)
            assert len(scene.objects) == len(prompt.objects)
            assert prompt.background in (None, scene.background)
            assert scene.background not in {obj.colour for obj in scene.objects}
            remaining = list(scene.objects)
            for named in prompt.objects:  # each named object is one of the scene's (in reading order)
                match = next(obj for obj in remaining if all(getattr(obj, k) == v for k, v in named.items()))
                remaining.remove(match)


@pytest.mark.parametrize("prompt", scene_prompts()[:1] + scene_prompts()[5:], ids=lambda prompt: prompt.text)
def test_free_attributes_follow_the_stated_distribution(prompt: ScenePrompt) -> None:
    """Frequencies over 4000 scenes agree with `free_distribution` to 4.5 standard errors."""
    rng = random.Random(SEED)
    draws = 4000
    found: dict[tuple, Counter] = {}
    for _ in range(draws):
        scene = sample_scene(rng, prompt)
        objects = list(scene.objects)
        for index, named in enumerate(prompt.objects):
            obj = next(o for o in objects if all(getattr(o, k) == v for k, v in named.items()))
            objects.remove(obj)
            for key in ("shape", "colour", "size", "position"):
                found.setdefault((index, key), Counter())[getattr(obj, key)] += 1
        found.setdefault((None, "background"), Counter())[scene.background] += 1
    expected = free_distribution(prompt)
    assert expected
    for key, distribution in expected.items():
        assert sum(distribution.values()) == pytest.approx(1.0)
        for value, probability in distribution.items():
            error = (probability * (1 - probability) / draws) ** 0.5
            assert abs(found[key][value] / draws - probability) <= 4.5 * error + 1e-9, (key, value)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (ScenePrompt("", ({"colour": "yellow"},), "yellow"), "background's colour"),
        (ScenePrompt("", ({"position": "top left"}, {"position": "top left"})), "share a cell"),
        (ScenePrompt("", ({"shape": "star"},)), "shape must be one of"),
        (ScenePrompt("", ({}, {}, {})), "one or two objects"),
    ],
)
def test_impossible_prompts_are_refused(prompt: ScenePrompt, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_prompt(prompt)


def test_shipped_judge_reads_every_attribute_of_held_out_scenes() -> None:
    """At least 97% of each attribute of each object right, on 1000 renders of a seed training never drew."""
    drawn = list(scenes(1000, HELD_OUT))
    found, features = judge([render(scene) for scene in drawn])
    scores = accuracy(found, drawn)
    assert min(scores[key] for key in ("shape", "colour", "size", "position", "background")) >= 0.97, scores
    assert features.shape == (len(drawn), FEATURES)


def test_the_judge_takes_pil_images_of_any_size_and_float_tensors() -> None:
    drawn = list(scenes(8, HELD_OUT))
    images = [render(scene) for scene in drawn]
    tensor = torch.stack(
        [torch.tensor(list(image.getdata()), dtype=torch.float32).view(SIZE, SIZE, 3) for image in images]
    )
    tensor = tensor.permute(0, 3, 1, 2) / 255
    assert scene_attributes(images) == scene_attributes(tensor)
    large = [image.resize((4 * SIZE, 4 * SIZE)) for image in images]
    assert scene_attributes(large) == scene_attributes(images)
    with pytest.raises(ValueError, match=r"float tensor \[N, 3, H, W\]"):
        scene_attributes(torch.zeros(2, 1, SIZE, SIZE))


def test_training_prompts_describe_their_scene() -> None:
    """`describe` names only what the scene holds: `satisfies` agrees, on the prompt as a reader parses it."""
    from fastrepulse.testbed.scenes import describe

    rng = random.Random(SEED)
    for scene in scenes(300, SEED):
        text = describe(scene, rng)
        assert satisfies(scene.attributes(), _parse(text)), (text, scene)


def _parse(text: str) -> ScenePrompt:
    """The attributes a prompt of `prompt_text`'s grammar names (a test-side reading of the sentence)."""
    background = None
    if text.endswith(" background"):
        text, _, background = text.removesuffix(" background").rpartition(" on a ")
    objects = []
    for phrase in text.split(" and "):
        words, position = phrase, None
        if " at the " in phrase:
            words, _, position = phrase.partition(" at the ")
        named = {"position": position} if position else {}
        for word in words.split()[1:]:
            key = "size" if word in SIZES else "colour" if word in COLOURS else "shape" if word != "shape" else None
            if key:
                named[key] = word
        objects.append(named)
    return ScenePrompt(text, tuple(objects), background)


def test_satisfies_matches_objects_in_any_order() -> None:
    attributes = {
        "background": "white",
        "objects": [
            {"shape": "circle", "colour": "red", "size": "small", "position": "top left"},
            {"shape": "square", "colour": "blue", "size": "large", "position": "bottom right"},
        ],
    }
    assert satisfies(attributes, ScenePrompt("", ({"colour": "blue"}, {"shape": "circle"})))
    assert not satisfies(attributes, ScenePrompt("", ({"colour": "blue"},)))  # two objects, one named
    assert not satisfies(attributes, ScenePrompt("", ({"colour": "blue"}, {"colour": "blue"})))
    assert not satisfies(attributes, ScenePrompt("", ({}, {}), "black"))
