"""Free-attribute diversity of groups of scenes: entropies against the data's, coverage, matching to the prompt."""

from __future__ import annotations

import math
import random

import pytest
from conftest import SEED

from fastrepulse.testbed.scene_diversity import (
    entropy,
    expected_entropy,
    group_diversity,
    summary,
)
from fastrepulse.testbed.scenes import (
    ScenePrompt,
    free_distribution,
    matched_objects,
    prompt_text,
    sample_scene,
    scene_prompts,
)


def _prompt(objects: tuple[dict[str, str], ...], background: str | None = None) -> ScenePrompt:
    return ScenePrompt(prompt_text(objects, background), objects, background)


def test_entropy_of_empirical_distributions_in_bits() -> None:
    assert entropy(["a", "a", "b", "b"]) == pytest.approx(1.0)
    assert entropy(["a", "b", "c", "d"]) == pytest.approx(2.0)
    assert entropy(["a", "a", "a", "b"]) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    assert entropy(["x"] * 5) == 0.0


@pytest.mark.parametrize(
    ("probabilities", "count", "exact"),
    [
        ((0.5, 0.5), 2, 0.5),  # two draws differ half the time (1 bit), else 0 bits
        ((1 / 3,) * 3, 2, 2 / 3),  # differ with probability 2/3
        ((0.25,) * 4, 3, (6 / 16) * math.log2(3) + (9 / 16) * (math.log2(3) - 2 / 3)),  # see the docstring
        ((1.0,), 8, 0.0),
    ],
)
def test_expected_entropy_matches_exact_values(probabilities: tuple[float, ...], count: int, exact: float) -> None:
    """Three draws from 4 equally likely values: all distinct 6/16 (log2 3 bits), two alike 9/16 (0.918 bits), all
    alike 1/16 (0 bits)."""
    assert expected_entropy(probabilities, count) == pytest.approx(exact, abs=0.01)


def test_matched_objects_follow_the_prompt_order() -> None:
    prompt = _prompt(({"shape": "square"}, {"colour": "red", "shape": "circle"}))
    circle = {"shape": "circle", "colour": "red", "size": "small", "position": "top left"}
    square = {"shape": "square", "colour": "blue", "size": "large", "position": "bottom right"}
    assert matched_objects({"background": "white", "objects": [circle, square]}, prompt) == [square, circle]
    assert matched_objects({"background": "white", "objects": [circle]}, prompt) is None
    blue_circle = {**circle, "colour": "blue"}
    assert matched_objects({"background": "white", "objects": [blue_circle, square]}, prompt) is None
    on_gray = _prompt(({"shape": "square"},), "gray")
    assert matched_objects({"background": "white", "objects": [square]}, on_gray) is None


@pytest.mark.parametrize("prompt", scene_prompts(), ids=lambda prompt: prompt.text)
def test_scenes_drawn_from_the_data_reach_the_data_entropy(prompt: ScenePrompt) -> None:
    """A large group of true scenes of the prompt has an entropy ratio near 1 and full coverage."""
    rng = random.Random(SEED)
    readings = [sample_scene(rng, prompt).attributes() for _ in range(200)]
    group = group_diversity(readings, prompt)
    assert group.fitting == 200
    assert set(group.entropy) == set(free_distribution(prompt))
    assert group.entropy_ratio == pytest.approx(1.0, abs=0.03)
    assert all(value == 1.0 for value in group.coverage.values())


def test_a_collapsed_group_has_no_entropy_and_minimal_coverage() -> None:
    prompt = scene_prompts()[0]  # "a red circle": size, position and background free
    scene = sample_scene(random.Random(SEED), prompt).attributes()
    group = group_diversity([scene] * 8, prompt)
    assert group.fitting == 8 and group.entropy_ratio == 0.0
    assert all(value == 0.0 for value in group.entropy.values())
    assert group.coverage[0, "size"] == pytest.approx(1 / 3)  # one of min(8, 3) sizes
    assert group.coverage[0, "position"] == pytest.approx(1 / 8)  # one of min(8, 9) cells


def test_images_that_miss_the_prompt_are_left_out() -> None:
    prompt = scene_prompts()[0]
    rng = random.Random(SEED)
    fitting = [sample_scene(rng, prompt).attributes() for _ in range(5)]
    wrong = {**fitting[0], "objects": [{**fitting[0]["objects"][0], "shape": "square"}]}
    group = group_diversity([*fitting, wrong, wrong], prompt)
    assert group.fitting == 5
    assert group.data_entropy[0, "size"] == pytest.approx(expected_entropy((1 / 3,) * 3, 5))
    assert group_diversity([wrong], prompt).entropy_ratio is None


def test_summary_pools_groups_with_two_fitting_images() -> None:
    prompt = scene_prompts()[0]
    rng = random.Random(SEED)
    varied = group_diversity([sample_scene(rng, prompt).attributes() for _ in range(8)], prompt)
    collapsed = group_diversity([sample_scene(rng, prompt).attributes()] * 8, prompt)
    single = group_diversity([sample_scene(rng, prompt).attributes()], prompt)
    pooled = summary([varied, collapsed, single])
    expected = sum(varied.data_entropy.values()) + sum(collapsed.data_entropy.values())
    assert pooled["entropy_ratio"] == pytest.approx(sum(varied.entropy.values()) / expected)
    assert math.isnan(summary([single])["entropy"])
