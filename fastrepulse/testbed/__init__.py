"""The testbed: real handwritten digits and what judges generated ones, trained here, shipped in the package."""

from fastrepulse.testbed.classifier import classify
from fastrepulse.testbed.digits import digits

__all__ = ["classify", "digits"]
