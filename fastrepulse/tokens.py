"""Which tokens of a block's output are a sample's contextual text: the text stream, or a span of a joint sequence,
less the pad tokens the model masks out.

A denoiser call's `TextLayout` says how long the text is, where it lies in the joint sequences of the single-stream
blocks, and, where the model masks pads, which runs of tokens each sample attends. The samples of one prompt share
their runs (`group_runs`), so each group is a slice of rows and a few slices of tokens: views, repelled in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastrepulse.groups import Partition

Runs = tuple[tuple[int, int], ...]
"""Runs of attended tokens ``(start, stop)``, in order, within a sample's text."""


@dataclass(frozen=True)
class TextLayout:
    """Where the text is in one denoiser call.

    Attributes:
        tokens: the text's length (registers and attended pads included).
        offset: where the text starts in a joint sequence; negative: counted from the sequence's end.
        stream: the length of the text stream the dual-stream blocks return, where it is longer than the text
            (HiDream appends tokens that each block drops again); None: `tokens`.
        runs: each sample's attended runs within the text, or None: all of it.
    """

    tokens: int
    offset: int = 0
    stream: int | None = None
    runs: tuple[Runs, ...] | None = None


def mask_runs(mask: torch.Tensor) -> tuple[Runs, ...]:
    """Each row's runs of attended tokens from a text mask [B, L] (one host read)."""
    rows = mask.reshape(mask.shape[0], -1).bool().cpu().tolist()
    return tuple(_runs(position for position, attended in enumerate(row) if attended) for row in rows)


def _runs(positions) -> Runs:
    """Increasing token positions as runs ``(start, stop)``."""
    result: list[tuple[int, int]] = []
    for position in positions:
        if result and result[-1][1] == position:
            result[-1] = (result[-1][0], position + 1)
        else:
            result.append((position, position + 1))
    return tuple(result)


def shifted(runs: tuple[Runs, ...], by: int) -> tuple[Runs, ...]:
    """`runs` moved `by` tokens later (past registers put before the text)."""
    return tuple(tuple((start + by, stop + by) for start, stop in row) for row in runs)


def group_runs(runs: tuple[Runs, ...], partition: Partition, branches: int, *, follows_mask: bool) -> tuple[Runs, ...]:
    """The runs of each group of `partition`, which its samples share.

    Some pipelines (Qwen-Image, HunyuanImage, Lumina2, Mochi) repeat the masks of several prompts prompt by prompt
    ([m0, m1, m0, m1]) where they repeat the embeddings image by image ([p0, p0, p1, p1]), so one prompt's rows
    disagree. Where the text sits at fixed positions (a text stream), a group's prompt's own mask is then the one at
    the prompt's index in its branch. Where the model places the text by the mask it is given (`follows_mask`:
    Lumina2 and HunyuanImage pack each row's attended tokens first), a group takes the tokens that every one of its
    samples attends, which are text in each of them.
    """
    found = [{runs[row] for row in group} for group in partition.groups]
    if all(len(group) == 1 for group in found):
        return tuple(group.pop() for group in found)
    branch = partition.batch // branches
    prompts = len(partition.groups) // branches
    tiled = all(runs[row] == runs[row // branch * branch + row % branch % prompts] for row in range(partition.batch))
    if tiled and not follows_mask:
        return tuple(
            runs[group[0] // branch * branch + index % prompts] for index, group in enumerate(partition.groups)
        )
    return tuple(_common(runs[row] for row in group) for group in partition.groups)


def _common(rows) -> Runs:
    """The runs of the tokens in every one of `rows`' runs."""
    common = None
    for row in rows:
        positions = {position for start, stop in row for position in range(start, stop)}
        common = positions if common is None else common & positions
    return _runs(sorted(common or ()))
