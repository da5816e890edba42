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


@pytest.fixture(scope="session")
def hf_greedy_generate():
    """Greedy generation with guidance 3 by a transformers MusicGen model, T frames: returns (codes [B, K, T], audio).

    transformers decodes the codes inside `generate`; we wrap its codec's decode to keep the codes it was given.
    T + K - 1 new tokens give T frames with K = 4 (facts §2.2)."""
    import torch

    def run(hf, frames, **inputs):
        captured = {}
        decode = hf.audio_encoder.decode

        def capture(codes, *args, **kwargs):
            captured["codes"] = codes
            return decode(codes, *args, **kwargs)

        hf.audio_encoder.decode = capture
        try:
            with torch.no_grad():
                audio = hf.generate(**inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=frames + 3)
        finally:
            del hf.audio_encoder.decode
        return captured["codes"][0], audio

    return run
