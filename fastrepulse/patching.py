"""`patch(pipe)`: contextual repulsion, or a baseline, inside a diffusers pipeline; `unpatch` undoes it exactly.

What a patch changes, all on the pipeline instance and all kept on the handle for `remove`:
- the instance's class, swapped for a subclass whose ``__call__`` opens per-call state (the samples per guidance
  branch, the groups found at its first denoiser call (`fastrepulse.groups`), the step counter) and drops it in
  ``finally``;
- ``pipe.scheduler``, wrapped so that every ``step`` advances the counter (`fastrepulse.scheduler`);
- a forward pre-hook on the denoiser (the state of one transformer call; CADS noise) and, for
  "contextual", forward hooks on the selected blocks or their attention modules.

Eagerly a hook calls the handle's `_repel` directly (a hooked block costs its Gram, solve and apply and ~15 us
of Python). Under ``torch.compile`` (diffusers' regional compilation compiles the transformer blocks, hooks included)
the block and attention hooks are traced into the graphs: their bodies read only what is fixed for the handle's
lifetime (nothing per block: all blocks of a kind share one hook function and one graph) and pass the tensors to the
custom op ``fastrepulse::repel_in_hook``, which Dynamo records without looking inside. So nothing breaks the graph,
and the per-call state (step, group size, text length, which block), read at run time, never becomes a guard that
would recompile per step.

In a pipeline a group that cannot be repelled in some block (its steps diverge, its tokens are not finite, the
result would overflow) is left as it was there, the call completes, and one warning at its end names the blocks,
steps and causes (`RepulsionHandle._report`). With ``solver="device"`` the per-block statuses stay on the device
and are read in one transfer when the call ends: nothing inside the denoiser's forward waits for the GPU.

Dynamo does not notice hooks added to a module that had none, so `patch` drops the code it compiled for the denoiser's
modules (`_drop_compiled_code`). Dynamo itself is imported at the first patch (`_register_with_dynamo`): importing it
takes seconds, which `import fastrepulse` should not.

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
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from fastrepulse.baselines import cads_condition, particle_guidance
from fastrepulse.config import Method, RepulsionConfig, Site, Thirds, make_config
from fastrepulse.forces import Kernel, Objective
from fastrepulse.groups import Partition, by_conditioning, contiguous
from fastrepulse.models import BlockKind, Denoiser, TextBlock, find_denoiser, select_blocks
from fastrepulse.repulsion import Backend, Repulsion, Solver
from fastrepulse.scheduler import unwrap_scheduler, wrap_scheduler
from fastrepulse.status import BAD_SAMPLES, MAY_OVERFLOW, NON_FINITE, NOT_CONVERGED, SOLVED
from fastrepulse.tokens import Runs, TextLayout, group_runs
from fastrepulse.workspace import Workspaces

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
    """One pipeline call: its samples per guidance branch, how its denoiser batches split into groups, the sampler
    step it is at, and the groups its blocks left unrepelled."""

    images_per_prompt: int
    samples: int  # per guidance branch: prompts x images per prompt
    partitions: dict[int, Partition] = field(default_factory=dict)  # by denoiser batch size, found once per call
    layouts: dict[tuple, tuple[Any, TextLayout, tuple[_Slice, ...]]] = field(default_factory=dict)
    """By denoiser batch, text length and text mask (held, so that its id stays its own): the mask, where the text is,
    and the slices of rows and tokens that form the groups (`RepulsionHandle._layout`)."""
    step: int = 0
    generator: torch.Generator | None = None  # CADS noise, seeded at the call's first draw
    statuses: list[tuple[int, int, np.ndarray | torch.Tensor]] = field(default_factory=list)
    """(block, step, per-group status) of blocks where some group failed; the device solver's statuses of every
    block, still on the device: read once when the call ends (`RepulsionHandle._report`)."""


@dataclass(frozen=True)
class _Slice:
    """One group's samples in a hooked tensor, or several consecutive groups of one size: the rows (a slice, or the
    indices of a group to gather), the group size, and the runs of text tokens its samples attend."""

    rows: slice | torch.Tensor
    size: int
    runs: Runs
    whole: bool = False  # every row and every token of the text: the hooked tensors are taken as they are


@dataclass
class _ForwardState:
    """One denoiser call inside a repelled step."""

    batch: int
    layout: TextLayout
    slices: tuple[_Slice, ...]
    step: int
    carried: float | None = None  # the share of text channels the next block takes on, where not all (BriaFibo)
    hooks_run: int = 0  # block hooks met so far in this call: the position, in forward order, of the next one


class RepulsionHandle:
    """What `patch` changed on one pipeline; `remove()` restores every original."""

    def __init__(self, pipe: Any, config: RepulsionConfig, denoiser: Denoiser, blocks: tuple[TextBlock, ...]) -> None:
        _register_with_dynamo()
        self.pipe = pipe
        self.config = config
        self.denoiser = denoiser
        self._repulsion = Repulsion(
            config.scale, config.iterations, config.objective, config.kernel, config.backend, config.solver,
            Workspaces(),
        )  # fmt: skip
        self._warned_single_groups = False
        self._start()
        self._block_indices = tuple(block.index for block in blocks)
        self._hooks = [denoiser.module.register_forward_pre_hook(self._before_denoiser, with_kwargs=True)]
        for block in blocks:
            if config.site == "attention":
                hook = functools.partial(self._after_attention, block.kind)
                self._hooks.append(block.attention.register_forward_hook(hook, with_kwargs=True))
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
            counts = [bound.arguments.get(name) or kwargs.get(name) for name in _PER_PROMPT]
            images_per_prompt = next((count for count in counts if count), 1) if self.denoiser.family.per_prompt else 1
            if unwrap_scheduler(self.pipe.scheduler) is self.pipe.scheduler:  # replaced since patch: wrap the new one
                self.pipe.__dict__["scheduler"] = wrap_scheduler(self.pipe.scheduler, self)
            self._call = _CallState(images_per_prompt, _prompts(bound.arguments) * images_per_prompt)
            yield
            self._report(self._call.statuses)
        finally:
            self._repulsion.workspaces.release_statuses()
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
        batch = sample.shape[0]
        partition = call.partitions.get(batch) or self._fixed_partition(batch, call.images_per_prompt)
        if partition.largest == 1:
            return model_output
        sign = 1.0 if self.pipe.scheduler.config.get("prediction_type", "flow") == "sample" else -1.0
        if partition.size is not None:
            return particle_guidance(model_output, sample, self.config, partition.size, sign)
        guided = model_output.clone()
        for index in partition.indices(sample.device):
            guided[index] = particle_guidance(model_output[index], sample[index], self.config, len(index), sign)
        return guided

    def _before_denoiser(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        self._forward = None
        call = self._call
        if call is None or not self.config.touches_step(call.step):
            return None
        family = self.denoiser.family
        # diffusers' pipelines call their denoisers by keyword: no binding needed
        arguments = _signature(type(module).forward).bind(module, *args, **kwargs).arguments if args else kwargs
        text = arguments[family.text] if family.text else None
        if self.config.method != "cads":  # contextual, and particle (whose scheduler step reads the groups)
            batch = _batch(arguments.get(family.image, text))
            partition = self._partition(arguments, batch)
            if self.config.method == "contextual" and partition.largest > 1:
                layout, slices = self._layout(arguments, partition)
                carried = family.carried if family.carried < 1 else None
                self._forward = _ForwardState(batch, layout, slices, call.step, carried)
            return None
        if call.generator is None:
            call.generator = torch.Generator(device=_device(text)).manual_seed(self.config.seed)
        timestep = torch.as_tensor(arguments[family.timestep[0]]).flatten()[0]
        t = family.noise_level(timestep)  # on the timestep's device: no host sync
        if isinstance(text, (list, tuple)):  # one text per sample (Z-Image), of varying lengths
            noisy = [cads_condition(item[None], t, self.config, call.generator)[0] for item in text]
        else:
            noisy = cads_condition(text, t, self.config, call.generator)
        if arguments is kwargs:
            return args, {**kwargs, family.text: noisy}
        bound = _signature(type(module).forward).bind(module, *args, **kwargs)
        bound.arguments[family.text] = noisy
        return bound.args[1:], bound.kwargs

    def _layout(self, arguments: dict[str, Any], partition: Partition) -> tuple[TextLayout, tuple[_Slice, ...]]:
        """Where the text is in this denoiser call, and each group's rows and tokens: found once per call for each
        batch size, text length and text mask (the mask's spans are one host read)."""
        family = self.denoiser.family
        mask = family.text_mask(arguments)
        key = (partition.batch, _tokens(arguments[family.text]), id(mask))
        cached = self._call.layouts.get(key)
        if cached is not None:
            return cached[1], cached[2]
        layout = family.text_layout(arguments)
        if layout.runs is None:
            runs = (((0, layout.tokens),),) * len(partition.groups)
        else:
            branches = 2 if partition.batch == 2 * self._call.samples else 1
            runs = group_runs(layout.runs, partition, branches, follows_mask=family.follows_mask)
        if partition.size is not None and len(set(runs)) == 1:  # the batch as it is, in one run
            whole = runs[0] == ((0, layout.tokens),) and layout.stream in (None, layout.tokens)
            slices = (_Slice(slice(None), partition.size, runs[0], whole),)
        else:
            indices = iter(partition.indices(_device(arguments[family.text])))
            slices = []
            for group, group_runs_ in zip(partition.groups, runs, strict=True):
                if len(group) == 1:
                    continue
                index = next(indices)
                rows = slice(group[0], group[-1] + 1) if group == tuple(range(group[0], group[-1] + 1)) else index
                if group_runs_:
                    slices.append(_Slice(rows, len(group), group_runs_))
            slices = tuple(slices)
        self._call.layouts[key] = (mask, layout, slices)
        return layout, slices

    def _after_attention(self, kind: BlockKind, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any):
        if isinstance(output, tuple):
            _run_hook(self, [output[kind.attention_text]], joint=False)
        else:  # one joint sequence
            _run_hook(self, [output], joint=True)
        return None

    def _after_block(self, kind: BlockKind, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any):
        if not isinstance(output, tuple):  # one joint sequence
            _run_hook(self, [output.transpose(0, 1) if kind.sequence_first else output], joint=True)
            return None
        parts = [output[kind.block_text]]
        if kind.name == "single" and self.config.single_stream_tokens == "all":
            parts.append(output[1 - kind.block_text])
        _run_hook(self, parts, joint=False)
        return None

    def _repel(self, parts: list[torch.Tensor], joint: bool) -> None:
        """Repel the samples made of `parts` in place, if inside a repelled step; a group that cannot be repelled is
        left as it was and reported when the call ends.

        ``parts[0]`` holds the text: the text stream, or with `joint` a joint sequence with the text at the layout's
        offset. Of the text only each group's attended tokens are taken; of a joint sequence with
        ``single_stream_tokens="all"`` every token but the masked pads.
        """
        forward = self._forward
        if forward is None:
            return  # outside a repelled step, or no group of two
        # the hooks run in forward order, once per hooked block: which block this is, without a per-block constant
        # in the hooks (compiled blocks would then each get a graph of their own)
        block = self._block_indices[forward.hooks_run % len(self._block_indices)]
        forward.hooks_run += 1
        text = parts[0]
        if text.shape[0] != forward.batch:
            return  # a text batch that broadcasts over the images (prompt embeds of batch 1) has nothing to split
        layout = forward.layout
        if joint:
            offset = layout.offset if layout.offset >= 0 else text.shape[1] + layout.offset
            if offset < 0 or text.shape[1] < offset + layout.tokens:
                self._wrong_layout(text, joint)
        else:
            offset = 0
            if text.shape[1] != (layout.stream or layout.tokens):
                self._wrong_layout(text, joint)
        end = offset + layout.tokens
        everything = joint and self.config.single_stream_tokens == "all"
        for where in forward.slices:
            if where.whole and (everything or not joint) and forward.carried is None:  # the common case: as they are
                self._record(block, forward.step, self._repulsion.run(parts, parts, where.size, strict=False))
                continue
            pieces = [text[:, offset + start : offset + stop] for start, stop in where.runs]
            if forward.carried is not None:  # the channels the next block takes on
                pieces = [piece[..., : int(piece.shape[-1] * forward.carried)] for piece in pieces]
            if everything:  # the other tokens around the text, not its masked pads
                pieces = [text[:, :offset], *pieces, text[:, end:]]
            pieces = [piece for piece in (*pieces, *parts[1:]) if piece.shape[1]]
            if isinstance(where.rows, slice):
                group = [piece[where.rows] for piece in pieces]
                self._record(block, forward.step, self._repulsion.run(group, group, where.size, strict=False))
                continue
            group = [piece.index_select(0, where.rows) for piece in pieces]  # gathered, repelled, put back
            self._record(block, forward.step, self._repulsion.run(group, group, where.size, strict=False))
            for piece, repelled in zip(pieces, group, strict=True):
                piece.index_copy_(0, where.rows, repelled)

    def _wrong_layout(self, text: torch.Tensor, joint: bool) -> None:
        import diffusers

        layout = self._forward.layout
        joint_length = abs(layout.offset) + (layout.tokens if layout.offset >= 0 else 0)
        where = f"a joint sequence of at least {joint_length}" if joint else f"{layout.stream or layout.tokens}"
        raise RuntimeError(
            f"fastrepulse: a hooked block of {type(self.denoiser.module).__name__} returned {text.shape[1]} tokens "
            f"where the text layout of its '{self.denoiser.family.name}' family expects {where}: this diffusers "
            f"release ({diffusers.__version__}) lays its blocks out otherwise; unpatch and report it"
        )

    def _record(self, block: int, step: int, status: np.ndarray | torch.Tensor) -> None:
        if isinstance(status, torch.Tensor) or status.any():  # SOLVED is 0; the device's statuses are read later
            self._call.statuses.append((block, step, status))

    def _report(self, statuses: list[tuple[int, int, np.ndarray | torch.Tensor]]) -> None:
        """One warning for a call in which some groups were left unrepelled, naming the blocks, steps and causes."""
        on_device = [status for _, _, status in statuses if isinstance(status, torch.Tensor)]
        if on_device:  # the device solver's statuses of the whole call, read in one transfer
            values = iter(torch.cat(on_device).cpu().numpy().reshape(-1))
            sizes = [status.numel() if isinstance(status, torch.Tensor) else 0 for _, _, status in statuses]
            statuses = [
                (block, step, status if not size else np.fromiter(values, np.int32, size))
                for (block, step, status), size in zip(statuses, sizes, strict=True)
            ]
        failed: dict[int, dict[int, list[int]]] = {}  # cause -> block -> steps
        for block, step, status in statuses:
            for cause in sorted(set(status.tolist()) - {SOLVED}):
                failed.setdefault(cause, {}).setdefault(block, []).append(step)
        if not failed:
            return
        lines = []
        for cause, blocks in sorted(failed.items()):
            where = "; ".join(
                f"block {block} at step(s) {sorted(set(steps))}" for block, steps in sorted(blocks.items())
            )
            lines.append(f"{_CAUSES[cause]}: {where}")
        warnings.warn(
            "fastrepulse: some groups were left unrepelled in some blocks (their samples are as without repulsion "
            "there; the call completed): " + " | ".join(lines),
            RuntimeWarning,
            stacklevel=4,
        )

    def _partition(self, arguments: dict[str, Any], batch: int) -> Partition:
        """The groups of a denoiser batch (`fastrepulse.groups`): found from the conditioning at the call's first
        denoiser call of that batch size (one host read), then kept; `group_size=` fixes them instead."""
        call = self._call
        if batch in call.partitions:
            return call.partitions[batch]
        if self.config.group_size != "auto":
            partition = self._fixed_partition(batch, self.config.group_size)
        else:
            family = self.denoiser.family
            branches = 2 if batch == 2 * call.samples else 1  # both branches in one batch: SD3, Z-Image, UNets
            branch = batch // branches
            # the text stream only: diffusers 0.35's SD3 pipeline tiles the pooled embeddings across prompts
            text = arguments[family.text] if family.text else None
            if text is None:  # token ids only (OmniGen): the pipeline's images per prompt, consecutive
                partition = self._fixed_partition(batch, call.images_per_prompt)
            elif _batch(text) == batch:
                conditional = slice(0, branch) if family.conditional_first else slice(batch - branch, batch)
                conditioning = _rows_of(text[conditional])
                partition = by_conditioning(conditioning, branches)
                if branches == 2:  # the scheduler step (Particle Guidance) sees one branch
                    call.partitions.setdefault(branch, by_conditioning(conditioning))
            else:  # one text row broadcast over the images: all of them are its prompt's
                partition = contiguous(batch, branch)
        call.partitions[batch] = partition
        if partition.largest == 1 and not self._warned_single_groups:
            self._warned_single_groups = True
            warnings.warn(
                "fastrepulse: each group holds one sample (every image has a prompt of its own), so there is "
                "nothing to repel; generate several images per prompt, or pass group_size= to group them otherwise",
                stacklevel=3,
            )
        return partition

    def _fixed_partition(self, batch: int, size: int) -> Partition:
        if batch % size:
            raise ValueError(
                f"a batch of {batch} samples does not split into groups of {size}; "
                "pass group_size=<samples per prompt> to fastrepulse.patch"
            )
        return contiguous(batch, size)


def _batch(x: torch.Tensor | list[torch.Tensor]) -> int:
    """The batch of a forward argument: a tensor's first dimension, or a list's length (one tensor per sample)."""
    return len(x) if isinstance(x, (list, tuple)) else x.shape[0]


def _tokens(x: torch.Tensor | list[torch.Tensor]) -> int | tuple[int, ...]:
    """The text length of a forward's text argument, or each sample's where it is a list."""
    return tuple(item.shape[0] for item in x) if isinstance(x, (list, tuple)) else x.shape[1]


def _rows_of(text: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    """The conditioning of each sample as rows of tensors [n, ...]: the text, or a list of texts of varying lengths
    padded, with their lengths."""
    if not isinstance(text, (list, tuple)):
        return [text]
    lengths = torch.tensor([len(item) for item in text])
    return [torch.nn.utils.rnn.pad_sequence(list(text), batch_first=True), lengths]


def _device(x: torch.Tensor | list[torch.Tensor]) -> torch.device:
    return x[0].device if isinstance(x, (list, tuple)) else x.device


def _prompts(arguments: dict[str, Any]) -> int:
    """How many prompts a pipeline call was given (a string, a list, or embeddings of that batch)."""
    prompt = arguments.get("prompt")
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, (list, tuple)):
        return len(prompt)
    embeds = arguments.get("prompt_embeds")
    return embeds.shape[0] if isinstance(embeds, torch.Tensor) else 1


_PER_PROMPT = ("num_images_per_prompt", "num_videos_per_prompt")
"""How pipelines name the samples per prompt (video pipelines: videos)."""
_CAUSES = {
    NON_FINITE: "the steps diverged (lower scale or raise iterations)",
    NOT_CONVERGED: "the device solver's eigendecomposition did not converge (use solver='host')",
    BAD_SAMPLES: "the text tokens held NaN or Inf (or a zero sample under the cosine kernel)",
    MAY_OVERFLOW: "the result would exceed the range of the activations' dtype (lower scale)",
}


def _run_hook(handle: RepulsionHandle, parts: list[torch.Tensor], joint: bool) -> None:
    """A hook's work: eagerly a plain call; while Dynamo traces a compiled block, the custom op, which it records
    without looking inside (the per-call state read at run time never becomes a guard)."""
    if torch.compiler.is_compiling():
        torch.ops.fastrepulse.repel_in_hook(parts, handle._key, joint)
    else:
        handle._repel(parts, joint)


@torch.library.custom_op("fastrepulse::repel_in_hook", mutates_args=("parts",))
def _repel_in_hook(parts: list[torch.Tensor], key: int, joint: bool) -> None:
    """`RepulsionHandle._repel` of handle `key`, as an op: compiled blocks call it without a graph break.

    `joint`: ``parts[0]`` is a joint sequence (a single-stream block's), its text where the call's layout says.
    """
    handle = _HANDLES.get(key)
    if handle is not None:  # else a handle already removed
        handle._repel(parts, joint)


@_repel_in_hook.register_fake
def _(parts: list[torch.Tensor], key: int, joint: bool) -> None:
    return None


@functools.cache
def _register_with_dynamo() -> None:
    """Tell Dynamo how to run the hooks, once, at the first patch (or unpickled handle), importing it only then.

    The denoiser's pre-hook reads and sets the per-call state, so it runs eagerly, outside any graph. A block or
    attention hook on a compiled module itself (Flux blocks under regional compilation) is called as a frame of its
    own, which Dynamo would compile into a graph of just the op: such frames run eagerly, with everything they call
    (`_run_hook`), while compiled callers still trace the hooks inlined and record the op.
    """
    from torch._dynamo.eval_frame import FrameAction, FrameExecStrategy, set_code_exec_strategy, skip_code

    RepulsionHandle._before_denoiser = torch.compiler.disable(RepulsionHandle._before_denoiser)
    skip_code(RepulsionHandle._after_attention.__code__)
    skip_code(RepulsionHandle._after_block.__code__)
    # and everything an eager hook calls (the repulsion itself), which Dynamo would otherwise try to compile
    set_code_exec_strategy(_run_hook.__code__, FrameExecStrategy(FrameAction.SKIP, FrameAction.SKIP))


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
    """The blocks whose text stream "contextual" repels; none for the baselines (where they work on the family)."""
    family = denoiser.family
    name = f"{type(pipe).__name__}'s {type(denoiser.module).__name__}"
    works = " or ".join(f"method={method!r}" for method in family.baselines)
    if config.method != "contextual":
        if config.method not in family.baselines:
            raise ValueError(
                f"method={config.method!r} does not work on {name}; {works or 'no method of fastrepulse'} does"
            )
        return ()
    if not denoiser.blocks:
        instead = f"; use {works}, which works there" if works else "; no method of fastrepulse works there"
        raise ValueError(
            f"method='contextual' repels the text tokens as they change inside the denoiser's blocks, and {name} has "
            f"no such text: {family.no_stream}{instead}"
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
