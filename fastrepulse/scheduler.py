"""A scheduler that tells fastrepulse where a pipeline call is: the custom scheduler step.

diffusers sets ``scheduler.step_index`` lazily inside ``step()``, so it is None during step 0's transformer
call. The wrapped scheduler counts instead: each ``step`` tells the listener, which counts the steps of
the current pipeline call and may adjust the model output first (Particle Guidance acts there).
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Protocol

import torch


class StepListener(Protocol):
    def on_step(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor: ...


def wrap_scheduler(scheduler: Any, listener: StepListener) -> Any:
    """A scheduler object sharing `scheduler`'s state and class, whose step reports to listener.

    The wrapper is an instance of a subclass made for it that shares the original's ``__dict__``: every
    state change lands in the original, ``isinstance`` checks hold, and dropping the wrapper restores the
    original object untouched in behaviour. A copy or pickle of the wrapper (``copy.copy``, ``copy.deepcopy``,
    `pickle`) is one of the original: a second scheduler made from it, as some pipelines make one for audio,
    does not count the sampler's steps, and a patched pipeline's copy wraps its own for its own listener.
    """
    base = type(scheduler)

    @functools.wraps(base.step)
    def step(self: Any, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any):
        model_output = listener.on_step(model_output, sample)
        return base.step(self, model_output, timestep, sample, *args, **kwargs)

    def __copy__(self: Any) -> Any:
        return copy.copy(scheduler)

    def __reduce__(self: Any) -> tuple:
        return unwrap_scheduler, (scheduler,)

    namespace = {
        "step": step,
        **({} if hasattr(base, "scale_model_input") else {"scale_model_input": _unscaled}),
        "__copy__": __copy__,
        "__reduce__": __reduce__,
        "__module__": base.__module__,
        "_fastrepulse_original": scheduler,
    }
    counting = type(base.__name__, (base,), namespace)
    wrapper = object.__new__(counting)
    wrapper.__dict__ = scheduler.__dict__
    return wrapper


def _unscaled(self: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The input as it is, for a scheduler class without ``scale_model_input``: Bria calls it on any scheduler whose
    type is not exactly FlowMatchEulerDiscreteScheduler, as a wrapper's is not, and skips it on that class."""
    return sample


def unwrap_scheduler(scheduler: Any) -> Any:
    """The original of a scheduler made by `wrap_scheduler`, else the scheduler itself."""
    return type(scheduler).__dict__.get("_fastrepulse_original", scheduler)
