"""corpus.py and synth.py: the corpora we render ourselves, their captions and caches, and the synthesizer."""

import json
import time

import numpy as np
import pytest
import soundfile as sf

import corpus
import data
import synth

SR = 8000  # encodec_lite's "tiny" codec rate: everything here stays small


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, corpus.synthetic_corpus(cache, SR, n=12, seconds=2.0, seed=0)


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
    assert corpus.estimate_key(c_major, [1.0] * len(c_major)) == "C major"
    assert corpus.estimate_key(a_minor, [1.0] * len(a_minor)) == "A minor"
    assert corpus.estimate_key([p + 6 for p in c_major], [1.0] * len(c_major)) == "F sharp major"


# ----------------------------------------------------------------------------- corpora


def test_synthetic_corpus(synthetic):
    cache, clips = synthetic
    assert len(clips) == 12 and len({c.style for c in clips}) == 3
    for c in clips:
        wav, sr = sf.read(c.path)
        assert sr == SR and wav.ndim == 1 and len(wav) == 2 * SR
        assert c.style in c.caption and c.meta["instrument"] in c.caption and c.meta["key"] in c.caption
    assert {c.split for c in clips} == {"train", "valid"}
    # Cached: a second call renders nothing and returns the same clips.
    t = time.perf_counter()
    again = corpus.synthetic_corpus(cache, SR, n=12, seconds=2.0, seed=0)
    assert again == clips and time.perf_counter() - t < 1.0


def test_builtin_corpus_renders_real_scores(tmp_path, monkeypatch):
    """Two styles, one clip each, from music21's bundled scores: captions say what the metadata says."""
    pytest.importorskip("music21")
    monkeypatch.setattr(corpus, "STYLES", {k: corpus.STYLES[k] for k in ("baroque chorale", "folk song")})
    clips = corpus.builtin_corpus(tmp_path, SR, clip_seconds=2.0, clips_per_style=1, seed=0, workers=1)
    bach, folk = clips
    assert bach.style == "baroque chorale" and "baroque" in bach.caption and "J.S. Bach" in bach.caption
    assert folk.style == "folk song" and folk.meta["region"] in folk.caption
    for c in clips:
        for field in (c.meta["key"], c.meta["meter"], c.meta["instrument"], f"{c.meta['bpm']} bpm"):
            assert field in c.caption
        wav, sr = sf.read(c.path)
        assert sr == SR and len(wav) == 2 * SR and np.abs(wav).max() > 0.1
    assert json.loads((tmp_path / "music21" / "baroque_chorale.json").read_text())  # parsed scores are cached
    assert corpus.builtin_corpus(tmp_path, SR, clip_seconds=2.0, clips_per_style=1, seed=0, workers=1) == clips
    # A bigger corpus starts with the smaller one: clip j of a style is the same whatever the corpus size.
    bigger = corpus.builtin_corpus(tmp_path, SR, clip_seconds=2.0, clips_per_style=2, seed=0, workers=1)
    assert [c.style for c in bigger] == ["baroque chorale"] * 2 + ["folk song"] * 2
    first = [bigger[0], bigger[2]]  # the first clip of each style
    for small, big in zip(clips, first):
        # (the split is the piece's hash too, except in a corpus this tiny, where one piece is held out regardless)
        assert (small.id, small.caption, small.meta) == (big.id, big.caption, big.meta)
        assert np.array_equal(sf.read(small.path)[0], sf.read(big.path)[0])


def test_corpus_cache_is_found_from_another_directory(tmp_path, monkeypatch):
    """The manifest stores paths relative to its folder: a relative cache dir keeps working after a cd."""
    monkeypatch.chdir(tmp_path)
    clips = corpus.synthetic_corpus("cache", SR, n=4, seconds=1.0, seed=0)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")

    def no_render(*args, **kwargs):
        raise AssertionError("the cached corpus was rendered again")

    monkeypatch.setattr(corpus.synth, "render", no_render)
    again = corpus.synthetic_corpus("../cache", SR, n=4, seconds=1.0, seed=0)
    assert [c.id for c in again] == [c.id for c in clips]
    for old, new in zip(clips, again):
        assert (tmp_path / old.path).samefile(new.path)


def test_load_corpus_names_the_synthetic_corpus(tmp_path):
    """data.load_corpus reads the corpus a run names: "synthetic" is corpus.synthetic_corpus with 12 clips."""
    from argparse import Namespace

    settings = Namespace(data="synthetic", cache_dir=tmp_path, clip_seconds=1.0, clips_per_style=0, seed=2)
    assert data.load_corpus(settings, SR) == corpus.synthetic_corpus(tmp_path, SR, n=12, seconds=1.0, seed=2)
