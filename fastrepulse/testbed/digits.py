"""The real data of the testbed: scikit-learn's bundled handwritten digits (1,797 8x8 scans, no download)."""

from __future__ import annotations

import torch

SIZE = 8
"""Side of the scans, in pixels."""


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All scans as images [N, 8, 8] in [0, 1] (float32, ink bright on black) and their labels [N] (int64).

    Raises:
        ImportError: scikit-learn is missing; it ships the data (pip install "fastrepulse[testbed]").
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError('the testbed digits come with scikit-learn: pip install "fastrepulse[testbed]"') from error
    data = load_digits()
    images = torch.from_numpy(data.images).float() / 16.0  # the scans count ink in 0..16
    return images, torch.from_numpy(data.target).long()


def split(labels: torch.Tensor, held_out: float = 0.25, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a seeded train / held-out split, stratified so every digit keeps its share."""
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for digit in labels.unique():
        members = (labels == digit).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        cut = round(len(members) * held_out)
        test.append(members[:cut])
        train.append(members[cut:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values
