"""Stereo MusicGen (Paper §4.3): the stereo partial delay, the mono codec run on each channel, loading, saving and
generating, on a tiny stereo model of our own (8 streams: the tiny codec's 4 levels for each of 2 channels).

Elsewhere: full-size parity with transformers at the musicgen-stereo-small configuration in test_musicgen.py, the
stereo melody model in test_melody.py, long generation and continuation in stereo in test_generation_features.py."""

import json

import pytest
import torch

import audio
import checkpoints
import musicgen as M
import sample
from checkpoints import CheckpointError

PROMPTS = ["80s pop track with bassy drums and synth", "baroque"]  # different lengths: the batch is padded
STEREO = dict(num_codebooks=8, audio_channels=2)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stereo_dir(tmp_path_factory, tiny_musicgen):
    """A tiny stereo MusicGen of our own, saved in the Hugging Face layout."""
    model_dir = tmp_path_factory.mktemp("tiny-stereo")
    tiny_musicgen(max_positions=64, **STEREO).save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def mg(stereo_dir):
    return M.MusicGen.from_pretrained(stereo_dir)


def clip(mg, seed, frames=20):
    """A stereo clip [1, 2, N] whose channels differ: random codes of each channel, decoded."""
    codes = torch.randint(0, 64, (1, 4, frames), generator=torch.Generator().manual_seed(seed))
    return torch.cat([mg.codec.decode(codes), mg.codec.decode(codes.roll(1, dims=-1))], dim=1)


# ----------------------------------------------------------------------------- the stereo partial delay


def test_stereo_pattern_layout_matches_the_diagram():
    left = 100 * torch.arange(4)[:, None] + torch.arange(6)[None, :]  # [4, 6], 100 k + t
    codes = M.interleave([left[None], left[None] + 50])  # [1, 8, 6]: L_0, R_0, L_1, R_1, ...
    S = -1
    seq = M.channel_delay_pattern(codes, S, channels=2)[0]
    assert seq.shape == (8, 6 + 4)  # T + K steps with K = 4 levels: no step more than mono
    assert seq[0].tolist() == [S, 0, 1, 2, 3, 4, 5, S, S, S]
    assert seq[1].tolist() == [S, 50, 51, 52, 53, 54, 55, S, S, S]
    assert seq[3].tolist() == [S, S, 150, 151, 152, 153, 154, 155, S, S]
    assert seq[7].tolist() == [S, S, S, S, 350, 351, 352, 353, 354, 355]
    assert torch.equal(seq[0::2], M.delay_pattern(left[None], S)[0])  # each channel: the mono pattern
    assert torch.equal(M.revert_channel_delay(seq[None], 2)[0], codes[0])
    assert torch.equal(M.channel_delay_pattern(left[None], S), M.delay_pattern(left[None], S))  # mono: unchanged


def test_stereo_loss_skips_each_channels_special_targets():
    torch.manual_seed(0)
    lm = M.LM(M.lm_config("tiny", text_dim=16, **STEREO))
    condition, mask = torch.randn(2, 3, 16), torch.ones(2, 3, dtype=torch.long)
    B, K, T = 2, 8, 8
    codes = torch.randint(0, 64, (B, K, T))
    loss, per_stream = lm.compute_loss(codes, condition, mask)
    logits = lm(M.channel_delay_pattern(codes, 64, 2)[..., :T], condition, mask)  # [B, K, T, N]
    for j in range(K):  # stream j is level j // 2: its frame t is predicted at step t + level, for t < T - level
        level, frames = j // 2, torch.arange(T - j // 2)
        expected = torch.nn.functional.cross_entropy(logits[:, j, frames + level].flatten(0, 1),
                                                     codes[:, j, frames].flatten())
        torch.testing.assert_close(per_stream[j], expected)
    assert torch.isclose(loss, per_stream.mean())


def test_stereo_reference_and_fast_loops_agree():
    torch.manual_seed(0)
    lm = M.LM(M.lm_config("tiny", text_dim=16, **STEREO)).eval()
    condition, mask = torch.randn(2, 5, 16), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    prompt = torch.randint(0, 64, (2, 8, 3))
    for sampling in (dict(temperature=0), dict(top_k=10)):
        runs = [loop(lm, condition, mask, 10, generator=torch.Generator().manual_seed(0), prompt=prompt, **sampling)
                for loop in (M.generate_reference, M.generate)]
        assert runs[0].shape == (2, 8, 10) and torch.equal(runs[0], runs[1])
        assert torch.equal(runs[0][:, :, :3], prompt)


# ----------------------------------------------------------------------------- a tiny stereo model


def test_stereo_checkpoint_is_read_by_transformers_at_parity(mg, stereo_dir, hf_greedy_generate):
    config = json.loads((stereo_dir / "config.json").read_text())
    assert config["decoder"]["audio_channels"] == 2 and config["decoder"]["num_codebooks"] == 8
    assert config["audio_encoder"]["audio_channels"] == 1  # one mono codec for both channels
    assert mg.audio_channels == 2 and mg.lm.config.levels == 4
    assert mg.context_frames == 1500 - 4  # max_length counts T + 4 steps, the levels, as for mono
    config["decoder"]["audio_channels"] = 3
    with pytest.raises(CheckpointError, match=r"audio_channels is 3: MusicGen checkpoints are mono \(1\) or stereo"):
        checkpoints.lm_config_from_hf(config)

    transformers = pytest.importorskip("transformers")
    hf = transformers.MusicgenForConditionalGeneration.from_pretrained(stereo_dir).eval()
    ids, mask = mg.tokenizer(PROMPTS)
    seq = torch.randint(0, 65, (2, 8, 5))
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=seq.reshape(16, 5)).logits
        ours = mg.lm(seq, *mg.encode_text(PROMPTS))
    torch.testing.assert_close(ours, ref.view(2, 8, 5, -1), atol=1e-5, rtol=0)
    ref_codes, ref_audio = hf_greedy_generate(hf, 12, input_ids=ids, attention_mask=mask)
    codes = mg.generate_tokens(PROMPTS, 12, cfg_coef=3.0, temperature=0)
    assert torch.equal(codes, ref_codes)
    torch.testing.assert_close(mg.decode_audio(codes), ref_audio, atol=1e-5, rtol=1e-4)


def test_the_codec_runs_once_per_channel(mg):
    wav = clip(mg, seed=1)  # [1, 2, N]
    codes = mg.encode_audio(wav)  # [1, 8, T]
    assert torch.equal(codes[:, 0::2], mg.codec.encode(wav[:, :1]))  # left: the even streams
    assert torch.equal(codes[:, 1::2], mg.codec.encode(wav[:, 1:]))  # right: the odd ones
    decoded = mg.decode_audio(codes)
    assert decoded.shape == wav.shape
    assert torch.equal(decoded, torch.cat([mg.codec.decode(codes[:, 0::2]), mg.codec.decode(codes[:, 1::2])], 1))


def test_generate_returns_stereo_and_ctrl_c_keeps_both_channels(mg):
    wav, codes = mg.generate(["rock", ""], duration=0.2, seed=0, return_tokens=True)
    assert wav.shape == (2, 2, 10 * mg.codec.hop_length) and codes.shape == (2, 8, 10)
    assert torch.isfinite(wav).all() and not torch.equal(wav[:, 0], wav[:, 1])  # two channels, not one copied

    def ctrl_c(step, total):
        if step == 8:
            raise KeyboardInterrupt

    with pytest.raises(M.Interrupted) as stop:
        mg.generate_tokens(["rock", ""], 10, seed=0, progress=ctrl_c)
    done = stop.value.codes.shape[-1]  # after 8 steps, frames 0..4 have all 4 levels of both channels
    assert done == 5 and torch.equal(stop.value.codes, codes[:, :, :done])


def test_a_mono_clip_plays_in_both_channels_and_a_stereo_one_is_downmixed_for_mono(mg, tiny_musicgen, capsys):
    mono_clip = clip(mg, seed=2)[0, :1]  # [1, N]
    codes = mg.generate_tokens("rock", 25, seed=0, prompt_audio=mono_clip, prompt_sample_rate=8000)
    assert "audio prompt: duplicated mono to 2 channels" in capsys.readouterr().err
    assert torch.equal(codes[:, 0::2, :20], codes[:, 1::2, :20])  # the same prompt codes left and right
    mono = tiny_musicgen(max_positions=64)
    codes = mono.generate_tokens("rock", 25, seed=0, prompt_audio=clip(mg, seed=2)[0], prompt_sample_rate=8000)
    assert codes.shape == (1, 4, 25) and "audio prompt: downmixed 2 channels to mono" in capsys.readouterr().err


def test_sample_writes_stereo_wavs(stereo_dir, tmp_path):
    prompt = tmp_path / "clip.wav"
    audio.write(prompt, clip(M.MusicGen.from_pretrained(stereo_dir), seed=3)[0], 8000)
    out = tmp_path / "out.wav"
    sample.main(["--model", str(stereo_dir), "--prompt", "rock", "--duration", "0.5", "--continue", str(prompt),
                 "--seed", "0", "--out", str(out)])
    wav, rate = audio.read(out)
    assert rate == 8000 and wav.shape == (2, 4000) and not torch.equal(wav[0], wav[1])
