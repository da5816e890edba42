"""data.py: deterministic splits, your own folder, stateless batches, the token cache, caption augmentation, clear
errors. (The corpora we render ourselves, and synth.py, are tested in test_corpus.py.)"""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import data
from corpus import synthetic_corpus

SR = 8000  # encodec_lite's "tiny" codec rate: everything here stays small


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, synthetic_corpus(cache, SR, n=12, seconds=2.0, seed=0)


@pytest.fixture(scope="module")
def codec():
    from encodec_lite import EncodecConfig, EncodecLite

    torch.manual_seed(0)
    return EncodecLite(EncodecConfig.preset("tiny")).eval()


# ----------------------------------------------------------------------------- splits and your own folder


def test_splits_are_deterministic_and_order_free():
    keys = [f"piece{i}" for i in range(200)]
    a = data.assign_splits(keys)
    b = data.assign_splits(list(reversed(keys)))
    assert a == b
    assert 5 <= sum(s == "valid" for s in a.values()) <= 40  # about 10 %
    assert "valid" in data.assign_splits(["a", "b"]).values()  # tiny sets still get a held-out item


def write_folder(folder):
    t = np.arange(44100) / 44100
    stereo = np.stack([0.6 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 440 * t)], axis=1)
    (folder / "sub").mkdir(parents=True)
    sf.write(folder / "sub" / "a.wav", stereo, 44100)
    (folder / "sub" / "a.txt").write_text("a stereo test tone\n")
    sf.write(folder / "b.flac", 0.3 * np.sin(2 * np.pi * 330 * np.arange(8000) / 8000), 8000)
    (folder / "metadata.jsonl").write_text(json.dumps({"path": "b.flac", "caption": "flac tone", "style": "x"}) + "\n")


def test_folder_corpus(tmp_path):
    write_folder(tmp_path / "music")
    clips = data.folder_corpus(tmp_path / "music", tmp_path / "cache", 16000)
    by_id = {c.id: c for c in clips}
    assert by_id["sub/a"].caption == "a stereo test tone" and by_id["b"].caption == "flac tone"
    assert by_id["b"].style == "x"
    a, sr = sf.read(by_id["sub/a"].path)
    assert sr == 16000 and a.ndim == 1 and abs(len(a) - 16000) <= 1  # 1 s stereo 44.1 kHz → mono 16 kHz
    assert abs(a.max() - 0.4) < 0.01  # downmix = channel mean: (0.6 + 0.2) / 2
    assert {c.split for c in clips} == {"train", "valid"}
    assert data.folder_corpus(tmp_path / "music", tmp_path / "cache", 16000) == clips


def test_folder_corpus_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.folder_corpus(tmp_path / "nope", tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No audio files"):
        data.folder_corpus(tmp_path / "empty", tmp_path / "cache")
    write_folder(tmp_path / "m")
    sf.write(tmp_path / "m" / "c.wav", np.zeros(100), 8000)
    with pytest.raises(ValueError, match="no caption.*c.wav"):
        data.folder_corpus(tmp_path / "m", tmp_path / "cache")
    (tmp_path / "m" / "c.txt").write_text("silence")
    (tmp_path / "m" / "metadata.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="metadata.jsonl, line 1"):
        data.folder_corpus(tmp_path / "m", tmp_path / "cache")


# ----------------------------------------------------------------------------- batches and tokens


def test_audio_batch_is_a_function_of_seed_and_step(corpus):
    clips = data.select(corpus[1], "train")
    a = data.audio_batch(clips, 7, 4, 1000, SR, seed=1)
    assert a.shape == (4, 1, 1000)
    assert torch.equal(a, data.audio_batch(clips, 7, 4, 1000, SR, seed=1))
    assert not torch.equal(a, data.audio_batch(clips, 8, 4, 1000, SR, seed=1))
    assert not torch.equal(a, data.audio_batch(clips, 7, 4, 1000, SR, seed=2))
    long = data.audio_batch(clips, 0, 2, 3 * SR, SR)  # longer than the clips: zero-padded
    assert long.shape == (2, 1, 3 * SR) and long[..., 2 * SR :].abs().max() == 0


def test_tokenize_caches_and_token_batches_are_stateless(corpus, codec, tmp_path, monkeypatch):
    _, clips = corpus
    path = tmp_path / "tokens.pt"
    tokens = data.tokenize(codec, clips, path)
    assert len(tokens.codes) == len(clips) and tokens.captions == [c.caption for c in clips]
    assert tokens.codes[0].shape == (codec.num_codebooks, 2 * int(codec.frame_rate))
    # Reused: the codec is not called again for the same codec and clips ...
    with monkeypatch.context() as m:
        m.setattr(codec, "encode", lambda *a, **k: pytest.fail("re-encoded although nothing changed"))
        again = data.tokenize(codec, clips, path)
    assert all(torch.equal(x, y) for x, y in zip(again.codes, tokens.codes))
    # ... nor for the same clips cached under another folder (train.py --reuse from another working directory) ...
    moved = tmp_path / "elsewhere"
    shutil.copytree(Path(clips[0].path).parent, moved)
    elsewhere = [dataclasses.replace(c, path=str(moved / Path(c.path).name)) for c in clips]
    assert data.fingerprint(codec, elsewhere) == data.fingerprint(codec, clips)
    # ... but rebuilt when the clip list (or any weight) changes, or a file is rendered again to another length.
    assert len(data.tokenize(codec, clips[:5], path).codes) == 5
    sf.write(elsewhere[0].path, np.zeros(SR // 2, dtype=np.float32), SR)
    assert data.fingerprint(codec, elsewhere) != data.fingerprint(codec, clips)

    train = tokens.select("train")
    assert set(train.splits) == {"train"} and len(train.codes) == 9
    codes, captions, windows = data.token_batch(train, 3, 4, 20, seed=0)
    assert codes.shape == (4, codec.num_codebooks, 20) and codes.dtype == torch.long and len(captions) == 4
    codes2, captions2, _ = data.token_batch(train, 3, 4, 20, seed=0)
    assert torch.equal(codes, codes2) and captions == captions2
    for row, (clip, start) in zip(codes, windows):  # where each row comes from: its clip and first frame
        assert torch.equal(row, train.codes[clip][:, start : start + 20].long())
    assert not torch.equal(codes, data.token_batch(train, 4, 4, 20, seed=0)[0])
    aug = data.token_batch(train, 3, 4, 20, seed=0, augment=True)
    assert torch.equal(aug[0], codes) and aug[1] == data.token_batch(train, 3, 4, 20, seed=0, augment=True)[1]
    with pytest.raises(ValueError, match="shortest clip has"):
        data.token_batch(train, 0, 2, 1000)


def test_augment_caption():
    caption = "baroque chorale by J.S. Bach, four-voice, in F sharp minor, 4/4 time, church organ, 72 bpm"
    words = set(caption.replace(",", " ").split())
    rng = np.random.default_rng(0)
    outs = [data.augment_caption(caption, rng) for _ in range(200)]
    assert all(o and set(o.replace(",", " ").split()) <= words for o in outs)
    assert len(set(outs)) > 100  # varied
    assert all(not o.startswith(",") and ",," not in o for o in outs)
    assert data.augment_caption(caption, rng, drop_field=0.0, word_dropout=0.0) == caption
    assert data.augment_caption("one", rng, word_dropout=1.0) == "one"  # never empty
