"""Shared test setup: never touch the network, import the flat top-level modules, find ../shared."""

import os
import shutil
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
def hf_small_builder(tmp_path_factory, shared_dir, spiece_path):
    """Builder of transformers' MusicgenForConditionalGeneration at the musicgen-small configuration, `decoder`
    fields overridden (the stereo model: num_codebooks=8, audio_channels=2), random weights, float32, saved with
    spiece.model -> (model, its directory)."""
    import json

    import torch

    transformers = pytest.importorskip("transformers")
    from transformers.initialization import no_init_weights

    def build(**decoder):
        config = json.loads((shared_dir / "assets/configs/hf/musicgen-small_config.json").read_text())
        config["decoder"].update(decoder)
        for block in (config, config["text_encoder"], config["audio_encoder"], config["decoder"]):
            block.pop("dtype", None)  # the vendored file says float16; compare in float32
        torch.manual_seed(0)
        with no_init_weights():  # torch's and HF's init take ~30 s at this size; a plain normal fill takes ~6 s
            model = transformers.MusicgenForConditionalGeneration(transformers.MusicgenConfig.from_dict(config))
        model.tie_weights()  # T5's shared / embed_tokens are one tensor (no_init_weights skipped the tying)
        random_fill(model)
        model_dir = tmp_path_factory.mktemp("musicgen-small")
        model.eval().save_pretrained(model_dir)
        shutil.copy(spiece_path, model_dir / "spiece.model")
        return model, model_dir

    return build


def random_fill(model):
    """Random weights of a sensible scale: N(0, 0.02) everywhere, norms at 1, weight-norm gains at 1."""
    import torch

    codebooks = [(n, b) for n, b in model.named_buffers() if n.endswith("codebook.embed")]  # not the sinusoids!
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *codebooks]:
            if name.endswith("original0") or "norm.weight" in name or "layer_norm" in name and name.endswith("weight"):
                tensor.fill_(1.0)
            elif "norm" in name and name.endswith("bias"):
                tensor.zero_()
            else:
                tensor.normal_(0, 0.02)


@pytest.fixture(scope="session")
def hf_greedy_generate():
    """Greedy generation with guidance 3 by a transformers MusicGen model, T frames: returns (codes [B, K, T], audio).

    transformers decodes the codes inside `generate` (a stereo model: each channel's streams in a call of their own);
    we wrap its codec's decode to keep the codes it was given. T + K - 1 new tokens give T frames with K = 4 levels
    (mono or stereo): transformers' max_length counts the start column and its delay pattern mask
    (build_delay_pattern_mask in `modeling_musicgen.py`) leaves T = max_length - K frames."""
    import torch

    def run(hf, frames, **inputs):
        channels = []
        decode = hf.audio_encoder.decode

        def capture(codes, *args, **kwargs):
            channels.append(codes[0])  # [B, K/C, T]
            return decode(codes, *args, **kwargs)

        hf.audio_encoder.decode = capture
        try:
            with torch.no_grad():
                audio = hf.generate(**inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=frames + 3)
        finally:
            del hf.audio_encoder.decode
        return torch.stack(channels, dim=2).flatten(1, 2), audio  # streams L_0, R_0, L_1, ... for stereo

    return run


@pytest.fixture(scope="session")
def tiny_musicgen(spiece_path):
    """Builder of a tiny random MusicGen of our own: the real T5 vocabulary, a 1-layer T5 of width 32 (not the LM's
    64, so the condition projection is exercised), the `tiny` codec (8 kHz, 4 codebooks of 64) and an LM preset
    (`tiny` or `tiny-melody`, keyword overrides allowed). Same seed, same weights."""
    import torch

    import musicgen as M
    from encodec_lite import EncodecConfig, EncodecLite
    from t5_encoder import T5Config, T5Encoder, T5Tokenizer

    def build(preset="tiny", **lm):
        torch.manual_seed(0)
        t5 = T5Config(vocab_size=32128, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=1)
        parts = T5Tokenizer(spiece_path), T5Encoder(t5), EncodecLite(EncodecConfig.preset("tiny"))
        return M.MusicGen(*parts, M.LM(M.lm_config(preset, text_dim=t5.d_model, **lm))).eval()

    return build
