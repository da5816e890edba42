"""chroma.py against Hugging Face's MusicgenMelodyFeatureExtractor, plus pitch, silence and input-handling checks.

The reference extractor builds a `torchaudio.transforms.Spectrogram`, and torchaudio is not installed (it has no build
for this torch). We inject a stand-in for that one object, written here from torch.stft with the semantics that
torchaudio documents for `Spectrogram`; everything else of the reference runs unchanged: its filter bank,
padding/truncation to 30 s, ∞-normalisation and argmax.
"""

import functools
import importlib
import math
import sys
import types

import numpy as np
import pytest
import torch

import audio
import chroma

SR = chroma.SAMPLE_RATE


class StftSpectrogram(torch.nn.Module):
    """torchaudio.transforms.Spectrogram(n_fft, win_length, hop_length, power=2, center=True, pad=0,
    normalized=True) from torch.stft: periodic Hann, reflect padding, divided by sqrt(sum w^2), |X|^2."""

    def __init__(self, n_fft, win_length, hop_length, power, center, pad, normalized):
        super().__init__()
        assert (power, center, pad, normalized) == (2, True, 0, True), "only the call the melody extractor makes"
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(win_length))

    def forward(self, wav):  # [..., N] -> [..., n_fft // 2 + 1, frames]
        lead = wav.shape[:-1]
        spec = torch.stft(wav.reshape(-1, wav.shape[-1]), self.n_fft, self.hop_length, window=self.window,
                          center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
        spec = spec / self.window.pow(2.0).sum().sqrt()
        power = spec.abs().pow(2.0)
        return power.reshape(lead + power.shape[-2:])


@pytest.fixture(scope="module")
def reference():
    """transformers' melody feature extractor, with the torch.stft stand-in for torchaudio's Spectrogram."""
    # import_module, not `from ... import`: the lazy package would hand out a "needs torchaudio" placeholder.
    module = importlib.import_module("transformers.models.musicgen_melody.feature_extraction_musicgen_melody")
    fake = types.SimpleNamespace(transforms=types.SimpleNamespace(Spectrogram=StftSpectrogram))
    patch = pytest.MonkeyPatch()
    patch.setattr(module, "torchaudio", fake, raising=False)
    yield module.MusicgenMelodyFeatureExtractor()
    patch.undo()


def ref_chroma(reference, wav):
    """[N] or [B, N] (or [B, C, N] stereo) float32 at 32 kHz → reference one-hot [B, frames, 12]."""
    return reference(wav.numpy(), sampling_rate=SR, return_tensors="pt")["input_features"]


# --- music-like test signals at 32 kHz --------------------------------------------------------------------------------
def midi_hz(m):
    return 440.0 * 2 ** ((m - 69) / 12)


@functools.lru_cache(maxsize=None)  # songs reuse the same few notes; never modify the returned tensor
def note(midi, seconds, harmonics=6, sr=SR):
    """A plucked-string-like tone: harmonics with 1/h amplitudes and an exponential decay."""
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    tone = sum(torch.sin(2 * math.pi * h * midi_hz(midi) * t) / h for h in range(1, harmonics + 1))
    return (tone * torch.exp(-3 * t)).float()


def melody(seconds, seed, note_seconds=0.3):
    """Random notes of C major, one after the other (with a quiet bass drone for realism)."""
    g = torch.Generator().manual_seed(seed)
    scale = [60, 62, 64, 65, 67, 69, 71, 72, 74, 76]
    picks = torch.randint(len(scale), (int(seconds / note_seconds) + 1,), generator=g).tolist()
    notes = [note(scale[i], note_seconds) for i in picks]
    wav = torch.cat(notes)[: int(seconds * SR)]
    return 0.3 * wav + 0.05 * note(36, seconds)[: wav.shape[0]]


def chords(seconds, seed):
    """A I-vi-IV-V progression of triads, one chord per second, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    progression = [[60, 64, 67], [57, 60, 64], [53, 57, 60], [55, 59, 62]]
    parts = [sum(note(m, 1.0) for m in progression[i % 4]) / 3 for i in range(int(seconds) + 1)]
    wav = torch.cat(parts)[: int(seconds * SR)]
    return 0.3 * wav + 0.01 * torch.randn(wav.shape, generator=g)


def signal(kind, seconds, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    if kind == "silence":
        return torch.zeros(n)
    if kind == "noise":
        return 0.1 * torch.randn(n, generator=g)
    if kind == "melody":
        return melody(seconds, seed)
    if kind == "chords":
        return chords(seconds, seed)
    if kind == "song":  # melody over chords, silence at the start and end
        wav = melody(seconds, seed) + chords(seconds, seed + 1)
        wav[: n // 10] = 0
        wav[-n // 10 :] = 0
        return wav
    raise ValueError(kind)


# Lengths: shorter than one window (16384 samples = 0.512 s), exactly one, a little more, several seconds.
LENGTHS = [0.1, 16383 / SR, 16384 / SR, 0.6, 3.0, 10.3]
KINDS = ["melody", "chords", "song", "noise", "silence"]


# --- parity with transformers -----------------------------------------------------------------------------------------
def test_filter_bank_matches_transformers():
    from transformers.audio_utils import chroma_filter_bank

    for sr, n_fft in [(SR, chroma.N_FFT), (16000, 8192), (24000, 16384)]:
        theirs = chroma_filter_bank(num_frequency_bins=n_fft, num_chroma=12, sampling_rate=sr, tuning=0)
        ours = chroma.chroma_filter_bank(sr, n_fft)
        assert ours.shape == (12, n_fft // 2 + 1) and ours.dtype == torch.float32
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seconds", LENGTHS)
def test_one_hot_frames_identical(reference, kind, seconds):
    wav = signal(kind, seconds, seed=round(seconds * 10))
    ours = chroma.chromagram(wav, SR)
    theirs = ref_chroma(reference, wav)
    assert ours.shape == theirs.shape == (1, 1 + max(wav.shape[0], chroma.N_FFT) // chroma.HOP_LENGTH, 12)
    assert torch.equal(ours, theirs)  # not one frame differs, ties included


def test_soft_chroma_matches_reference_pieces(reference):
    """Before the argmax: the reference's own filter bank on the stand-in spectrogram, ∞-normalised as it does."""
    wav = signal("song", 4.0)
    raw = torch.einsum("cf,ft->ct", reference.chroma_filters, reference.spectrogram(wav))
    theirs = torch.nn.functional.normalize(raw, p=float("inf"), dim=0, eps=1e-6).T
    ours = chroma.chromagram(wav, SR, argmax=False)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    peaks = ours.max(dim=-1).values
    assert set(peaks.tolist()) == {0.0, 1.0}  # every frame peaks at exactly 1, except silent ones (the song's ends)


def test_batch_of_stereo_clips(reference, capsys):
    """A [B, 2, N] batch: both sides downmix by the channel mean; we say so on stderr."""
    left = torch.stack([signal("melody", 2.5, seed=s) for s in range(3)])
    right = torch.stack([signal("chords", 2.5, seed=s) for s in range(3)])
    wav = torch.stack([left, right], dim=1)  # [3, 2, N]
    ours = chroma.chromagram(wav, SR)
    assert "downmixed 2 channels to mono" in capsys.readouterr().err
    assert torch.equal(ours, ref_chroma(reference, wav))


def test_long_reference_is_cut_to_30_seconds(reference):
    """HF cuts the waveform to 30 s (→ exactly 235 frames); melody_chroma does the same. The plain chromagram of the
    whole clip agrees on every frame but the last one, whose window reaches past 30 s and so sees real samples
    where HF's cut waveform has reflect padding."""
    wav = signal("song", 33.0)
    theirs = ref_chroma(reference, wav)
    assert theirs.shape == (1, chroma.CHROMA_LENGTH, 12)
    assert torch.equal(chroma.melody_chroma(wav, SR), theirs)
    full = chroma.chromagram(wav, SR)
    assert full.shape[1] == 1 + wav.shape[0] // chroma.HOP_LENGTH
    assert torch.equal(full[:, : chroma.CHROMA_LENGTH - 1], theirs[:, :-1])


# --- behaviour --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("midi", [48, 55, *range(60, 72), 76, 81])
def test_sine_gives_its_pitch_class(midi):
    t = torch.arange(SR) / SR
    wav = 0.5 * torch.sin(2 * math.pi * midi_hz(midi) * t)
    classes = chroma.chromagram(wav, SR).argmax(-1)
    assert (classes == midi % 12).all(), f"{chroma.PITCH_CLASSES[midi % 12]} heard as {classes.tolist()}"


def test_silence_is_C_without_nan():
    for n in [1, 100, 20000, 3 * SR]:
        soft = chroma.chromagram(torch.zeros(n), SR, argmax=False)
        assert torch.isfinite(soft).all() and (soft == 0).all()
        onehot = chroma.chromagram(torch.zeros(n), SR)
        assert (onehot[..., 0] == 1).all() and onehot.sum() == onehot.shape[1]


def test_other_sample_rate_is_resampled_with_notice(capsys):
    """A 44.1 kHz stereo recording of the melody gives (almost) the same chroma as the 32 kHz rendering."""
    g = torch.Generator().manual_seed(0)
    scale = [60, 64, 67, 72, 69, 65, 62, 71]
    seq = [scale[i] for i in torch.randint(len(scale), (20,), generator=g)]
    at = lambda sr: torch.cat([note(m, 0.5, sr=sr) for m in seq])  # noqa: E731
    ours_32k = chroma.chromagram(at(SR), SR)
    stereo_44k = torch.stack([at(44100), 0.5 * at(44100)])
    ours_44k = chroma.chromagram(stereo_44k, 44100)
    err = capsys.readouterr().err
    assert "downmixed" in err and "resampled from 44100 Hz to 32000 Hz" in err
    assert ours_44k.shape == ours_32k.shape
    agree = (ours_44k.argmax(-1) == ours_32k.argmax(-1)).float().mean()
    assert agree >= 0.95, f"only {agree:.0%} of frames agree"


def test_other_stft_sizes_for_small_models():
    """A 16 kHz model with a 0.5 s window (8192) and hop 2048: same code, right pitch, right frame count."""
    wav = 0.5 * torch.sin(2 * math.pi * midi_hz(64) * torch.arange(48000) / 16000)  # E4, 3 s
    out = chroma.chromagram(wav, 16000, target_rate=16000, n_fft=8192)
    assert out.shape == (1, 1 + 48000 // 2048, 12)
    assert (out.argmax(-1) == 4).all()


def test_autocast_does_not_change_the_chroma():
    wav = signal("song", 3.0)
    plain = chroma.chromagram(wav, SR)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(chroma.chromagram(wav, SR), plain)


def test_fit_length_loops_then_cuts():
    x = chroma.bottleneck(torch.randn(2, 7, 12))
    out = chroma.fit_length(x, 20)  # 7 frames → 3 copies (21) → first 20
    assert out.shape == (2, 20, 12)
    assert torch.equal(out[:, :7], x) and torch.equal(out[:, 7:14], x) and torch.equal(out[:, 14:], x[:, :6])
    long = chroma.bottleneck(torch.randn(1, 300, 12))
    assert torch.equal(chroma.fit_length(long), long[:, : chroma.CHROMA_LENGTH])
    assert chroma.fit_length(x[:, :1]).shape == (2, 235, 12)


def test_null_melody_is_the_chroma_of_silence():
    null = chroma.null_melody(3)
    assert null.shape == (3, chroma.CHROMA_LENGTH, 12)
    assert torch.equal(null, chroma.melody_chroma(torch.zeros(3, 1, SR), SR))
    assert (null[..., 0] == 1).all() and null.sum() == 3 * chroma.CHROMA_LENGTH


def test_melody_chroma_takes_a_list_of_lengths():
    clips = [signal("melody", 2.0, seed=1), signal("chords", 7.0, seed=2)]
    out = chroma.melody_chroma(clips, SR)
    assert out.shape == (2, chroma.CHROMA_LENGTH, 12)
    assert torch.equal(out[1:], chroma.fit_length(chroma.chromagram(clips[1], SR)))


@pytest.mark.parametrize(
    "wav, message",
    [(torch.zeros(0), "empty"), (torch.tensor([0.0, float("nan")] * 100), "NaN"), (torch.zeros(1, 1, 1, 10), "shape")],
)
def test_bad_input_is_explained(wav, message):
    with pytest.raises(audio.AudioError, match=message):
        chroma.chromagram(wav, SR)


def test_cli_prints_pitches_and_draws(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "tune.wav"
    audio.write(path, torch.cat([note(m, 1.0) for m in [60, 64, 67]])[None] * 0.5, SR)
    png = tmp_path / "tune.png"
    monkeypatch.setattr(sys, "argv", ["chroma.py", str(path), "--png", str(png)])
    chroma.main()
    out = capsys.readouterr().out
    assert "24 frames" in out and out.split("\n")[1].startswith("C*")
    assert png.stat().st_size > 1000
