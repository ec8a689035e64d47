"""Shared test setup: explicit torch threads (2 busy processes on 2 cores slow each other 4-5x) and data paths."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    try:
        import torch
        torch.set_num_threads(int(os.environ.get("DSCODER_THREADS", "2")))
    except ImportError:
        pass


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    """The shared benchmark data (evaluation only), `../shared/benchmarks` beside the checkout."""
    p = Path(os.environ.get("DSCODER_BENCHMARKS", ROOT.parent / "shared" / "benchmarks"))
    if not p.is_dir():
        pytest.skip(f"benchmark data not found at {p} (set DSCODER_BENCHMARKS)")
    return p
