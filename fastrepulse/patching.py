"""`patch(pipe)`: contextual repulsion, or a baseline, inside a diffusers pipeline; `unpatch` undoes it exactly.

What a patch changes, all on the pipeline instance and all kept on the handle for `remove`:
- the instance's class, swapped for a subclass whose ``__call__`` opens per-call state (the group size from
  ``num_images_per_prompt``, the step counter) and drops it in ``finally``;
- ``pipe.scheduler``, wrapped so that every ``step`` advances the counter (`fastrepulse.scheduler`);
- a forward pre-hook on the denoiser (the state of one transformer call; CADS noise) and, for
  "contextual", forward hooks on the selected blocks or their attention modules.

Under ``torch.compile`` (diffusers' regional compilation compiles the transformer blocks, hooks included) the block
and attention hooks are traced into the graphs: their bodies read only what is fixed for the handle's lifetime and
pass the tensors to the custom op ``fastrepulse::repel_in_hook``, which Dynamo records without looking inside. So
nothing breaks the graph, and the per-call state (step, group size, text length), read by the op at run time, never
becomes a guard that would recompile per step. Dynamo does not notice hooks added to a module that had none, so
`patch` drops the code it compiled for the denoiser's modules (`_drop_compiled_code`). Dynamo itself is imported at the
first patch (`_register_with_dynamo`): importing it takes seconds, which `import fastrepulse` should not.

A patched pipeline copies and pickles as one (`copy.deepcopy`, `pickle`, `torch.save`): the hooks are bound methods of
the handle and the handle refers to the pipeline, so the copy's hooks, on the copy's modules, report to the copy's
handle, which takes a key of its own (`RepulsionHandle.__reduce__`); the copy wraps its own scheduler. A patched
pipeline runs one call at a time: its per-call state lives on the handle, as diffusers keeps its own on the scheduler.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import threading
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch

from fastrepulse.baselines import cads_condition, particle_guidance
from fastrepulse.config import Method, RepulsionConfig, Site, Thirds, make_config
from fastrepulse.forces import Kernel, Objective
from fastrepulse.models import BlockKind, Denoiser, TextBlock, find_denoiser, select_blocks
from fastrepulse.repulsion import Backend, Solver, repel
from fastrepulse.scheduler import unwrap_scheduler, wrap_scheduler

HANDLE_ATTRIBUTE = "_fastrepulse_handle"

_HANDLES: weakref.WeakValueDictionary[int, RepulsionHandle] = weakref.WeakValueDictionary()
"""The live handles by key: a custom op takes no Python objects, so `_repel_in_hook` gets the key."""
_KEYS = itertools.count()
_UNCOPIED = ("_call", "_forward", "_busy", "_key")
"""What a handle's copy starts afresh (`RepulsionHandle._start`): the call in progress, the lock, the key."""


def patch(
    pipe: Any,
    preset: str | RepulsionConfig | None = None,
    *,
    method: Method | None = None,
    scale: float | None = None,
    steps: int | Literal["all"] | None = None,
    iterations: int | None = None,
    blocks: Thirds | tuple[int, ...] | list[int] | range | None = None,
    site: Site | None = None,
    single_stream_tokens: Literal["all", "text"] | None = None,
    objective: Objective | None = None,
    kernel: Kernel | None = None,
    backend: Backend | None = None,
    solver: Solver | None = None,
    group_size: int | Literal["auto"] | None = None,
    seed: int | None = None,
) -> RepulsionHandle:
    """Make `pipe` push the images of each prompt apart; returns the handle that undoes it.

    Arguments left as None come from the preset (a name from `fastrepulse.PRESETS` or a `RepulsionConfig`),
    else from `RepulsionConfig`'s defaults for the method; see `RepulsionConfig` for each field. Patching a
    patched pipeline replaces its configuration.

    Raises:
        TypeError: a pipeline whose denoiser fastrepulse does not support (the message names those it does).
        ValueError: a bad option, or method="contextual" on a UNet pipeline (no contextual stream).

    Example:
        >>> handle = fastrepulse.patch(pipe, preset="flux-dev")  # doctest: +SKIP
        >>> images = pipe("a bear in a forest", num_images_per_prompt=4).images  # doctest: +SKIP
        >>> handle.remove()  # doctest: +SKIP
    """
    given = {name: value for name, value in locals().items() if name not in ("pipe", "preset", "method")}
    config = make_config(preset, method, given)
    denoiser = find_denoiser(pipe)
    blocks = _hooked_blocks(pipe, denoiser, config)  # every check before anything changes
    unpatch(pipe)
    return RepulsionHandle(pipe, config, denoiser, blocks)


def unpatch(pipe: Any) -> None:
    """Undo `patch` on `pipe`, if it is patched: the pipeline then behaves exactly as one never patched."""
    handle = pipe.__dict__.get(HANDLE_ATTRIBUTE)
    if handle is not None:
        handle.remove()


@contextmanager
def patched(pipe: Any, preset: str | RepulsionConfig | None = None, **options: Any) -> Iterator[RepulsionHandle]:
    """`patch` for the duration of a with-block; takes the same arguments."""
    handle = patch(pipe, preset, **options)
    try:
        yield handle
    finally:
        handle.remove()


@dataclass
class _CallState:
    """One pipeline call: its group size and the sampler step it is at."""

    images_per_prompt: int
    step: int = 0
    generator: torch.Generator | None = None  # CADS noise, seeded at the call's first draw


@dataclass(frozen=True)
class _ForwardState:
    """One denoiser call inside a repelled step."""

    batch: int
    text_tokens: int
    group_size: int


class RepulsionHandle:
    """What `patch` changed on one pipeline; `remove()` restores every original."""

    def __init__(self, pipe: Any, config: RepulsionConfig, denoiser: Denoiser, blocks: tuple[TextBlock, ...]) -> None:
        _register_with_dynamo()
        self.pipe = pipe
        self.config = config
        self.denoiser = denoiser
        self._warned_single_groups = False
        self._start()
        self._hooks = [denoiser.module.register_forward_pre_hook(self._before_denoiser, with_kwargs=True)]
        for block in blocks:
            if config.site == "attention":
                hook = functools.partial(self._after_attention, block.kind)
                self._hooks.append(block.module.attn.register_forward_hook(hook, with_kwargs=True))
            else:
                hook = functools.partial(self._after_block, block.kind)
                self._hooks.append(block.module.register_forward_hook(hook, with_kwargs=True))
        _drop_compiled_code(denoiser.module)
        pipe.__dict__[HANDLE_ATTRIBUTE] = self
        pipe.__dict__["scheduler"] = wrap_scheduler(pipe.scheduler, self)
        pipe.__class__ = _calling_class(type(pipe))

    def _start(self) -> None:
        """No call running, and a key of its own under which the hooks' op finds this handle."""
        self._call: _CallState | None = None
        self._forward: _ForwardState | None = None
        self._busy = threading.Lock()
        self._key = next(_KEYS)
        _HANDLES[self._key] = self

    def __reduce__(self) -> tuple:
        """Copied or pickled with its pipeline: the copy refers to the copied pipeline, denoiser and hook handles, and
        starts again (`_start`), so the copy's hooks, which are its bound methods, find it and not this handle."""
        return _new_handle, (), {name: value for name, value in self.__dict__.items() if name not in _UNCOPIED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._start()

    def remove(self) -> None:
        """Remove the hooks, the scheduler wrapper and the class swap; a second call does nothing."""
        pipe = self.pipe
        if pipe.__dict__.get(HANDLE_ATTRIBUTE) is not self:
            return
        for hook in self._hooks:
            hook.remove()
        del _HANDLES[self._key]
        pipe.__dict__["scheduler"] = unwrap_scheduler(pipe.scheduler)
        pipe.__class__ = type(pipe).__dict__["_fastrepulse_base"]
        del pipe.__dict__[HANDLE_ATTRIBUTE]

    @contextmanager
    def pipeline_call(self, call: Any, args: tuple, kwargs: dict) -> Iterator[None]:
        """Per-call state for one call of the pipeline's original `__call__`, dropped when it ends.

        Raises:
            RuntimeError: a call is already running (another thread's, or one that this call is made from).
        """
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(
                f"this patched {type(self.pipe).__name__} is already running a call: a patched pipeline runs one call "
                "at a time (the call's state lives on the pipeline, in diffusers' scheduler and in fastrepulse's "
                "handle); use one pipeline per thread, e.g. copy.deepcopy(pipe) for each"
            )
        try:
            bound = _signature(call).bind(self.pipe, *args, **kwargs)
            images_per_prompt = bound.arguments.get("num_images_per_prompt") or kwargs.get("num_images_per_prompt") or 1
            if unwrap_scheduler(self.pipe.scheduler) is self.pipe.scheduler:  # replaced since patch: wrap the new one
                self.pipe.__dict__["scheduler"] = wrap_scheduler(self.pipe.scheduler, self)
            self._call = _CallState(images_per_prompt)
            yield
        finally:
            self._call = None
            self._forward = None
            self._busy.release()

    def on_step(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Count one sampler step of the current call; Particle Guidance adjusts the model output first."""
        call = self._call
        if call is None:
            return model_output
        step, call.step = call.step, call.step + 1
        if self.config.method != "particle" or not self.config.touches_step(step):
            return model_output
        group_size = self._group_size(sample.shape[0])
        if group_size == 1:
            return model_output
        prediction = self.pipe.scheduler.config.get("prediction_type", "flow")
        return particle_guidance(model_output, sample, self.config, group_size, 1.0 if prediction == "sample" else -1.0)

    def _before_denoiser(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        self._forward = None
        call = self._call
        if call is None or self.config.method == "particle" or not self.config.touches_step(call.step):
            return None
        bound = _signature(type(module).forward).bind(module, *args, **kwargs)
        text = bound.arguments["encoder_hidden_states"]
        if self.config.method == "contextual":
            batch = bound.arguments.get("hidden_states", text).shape[0]
            self._forward = _ForwardState(batch, text.shape[1], self._group_size(batch))
            return None
        if call.generator is None:
            call.generator = torch.Generator(device=text.device).manual_seed(self.config.seed)
        t = float(torch.as_tensor(bound.arguments["timestep"]).flatten()[0]) / self.denoiser.timestep_scale
        bound.arguments["encoder_hidden_states"] = cads_condition(text, t, self.config, call.generator)
        return bound.args[1:], bound.kwargs

    def _after_attention(self, kind: BlockKind, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any):
        if kind.attention_text is not None:
            _repel_in_hook([output[kind.attention_text]], self._key, text_prefix=False)
        else:
            _repel_in_hook([output], self._key, text_prefix=self.config.single_stream_tokens == "text")
        return None

    def _after_block(self, kind: BlockKind, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any):
        parts = [output[kind.block_text]]
        if kind.name == "single" and self.config.single_stream_tokens == "all":
            parts.append(output[1 - kind.block_text])
        _repel_in_hook(parts, self._key, text_prefix=False)
        return None

    def _repel(self, *parts: torch.Tensor) -> None:
        """Repel the samples made of `parts` (concatenated per sample), writing the result back into them."""
        forward = self._forward
        if parts[0].shape[0] != forward.batch or forward.group_size == 1:
            return  # a text batch that broadcasts over the images (prompt embeds of batch 1) has nothing to split
        config = self.config
        options = {
            "scale": config.scale,
            "iterations": config.iterations,
            "group_size": forward.group_size,
            "objective": config.objective,
            "kernel": config.kernel,
            "backend": config.backend,
            "solver": config.solver,
        }
        if len(parts) == 1:
            repel(parts[0], out=parts[0], **options)
            return
        joined = torch.cat([part.flatten(1) for part in parts], dim=1)
        repel(joined, out=joined, **options)
        for part, update in zip(parts, joined.split([part[0].numel() for part in parts], dim=1), strict=True):
            part.copy_(update.view(part.shape))

    def _group_size(self, batch: int) -> int:
        size = self.config.group_size
        if size == "auto":
            size = self._call.images_per_prompt
        if batch % size:
            raise ValueError(
                f"a batch of {batch} samples does not split into groups of {size}; "
                "pass group_size=<samples per prompt> to fastrepulse.patch"
            )
        if size == 1 and not self._warned_single_groups:
            self._warned_single_groups = True
            warnings.warn(
                "fastrepulse: each group holds one sample (num_images_per_prompt=1), so there is nothing to repel; "
                "generate several images per prompt, or pass group_size= if the batch already holds them",
                stacklevel=2,
            )
        return size


@torch.library.custom_op("fastrepulse::repel_in_hook", mutates_args=("parts",))
def _repel_in_hook(parts: list[torch.Tensor], key: int, text_prefix: bool) -> None:
    """A hook's work at run time: repel `parts` in place if handle `key` is inside a repelled step, else nothing.

    An op, so that compiled blocks call it without a graph break and without tracing the per-call state it reads.
    `text_prefix`: repel only the text tokens that lead ``parts[0]`` (a Flux single-stream sequence), as many as
    the current denoiser call has.
    """
    handle = _HANDLES.get(key)
    forward = None if handle is None else handle._forward
    if forward is None:
        return  # outside a repelled step (or a handle already removed)
    if text_prefix:
        parts = [parts[0][:, : forward.text_tokens]]
    handle._repel(*parts)


@_repel_in_hook.register_fake
def _(parts: list[torch.Tensor], key: int, text_prefix: bool) -> None:
    return None


@functools.cache
def _register_with_dynamo() -> None:
    """Tell Dynamo how to run the hooks, once, at the first patch (or unpickled handle), importing it only then.

    The denoiser's pre-hook reads and sets the per-call state, so it runs eagerly, outside any graph. A block or
    attention hook on a compiled module itself (Flux blocks under regional compilation) is called as a frame of its
    own, which Dynamo would compile into a graph of just the op: such frames run eagerly, while compiled callers still
    trace the hooks inlined.
    """
    from torch._dynamo.eval_frame import skip_code

    RepulsionHandle._before_denoiser = torch.compiler.disable(RepulsionHandle._before_denoiser)
    skip_code(RepulsionHandle._after_attention.__code__)
    skip_code(RepulsionHandle._after_block.__code__)


def _new_handle() -> RepulsionHandle:
    """An empty handle for a copy or unpickling to fill (`RepulsionHandle.__reduce__`), once Dynamo knows the hooks."""
    _register_with_dynamo()
    return RepulsionHandle.__new__(RepulsionHandle)


def _drop_compiled_code(denoiser: torch.nn.Module) -> None:
    """Drop what Dynamo compiled for the forwards of `denoiser` and its submodules, so the new hooks get traced.

    Dynamo does not guard on the hooks of a module that has none (``torch._dynamo.config.skip_nnmodule_hook_guards``):
    a block compiled before the patch, or while unpatched, would run on without them. The next call recompiles.
    """
    from torch._dynamo.eval_frame import reset_code

    for code in {getattr(type(module).forward, "__code__", None) for module in denoiser.modules()} - {None}:
        reset_code(code)


def _hooked_blocks(pipe: Any, denoiser: Denoiser, config: RepulsionConfig) -> tuple[TextBlock, ...]:
    """The blocks whose text stream "contextual" repels; none for the baselines."""
    if config.method != "contextual":
        return ()
    if not denoiser.blocks:
        raise ValueError(
            f"method='contextual' repels the text tokens inside transformer blocks, and "
            f"{type(pipe).__name__}'s {type(denoiser.module).__name__} has no contextual text stream; "
            "use method='particle' or method='cads', which work on UNet pipelines too"
        )
    return select_blocks(denoiser.blocks, config.blocks)


@functools.cache
def _signature(function: Any) -> inspect.Signature:
    return inspect.signature(function)


@functools.cache
def _calling_class(cls: type) -> type:
    """A subclass of the pipeline class whose `__call__` runs inside the handle's per-call state.

    Its instances copy and pickle as instances of it, which pickle cannot find by name (`_patched_instance`), and the
    copy wraps its own scheduler: a copied wrapper is a copy of the plain scheduler (`fastrepulse.scheduler`).
    """
    original = cls.__call__

    @functools.wraps(original)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self.__dict__[HANDLE_ATTRIBUTE].pipeline_call(original, args, kwargs):
            return original(self, *args, **kwargs)

    def __reduce_ex__(self: Any, protocol: int) -> tuple:
        return _patched_instance, (cls,), self.__dict__

    def __setstate__(self: Any, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        scheduler = unwrap_scheduler(self.__dict__["scheduler"])
        self.__dict__["scheduler"] = wrap_scheduler(scheduler, self.__dict__[HANDLE_ATTRIBUTE])

    namespace = {
        "__call__": __call__,
        "__reduce_ex__": __reduce_ex__,
        "__setstate__": __setstate__,
        "__module__": cls.__module__,
        "_fastrepulse_base": cls,
    }
    return type(cls.__name__, (cls,), namespace)


def _patched_instance(cls: type) -> Any:
    """An empty instance of the patched subclass of pipeline class `cls`, for a copy or unpickling to fill."""
    patched_class = _calling_class(cls)
    return patched_class.__new__(patched_class)
