"""How diverse a group of generated scenes is in what its prompt leaves free, against what the data allows.

A group is the images of one prompt. Its images that fit the prompt (`scenes.satisfies`, on the judge's readings)
are matched to the prompt's objects; each attribute the prompt leaves free (`scenes.free_distribution`) then has
an empirical distribution over those images. Its entropy (bits) is compared with the entropy that the same number
of scenes drawn from the data would show on average (`expected_entropy`): a group that follows the data has a
ratio near 1, a collapsed one (every image the same "typical" choice) near 0. Coverage is the share of the values
the images could show (at most one per image) that they do show.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fastrepulse.testbed.scenes import ScenePrompt, free_distribution, matched_objects

Attribute = tuple[int | None, str]
"""(object index in the prompt, or None for the background; attribute name)."""
DATA_DRAWS = 20_000
"""Seeded draws that estimate an expected entropy (its standard error is below 0.01 bits)."""


@dataclass(frozen=True)
class GroupDiversity:
    """One group: how many of its images fit the prompt, and per free attribute its entropy (bits), the data's at as
    many images, and its coverage."""

    fitting: int
    entropy: dict[Attribute, float]
    data_entropy: dict[Attribute, float]
    coverage: dict[Attribute, float]

    @property
    def entropy_ratio(self) -> float | None:
        """Sum of the group's entropies over the data's (None where fewer than two images fit)."""
        expected = sum(self.data_entropy.values())
        return sum(self.entropy.values()) / expected if self.fitting >= 2 and expected > 0 else None


def entropy(values: Sequence[str]) -> float:
    """Entropy in bits of the empirical distribution of `values`."""
    counts = np.array(list(Counter(values).values()), dtype=np.float64)
    shares = counts / counts.sum()
    return float(-(shares * np.log2(shares)).sum())


@functools.cache
def expected_entropy(probabilities: tuple[float, ...], count: int) -> float:
    """Mean entropy (bits) of the empirical distribution of `count` independent draws from `probabilities`
    (seeded Monte Carlo, `DATA_DRAWS` draws)."""
    if count < 2:
        return 0.0
    rng = np.random.default_rng(count)
    shares = rng.multinomial(count, np.asarray(probabilities) / sum(probabilities), size=DATA_DRAWS) / count
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(shares > 0, shares * np.log2(shares), 0.0)
    return float(-terms.sum(1).mean())


def group_diversity(readings: Sequence[dict], prompt: ScenePrompt) -> GroupDiversity:
    """The free-attribute diversity of one group's judge readings (as `scene_attributes` gives them)."""
    fitting = [(reading, objects) for reading in readings if (objects := matched_objects(reading, prompt)) is not None]
    entropies, data, coverage = {}, {}, {}
    if not fitting:
        return GroupDiversity(0, entropies, data, coverage)
    for (index, key), distribution in free_distribution(prompt).items():
        values = [reading["background"] if index is None else objects[index][key] for reading, objects in fitting]
        support = [value for value, probability in distribution.items() if probability > 0]
        entropies[index, key] = entropy(values)
        data[index, key] = expected_entropy(tuple(distribution[value] for value in support), len(fitting))
        coverage[index, key] = len(set(values)) / min(len(fitting), len(support))
    return GroupDiversity(len(fitting), entropies, data, coverage)


def summary(groups: Sequence[GroupDiversity]) -> dict[str, float]:
    """Over the groups where at least two images fit: the mean entropy per free attribute (bits), the data's, their
    ratio (total over total) and the mean coverage."""
    scored = [group for group in groups if group.fitting >= 2 and group.entropy]
    if not scored:
        return {"entropy": math.nan, "data_entropy": math.nan, "entropy_ratio": math.nan, "coverage": math.nan}
    total = sum(sum(group.entropy.values()) for group in scored)
    expected = sum(sum(group.data_entropy.values()) for group in scored)
    attributes = sum(len(group.entropy) for group in scored)
    return {
        "entropy": total / attributes,
        "data_entropy": expected / attributes,
        "entropy_ratio": total / expected,
        "coverage": sum(sum(group.coverage.values()) for group in scored) / attributes,
    }
