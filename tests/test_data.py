"""data.py and synth.py: corpora, captions, deterministic splits, stateless batches, the token cache, clear errors."""

import json
import time

import numpy as np
import pytest
import soundfile as sf
import torch

import data
import synth

SR = 8000  # encodec_lite's "tiny" codec rate: everything here stays small


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, data.synthetic_corpus(cache, SR, n=12, seconds=2.0, seed=0)


@pytest.fixture(scope="module")
def codec():
    from encodec_lite import EncodecConfig, EncodecLite

    torch.manual_seed(0)
    return EncodecLite(EncodecConfig.preset("tiny")).eval()


# ----------------------------------------------------------------------------- synth.py


def test_synth_is_deterministic_normalised_and_finite():
    notes = [synth.Note(0.1 * i, 0.3, 48 + 3 * i, 90, i % 3) for i in range(10)]
    for name in synth.INSTRUMENTS:
        a = synth.render(notes, SR, name, seconds=1.5, seed=3)
        b = synth.render(notes, SR, name, seconds=1.5, seed=3)
        assert a.dtype == np.float32 and a.shape == (int(1.5 * SR),)
        assert np.array_equal(a, b), name
        assert np.isfinite(a).all() and abs(np.abs(a).max() - 0.8) < 1e-5, name
    with pytest.raises(ValueError, match="Unknown instrument"):
        synth.render(notes, SR, "kazoo")


def test_synth_pitch_is_right():
    """A single flute A4 without reverb: the spectrum peaks at 440 Hz."""
    wav = synth.render([synth.Note(0.0, 1.0, 69, 100)], 16000, "flute", seconds=1.0, reverb_mix=0)
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    assert abs(np.argmax(spectrum) * 16000 / len(wav) - 440) < 3


def test_estimate_key():
    c_major = [60, 62, 64, 65, 67, 69, 71, 72, 67, 64, 60]
    a_minor = [57, 59, 60, 62, 64, 65, 68, 69, 64, 60, 57, 57]
    assert data.estimate_key(c_major, [1.0] * len(c_major)) == "C major"
    assert data.estimate_key(a_minor, [1.0] * len(a_minor)) == "A minor"
    assert data.estimate_key([p + 6 for p in c_major], [1.0] * len(c_major)) == "F sharp major"


# ----------------------------------------------------------------------------- corpora


def test_synthetic_corpus(corpus):
    cache, clips = corpus
    assert len(clips) == 12 and len({c.style for c in clips}) == 3
    for c in clips:
        wav, sr = sf.read(c.path)
        assert sr == SR and wav.ndim == 1 and len(wav) == 2 * SR
        assert c.style in c.caption and c.meta["instrument"] in c.caption and c.meta["key"] in c.caption
    assert {c.split for c in clips} == {"train", "valid"}
    # Cached: a second call renders nothing and returns the same clips.
    t = time.perf_counter()
    again = data.synthetic_corpus(cache, SR, n=12, seconds=2.0, seed=0)
    assert again == clips and time.perf_counter() - t < 1.0


def test_splits_are_deterministic_and_order_free():
    keys = [f"piece{i}" for i in range(200)]
    a = data.assign_splits(keys)
    b = data.assign_splits(list(reversed(keys)))
    assert a == b
    assert 5 <= sum(s == "valid" for s in a.values()) <= 40  # about 10 %
    assert "valid" in data.assign_splits(["a", "b"]).values()  # tiny sets still get a held-out item


def test_builtin_corpus_renders_real_scores(tmp_path, monkeypatch):
    """Two styles, one clip each, from music21's bundled scores: captions say what the metadata says."""
    pytest.importorskip("music21")
    monkeypatch.setattr(data, "STYLES", {k: data.STYLES[k] for k in ("baroque chorale", "folk song")})
    clips = data.builtin_corpus(tmp_path, SR, clip_seconds=2.0, clips_per_style=1, seed=0, workers=1)
    bach, folk = clips
    assert bach.style == "baroque chorale" and "baroque" in bach.caption and "J.S. Bach" in bach.caption
    assert folk.style == "folk song" and folk.meta["region"] in folk.caption
    for c in clips:
        for field in (c.meta["key"], c.meta["meter"], c.meta["instrument"], f"{c.meta['bpm']} bpm"):
            assert field in c.caption
        wav, sr = sf.read(c.path)
        assert sr == SR and len(wav) == 2 * SR and np.abs(wav).max() > 0.1
    assert json.loads((tmp_path / "music21" / "baroque_chorale.json").read_text())  # parsed scores are cached
    assert data.builtin_corpus(tmp_path, SR, clip_seconds=2.0, clips_per_style=1, seed=0, workers=1) == clips
    # A bigger corpus starts with the smaller one: train.py's codec trains on the first clips of each style.
    bigger = data.builtin_corpus(tmp_path, SR, clip_seconds=2.0, clips_per_style=2, seed=0, workers=1)
    first = data.first_per_style(bigger, 1)
    assert [c.style for c in bigger] == ["baroque chorale"] * 2 + ["folk song"] * 2 and len(first) == 2
    for small, big in zip(clips, first):
        # (the split is the piece's hash too, except in a corpus this tiny, where one piece is held out regardless)
        assert (small.id, small.caption, small.meta) == (big.id, big.caption, big.meta)
        assert np.array_equal(sf.read(small.path)[0], sf.read(big.path)[0])
    assert data.first_per_style(bigger, 0) == bigger


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
    # ... but rebuilt when the clip list (or any weight) changes.
    assert len(data.tokenize(codec, clips[:5], path).codes) == 5

    train = tokens.select("train")
    assert set(train.splits) == {"train"} and len(train.codes) == 9
    codes, captions = data.token_batch(train, 3, 4, 20, seed=0)
    assert codes.shape == (4, codec.num_codebooks, 20) and codes.dtype == torch.long and len(captions) == 4
    codes2, captions2 = data.token_batch(train, 3, 4, 20, seed=0)
    assert torch.equal(codes, codes2) and captions == captions2
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


def test_corpus_cache_is_found_from_another_directory(tmp_path, monkeypatch):
    """The manifest stores paths relative to its folder: a relative cache dir keeps working after a cd."""
    monkeypatch.chdir(tmp_path)
    clips = data.synthetic_corpus("cache", SR, n=4, seconds=1.0, seed=0)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")

    def no_render(*args, **kwargs):
        raise AssertionError("the cached corpus was rendered again")

    monkeypatch.setattr(data.synth, "render", no_render)
    again = data.synthetic_corpus("../cache", SR, n=4, seconds=1.0, seed=0)
    assert [c.id for c in again] == [c.id for c in clips]
    for old, new in zip(clips, again):
        assert (tmp_path / old.path).samefile(new.path)
