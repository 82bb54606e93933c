"""Which tokens of a block's output are a sample's contextual text: the text stream, or a span of a joint sequence,
less the pad tokens the model masks out.

A denoiser call's `TextLayout` says how long the text stream is, where it starts in the joint sequences of its
single-stream blocks, and, where the model masks pads, each sample's attended span. Samples of one prompt share
their span (`group_spans`), so every group is one contiguous slice of rows and tokens: a view, repelled in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastrepulse.groups import Partition


@dataclass(frozen=True)
class TextLayout:
    """Where the text is in one denoiser call.

    Attributes:
        tokens: length of the text stream as the blocks see it (registers included, pads included).
        offset: where the text starts in a joint ``[.., text, ..]`` sequence (0: text first).
        spans: each sample's attended tokens ``(start, stop)`` within the text stream, or None: all of them.
    """

    tokens: int
    offset: int = 0
    spans: tuple[tuple[int, int], ...] | None = None


def mask_spans(mask: torch.Tensor) -> tuple[tuple[int, int], ...]:
    """Each row's attended tokens ``(start, stop)`` from a text mask [B, L] (one host read).

    Raises:
        ValueError: a row whose attended tokens are not one run (fastrepulse takes a sample's text as one slice).
    """
    attended = mask.reshape(mask.shape[0], -1).bool()
    length = attended.shape[1]
    position = torch.arange(length, device=attended.device)
    start = torch.where(attended, position, length).amin(1)
    stop = torch.where(attended, position + 1, 0).amax(1)
    rows = torch.stack([start, stop, attended.sum(1)], 1).tolist()
    for row, (first, last, count) in enumerate(rows):
        if count and last - first != count:
            raise ValueError(
                f"the text mask of sample {row} attends {count} tokens that are not one run ({first}..{last}); "
                "fastrepulse takes each sample's text as one slice and cannot repel this pipeline's text"
            )
    return tuple((first, last) if count else (0, 0) for first, last, count in rows)


def group_spans(spans: tuple[tuple[int, int], ...], partition: Partition, branches: int) -> tuple[tuple[int, int], ...]:
    """The span of each group of `partition`: its samples' own, which one prompt's samples share.

    Some pipelines (Qwen-Image, HunyuanImage) repeat the masks of several prompts prompt by prompt
    ([m0, m1, m0, m1]) where they repeat the embeddings image by image ([p0, p0, p1, p1]): a group's rows then
    disagree, and its prompt's own mask is the one at the prompt's index in its branch. Raises ValueError if the
    spans fit neither order.
    """
    spans_of = [{spans[row] for row in group} for group in partition.groups]
    if all(len(found) == 1 for found in spans_of):
        return tuple(found.pop() for found in spans_of)
    branch = partition.batch // branches
    groups_per_branch = len(partition.groups) // branches
    tiled = []
    for index, group in enumerate(partition.groups):
        first = group[0] // branch * branch  # the first row of this group's branch
        tiled.append(spans[first + index % groups_per_branch])
    prompts = groups_per_branch
    if all(spans[row] == spans[row // branch * branch + (row % branch) % prompts] for row in range(partition.batch)):
        return tuple(tiled)
    raise ValueError(
        "the text masks of one prompt's samples disagree, in an order fastrepulse does not know: "
        "pass group_size= to fastrepulse.patch, or prompt embeddings and masks in the same order"
    )
