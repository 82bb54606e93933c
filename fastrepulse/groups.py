"""Which samples of a denoiser batch repel each other: the images of one prompt within one guidance branch.

A prompt is its conditioning: samples whose text embeddings (and pooled embeddings, where the model takes them)
are identical are one prompt's images, however they were asked for: ``num_images_per_prompt``, a prompt repeated
in a list, or embeddings passed already expanded. Guidance branches are consecutive halves of the batch where the
pipeline concatenates them (``[uncond ; cond]``, SD3 and UNet pipelines): the partition of the conditional half
is used for both, so the unconditional samples of different prompts (often all the same empty prompt) never form
one group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Partition:
    """The groups of a batch of `batch` samples: each group's sample indices, in order of their first sample.

    `size` is the group size where the groups are consecutive runs of one size (the common case: the operator then
    takes the batch as it is), else None (the groups are gathered one by one).
    """

    batch: int
    groups: tuple[tuple[int, ...], ...]
    size: int | None = field(init=False)
    _indices: dict[torch.device, list[torch.Tensor]] = field(init=False, default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        sizes = {len(group) for group in self.groups}
        consecutive = all(group == tuple(range(group[0], group[0] + len(group))) for group in self.groups)
        in_order = [index for group in self.groups for index in group] == list(range(self.batch))
        size = sizes.pop() if len(sizes) == 1 and consecutive and in_order else None
        object.__setattr__(self, "size", size)

    @property
    def largest(self) -> int:
        """The size of the largest group (1: nothing to repel)."""
        return max((len(group) for group in self.groups), default=1)

    def indices(self, device: torch.device) -> list[torch.Tensor]:
        """Index tensors of the groups of two or more samples, on `device` (made once per device)."""
        if device not in self._indices:
            groups = [group for group in self.groups if len(group) > 1]
            self._indices[device] = [torch.tensor(group, dtype=torch.long, device=device) for group in groups]
        return self._indices[device]


def contiguous(batch: int, size: int) -> Partition:
    """Consecutive groups of `size` samples (`size` divides `batch`)."""
    return Partition(batch, tuple(tuple(range(start, start + size)) for start in range(0, batch, size)))


SAME_PROMPT = 1e-5
"""Rows of conditioning whose largest difference is at most this fraction of their largest entry are one prompt's: a
batched text encoder need not give bit-equal rows for equal prompts (the kernels of a BLAS can treat rows apart by
their place in the batch), while two different prompts differ by a sizeable fraction of the entries."""


def by_conditioning(conditioning: list[torch.Tensor], branches: int = 1) -> Partition:
    """The groups of `branches` consecutive guidance branches, each partitioned like one branch's `conditioning`
    (tensors [n, ...] of that branch, e.g. its text and pooled embeddings): samples whose rows are the same, to
    SAME_PROMPT, in all of them are one prompt. Two host reads (labels of the bit-equal rows, then which of those
    are equal to rounding)."""
    exact = torch.stack([torch.unique(_bits(tensor), dim=0, return_inverse=True)[1] for tensor in conditioning])
    exact = torch.unique(exact, dim=1, return_inverse=True)[1]
    labels = exact.tolist()
    first = {}
    for index, label in enumerate(labels):
        first.setdefault(label, index)
    representatives = list(first.values())  # one row per set of bit-equal rows, in order of first appearance
    close = torch.ones(len(representatives), len(representatives), dtype=torch.bool, device=exact.device)
    for tensor in conditioning:
        rows = tensor.reshape(tensor.shape[0], -1)[representatives].float()  # float32 resolves SAME_PROMPT
        scale = rows.abs().amax(1)
        for i in range(len(representatives)):
            difference = (rows - rows[i]).abs().amax(1)
            close[i] &= difference <= SAME_PROMPT * torch.maximum(scale, scale[i])
    close = close.tolist()
    merged = {}  # representative's label -> the label of the first representative it is close to
    for i, label in enumerate(first):
        merged[label] = next(other for j, other in enumerate(first) if close[i][j] and j <= i)
    prompts: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        prompts.setdefault(merged[label], []).append(index)
    branch = len(labels)
    groups = tuple(
        tuple(index + offset * branch for index in group) for offset in range(branches) for group in prompts.values()
    )
    return Partition(branch * branches, groups)


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The rows of `tensor` [n, ...] as integers of the same width: equal exactly where the values are bit-equal."""
    rows = tensor.reshape(tensor.shape[0], -1)
    return rows.contiguous().view(_BITS[rows.element_size()]) if rows.is_floating_point() else rows
