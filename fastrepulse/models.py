"""Model support: a registry keyed by denoiser class, with where each family's blocks keep the contextual text.

Contextual text is a property of the model's forward, not of a block class (Z-Image's and Lumina2's refiners reuse
their main block class on text alone or image alone), so each family names its block lists by path, in forward
order, and only those are hooked. Blocks are indexed among the ones that carry text; a block that drops the text
stream (SD3's last, ``context_pre_only``) is not counted. Classes are named, not imported, so a diffusers release
without some family still loads the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fastrepulse.tokens import TextLayout, mask_runs, shifted

MIN_DIFFUSERS = (0, 35)
"""Flux single-stream blocks take and return ``(text, image)`` separately from this release on."""


@dataclass(frozen=True)
class BlockKind:
    """Where one kind of block keeps its text.

    Attributes:
        name: "dual" (separate text and image streams) or "single" (one joint sequence holding both).
        attention: attribute of the block's attention module.
        attention_text: index of the text in the attention's output when that is a tuple; an attention that
            returns one tensor returns the joint sequence.
        block_text: index of the text in the block's output when that is a tuple; a block that returns one tensor
            returns the joint sequence.
        sequence_first: the block's output is [sequence, batch, width] (ERNIE-Image); its attention's is not.
    """

    name: str
    attention: str = "attn"
    attention_text: int = 1
    block_text: int = 0
    sequence_first: bool = False


DUAL = BlockKind("dual")
"""Flux-style dual-stream block: attention returns (image, text), the block (text, image)."""
SINGLE = BlockKind("single")
"""Flux-style single-stream block: one joint attention sequence; the block returns (text, image) or the sequence."""


@dataclass(frozen=True)
class BlockList:
    """One ModuleList of the denoiser, by path, and the kind of its blocks (`inner`: the attribute of each entry
    that is the block, where the list holds wrappers: HiDream)."""

    path: str
    kind: BlockKind
    inner: str | None = None


@dataclass(frozen=True)
class Family:
    """One denoiser family: its classes, its text-carrying blocks, and how its forward is called.

    Attributes:
        name: short name, as in the support matrix (docs/usage.md).
        classes: the denoiser classes (by name) of the family.
        blocks: the block lists whose text is contextual, in forward order; empty: no contextual stream.
        timestep: the forward's timestep argument, and its values at pure noise and at the clean image
            (CADS anneals on t in [0, 1], 1 = noise).
        text: the forward's text embeddings argument (what CADS perturbs, and what tells prompts apart); None: the
            forward takes token ids, and a group is ``num_images_per_prompt`` consecutive samples.
        image: the forward's image argument (its first dimension is the batch).
        mask: the forward's text mask argument, if it masks pads: [B, text] or [B, text + image], text first (a
            dotted path reaches into a dict argument: "joint_attention_kwargs.attention_mask").
        registers: tokens the denoiser puts before the text in its text stream (AuraFlow).
        carried: the share of the text's channels, the leading ones, that the next block takes on (BriaFibo replaces
            the rest by a fresh projection of a text-encoder layer before each block): only those are repelled.
        text_last: joint sequences are [image | text] (the text counted from the end), not [text | image].
        per_prompt: the pipeline makes its ``num_images_per_prompt``/``num_videos_per_prompt`` samples per prompt
            (CogVideoX's sets it to 1 whatever is passed: repeat the prompts instead).
        conditional_first: a batch holding both guidance branches is ``[cond ; uncond]`` (else ``[uncond ; cond]``).
        follows_mask: the denoiser places each sample's text by the mask it is given (`fastrepulse.tokens.group_runs`).
        no_stream: for a family without a contextual stream, why.
        baselines: the baseline methods that work on the family.
        layout: where the text is in a call, where the default (the text argument, first in joint sequences, its
            masked pads left out) does not say it.
    """

    name: str
    classes: tuple[str, ...]
    blocks: tuple[BlockList, ...] = ()
    timestep: tuple[str, float, float] = ("timestep", 1.0, 0.0)
    text: str | None = "encoder_hidden_states"
    image: str = "hidden_states"
    mask: str | None = None
    registers: int = 0
    carried: float = 1.0
    text_last: bool = False
    per_prompt: bool = True
    conditional_first: bool = False
    follows_mask: bool = False
    no_stream: str = ""
    baselines: tuple[str, ...] = ("particle", "cads")
    layout: Callable[[dict[str, Any]], TextLayout] | None = None

    def noise_level(self, timestep: torch.Tensor) -> torch.Tensor:
        """The sampler time t in [0, 1] (1 = pure noise) of the forward's `timestep` argument, on its device."""
        _, noise, clean = self.timestep
        return (timestep.to(torch.float64) - clean) / (noise - clean)

    def text_layout(self, arguments: dict[str, Any]) -> TextLayout:
        """Where the text is in this call (the forward's arguments): by default the text stream as given, first
        in joint sequences, its masked pads left out (one host read where the family masks)."""
        if self.layout is not None:
            return self.layout(arguments)
        length = arguments[self.text].shape[1]
        mask = self.text_mask(arguments)
        if mask is not None:
            mask = mask.reshape(mask.shape[0], -1)[:, :length]
        runs = None if mask is None else shifted(mask_runs(mask), self.registers)
        tokens = length + self.registers
        return TextLayout(tokens, offset=-tokens if self.text_last else 0, runs=runs)

    def text_mask(self, arguments: dict[str, Any]) -> torch.Tensor | None:
        """The forward's text mask argument, if the family has one and the call passes it."""
        if self.mask is None:
            return None
        found: Any = arguments
        for name in self.mask.split("."):
            found = found.get(name) if isinstance(found, dict) else None
        return found


def _z_image_layout(arguments: dict[str, Any]) -> TextLayout:
    """Z-Image's unified rows: [image, padded to 32 | caption, padded to 32 | batch padding]; the caption's pads are
    attended, the batch padding is masked."""
    if isinstance(arguments["x"][0], (list, tuple)):
        raise ValueError(
            "Z-Image's Omni mode (several images and captions per sample) lays its sequence out otherwise: "
            "fastrepulse repels in Z-Image's text-to-image calls (one image and one caption per sample) only"
        )
    patch, frames = arguments.get("patch_size", 2), arguments.get("f_patch_size", 1)
    depth, height, width = arguments["x"][0].shape[1:]
    image = (depth // frames) * (height // patch) * (width // patch)
    captions = [-(-len(caption) // 32) * 32 for caption in arguments["cap_feats"]]
    return TextLayout(max(captions), offset=-(-image // 32) * 32, runs=tuple(((0, length),) for length in captions))


def _lumina2_layout(arguments: dict[str, Any]) -> TextLayout:
    """Lumina2's joint rows: [attended caption | image | masked padding], each caption as long as its mask says."""
    runs = mask_runs(arguments["encoder_attention_mask"])
    return TextLayout(max((stop for row in runs for _, stop in row), default=0), runs=runs)


def _ernie_image_layout(arguments: dict[str, Any]) -> TextLayout:
    """ERNIE-Image's sequences are [image | text padded to the longest], each sample's text as long as `text_lens`."""
    tokens = arguments["text_bth"].shape[1]
    lengths = arguments["text_lens"].tolist()
    return TextLayout(tokens, offset=-tokens, runs=tuple(((0, length),) for length in lengths))


def _ideogram4_layout(arguments: dict[str, Any]) -> TextLayout:
    """Ideogram4's sequences are [left padding | text | image]; the `indicator` argument marks text with 3."""
    runs = mask_runs(arguments["indicator"] == 3)
    return TextLayout(max((stop for row in runs for _, stop in row), default=0), runs=runs)


def _hidream_layout(arguments: dict[str, Any]) -> TextLayout:
    """HiDream's text is [T5 | Llama layer -1], and each block appends its own Llama layer's tokens, which it drops
    again: a dual block returns all three, a single block [image | text | Llama layer]."""
    t5, llama = arguments["encoder_hidden_states_t5"].shape[1], arguments["encoder_hidden_states_llama3"].shape[2]
    return TextLayout(t5 + llama, offset=-(t5 + 2 * llama), stream=t5 + 2 * llama)


def _hunyuan_image_layout(arguments: dict[str, Any]) -> TextLayout:
    """HunyuanImage's text is [Qwen | ByT5], each row reordered to put its attended tokens first; joint sequences
    are [image | text]."""
    qwen, byt5 = arguments["encoder_hidden_states"], arguments.get("encoder_hidden_states_2")
    tokens = qwen.shape[1] + (0 if byt5 is None else byt5.shape[1])
    masks = [arguments.get("encoder_attention_mask"), arguments.get("encoder_attention_mask_2")]
    counts = [mask.reshape(mask.shape[0], -1).bool().sum(1) for mask in masks if mask is not None]
    if not counts:
        return TextLayout(tokens, offset=-tokens)
    attended = torch.stack(counts).sum(0).tolist()
    return TextLayout(tokens, offset=-tokens, runs=tuple(((0, count),) for count in attended))


CROSS_ATTENTION = "its text conditioning enters by cross-attention only and never changes inside the network"
CAUSAL = "its text is encoded causally, ahead of the image, and never changes with the image inside the network"

FLUX_LIKE = (BlockList("transformer_blocks", DUAL), BlockList("single_transformer_blocks", SINGLE))
IMAGE_FIRST = BlockKind("dual", block_text=1)
"""A dual-stream block that returns (image, text)."""
JOINT = BlockKind("single")

FAMILIES = (
    Family("flux", ("FluxTransformer2DModel",), FLUX_LIKE),
    Family("sd3", ("SD3Transformer2DModel",), (BlockList("transformer_blocks", DUAL),), ("timestep", 1000.0, 0.0)),
    Family("flux2", ("Flux2Transformer2DModel",), FLUX_LIKE),
    Family("chroma", ("ChromaTransformer2DModel",), FLUX_LIKE),  # its 0/1 mask is added to the scores: pads attended
    Family("longcat-image", ("LongCatImageTransformer2DModel",), FLUX_LIKE),
    Family("ovis-image", ("OvisImageTransformer2DModel",), FLUX_LIKE),
    Family("bria", ("BriaTransformer2DModel",), FLUX_LIKE, ("timestep", 1000.0, 0.0)),
    Family(
        "qwen-image",
        ("QwenImageTransformer2DModel",),
        (BlockList("transformer_blocks", DUAL),),
        mask="encoder_hidden_states_mask",
    ),
    Family(  # not the noise, context and siglip refiners: image only, text only
        "z-image",
        ("ZImageTransformer2DModel",),
        (BlockList("layers", BlockKind("single", attention="attention")),),
        ("t", 0.0, 1.0),
        text="cap_feats",
        image="x",
        conditional_first=True,
        layout=_z_image_layout,
    ),
    Family(
        "hidream",
        ("HiDreamImageTransformer2DModel",),
        (
            BlockList("double_stream_blocks", BlockKind("dual", attention="attn1", block_text=1), inner="block"),
            BlockList("single_stream_blocks", BlockKind("single", attention="attn1"), inner="block"),
        ),
        ("timesteps", 1000.0, 0.0),
        text="encoder_hidden_states_t5",
        layout=_hidream_layout,
    ),
    Family(  # not the context and noise refiners
        "lumina2",
        ("Lumina2Transformer2DModel",),
        (BlockList("layers", JOINT),),
        ("timestep", 0.0, 1.0),
        mask="encoder_attention_mask",
        follows_mask=True,
        layout=_lumina2_layout,
    ),
    Family(  # not the text-fusion blocks
        "krea2",
        ("Krea2Transformer2DModel",),
        (BlockList("transformer_blocks", JOINT),),
        mask="encoder_attention_mask",
    ),
    Family(  # not the token refiner: text only
        "hunyuan-image",
        ("HunyuanImageTransformer2DModel",),
        (BlockList("transformer_blocks", IMAGE_FIRST), BlockList("single_transformer_blocks", IMAGE_FIRST)),
        ("timestep", 1000.0, 0.0),
        mask="encoder_attention_mask",
        follows_mask=True,
        layout=_hunyuan_image_layout,
    ),
    Family(
        "cogview4",
        ("CogView4Transformer2DModel",),
        (BlockList("transformer_blocks", BlockKind("dual", attention="attn1", block_text=1)),),
        ("timestep", 1000.0, 0.0),
    ),
    Family(
        "auraflow",
        ("AuraFlowTransformer2DModel",),
        (BlockList("joint_transformer_blocks", DUAL), BlockList("single_transformer_blocks", JOINT)),
        registers=8,
    ),
    Family(
        "ernie-image",
        ("ErnieImageTransformer2DModel",),
        (BlockList("layers", BlockKind("single", attention="self_attention", sequence_first=True)),),
        ("timestep", 1000.0, 0.0),
        text="text_bth",
        mask="text_lens",
        layout=_ernie_image_layout,
    ),
    Family(
        "bria-fibo",
        ("BriaFiboTransformer2DModel",),
        FLUX_LIKE,
        ("timestep", 1000.0, 0.0),
        mask="joint_attention_kwargs.attention_mask",
        carried=0.5,
    ),
    Family(  # the unconditional branch is a transformer of its own, without text
        "ideogram4",
        ("Ideogram4Transformer2DModel",),
        (BlockList("layers", BlockKind("single", attention="attention")),),
        ("timestep", 0.0, 1.0),
        mask="indicator",
        layout=_ideogram4_layout,
        # its text argument holds zero features at the image's places too: CADS would noise them
        baselines=("particle",),
    ),
    Family(  # not the token refiner: text only
        "hunyuan-video",
        ("HunyuanVideoTransformer3DModel",),
        (BlockList("transformer_blocks", IMAGE_FIRST), BlockList("single_transformer_blocks", IMAGE_FIRST)),
        ("timestep", 1000.0, 0.0),
        mask="encoder_attention_mask",
        text_last=True,
    ),
    Family(
        "cogvideox",
        ("CogVideoXTransformer3DModel",),
        (BlockList("transformer_blocks", BlockKind("dual", attention="attn1", block_text=1)),),
        ("timestep", 1000.0, 0.0),
        per_prompt=False,
    ),
    Family(
        "mochi",
        ("MochiTransformer3DModel",),
        (BlockList("transformer_blocks", BlockKind("dual", attention="attn1", block_text=1)),),
        ("timestep", 0.0, 1000.0),  # its inverted schedule: 0 at pure noise
        mask="encoder_attention_mask",
    ),
    Family("unet", ("UNet2DConditionModel",), timestep=("timestep", 1000.0, 0.0), no_stream=CROSS_ATTENTION),
    Family("pixart", ("PixArtTransformer2DModel",), timestep=("timestep", 1000.0, 0.0), no_stream=CROSS_ATTENTION),
    Family("sana", ("SanaTransformer2DModel",), timestep=("timestep", 1000.0, 0.0), no_stream=CROSS_ATTENTION),
    Family("wan", ("WanTransformer3DModel",), timestep=("timestep", 1000.0, 0.0), no_stream=CROSS_ATTENTION),
    Family("ltx", ("LTXVideoTransformer3DModel",), timestep=("timestep", 1000.0, 0.0), no_stream=CROSS_ATTENTION),
    Family("qwen-image-2.1", ("QwenImage21Transformer2DModel",), no_stream=CAUSAL),
    Family("omnigen", ("OmniGenTransformer2DModel",), text=None, no_stream=CAUSAL, baselines=("particle",)),
    Family("cosmos3", ("Cosmos3OmniTransformer",), no_stream=CAUSAL, baselines=()),
)
"""Every denoiser family fastrepulse knows, contextual or baselines-only."""


@dataclass(frozen=True)
class TextBlock:
    """A block of the denoiser that carries text, with its kind and its index among such blocks."""

    index: int
    module: torch.nn.Module
    kind: BlockKind

    @property
    def attention(self) -> torch.nn.Module:
        """The block's attention module (the "attention" site's hook goes there)."""
        return self.module.get_submodule(self.kind.attention)


@dataclass(frozen=True)
class Denoiser:
    """The pipeline's denoiser, its family, and its text-carrying blocks (empty: no contextual stream)."""

    module: torch.nn.Module
    family: Family
    blocks: tuple[TextBlock, ...]


def supported() -> str:
    """The denoiser classes fastrepulse knows, for messages."""
    contextual = ", ".join(name for family in FAMILIES if family.blocks for name in family.classes)
    baselines = ", ".join(
        f"{name} ({' or '.join(family.baselines)})"
        for family in FAMILIES
        if not family.blocks and family.baselines
        for name in family.classes
    )
    return f"{contextual} (every method); {baselines}"


def find_denoiser(pipe: object) -> Denoiser:
    """The denoiser of a diffusers pipeline and its text-carrying blocks, or TypeError naming what is supported."""
    import diffusers

    major, minor = (int(part) for part in diffusers.__version__.split(".")[:2])
    if (major, minor) < MIN_DIFFUSERS:
        raise TypeError(f"fastrepulse needs diffusers >= 0.35, found {diffusers.__version__}; upgrade it")
    module = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    module = getattr(module, "_orig_mod", module)  # under torch.compile the pipeline holds an OptimizedModule
    names = {cls.__name__ for cls in type(module).__mro__} if module is not None else set()
    family = next((family for family in FAMILIES if names & set(family.classes)), None)
    if family is None:
        found = type(module).__name__ if module is not None else "no transformer or unet"
        raise TypeError(f"fastrepulse supports {supported()}; got {type(pipe).__name__} with {found}")
    blocks = []
    for block_list in family.blocks:
        for entry in getattr(module, block_list.path, None) or ():
            block = getattr(entry, block_list.inner) if block_list.inner else entry
            if getattr(block, "context_pre_only", False):
                continue  # drops the text stream: returns no text
            blocks.append(TextBlock(len(blocks), block, block_list.kind))
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
