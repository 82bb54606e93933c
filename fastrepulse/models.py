"""Model support: which diffusers denoisers fastrepulse knows, and where their blocks keep the text stream.

A small registry keyed by block class. Blocks are found in forward order (Flux: the dual-stream blocks,
then the single-stream ones) and indexed among the blocks that carry text; SD3's last joint block
(``context_pre_only``) drops the text stream and is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_DIFFUSERS = (0, 35)
"""Flux single-stream blocks take and return ``(text, image)`` separately from this release on."""

SUPPORTED = (
    "FluxPipeline, FluxKontextPipeline and other Flux pipelines (FluxTransformer2DModel); "
    "StableDiffusion3Pipeline for SD3/SD3.5 (SD3Transformer2DModel); "
    "StableDiffusionPipeline and StableDiffusionXLPipeline (UNet2DConditionModel) with method='particle' or 'cads'"
)


@dataclass(frozen=True)
class BlockKind:
    """Where one block class keeps its text stream.

    Attributes:
        name: "dual" (Flux), "single" (Flux single-stream: one ``[text, image]`` sequence) or "joint" (SD3).
        attention_text: index of the text output of ``block.attn``; None when the attention output is the whole
            ``[text, image]`` sequence, text first.
        block_text: index of the text hidden state in the block's output tuple (image at ``1 - block_text``).
    """

    name: str
    attention_text: int | None
    block_text: int = 0


@dataclass(frozen=True)
class TextBlock:
    """A block of the denoiser that carries text, with its kind and its index among such blocks."""

    index: int
    module: torch.nn.Module
    kind: BlockKind


@dataclass(frozen=True)
class Denoiser:
    """The pipeline's denoiser and what fastrepulse can do with it."""

    module: torch.nn.Module
    family: str  # "flux", "sd3" or "unet"
    blocks: tuple[TextBlock, ...]  # empty for UNets: no contextual stream

    @property
    def timestep_scale(self) -> float:
        """What the denoiser's `timestep` argument is at pure noise (Flux pipelines pass t / 1000)."""
        return 1.0 if self.family == "flux" else 1000.0


def _block_kinds() -> dict[type, BlockKind]:
    from diffusers.models.attention import JointTransformerBlock
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

    return {
        FluxTransformerBlock: BlockKind("dual", attention_text=1),
        FluxSingleTransformerBlock: BlockKind("single", attention_text=None),
        JointTransformerBlock: BlockKind("joint", attention_text=1),
    }


def find_denoiser(pipe: object) -> Denoiser:
    """The denoiser of a diffusers pipeline and its text-carrying blocks, or TypeError naming what is supported."""
    import diffusers
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    major, minor = (int(part) for part in diffusers.__version__.split(".")[:2])
    if (major, minor) < MIN_DIFFUSERS:
        raise TypeError(f"fastrepulse needs diffusers >= 0.35, found {diffusers.__version__}; upgrade it")
    module = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    module = getattr(module, "_orig_mod", module)  # under torch.compile the pipeline holds an OptimizedModule
    families = {FluxTransformer2DModel: "flux", SD3Transformer2DModel: "sd3", UNet2DConditionModel: "unet"}
    family = next((name for cls, name in families.items() if isinstance(module, cls)), None)
    if family is None:
        found = type(module).__name__ if module is not None else "no transformer or unet"
        raise TypeError(f"fastrepulse supports {SUPPORTED}; got {type(pipe).__name__} with {found}")
    kinds = _block_kinds()
    blocks = []
    for block in module.modules():
        kind = kinds.get(type(block))
        if kind is None or getattr(block, "context_pre_only", False):
            continue
        blocks.append(TextBlock(len(blocks), block, kind))
    return Denoiser(module, family, tuple(blocks))


def select_blocks(blocks: tuple[TextBlock, ...], selection: str | tuple[int, ...]) -> tuple[TextBlock, ...]:
    """The blocks named by "all", a third ("early", "middle", "late") or a tuple of indices."""
    count = len(blocks)
    if isinstance(selection, tuple):
        outside = [index for index in selection if index >= count]
        if outside:
            raise ValueError(
                f"blocks {outside} do not exist: this model has {count} text blocks, indices 0..{count - 1}"
            )
        return tuple(blocks[index] for index in sorted(set(selection)))
    if selection == "all":
        return blocks
    third = ("early", "middle", "late").index(selection)
    return blocks[third * count // 3 : (third + 1) * count // 3]
