"""Fixtures of the benchmark smoke runs."""

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# As in tests/conftest.py: from the repository root, `python -m pytest` would let kernels/ shadow the PyPI `kernels`.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [entry for entry in sys.path if Path(entry or os.curdir).resolve() != ROOT]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from threads, and on a busy shared CPU two threads spin: 50x slower here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
