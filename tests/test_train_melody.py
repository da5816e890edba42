"""train.py's melody model (Paper §2.3): the tiny config with the tiny melody LM on the synthetic corpus, reusing the
codec and tokens of a text run; the chroma of each training window, condition dropout, exact resume, the export,
sample.py --melody and evaluate.py melody end to end (numbers meaningless, plumbing checked)."""

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import chroma
import data
import evaluate
import musicgen
import train
from checkpoints import load_state_dict, read_step

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """The tiny text run's data, codec and tokens: what `small-melody` reuses from `small`."""
    root = tmp_path_factory.mktemp("melody")
    config = replace(train.CONFIGS["tiny"], out_dir=str(root / "text"), cache_dir=str(root / "cache"), samples=0)
    train.run(config, stage="tokens")
    return config


def melody_config(text_run, out_dir, **changes):
    return replace(text_run, out_dir=str(out_dir), reuse=text_run.out_dir, lm="tiny-melody", **changes)


def losses(config):
    rows = [json.loads(line) for line in (Path(config.out_dir) / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def melody_run(text_run, tmp_path_factory):
    """A melody model trained end to end (with a sample), reusing the text run's codec and tokens."""
    config = melody_config(text_run, tmp_path_factory.mktemp("melody") / "run", samples=1)
    lm = train.run(config)
    return config, lm


def test_reuses_codec_and_tokens_and_sizes_the_prefix_for_its_windows(melody_run, text_run, capsys):
    config, lm = melody_run
    out = Path(config.out_dir)
    assert not (out / "codec").exists() and not (out / "tokens.pt").exists()  # taken from the text run, not redone
    assert lm.config.melody and lm.config.chroma_length == chroma.chroma_frames(config.segment_seconds, 640) == 51
    assert losses(config)[config.max_steps] < losses(config)[1]
    sample, _ = sf.read(out / "samples" / "00.wav")
    assert len(sample) > 0
    # the messages say which it does; without a finished run to reuse, it trains its own codec (not tested: slow)
    train.run(config)  # everything done: nothing retrained, the messages name the reused folder
    said = capsys.readouterr().out
    assert f"[codec] reusing {Path(text_run.out_dir, 'codec')}" in said and "[tokens] reusing" in said


def test_prefix_keeps_each_audio_step_at_a_fixed_distance_from_its_chroma_frame():
    """A melody LM with text_length pads its text to it (train.py's, which also reads one chroma frame per codec
    frame): prompts of any length give the same prefix, so audio step t always sits chroma_length + text_length
    positions after chroma frame t. A longer prompt is refused in one line."""
    config = musicgen.lm_config("small-melody", text_dim=32, chroma_hop=640,
                                chroma_length=chroma.chroma_frames(2.5, 640), text_length=6)
    assert config.chroma_length == 126  # 2.5 s at 50 frames/s, + 1: centred frames
    lm = musicgen.LM(config)
    for length in (1, 4, 6):
        prefix = lm.melody_prefix(torch.randn(2, length, 32), torch.ones(2, length))
        assert prefix.shape == (2, config.chroma_length + 6, config.dim)
        assert torch.equal(prefix[:, config.chroma_length + length :], torch.zeros(2, 6 - length, config.dim))
    with pytest.raises(ValueError, match="at most 6"):
        lm.melody_prefix(torch.randn(1, 7, 32), torch.ones(1, 7))
    assert lm.prefix_length(4) == config.chroma_length + 6  # what generation sizes its windows by, checked first


def test_training_chroma_is_the_chroma_of_the_window(melody_run, text_run):
    """Each window is conditioned on the chroma of the very audio its codes encode, frame for frame: one chroma
    frame per codec frame, sliced from its clip's chroma, the same as the window's own chromagram wherever the
    0.5 s STFT window lies inside it (at the edges the clip around the window is the context)."""
    config, lm = melody_run
    config = replace(config, cond_dropout=0.0, melody_dropout=0.0)
    clips = data.load_corpus(config, 16000)
    codec = train.EncodecLite.from_pretrained(Path(text_run.out_dir, "codec"))
    tokens = data.tokenize(codec, clips, Path(text_run.out_dir, "tokens.pt")).select("train")
    source = train.melody_source(tokens, clips, codec, lm)
    frames = round(config.segment_seconds * tokens.frame_rate)
    proc = train.Processes()
    tokenizer = musicgen.MusicGen.from_pretrained(Path(config.out_dir, "model")).tokenizer
    hop = round(codec.sample_rate / tokens.frame_rate)  # samples per codec frame
    length, chroma_hop = lm.config.chroma_length, lm.config.chroma_hop
    assert chroma_hop * tokens.frame_rate == chroma.SAMPLE_RATE and length == frames + 1  # one frame per codec frame
    edge = math.ceil(chroma.N_FFT / 2 / chroma_hop)  # frames whose STFT window reaches past the window's edge
    clip_of = {c.id: c for c in clips}
    for step in range(3):
        codes, _, _, drop, melody = train.lm_batch(tokens, tokenizer, step, config, frames, proc, melody=source)
        _, _, windows = data.token_batch(tokens, step, config.batch_size, frames, seed=config.seed, augment=True)
        for row, (i, start) in zip(melody, windows):
            wav = data.clip_audio(clip_of[tokens.ids[i]], codec.sample_rate)[:, start * hop : (start + frames) * hop]
            assert wav.shape[-1] == frames * hop  # the window's audio, whole
            own = chroma.melody_chroma(wav, codec.sample_rate, length, chroma_hop)[0]  # the window alone
            assert torch.equal(row[edge : length - edge], own[edge : length - edge])
        assert melody.shape == (config.batch_size, length, 12) and not drop


@pytest.mark.parametrize("text_dropout", [0.0, 0.5])
def test_condition_dropout_draws_both_nulls(melody_run, text_run, text_dropout):
    """One draw per batch for guidance (text and melody both null), one for the melody alone (text kept) and, with
    text_dropout, one for the text alone (the melody kept: separate guidance's melody-only branch)."""
    config, lm = melody_run
    config = replace(config, text_dropout=text_dropout)
    clips = data.load_corpus(config, 16000)
    codec = train.EncodecLite.from_pretrained(Path(text_run.out_dir, "codec"))
    tokens = data.tokenize(codec, clips, Path(text_run.out_dir, "tokens.pt")).select("train")
    source = train.melody_source(tokens, clips, codec, lm)
    tokenizer = musicgen.MusicGen.from_pretrained(Path(config.out_dir, "model")).tokenizer
    null = chroma.null_melody(config.batch_size, lm.config.chroma_length)
    seen = set()
    for step in range(40):
        _, _, _, drop, melody = train.lm_batch(tokens, tokenizer, step, config, 8, train.Processes(), melody=source)
        seen.add((drop, torch.equal(melody, null)))  # (text dropped, melody dropped)
    text_alone = {(True, False)} if text_dropout else set()
    assert seen == {(True, True), (False, True), (False, False)} | text_alone  # both, the melody alone, neither
    share = sum(train.lm_batch(tokens, tokenizer, s, config, 8, train.Processes(), False, source)[3] for s in range(5))
    assert share == 0  # validation batches keep their conditions


def test_resume_is_exact(text_run, tmp_path, monkeypatch):
    straight = melody_config(text_run, tmp_path / "straight", samples=0)
    train.run(straight)
    resumed = melody_config(text_run, tmp_path / "resumed", samples=0)
    real = train.learning_rate

    def killed_at_step_4(step, config):
        if step == 4:
            raise RuntimeError("simulated kill")
        return real(step, config)

    monkeypatch.setattr(train, "learning_rate", killed_at_step_4)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train.run(resumed)
    assert read_step(Path(resumed.out_dir) / "ckpt.pt") == 3
    monkeypatch.undo()
    train.run(resumed)
    assert losses(resumed) == losses(straight)
    a, b = load_state_dict(Path(straight.out_dir, "model")), load_state_dict(Path(resumed.out_dir, "model"))
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_export_reloads_with_the_same_logits(melody_run):
    config, lm = melody_run
    mg = musicgen.MusicGen.from_pretrained(Path(config.out_dir, "model"))
    assert mg.lm.config == lm.config and mg.context_frames == round(config.segment_seconds * mg.frame_rate)
    lm = lm.eval()
    torch.manual_seed(0)
    codes = torch.randint(lm.config.card, (2, lm.config.num_codebooks, 10))
    melody = chroma.bottleneck(torch.rand(2, lm.config.chroma_length, 12))
    condition, mask = mg.encode_text(["flute melody", "organ chords"])
    sequence = musicgen.delay_pattern(codes, lm.special)
    with torch.no_grad():
        torch.testing.assert_close(mg.lm(sequence, condition, mask, melody), lm(sequence, condition, mask, melody),
                                   rtol=0, atol=0)


def test_sample_follows_any_melody_file_and_says_what_it_did(melody_run, tmp_path):
    """A stereo 44.1 kHz tune shorter than the clip: downmixed, resampled, looped, each said in one line."""
    config, _ = melody_run
    t = np.arange(int(0.6 * 44100)) / 44100
    tune = 0.3 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "tune.wav", np.stack([tune, tune], axis=1), 44100)
    result = subprocess.run([sys.executable, "sample.py", "--model", str(Path(config.out_dir, "model")), "--prompt",
                             "flute melody", "--melody", str(tmp_path / "tune.wav"), "--duration", "1.5", "--out",
                             str(tmp_path / "out.wav")], cwd=ROOT, capture_output=True, text=True, timeout=180,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    assert "downmixed 2 channels to mono" in result.stderr and "resampled from 44100" in result.stderr
    assert "melody: 0.6 s for 1.5 s of music: looped to fill it." in result.stderr
    assert (tmp_path / "out.wav").exists()


def test_chroma_similarity_is_the_share_of_agreeing_frames():
    sr = 16000
    t = torch.arange(2 * sr) / sr
    a4, e5 = (torch.sin(2 * torch.pi * f * t)[None] for f in (440.0, 659.25))
    assert evaluate.chroma_similarity(a4, a4, sr).item() == pytest.approx(1.0)
    assert evaluate.chroma_similarity(a4, e5, sr).item() == pytest.approx(0.0)
    half = torch.cat([a4[:, : sr], e5[:, sr:]], dim=-1)  # the second second is another note
    assert 0.3 < evaluate.chroma_similarity(a4, half, sr).item() < 0.7


def test_evaluate_melody_end_to_end(melody_run, text_run, tmp_path, capsys):
    config, _ = melody_run
    text = replace(text_run, out_dir=str(tmp_path / "text"), max_steps=2)
    Path(text.out_dir).mkdir()
    for name in ("codec", "tokens.pt"):  # the text run's stages, then a 2-step text LM to compare with
        os.symlink(Path(text_run.out_dir, name).resolve(), Path(text.out_dir, name))
    train.run(text)
    out = tmp_path / "melody.json"
    evaluate.main(["melody", "--model", str(Path(config.out_dir, "model")), "--text-model",
                   str(Path(text.out_dir, "model")), "--per-style", "1", "--seconds", "1", "--json", str(out),
                   "--captions", "train", "--cfg", "4", "--melody-cfg", "2"])  # choosing the guidance scales
    result = json.loads(out.read_text())["melody"]
    assert set(result["sim"]) == {"given", "null", "mismatched", "text_only"}
    assert all(0 <= v <= 1 for v in result["sim"].values()) and result["clips"] == 3
    assert result["captions"] == "training" and result["guidance"] == [4.0, 2.0]
    assert "(a) melody model, its own melody" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="text-only model"):  # a text model is refused with one line
        evaluate.main(["melody", "--model", str(Path(text.out_dir, "model")), "--per-style", "1"])
