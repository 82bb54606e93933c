"""The testbeds: real handwritten digits, and rendered colour scenes, with what judges generated ones (trained here,
shipped in the package)."""

from fastrepulse.testbed.classifier import classify
from fastrepulse.testbed.digits import digits, split
from fastrepulse.testbed.judge import scene_attributes
from fastrepulse.testbed.scenes import scene_prompts

__all__ = ["PROMPT", "classify", "digits", "pipeline", "scene_attributes", "scene_prompts", "split"]


def __getattr__(name: str) -> object:
    """`PROMPT` and `pipeline` on first use: the generators import diffusers and transformers, which
    judging images with `classify` does not need."""
    if name in ("PROMPT", "pipeline"):
        from fastrepulse.testbed import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
