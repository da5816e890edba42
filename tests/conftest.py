"""Shared test setup: never touch the network, import the flat top-level modules, find ../shared."""

import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir():
    if not SHARED.is_dir():
        pytest.skip("../shared is not beside the checkout")
    return SHARED


@pytest.fixture(scope="session")
def spiece_path(shared_dir):
    return shared_dir / "assets" / "t5_spiece.model"


@pytest.fixture(scope="module")
def one_thread():
    """Small models run faster on one torch thread: OpenMP hand-offs cost more than the work, and far more when
    another process is using the second core. Files of small-model tests opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`; the thread count is restored after the file."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
