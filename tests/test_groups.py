"""Groups however the images were asked for: a group is one prompt's samples within one guidance branch, found from
the conditioning (`fastrepulse.groups`), whether they came from `num_images_per_prompt`, a prompt repeated in a list
or embeddings passed expanded."""

from __future__ import annotations

import pipelines
import pytest
import torch
from test_patch import CALL, TEXT_TOKENS, RepelCall, repel_calls  # noqa: F401  (a fixture)

import fastrepulse
from fastrepulse.groups import Partition, by_conditioning, contiguous


def test_rows_equal_to_rounding_are_one_prompt_and_branches_repeat_the_partition():
    prompts = torch.randn(3, 6, 4)
    rows = torch.stack([prompts[0], prompts[1], prompts[0] * (1 + 1e-7), prompts[1], prompts[2]])
    assert by_conditioning([rows]).groups == ((0, 2), (1, 3), (4,))
    assert by_conditioning([rows, torch.zeros(5, 2)]).groups == ((0, 2), (1, 3), (4,))
    pooled = torch.tensor([[0.0], [0.0], [1.0], [0.0], [0.0]])  # same text, other pooled: another prompt
    assert by_conditioning([rows, pooled]).groups == ((0,), (1, 3), (2,), (4,))
    cfg = by_conditioning([prompts[[0, 0, 1, 1]]], branches=2)  # [uncond ; cond], each split like cond
    assert cfg.groups == ((0, 1), (2, 3), (4, 5), (6, 7)) and cfg.size == 2 and cfg.batch == 8


def test_a_partition_knows_when_the_operator_can_take_the_batch_as_it_is():
    assert contiguous(6, 3).size == 3 and contiguous(6, 3).largest == 3
    assert Partition(4, ((0, 2), (1, 3))).size is None
    assert Partition(3, ((0, 1), (2,))).size is None and Partition(3, ((0, 1), (2,))).largest == 2
    assert [index.tolist() for index in Partition(5, ((0, 2), (1,), (3, 4))).indices(torch.device("cpu"))] == [
        [0, 2],
        [3, 4],
    ]


def _latents(pipe, prompt, generator=None, **options) -> torch.Tensor:
    generator = generator or torch.Generator().manual_seed(0)
    call = {**CALL, "max_sequence_length": TEXT_TOKENS, **options}
    return pipe(prompt=prompt, generator=generator, **call).images


def test_a_prompt_repeated_in_a_list_is_one_group(repel_calls: list[RepelCall]) -> None:  # noqa: F811
    pipe = pipelines.flux()
    base = _latents(pipe, ["a red cat"] * 3)
    fastrepulse.patch(pipe, scale=300.0, steps=1, blocks=[0])
    repelled = _latents(pipe, ["a red cat"] * 3)
    assert [(call.shape[0], call.group_size) for call in repel_calls] == [(3, 3)]
    assert not torch.equal(repelled, base)


def test_interleaved_prompts_are_gathered_into_their_groups(repel_calls: list[RepelCall]) -> None:  # noqa: F811
    """["cat", "dog", "cat", "dog"]: the cats repel each other, the dogs each other, and each prompt's images are
    what they are beside nothing else (up to the unpatched pipeline's own batch variance)."""
    pipe = pipelines.flux()

    def seeds(*indices: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(index) for index in indices]

    prompts = ["a red cat", "a blue dog", "a red cat", "a blue dog"]
    base = (_latents(pipe, prompts, seeds(0, 1, 2, 3))[[0, 2]] - _latents(pipe, prompts[::2], seeds(0, 2))).abs().max()
    with fastrepulse.patched(pipe, scale=300.0, steps="all", blocks=[0]):
        together = _latents(pipe, prompts, seeds(0, 1, 2, 3))
        cats = _latents(pipe, prompts[::2], seeds(0, 2))
    assert [(call.shape[0], call.group_size) for call in repel_calls][:3] == [(2, 2), (2, 2), (2, 2)]
    assert (together[[0, 2]] - cats).abs().max() <= 100 * base
    unpatched = _latents(pipe, prompts, seeds(0, 1, 2, 3))
    assert not torch.equal(together[[1, 3]], unpatched[[1, 3]])  # the dogs moved too


@pytest.mark.parametrize("images", [1, 2])
def test_sd3_guidance_branches_split_like_the_prompts(repel_calls: list[RepelCall], images: int) -> None:  # noqa: F811
    """[uncond ; cond] with the same negative prompt for both prompts: the unconditional samples are split like the
    conditional ones, never one group across prompts."""
    pipe = pipelines.sd3()
    fastrepulse.patch(pipe, scale=300.0, steps=1, blocks=[0])
    prompts = ["a red cat", "a red cat", "a blue dog", "a blue dog"]
    _latents(pipe, prompts, guidance_scale=3.0, negative_prompt="blurry", num_images_per_prompt=images)
    size = 2 * images
    assert [(call.shape[0], call.group_size) for call in repel_calls] == [(2 * len(prompts) * images, size)]
