"""The testbed: real handwritten digits and what judges generated ones, trained here, shipped in the package."""

from fastrepulse.testbed.classifier import classify
from fastrepulse.testbed.digits import digits, split
from fastrepulse.testbed.models import PROMPT, pipeline

__all__ = ["PROMPT", "classify", "digits", "pipeline", "split"]
