"""Generation features of musicgen.py / sample.py (issue 7) on tiny random models: continuation, long generation
with a sliding window (both mono and stereo), unconditional generation, batches, seeds, and sample.py's outputs.

The tiny LM has only 64 positions, so its window is 60 frames (1.2 s at 50 frames/s) and "3x the context" is fast."""

import json

import pytest
import torch

import chroma
import musicgen as M

PROMPTS = ["80s pop track with bassy drums and synth", "baroque", "lofi hip hop beat"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mg(tiny_musicgen):
    return tiny_musicgen(max_positions=64)


@pytest.fixture(scope="module")
def stereo(tiny_musicgen):
    """The same in stereo (Paper §4.3): 8 streams, the tiny codec's 4 levels for each of 2 channels."""
    return tiny_musicgen(max_positions=64, num_codebooks=8, audio_channels=2)


@pytest.fixture(params=["mono", "stereo"])
def mono_or_stereo(request, mg, stereo):
    return mg if request.param == "mono" else stereo


@pytest.fixture(scope="module")
def model_dir(mg, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-64")
    mg.save_pretrained(path)
    return path


def record_windows(monkeypatch):
    """Record every call of the one-window generation loop (what the sliding window asks of it)."""
    calls = []
    real = M.generate

    def spy(lm, condition, mask, frames, *args, chroma=None, prompt=None, **kwargs):
        calls.append(dict(frames=frames, prompt=prompt, chroma=chroma))
        return real(lm, condition, mask, frames, *args, chroma=chroma, prompt=prompt, **kwargs)

    monkeypatch.setattr(M, "generate", spy)
    return calls


# ----------------------------------------------------------------------------- continuation


def test_continuation_keeps_the_prompt_and_feeds_it_in_one_pass(mono_or_stereo, monkeypatch):
    mg, K = mono_or_stereo, mono_or_stereo.lm.config.num_codebooks
    clip = mg.decode_audio(torch.randint(0, 64, (1, K, 20), generator=torch.Generator().manual_seed(1)))
    prompt_codes = mg.encode_audio(clip)  # what the model is given: the clip's own tokens (each channel's own)
    inputs = []
    decode = mg.lm.decode
    monkeypatch.setattr(mg.lm, "decode", lambda x, cache: inputs.append(x.shape[-1]) or decode(x, cache))
    codes = mg.generate_tokens(["rock", "jazz"], 35, seed=0, prompt_audio=clip[0], prompt_sample_rate=8000)
    assert codes.shape == (2, K, 35)
    assert torch.equal(codes[:, :, :20], prompt_codes.expand(2, -1, -1))  # never overwritten
    assert inputs[0] == 20 + 1 and set(inputs[1:]) == {1}  # step 0 + the prompt's 20 steps, then one at a time
    assert len(inputs) == 1 + (35 + 4 - 21 - 1)  # one forward per remaining step: 4 levels, mono or stereo
    wav = mg.generate("rock", duration=0.7, seed=0, prompt_audio=clip[0], prompt_sample_rate=8000)
    assert wav.shape == (1, mg.audio_channels, 35 * mg.codec.hop_length)  # `duration` counts the prompt
    assert_no_seams(mg, codes[:1], [20])  # where the prompt ends and the generated music begins


def test_continuation_errors(mg):
    clip = torch.zeros(1, 8000)  # 1 s = 50 frames
    with pytest.raises(ValueError, match="prompt_sample_rate"):
        mg.generate("rock", duration=2, prompt_audio=clip)
    with pytest.raises(ValueError, match="longer duration"):
        mg.generate("rock", duration=0.5, prompt_audio=clip, prompt_sample_rate=8000)


# ----------------------------------------------------------------------------- long generation


def assert_no_seams(mg, codes, joins):
    """No seam where new frames begin after known ones (codes [1, K, T]), in every channel: the music is like
    elsewhere, no run of repeated frames, and the decoded audio about as loud around the join as on average."""
    C, hop = mg.audio_channels, mg.codec.hop_length
    wav = mg.decode_audio(codes)[0]  # [C, N]
    for c in range(C):
        rms = wav[c].square().mean().sqrt()
        for j in joins:
            near = codes[0, c::C, j - 3 : j + 3]  # channel c's levels [K/C, 6]
            assert (near[:, 1:] == near[:, :-1]).all(dim=0).sum() <= 1  # random tokens: frames don't repeat
            around = wav[c, (j - 3) * hop : (j + 3) * hop].square().mean().sqrt()
            assert 0.3 * rms < around < 3 * rms


def test_long_generation_slides_a_window_without_seams(mono_or_stereo, monkeypatch):
    mg, K = mono_or_stereo, mono_or_stereo.lm.config.num_codebooks
    calls = record_windows(monkeypatch)
    frames = 3 * 60  # three times the 60-frame window the positions allow
    codes = mg.generate_tokens(["ambient pad"], frames, seed=0)
    assert codes.shape == (1, K, frames) and codes.min() >= 0 and codes.max() < 64  # no special/unknown left

    window, stride = 60, 36  # the default stride is 0.6 window
    starts = range(0, frames - window + stride, stride)
    assert [c["frames"] for c in calls] == [min(window, frames - s) for s in starts]
    steps = mg.lm.config.max_positions - mg.lm.config.levels  # T + 4 steps must fit the positions
    assert max(c["frames"] for c in calls) <= steps  # every window fits
    for s, call in zip(starts[1:], calls[1:]):  # each window continues from the last window - stride frames
        assert torch.equal(call["prompt"], codes[:, :, s : s + window - stride])  # both channels, in stereo
    assert_no_seams(mg, codes, [s + window - stride for s in starts[1:]])  # frame 60, 96, 132, ...


def test_long_generation_with_a_melody_reslices_it(tiny_musicgen, monkeypatch):
    mg = tiny_musicgen("tiny-melody", max_positions=96)  # window: 96 - 4 - 16 chroma - L text frames
    calls = record_windows(monkeypatch)
    t = torch.arange(2 * 32000) / 32000
    melody = torch.cat([torch.sin(2 * torch.pi * f * t[:16000]) for f in (262, 330, 392, 523)])  # C E G C, 2 s
    codes = mg.generate_tokens(["piano"], 200, seed=0, melody=melody, melody_sample_rate=32000)
    assert codes.shape == (1, 4, 200) and len(calls) >= 3
    first, second = calls[0]["chroma"], calls[1]["chroma"]
    assert torch.equal(first, chroma.melody_chroma(melody, 32000, 16))  # window 1: the melody as given
    assert not torch.equal(first, second)  # window 2 hears the melody from its own start time


def test_window_arguments_are_checked(mg):
    with pytest.raises(ValueError, match="positions"):
        mg.generate_tokens("rock", 10, window=5.0)
    with pytest.raises(ValueError, match="extend_stride"):
        mg.generate_tokens("rock", 10, window=1.0, extend_stride=1.0)
    codes = mg.generate_tokens("rock", 100, seed=0, window=0.5, extend_stride=0.2)  # windows of 25 frames
    assert codes.shape == (1, 4, 100)


# ----------------------------------------------------------------------------- unconditional, batches, seeds


def test_unconditional_runs_a_single_branch(mg, monkeypatch):
    batches = []
    decode = mg.lm.decode
    monkeypatch.setattr(mg.lm, "decode", lambda x, cache: batches.append(x.shape[0]) or decode(x, cache))
    mg.generate_tokens([""], 6, seed=0)
    assert set(batches) == {1}  # no wasted null branch
    batches.clear()
    mg.generate_tokens(["rock"], 6, seed=0)
    assert set(batches) == {2}  # with text: [cond; uncond]


def test_a_batch_equals_separate_calls_under_greedy_decoding(mg):
    batch = mg.generate_tokens(PROMPTS, 20, temperature=0)  # three prompt lengths: padded
    alone = torch.cat([mg.generate_tokens([p], 20, temperature=0) for p in PROMPTS])
    assert torch.equal(batch, alone)


def test_seeds_make_sampling_repeatable(mg):
    a = mg.generate(PROMPTS[:2], duration=0.3, seed=7)
    b = mg.generate(PROMPTS[:2], duration=0.3, seed=7)
    c = mg.generate(PROMPTS[:2], duration=0.3, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_top_k_default_scales_with_the_codebook_and_travels_with_the_checkpoint(tiny_musicgen, tmp_path):
    assert M.default_top_k(2048) == 250 and M.default_top_k(256) == 31  # the paper's 12 % share
    mg = tiny_musicgen(max_positions=64)
    assert mg.top_k == M.default_top_k(64)  # the tiny codec has 64 codes
    mg.top_k = 1  # only the most likely token: sampling = greedy decoding
    assert torch.equal(mg.generate_tokens(["baroque"], 8, seed=3), mg.generate_tokens(["baroque"], 8, temperature=0))
    mg.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text())["top_k"] == 1
    assert M.MusicGen.from_pretrained(tmp_path).top_k == 1


def test_guidance_default_is_used_and_travels_with_the_checkpoint(tiny_musicgen, tmp_path):
    mg = tiny_musicgen(max_positions=64)
    assert mg.guidance == 3.0  # the paper's, when nothing says otherwise
    mg.guidance = 6.0
    by_default = mg.generate_tokens(["baroque"], 8, temperature=0)
    assert torch.equal(by_default, mg.generate_tokens(["baroque"], 8, cfg_coef=6.0, temperature=0))
    assert not torch.equal(by_default, mg.generate_tokens(["baroque"], 8, cfg_coef=1.0, temperature=0))
    mg.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text())["guidance_scale"] == 6.0
    assert M.MusicGen.from_pretrained(tmp_path).guidance == 6.0


def test_temperature_default_is_used_and_travels_with_the_checkpoint(tiny_musicgen, tmp_path):
    mg = tiny_musicgen(max_positions=64)
    assert mg.temperature == 1.0  # the paper's, when nothing says otherwise
    mg.temperature = 0  # the model's default now decodes greedily
    assert torch.equal(mg.generate_tokens(["baroque"], 8, seed=3), mg.generate_tokens(["baroque"], 8, temperature=0))
    mg.temperature = 1.3
    hotter = mg.generate_tokens(["baroque"], 8, seed=3)
    assert torch.equal(hotter, mg.generate_tokens(["baroque"], 8, seed=3, temperature=1.3))
    assert not torch.equal(hotter, mg.generate_tokens(["baroque"], 8, temperature=0))  # it samples again
    mg.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text())["temperature"] == 1.3
    assert M.MusicGen.from_pretrained(tmp_path).temperature == 1.3


# ----------------------------------------------------------------------------- sample.py


def test_sample_writes_wavs_with_sidecar_settings(model_dir, tmp_path, capsys):
    import audio
    import sample

    clip = tmp_path / "clip.wav"
    audio.write(clip, torch.randn(1, 2000) * 0.1, 8000)  # 0.25 s to continue
    out = tmp_path / "out"
    sample.main(["--model", str(model_dir), "--prompt", "rock", "--prompt", "", "--duration", "0.5",
                 "--continue", str(clip), "--top-k", "20", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "s per generated second" in printed
    wavs = sorted(out.glob("*.wav"))
    settings = json.loads(wavs[0].with_suffix(".json").read_text())
    seed = settings["seed"]
    assert [w.name for w in wavs] == [f"00_rock_seed{seed}.wav", f"01_unconditional_seed{seed}.wav"]
    assert settings["prompt"] == "rock" and settings["top_k"] == 20 and settings["cfg"] == 3.0
    assert settings["temperature"] == 1.0  # no --temperature: the model's default, resolved
    assert settings["continue"] == str(clip) and settings["model"] == str(model_dir)
    assert isinstance(settings["seed"], int) and settings["seconds_taken"] > 0 and settings["duration"] == 0.5
    assert settings["partial"] is False
    for key in ("temperature", "top_p", "melody", "window", "extend_stride", "device", "threads"):
        assert key in settings
    wav, rate = audio.read(wavs[0])
    assert rate == 8000 and wav.shape[-1] == 4000

    # the recorded seed makes the same files again (same prompts: the batch shares one random stream)
    again = tmp_path / "again"
    sample.main(["--model", str(model_dir), "--prompt", "rock", "--prompt", "", "--duration", "0.5", "--continue",
                 str(clip), "--top-k", "20", "--seed", str(settings["seed"]), "--out", str(again)])
    torch.testing.assert_close(audio.read(again / f"00_rock_seed{seed}.wav")[0], wav, atol=0, rtol=0)


def test_sample_plot_and_unconditional_flag(model_dir, tmp_path):
    pytest.importorskip("matplotlib")
    import sample

    out = tmp_path / "u.wav"
    sample.main(["--model", str(model_dir), "--unconditional", "--duration", "0.3", "--plot", "--out", str(out)])
    assert out.exists() and out.with_suffix(".png").stat().st_size > 0
    assert json.loads(out.with_suffix(".json").read_text())["prompt"] == ""
    with pytest.raises(SystemExit, match="unconditional"):
        sample.main(["--model", str(model_dir), "--unconditional", "--prompt", "x"])
