"""`RepulsionConfig`: what `fastrepulse.patch` does to a pipeline, validated once, plus the paper's presets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from fastrepulse.forces import KERNELS, OBJECTIVES, Kernel, Objective
from fastrepulse.repulsion import BACKENDS, SOLVERS, Backend, Solver

Method = Literal["contextual", "particle", "cads"]
Site = Literal["attention", "block"]
Thirds = Literal["all", "early", "middle", "late"]
METHODS: tuple[str, ...] = ("contextual", "particle", "cads")
SITES: tuple[str, ...] = ("attention", "block")
THIRDS: tuple[str, ...] = ("all", "early", "middle", "late")
SINGLE_STREAM_TOKENS: tuple[str, ...] = ("all", "text")


@dataclass(frozen=True)
class RepulsionConfig:
    """How a patched pipeline diversifies the images of one prompt.

    Attributes:
        scale: step size. For "contextual" the paper's eta (total ascent step per block, 5e2 .. 8e9 in the
            paper, growing with the activations' norm); for "particle" the strength of the latent repulsion
            per unit of sampler time; for "cads" the noise scale s on the text conditioning (paper: 0.25).
        method: "contextual" (the paper: repel the enriched text tokens inside the transformer blocks),
            "particle" (Particle Guidance: RBF repulsion of the latents in each sampler step) or "cads"
            (condition-annealed sampling: annealed noise on the text conditioning of both CFG branches).
        steps: how many leading sampler steps of each pipeline call are touched, or "all".
        iterations: ascent steps per block for "contextual" (the paper's M).
        blocks: "all", "early", "middle" or "late" (thirds, in forward order), or block indices into the
            blocks that carry text (Flux: the dual-stream blocks, then the single-stream ones).
        site: "attention" (text part of the joint-attention output, before the residual add) or "block"
            (text hidden state at the block output).
        single_stream_tokens: in Flux single-stream blocks repel "all" tokens (text and image, the paper)
            or only the "text" tokens.
        objective, kernel: what is ascended (see `fastrepulse.repel`); for "particle" they default to the
            Particle-Guidance pairwise energy with an RBF kernel.
        backend, solver: backend and solver of `fastrepulse.repel`.
        group_size: samples per group (consecutive), or "auto": the images of each prompt within each guidance
            branch, however they were asked for (`fastrepulse.groups`), repel each other and nothing else.
        cads_tau1, cads_tau2: CADS schedule on t in [0, 1] (1 = pure noise): the conditioning is clean for
            t <= tau1, pure noise for t >= tau2, linear in between.
        cads_psi: CADS mix of the rescaled and the raw noisy conditioning (1 = rescaled only).
        cads_rescale: rescale the noisy conditioning back to each sample's original mean and std.
        seed: seed of the CADS noise, so a patched pipeline stays reproducible.
    """

    scale: float
    method: Method = "contextual"
    steps: int | Literal["all"] = 1
    iterations: int = 50
    blocks: Thirds | tuple[int, ...] = "all"
    site: Site = "attention"
    single_stream_tokens: Literal["all", "text"] = "all"
    objective: Objective = "vendi"
    kernel: Kernel = "cosine"
    backend: Backend = "auto"
    solver: Solver = "host"
    group_size: int | Literal["auto"] = "auto"
    cads_tau1: float = 0.6
    cads_tau2: float = 0.9
    cads_psi: float = 1.0
    cads_rescale: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.blocks, (list, range)):
            object.__setattr__(self, "blocks", tuple(self.blocks))
        _check_number("scale", self.scale, minimum=0.0)
        _check_choice("method", self.method, METHODS)
        if self.steps != "all":
            _check_int("steps", self.steps, minimum=1, also='or "all"')
        _check_int("iterations", self.iterations, minimum=1)
        if isinstance(self.blocks, tuple):
            if not self.blocks:
                raise ValueError('blocks must not be empty; pass "all" or at least one block index')
            for index in self.blocks:
                _check_int("blocks entries", index, minimum=0)
        else:
            _check_choice("blocks", self.blocks, THIRDS, also="or a list/range of block indices")
        _check_choice("site", self.site, SITES)
        _check_choice("single_stream_tokens", self.single_stream_tokens, SINGLE_STREAM_TOKENS)
        _check_choice("objective", self.objective, OBJECTIVES)
        _check_choice("kernel", self.kernel, KERNELS)
        _check_choice("backend", self.backend, BACKENDS)
        _check_choice("solver", self.solver, SOLVERS)
        if self.group_size != "auto":
            _check_int("group_size", self.group_size, minimum=1, also='or "auto"')
        _check_number("cads_tau1", self.cads_tau1, minimum=0.0, maximum=1.0)
        _check_number("cads_tau2", self.cads_tau2, minimum=0.0, maximum=1.0)
        if self.cads_tau1 >= self.cads_tau2:
            raise ValueError(f"cads_tau1 must be below cads_tau2, got {self.cads_tau1} and {self.cads_tau2}")
        _check_number("cads_psi", self.cads_psi, minimum=0.0, maximum=1.0)
        if not isinstance(self.cads_rescale, bool):
            raise ValueError(f"cads_rescale must be True or False, got {self.cads_rescale!r}")
        _check_int("seed", self.seed, minimum=0)

    def replace(self, **changes: Any) -> RepulsionConfig:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    def touches_step(self, step: int) -> bool:
        """Whether sampler step `step` (0-based, within one pipeline call) is repelled."""
        return self.scale > 0 and (self.steps == "all" or step < self.steps)


def _check_choice(name: str, value: object, choices: tuple[str, ...], also: str = "") -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}{' ' + also if also else ''}, got {value!r}")


def _check_int(name: str, value: object, minimum: int, also: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{' ' + also if also else ''}, got {value!r}")


def _check_number(name: str, value: object, minimum: float, maximum: float = math.inf) -> None:
    valid = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not valid or not minimum <= value <= maximum:
        bounds = f">= {minimum}" if maximum == math.inf else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be a finite number {bounds}, got {value!r}")


PRESETS: dict[str, RepulsionConfig] = {
    # The paper's tau (steps) and M (iterations); scale is the geometric middle of the paper's eta range.
    "flux-dev": RepulsionConfig(scale=2e8, steps=1, iterations=50),  # eta 5e6 .. 8e9, 20 steps, guidance 3.5
    "flux-kontext": RepulsionConfig(scale=2e8, steps=1, iterations=50),  # as Flux-dev, on the instruction stream
    "sd3.5-large": RepulsionConfig(scale=5e4, steps=4, iterations=100),  # eta 5e2 .. 5e6, 28 steps, true CFG 3.5
    "sd3.5-turbo": RepulsionConfig(scale=1e6, steps=1, iterations=100),  # eta 1e5 .. 1e7, 4 steps, no CFG
    # What bench/diversity.py recommends for the testbed digit models (docs/diversity.md): every step.
    "testbed": RepulsionConfig(scale=3e4, steps="all", iterations=50),
    # What bench/scenes_diversity.py recommends for the scene models: the first 25% of their 20 steps, the late third
    # of the blocks, at the block output (docs/diversity.md, held-out seeds: Flux feature-Vendi +11..13% and
    # free-attribute entropy +15..22% at unchanged fidelity; Chroma Vendi +8..9%, fidelity +2.6..3.5; SD3 Vendi +3..5%).
    "scenes": RepulsionConfig(scale=1e5, steps=5, iterations=50, blocks="late", site="block"),
}

FLUX_DEV_TEXT = (512, 3072)
"""Tokens and width of Flux-dev's text stream (T5 padded to 512, attended), where the paper's eta was found."""
NOMINAL_PROMPT = 64
"""Attended text tokens taken for a family that masks its pads, where the text's length is the prompt's."""

FAMILY_SIZES: dict[str, tuple[int, int, int]] = {
    # preset: (text tokens the vector holds, text width, the pipeline's default steps), from diffusers 0.42.1's
    # defaults (tests/test_presets.py reads them back); NOMINAL_PROMPT where the pads are masked
    "qwen-image": (NOMINAL_PROMPT, 3072, 50),
    "flux2-dev": (512, 6144, 50),  # Mistral text padded to 512, attended
    "chroma": (512, 3072, 35),  # T5 padded to 512; its 0/1 mask is added to the scores, so the pads are attended
    "longcat-image": (512, 3072, 50),
    "ovis-image": (256, 3072, 50),
    "bria": (128, 3072, 30),
    "z-image": (NOMINAL_PROMPT, 3840, 50),
    "z-image-turbo": (NOMINAL_PROMPT, 3840, 9),
    "hidream": (256, 2560, 50),  # T5 128 + Llama 128
    "lumina2": (NOMINAL_PROMPT, 2304, 30),
    "krea2": (NOMINAL_PROMPT, 6144, 28),
    "hunyuan-image": (NOMINAL_PROMPT, 3584, 50),
    "cogview4": (NOMINAL_PROMPT, 2560, 50),  # padded to the longest prompt of a call, a multiple of 16
    "auraflow": (8 + 256, 3072, 50),  # 8 registers and UMT5 padded to 256, attended
}
"""The sizes the family presets are carried to (`preset_scale`); not calibrated on real weights."""


def preset_scale(tokens: int, width: int) -> float:
    """The `flux-dev` scale carried to a text vector of `tokens` x `width`, to two digits.

    The cosine force on a sample scales like 1/|c| and one step's angle like scale/|c|^2, so the same angle per block
    needs scale proportional to |c|^2 = tokens x width x (rms of an entry)^2. The rms is taken as Flux-dev's: real
    models differ (the paper's SD3.5-large range sits ~2000x below this rule's), so a family preset is where to start
    a sweep, not a calibrated value.
    """
    return float(f"{PRESETS['flux-dev'].scale * tokens * width / (FLUX_DEV_TEXT[0] * FLUX_DEV_TEXT[1]):.2g}")


def _family_preset(tokens: int, width: int, default_steps: int) -> RepulsionConfig:
    """The paper's Flux-dev regime (1 of 20 steps: the first 5%, at least one; M = 50) at the family's scale."""
    return RepulsionConfig(scale=preset_scale(tokens, width), steps=max(1, round(0.05 * default_steps)), iterations=50)


PRESETS.update({name: _family_preset(*sizes) for name, sizes in FAMILY_SIZES.items()})

METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "contextual": {},
    "particle": {"steps": "all", "objective": "energy", "kernel": "rbf", "iterations": 1},
    "cads": {"steps": "all"},
}
"""Defaults that differ by method, applied under a preset's and the caller's own values."""


def make_config(preset: str | RepulsionConfig | None, method: str | None, given: dict[str, Any]) -> RepulsionConfig:
    """The config of `patch`: the method's defaults, then the preset, then the caller's values (None = not given)."""
    if isinstance(preset, str) and preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)} or a RepulsionConfig, got {preset!r}")
    if preset is not None and not isinstance(preset, (str, RepulsionConfig)):
        raise TypeError(f"preset must be a preset name or a RepulsionConfig, got {type(preset).__name__}")
    base = PRESETS[preset] if isinstance(preset, str) else preset
    method = method or (base.method if base is not None else "contextual")
    _check_choice("method", method, METHODS)
    if base is not None and base.method != method:
        raise ValueError(f"preset {preset!r} is for method={base.method!r}; drop the preset to use method={method!r}")
    fields: dict[str, Any] = dataclasses.asdict(base) if base is not None else {}
    fields = {**METHOD_DEFAULTS[method], **fields, "method": method}
    fields.update({name: value for name, value in given.items() if value is not None})
    if "scale" not in fields:
        raise ValueError(f"pass scale=... or a preset (one of {sorted(PRESETS)}); method={method!r} has no default")
    return RepulsionConfig(**fields)
