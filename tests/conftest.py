"""Shared pytest setup.

Triton kernels run on CPU through the interpreter: TRITON_INTERPRET must be set before
`triton` is first imported, which is why it happens here, at collection time.
"""
import os
import sys
from pathlib import Path

import pytest

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data():
    """Path to ../shared/data, or skip when this clone has no shared folder next to it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared reference data not found at {SHARED_DATA}")
    return SHARED_DATA


def shared_file(name: str) -> Path:
    """Path to one shared reference file, or pytest.skip when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"shared reference file not found: {path}")
    return path
