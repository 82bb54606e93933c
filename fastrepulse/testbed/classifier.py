"""A small digit classifier, trained on the testbed's real digits: labels for fidelity, features for diversity.

Any image size works: images are converted to grey and averaged down to the scans' 8 x 8 grid first, so
the classifier judges generated digits at whatever resolution the testbed renders them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from fastrepulse.testbed.digits import SIZE

WEIGHTS = Path(__file__).with_name("weights") / "classifier.safetensors"
FEATURES = 64
"""Width of the penultimate layer, the features `classify` returns."""


class DigitClassifier(torch.nn.Module):
    """Two 3x3 convolutions, a 2x2 pool, a 64-wide feature layer, ten logits; input [N, 1, 8, 8] in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.features = torch.nn.Linear(32 * (SIZE // 2) ** 2, FEATURES)
        self.logits = torch.nn.Linear(FEATURES, 10)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [N, 10] and features [N, 64] of images [N, 1, 8, 8]."""
        hidden = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(images)))), 2)
        features = F.relu(self.features(hidden.flatten(1)))
        return self.logits(features), features


@functools.cache
def _shipped() -> DigitClassifier:
    model = DigitClassifier()
    model.load_state_dict(load_file(WEIGHTS))
    return model.eval()


def to_grid(images: torch.Tensor | Sequence[Image.Image]) -> torch.Tensor:
    """Images as the classifier sees them: [N, 1, 8, 8] grey in [0, 1], averaged down from any size.

    Accepts PIL images (any mode and size) or a float tensor in [0, 1], [N, H, W] or [N, C, H, W]
    (C = 1 or 3, as diffusers' ``output_type="pt"`` gives); ink bright on black, as in the scans.
    """
    if isinstance(images, torch.Tensor):
        if not images.is_floating_point() or images.dim() not in (3, 4) or len(images) == 0:
            shape = tuple(images.shape)
            raise ValueError(f"images must be a float tensor [N, H, W] or [N, C, H, W], got {images.dtype} {shape}")
        grey = images.float() if images.dim() == 3 else images.float().mean(1)
    else:
        if not images or not all(isinstance(image, Image.Image) for image in images):
            raise ValueError("images must be a non-empty sequence of PIL images or a float tensor")
        grey = torch.stack(
            [torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32) / 255.0) for image in images]
        )
    return F.adaptive_avg_pool2d(grey.unsqueeze(1).cpu(), SIZE)


@torch.no_grad()
def classify(images: torch.Tensor | Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted digits [N] (int64) and classifier features [N, 64] (float32) of images, on the CPU.

    Example:
        >>> from fastrepulse.testbed import classify, digits
        >>> images, labels = digits()
        >>> predicted, features = classify(images[:4])
    """
    logits, features = _shipped()(to_grid(images))
    return logits.argmax(1), features
