"""Weight-only int8 (int8.py): the layer computes x @ dequantized weight^T on both paths, a quantized MusicGen
generates with guidance, a melody and a continuation, and what cannot be done says so in one line. Tiny models;
the full-size quality and speed are bench.py's (`--only int8 int8_quality`)."""

import pytest
import torch
import torch.nn as nn

import int8
import musicgen as M
import sample

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=["cpu kernel", "dequantize"])
def path(request, monkeypatch):
    """Run a test on each path of Int8Linear: torch._weight_int8pack_mm, and the fallback that CUDA/MPS take."""
    if request.param == "cpu kernel" and not int8.HAS_CPU_KERNEL:
        pytest.skip("this torch has no CPU int8 kernel")
    monkeypatch.setattr(int8, "HAS_CPU_KERNEL", request.param == "cpu kernel")
    return request.param


def test_quantized_weights_are_within_half_a_step():
    torch.manual_seed(0)
    weight = torch.randn(96, 128) * torch.rand(96, 1)  # rows of different scales: each gets its own
    q, scale = int8.quantize_per_channel(weight)
    assert q.dtype == torch.int8 and q.shape == (96, 128) and scale.shape == (96,)
    assert q.abs().amax(dim=1).eq(127).all()  # every row's largest weight uses the full range
    error = (int8.dequantize(q, scale) - weight).abs()
    assert (error <= scale[:, None] / 2 * (1 + 1e-5)).all()


def test_int8_linear_equals_dequantized_weights_times_x(path):
    torch.manual_seed(0)
    linear = nn.Linear(128, 256, bias=False)
    layer = int8.Int8Linear(linear)
    x = torch.randn(2, 3, 128)
    y = layer(x)
    ref = x @ int8.dequantize(layer.weight, layer.scale).T  # [2, 3, 256]
    assert y.shape == ref.shape and y.dtype == x.dtype
    # the kernel rounds x, the scales and y to bfloat16 (8 significant bits); the fallback is float32 throughout
    atol = 1e-2 * ref.abs().max().item() if path == "cpu kernel" else 1e-5
    torch.testing.assert_close(y, ref, atol=atol, rtol=0)
    assert layer(x.bfloat16()).dtype == torch.bfloat16  # a bfloat16 LM gets bfloat16 back


def test_quantize_lm_swaps_the_transformer_linears_only():
    lm = int8.quantize_lm(M.LM(M.lm_config("tiny")).eval())
    layer = lm.layers[0]
    swapped = [layer.self_attn.q_proj, layer.self_attn.out_proj, layer.encoder_attn.k_proj, layer.fc1, layer.fc2,
               *lm.heads]
    assert all(isinstance(m, int8.Int8Linear) for m in swapped)
    assert type(lm.condition_proj) is nn.Linear and type(lm.embed[0]) is nn.Embedding


@pytest.fixture(scope="module")
def saved(tiny_musicgen, tmp_path_factory):
    """Save a tiny model of a preset once: {preset: directory}."""
    dirs = {}

    def save(preset):
        if preset not in dirs:
            dirs[preset] = tmp_path_factory.mktemp(preset)
            tiny_musicgen(preset).save_pretrained(dirs[preset])
        return dirs[preset]

    return save


def test_int8_generation_with_guidance_and_continuation(saved, path):
    fp32 = M.MusicGen.from_pretrained(saved("tiny"))
    mg = M.MusicGen.from_pretrained(saved("tiny"), quantize="int8")
    condition, mask = mg.encode_text(["rock", "jazz"])
    with torch.no_grad():  # teacher-forced logits stay close to the float model's
        seq = torch.randint(0, 64, (2, 4, 10), generator=torch.Generator().manual_seed(0))
        diff = (mg.lm(seq, condition, mask) - fp32.lm(seq, condition, mask)).abs().max()
    assert diff < 0.05
    clip = torch.sin(torch.linspace(0, 240, 3200))[None]  # 0.4 s at 8 kHz to continue: 20 frames
    codes = mg.generate_tokens(["rock", "jazz"], 30, cfg_coef=3.0, seed=0, prompt_audio=clip, prompt_sample_rate=8000)
    assert codes.shape == (2, 4, 30) and 0 <= codes.min() and codes.max() < 64
    assert torch.equal(codes[:, :, :20], mg.encode_prompt(clip, 8000, 2))  # the clip's frames, kept


def test_int8_generation_with_a_melody(saved, path):
    mg = M.MusicGen.from_pretrained(saved("tiny-melody"), quantize="int8")
    melody = torch.sin(2 * torch.pi * 262 * torch.arange(32000) / 32000)  # 1 s of middle C
    codes = mg.generate_tokens(["piano"], 20, cfg_coef=3.0, seed=0, melody=melody, melody_sample_rate=32000)
    assert codes.shape == (1, 4, 20)


def test_what_cannot_be_quantized_says_so(saved, tmp_path):
    with pytest.raises(ValueError, match="quantize='int4' is not supported"):  # before looking for the files
        M.MusicGen.from_pretrained(tmp_path / "not-there", quantize="int4")
    mg = M.MusicGen.from_pretrained(saved("tiny"), quantize="int8")
    with pytest.raises(ValueError, match="int8 already"):
        int8.quantize_lm(mg.lm)
    with pytest.raises(ValueError, match="cannot be saved"):  # rounded weights must not pass for the originals
        mg.save_pretrained(tmp_path / "copy")


def test_sample_int8_without_the_cpu_kernel_stops_before_loading(monkeypatch, tmp_path):
    monkeypatch.setattr(int8, "HAS_CPU_KERNEL", False)
    monkeypatch.setattr(M.MusicGen, "from_pretrained", lambda *a, **k: pytest.fail("loaded before the check"))
    with pytest.raises(SystemExit) as stop:
        sample.main(["--int8", "--device", "cpu", "--prompt", "x", "--out", str(tmp_path)])
    assert "--int8 needs torch's CPU int8 kernel" in stop.value.code and "\n" not in stop.value.code
