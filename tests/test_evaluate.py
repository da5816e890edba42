"""evaluate.py: metric sanity (SI-SNR, mel distance, chroma agreement), the style classifier, and the CLI end to end
on a tiny random MusicGen (numbers meaningless, plumbing checked)."""

import json
import math
import shutil

import pytest
import torch

import corpus
import data
import evaluate as E
import synth

SR = 8000


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def music():
    """[3, 1, N]: three different 2 s synthesized phrases."""
    waves = [synth.render([synth.Note(0.25 * i, 0.3, p + 2 * i, 90) for i in range(8)], SR, inst, seconds=2.0, seed=i)
             for i, (p, inst) in enumerate([(60, "flute"), (55, "church organ"), (64, "harp")])]
    return torch.stack([torch.from_numpy(w) for w in waves])[:, None]


def tone(pitch, seconds=2.0, sr=SR):
    t = torch.arange(int(seconds * sr)) / sr
    return (0.5 * torch.sin(2 * math.pi * 440 * 2 ** ((pitch - 69) / 12) * t))[None, None]


def test_si_snr(music):
    assert (E.si_snr(music, music) > 80).all()
    assert (E.si_snr(music, 0.3 * music) > 80).all()  # scale-invariant
    noise = torch.randn_like(music)
    assert (E.si_snr(music, noise) < -10).all()
    slightly = E.si_snr(music, music + 0.01 * noise)
    assert (slightly > 10).all() and (slightly < 40).all()
    padded = torch.cat([music, torch.zeros(3, 1, 100)], dim=-1)  # codec output padded to whole frames
    assert (E.si_snr(music, padded) > 80).all()


def test_mel_distance(music):
    assert torch.allclose(E.mel_distance(music, music, SR), torch.zeros(3))
    assert (E.mel_distance(music, music + 0.01 * torch.randn_like(music), SR) > 1).all()
    assert E.mel_distance(music[:1], music[1:2], SR) > E.mel_distance(music[:1], 0.9 * music[:1], SR)


def test_chroma_agreement(music):
    assert torch.equal(E.chroma_agreement(music, music, SR), torch.ones(3))
    assert E.chroma_agreement(tone(60), tone(66), SR).item() == 0.0  # C against F sharp: never the same
    assert E.chroma_agreement(tone(60), tone(72), SR).item() == 1.0  # an octave up: same pitch class
    assert E.chroma_fft(32000) == 2**14 and E.chroma_fft(16000) == 2**13


def test_note_events():
    """A melody of 8 notes in 2 s moves about 3.5 times per second (its first note is an onset, not a change); a
    held tone, even one that swells in loudness, does not move at all."""
    melody = synth.render([synth.Note(0.25 * i, 0.25, 60 + [0, 2, 4, 5, 7, 9, 11, 12][i], 90) for i in range(8)],
                          SR, "flute", seconds=2.0, seed=0)
    t = torch.arange(2 * SR) / SR
    swelling = tone(69)[0, 0] * (1 + 0.3 * torch.sin(2 * math.pi * 1.5 * t))
    rates = E.note_events(torch.stack([torch.from_numpy(melody), swelling]), SR)
    assert 3.0 <= rates["pitch_changes"][0] <= 4.0 and rates["pitch_changes"][1] == 0
    assert rates["onsets"][0] >= 2.5 and rates["onsets"][1] <= 0.5


def test_code_changes():
    codes = torch.tensor([[[1, 1, 1, 1, 1], [1, 2, 1, 2, 1]], [[3, 3, 4, 4, 4], [5, 6, 7, 8, 9]]])  # [B=2, K=2, T=5]
    assert torch.equal(E.code_changes(codes), torch.tensor([1 / 8, 1.0]))  # codebook 1: one change in 8 steps


def test_style_classifier_on_synthetic_styles(tmp_path):
    clips = corpus.synthetic_corpus(tmp_path, SR, n=24, seconds=2.0, seed=1)
    wav = torch.stack([data.clip_audio(c, SR) for c in clips])[:, 0]
    x = E.features(wav, SR)
    assert x.shape == (24, 216) and torch.isfinite(x).all()
    train = [i for i, c in enumerate(clips) if c.split == "train"]
    valid = [i for i, c in enumerate(clips) if c.split == "valid"]
    judge = E.StyleClassifier(sorted(corpus.SYNTHETIC_STYLES)).fit(x[train], [clips[i].style for i in train])
    assert E.accuracy(judge.predict(x[train]), [clips[i].style for i in train]) == 1.0
    assert E.accuracy(judge.predict(x[valid]), [clips[i].style for i in valid]) >= 0.8


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_musicgen):
    """A tiny random MusicGen (8 kHz codec) saved in the Hugging Face layout."""
    model_dir = tmp_path_factory.mktemp("tiny")
    tiny_musicgen().save_pretrained(model_dir)
    return model_dir


def test_cli_end_to_end(tiny_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    E.main(["all", "--model", str(tiny_dir), "--data", "synthetic", "--cache-dir", str(tmp_path / "cache"),
            "--clip-seconds", "2", "--segment-seconds", "1", "--seconds", "1", "--per-style", "1",
            "--json", str(out)])
    printed = capsys.readouterr().out
    assert "SI-SNR" in printed and "chroma agreement" in printed and "codec judge" in printed
    r = json.loads(out.read_text())
    codec = r["codec"]
    assert codec["clips"] == 3 and 0 <= codec["chroma_agreement"] <= 1 and math.isfinite(codec["si_snr_db"])
    assert len(codec["code_changes"]) == 4 and all(0 <= x <= 1 for x in codec["code_changes"])
    lm = r["lm"]
    assert len(lm["validation"]["val_ce"]) == 4 and all(math.isfinite(x) for x in lm["validation"]["val_ce"])
    # A random LM over 64 codes is about uniform: its cross-entropy is near log(64).
    assert all(abs(x - math.log(64)) < 1.5 for x in lm["validation"]["val_ce"])
    p = lm["prompt_following"]
    assert p["generated"] == 3 and p["chance"] == pytest.approx(1 / 3)
    for key in ("judge_accuracy_real", "judge_accuracy_codec_ceiling", "accuracy_generated_real_judge",
                "codec_judge_accuracy", "accuracy_generated"):
        assert 0 <= p[key] <= 1
    # the confusion matrix: one row per prompted style, one clip each here; its diagonal is the accuracy
    m = p["confusion"]
    assert [sum(row) for row in m] == [1, 1, 1]
    assert sum(m[i][i] for i in range(3)) / 3 == pytest.approx(p["accuracy_generated"])
    assert "by prompted style (rows)" in printed
    events = p["note_events"]
    for name in ("real", "reconstructed", "generated"):
        assert all(events[name][s]["pitch_changes"] >= 0 and events[name][s]["onsets"] >= 0 for s in p["styles"])
    assert set(events["ratio"]) == set(p["styles"]) and math.isfinite(events["mean_ratio"])
    assert "note events per second" in printed


def test_corpus_options_come_from_the_training_config(tiny_dir, tmp_path, capsys, monkeypatch):
    """A model folder with train.py's training_config.json is scored on the clips its run held out: its data, seed,
    clip length... are the defaults; one given on the command line wins, with a warning when it differs."""
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    trained = {"data": "synthetic", "cache_dir": str(tmp_path / "cache"), "clip_seconds": 2.0, "clips_per_style": 3,
               "seed": 7, "lr": 1e-3}  # and the other TrainConfig keys, which evaluate.py does not read
    (model / "training_config.json").write_text(json.dumps(trained))
    used = []
    real = data.load_corpus
    monkeypatch.setattr(data, "load_corpus", lambda settings, rate: used.append(vars(settings)) or real(settings, rate))
    out = tmp_path / "eval.json"
    E.main(["codec", "--model", str(model), "--device", "cpu", "--threads", "1", "--json", str(out)])
    assert {k: used[0][k] for k in E.CORPUS_OPTIONS} == {k: trained[k] for k in E.CORPUS_OPTIONS}
    assert json.loads(out.read_text())["codec"]["clips"] == 3 and [p.name for p in tmp_path.glob("eval*")] == [
        "eval.json"]  # written atomically: no temporary left beside it
    assert "warning" not in capsys.readouterr().err
    E.main(["codec", "--model", str(model), "--seed", "3"])
    assert used[1]["seed"] == 3 and "--seed 3 is not the training run's 7" in capsys.readouterr().err


def test_cli_device_is_checked_before_loading(tiny_dir):
    with pytest.raises(SystemExit, match="evaluate.py: unknown device 'gpu': use auto, cpu, cuda"):
        E.main(["codec", "--model", str(tiny_dir), "--device", "gpu"])


def test_confusion_matrix():
    styles = ["a", "b", "c"]
    assert E.confusion_matrix(["a", "a", "b", "c"], ["a", "b", "b", "a"], styles) == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_cli_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="evaluate.py: "):
        E.main(["codec", "--model", str(tmp_path / "missing")])
