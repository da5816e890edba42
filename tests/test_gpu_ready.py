"""What breaks only on a GPU, guarded on the CPU: tensors that must stay on the training device, modes, dtypes,
masks, TF32 and factory calls without a device. gpu_smoke.py runs the same paths on a real GPU."""

import pytest
import torch

import musicgen as M
import train
from t5_encoder import T5_PRESETS, T5Encoder

pytestmark = pytest.mark.usefixtures("one_thread")


def test_loss_reduction_stays_on_the_training_device(monkeypatch):
    """NCCL all-reduces CUDA tensors only: the per-codebook losses of a GPU run must be reduced where they are. A
    `meta` tensor stands in for a CUDA one: anything sent to the CPU on the way would show as device cpu."""
    reduced = []
    monkeypatch.setattr(train.dist, "all_reduce", lambda x: reduced.append(x.device))
    per_codebook = torch.ones(4, device="meta")  # [K] as compute_loss returns it on the training device
    stats = train.all_mean(train.loss_and_stop(per_codebook, True), train.Processes(0, 2, "meta"))
    assert reduced == [per_codebook.device] and stats.device == per_codebook.device and stats.shape == (5,)


def test_frozen_text_encoder_stays_in_eval_mode():
    """Validation switches the model to eval and back to train: a frozen T5 must not come back with dropout on."""
    text_encoder = T5Encoder(T5_PRESETS["tiny"])  # dropout_rate 0.1
    lm = M.LM(M.lm_config("tiny", text_dim=text_encoder.config.d_model, dropout=0.1))
    model = train.TextToMusic(text_encoder, lm, train_text=False)
    for mode in (True, False, True):  # train, then validation's eval() and train()
        model.train(mode)
        assert lm.training == mode and not text_encoder.training
    assert not any(p.requires_grad for p in text_encoder.parameters())
    trained = train.TextToMusic(T5Encoder(T5_PRESETS["tiny"]), lm, train_text=True).train()
    assert trained.text_encoder.training  # a T5 trained with the LM follows it


def test_quantizer_runs_without_tf32_and_restores_the_setting(monkeypatch):
    """train.py allows TF32 on a GPU; the RVQ's nearest-code search and k-means must still run in full fp32 (TF32
    flips codes), and the caller's setting must come back afterwards."""
    from encodec_lite import EncodecConfig, EncodecLite, VectorQuantizer

    seen = []
    for name in ("nearest", "kmeans_init"):
        real = getattr(VectorQuantizer, name)
        monkeypatch.setattr(VectorQuantizer, name, lambda self, x, real=real, name=name: (
            seen.append((name, torch.get_float32_matmul_precision())), real(self, x))[1])
    torch.manual_seed(0)
    codec = EncodecLite(EncodecConfig.preset("tiny"))
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # what train.py sets on CUDA
    try:
        codec.train()(torch.randn(2, 1, 8000))  # k-means init, then the nearest codes
        codec.eval().encode(torch.randn(1, 1, 8000))
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(previous)
    assert {name for name, _ in seen} == {"nearest", "kmeans_init"}
    assert {precision for _, precision in seen} == {"highest"}


def test_cross_attention_gets_no_mask_when_nothing_is_masked(monkeypatch):
    """An all-true mask changes nothing but rules out SDPA's flash kernel: the cache passes None instead (for an
    unpadded batch with its null condition), with the same logits as the full forward's masked attention."""
    torch.manual_seed(0)
    lm = M.LM(M.lm_config("tiny", text_dim=32)).eval()
    masks = []
    real = M.Attention.attend
    monkeypatch.setattr(M.Attention, "attend", lambda self, x, k, v, mask=None, is_causal=False: (
        masks.append(mask) if self is lm.layers[0].encoder_attn else None, real(self, x, k, v, mask, is_causal))[1])
    condition = torch.randn(2, 5, 32)
    seq = torch.randint(64, (2, 4, 3))
    for condition_mask, masked in ((torch.tensor([[1] * 5, [0] * 5]), False),  # a prompt + guidance's null one
                                   (torch.tensor([[1] * 5, [1] * 3 + [0] * 2]), True)):  # padded: masked
        masks.clear()
        with torch.no_grad():
            full = lm(seq, condition, condition_mask)[:, :, -1]  # [B, K, N], the masked reference
            cached = lm.decode(seq, lm.new_cache(condition, condition_mask, max_steps=3))
        assert [m is not None for m in masks] == [True, masked]  # forward: always a mask; the cache: only if needed
        torch.testing.assert_close(cached, full)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_t5_padding_constant_fits_the_autocast_dtype(dtype, monkeypatch):
    """Under autocast the T5 attention runs in bf16 / fp16 with a float32 bias: its padding constant must be taken
    from the dtype attention runs in, or it rounds to -inf, and a prompt that is all padding (the null condition)
    attends to -inf only: NaN in the kernels that do not special-case such rows (the CPU's gives zeros, so the
    mask itself is checked)."""
    import t5_encoder

    masks = []
    real = t5_encoder.F.scaled_dot_product_attention
    monkeypatch.setattr(t5_encoder.F, "scaled_dot_product_attention",
                        lambda q, k, v, attn_mask, **kw: (masks.append(attn_mask), real(q, k, v, attn_mask, **kw))[1])
    torch.manual_seed(0)
    t5 = T5Encoder(T5_PRESETS["tiny"]).eval()
    ids, mask = torch.tensor([[5, 6, 7, 1], [5, 6, 1, 0]]), torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]])
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        out = t5(ids, mask)
    assert torch.isfinite(out).all() and len(masks) == T5_PRESETS["tiny"].num_layers
    assert all(m.dtype == dtype and torch.isfinite(m).all() for m in masks)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_continuation_with_the_lm_in_half_precision(tiny_musicgen, dtype):
    """from_pretrained(dtype=) casts the LM only: the prompt audio goes to the codec in float32, its codes and the
    T5 condition (float32) into the LM in `dtype`, the audio comes out of the codec in float32."""
    mg = tiny_musicgen()
    clip = torch.randn(1, mg.sample_rate) * 0.1  # 1 s of audio to continue
    prompt = mg.encode_prompt(clip, mg.sample_rate, 2)  # [2, K, T_p]
    mg.lm.to(dtype)
    wav, codes = mg.generate(["jazz", "baroque"], duration=1.5, seed=0, return_tokens=True, prompt_audio=clip,
                             prompt_sample_rate=mg.sample_rate)
    assert torch.equal(codes[:, :, : prompt.shape[-1]], prompt) and codes.shape[-1] > prompt.shape[-1]
    assert wav.dtype == torch.float32 and torch.isfinite(wav).all()


def test_sample_py_dtype_flag(tiny_musicgen, tmp_path):
    """sample.py --dtype bfloat16 --continue: the LM loads in bf16 and the dtype is recorded beside the WAV."""
    import json

    import audio
    import sample

    mg = tiny_musicgen()
    mg.save_pretrained(tmp_path / "model")
    audio.write(tmp_path / "clip.wav", torch.randn(1, mg.sample_rate) * 0.1, mg.sample_rate)
    sample.main(["--model", str(tmp_path / "model"), "--prompt", "jazz", "--duration", "1.5", "--seed", "0",
                 "--dtype", "bfloat16", "--continue", str(tmp_path / "clip.wav"), "--out", str(tmp_path / "x.wav")])
    assert json.loads((tmp_path / "x.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.parametrize("kind", ["mono", "melody", "stereo"])
def test_no_tensor_is_made_on_the_default_device(tiny_musicgen, kind):
    """Built on the CPU, then run with torch's default device set to `meta`: a tensor made without device= (which on
    a GPU run lands on the CPU, away from the model) becomes a meta tensor and fails at once. Covers text, melody,
    audio prompt, the sliding window, decoding, encoding and the training loss."""
    mg = {"mono": lambda: tiny_musicgen(max_positions=64), "melody": lambda: tiny_musicgen("tiny-melody"),
          "stereo": lambda: tiny_musicgen(max_positions=64, num_codebooks=8, audio_channels=2)}[kind]()
    clip = torch.randn(mg.audio_channels, mg.sample_rate // 2) * 0.1  # 0.5 s to continue
    melody = dict(melody=clip[0], melody_sample_rate=mg.sample_rate) if kind == "melody" else {}
    torch.set_default_device("meta")
    try:
        wav, codes = mg.generate(["jazz", ""], duration=2.0, seed=0, return_tokens=True, prompt_audio=clip,
                                 prompt_sample_rate=mg.sample_rate, window=None if kind == "melody" else 1.0,
                                 **melody)  # 1 s windows: the long-generation path (the melody LM has 2048 positions)
        again = mg.encode_audio(wav)
        condition, mask = mg.encode_text(["jazz", "a longer prompt"])
        loss, _ = mg.lm.compute_loss(codes[:, :, :40], condition, mask)  # within the 64 positions
    finally:
        torch.set_default_device(None)
    assert wav.device.type == codes.device.type == again.device.type == loss.device.type == "cpu"
    assert torch.isfinite(wav).all() and torch.isfinite(loss)


def test_bf16_autocast_generation_and_loss_are_close_to_fp32(tiny_musicgen):
    """CPU bf16 autocast stands in for the CUDA autocast train.py uses: finite losses and logits close to fp32's,
    a KV cache that holds bf16, and generation that runs through."""
    mg = tiny_musicgen()
    condition, mask = mg.encode_text(["jazz", "a longer prompt"])
    codes = torch.randint(mg.lm.config.card, (2, 4, 20))
    with torch.no_grad():
        loss32, _ = mg.lm.compute_loss(codes, condition, mask)
        logits32 = mg.lm(codes, condition, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss16, _ = mg.lm.compute_loss(codes, condition, mask)
            logits16 = mg.lm(codes, condition, mask)
            cache = mg.lm.new_cache(condition, mask, max_steps=4)
            mg.lm.decode(codes[:, :, :2], cache)
            wav = mg.generate(["jazz", ""], duration=0.3, seed=0)
    assert torch.isfinite(loss16) and loss16.item() == pytest.approx(loss32.item(), rel=2e-2)
    assert (logits16.float() - logits32).abs().max() < 0.1 * logits32.abs().max()
    assert cache.layers[0].keys.dtype == torch.bfloat16 and torch.isfinite(wav).all()


def test_t5_reads_no_ids_off_the_cpu():
    """T5's vocabulary check reads the ids: on a GPU, a wait for the GPU at every training step. It checks CPU ids
    only; a meta tensor (shapes, no values: any read fails) stands in for CUDA ids."""
    t5 = T5Encoder(T5_PRESETS["tiny"]).to("meta")
    ids = torch.zeros(2, 4, dtype=torch.long, device="meta")
    assert t5(ids, torch.ones(2, 4, dtype=torch.long, device="meta")).shape == (2, 4, T5_PRESETS["tiny"].d_model)
