"""
chroma.py: the melody condition of MusicGen, a chromagram squeezed through an argmax bottleneck (Paper §2.3, §3.1).

The melody model hears a reference tune only as "which of the 12 pitch classes is loudest, about 8 times a second":

    waveform [B, C, N] --mono, 32 kHz--> power spectrogram [B, F, frames]     (STFT, 2^14 window, hop 2^12)
             --chroma filter bank [12, F]--> chroma [B, frames, 12]          (energy per pitch class C, C#, ..., B)
             --divide by the frame max--> argmax --> one-hot [B, frames, 12] (the bottleneck)
             --tile/cut to 235 frames--> the prefix the LM reads              (musicgen.py projects it 12 -> D)

The laptop melody model (train.py's small-melody) reads the same chromagram at a finer hop, one chroma frame per
codec frame (1280 samples at 25 frames/s), so that audio step t and chroma frame t sit a fixed distance apart in its
sequence.

Reading order: constants, `chroma_filter_bank`, `power_spectrogram`, `chromagram` and its `bottleneck`; then what
generation uses (`fit_length`, `null_melody`, and `melody_chroma`, which chains it all); then the picture and the
command line:

    python chroma.py tune.wav --png tune_chroma.png

Why the bottleneck (Paper §2.3, "Melody conditioning"). A raw chromagram still carries a lot of the reference
recording: how bright it is, how the chords are voiced, where the drums hit. Trained on it, the model learned to
rebuild the source instead of writing new music around its melody (it overfits). Keeping only the dominant pitch class
of each frame, as a one-hot vector, throws that away: timbre, loudness, voicing and most of the rhythm are gone and
only the melodic contour is left, so the model has to *compose* the rest from the text. The long window (2^14
samples, about 0.5 s) serves the same purpose: it blurs the fine timing.

Deviation from the paper and from audiocraft (Paper A.1). audiocraft first runs the HT-Demucs source separator on the
reference and keeps only the "vocals" and "other" stems, because drums and bass otherwise dominate the chroma. We do
what Hugging Face transformers does: the chroma is computed on the raw mix you pass in. If your reference has loud
drums or bass, separate it yourself first (any Demucs build) and pass vocals + other. Everything after that step is
identical to both references.

References: audiocraft `audiocraft/modules/chroma.py` (the chroma extractor of the released melody model) and
`audiocraft/modules/conditioners.py` (its length handling); transformers
`models/musicgen_melody/feature_extraction_musicgen_melody.py` and `modeling_musicgen_melody.py`, which the parity
tests compare against; the filter bank is librosa's `librosa.filters.chroma`, which both of them use.
"""

import argparse
import functools
import itertools
import math

import numpy as np
import torch

import audio

# --- constants of the released melody model (audiocraft's chroma extractor, transformers' feature extractor) --------
SAMPLE_RATE = 32_000  # the melody is heard at the EnCodec rate
N_FFT = 2**14  # 16384 samples ≈ 0.5 s window (Paper §3.1: "window size of 2^14")
HOP_LENGTH = N_FFT // 4  # 4096 samples (Paper §3.1: "hop size of 2^12") → 32000 / 4096 = 7.8125 chroma frames/s
FRAME_RATE = SAMPLE_RATE / HOP_LENGTH
MAX_SECONDS = 30  # the model was trained on 30 s clips; longer references are cut (like Hugging Face)
N_CHROMA = 12
PITCH_CLASSES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]  # row 0 is C


def chroma_frames(seconds, hop_length=HOP_LENGTH):
    """Chroma frames of `seconds` of audio (centred frames: 1 + samples // hop): the prefix length of a melody
    model trained on windows that long."""
    return 1 + max(round(seconds * SAMPLE_RATE), N_FFT) // hop_length


CHROMA_LENGTH = chroma_frames(MAX_SECONDS)  # = 235: the released model's fixed prefix (30 s windows)


# --- the chroma filter bank -------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def chroma_filter_bank(sample_rate=SAMPLE_RATE, n_fft=N_FFT):
    """Weights [12, n_fft // 2 + 1] that sum the power of each FFT bin into the 12 pitch classes.

    The design of librosa's `librosa.filters.chroma` at its defaults (tuning 0, octave centre 5, octave width 2,
    unit L2 norm per bin, C first), which audiocraft calls and transformers re-implements
    (`audio_utils.chroma_filter_bank`).

    Every FFT bin j (frequency j * sr / n_fft) sits at some fractional position on the 12-per-octave pitch scale;
    it gives its energy to the pitch classes near that position through a Gaussian bump that wraps around the octave.
    Bins far below or above the middle of the musical range are faded out. Built in float64, returned as float32."""
    # --- exercise: chroma_filter_bank ---
    # Position of every bin on the pitch scale, in semitones above A0 = 27.5 Hz (= 440 Hz / 16, tuning 0).
    freqs = np.arange(1, n_fft) * (sample_rate / n_fft)  # skip DC: log2(0) is -inf
    semitones = N_CHROMA * np.log2(freqs / (440.0 / 16))
    # DC gets a made-up position 1.5 octaves below bin 1, so it lands half-way round the chroma circle with a wide bump.
    semitones = np.concatenate([[semitones[0] - 1.5 * N_CHROMA], semitones])  # [n_fft]
    # Bump width: the spacing to the next bin, at least one semitone (low bins are several semitones apart).
    width = np.concatenate([np.maximum(np.diff(semitones), 1.0), [1.0]])  # [n_fft]

    # Distance from each bin to each pitch class c, wrapped into [-6, 6) semitones (+120 keeps the modulo positive).
    half = round(N_CHROMA / 2)
    dist = semitones[None, :] - np.arange(N_CHROMA)[:, None]  # [12, n_fft]
    dist = np.remainder(dist + half + 10 * N_CHROMA, N_CHROMA) - half
    weights = np.exp(-0.5 * (2 * dist / width) ** 2)  # Gaussian bump; 2*dist makes it narrower
    weights = weights / np.sqrt(np.sum(weights**2, axis=0, keepdims=True))  # every bin has unit L2 norm over chroma
    # Octave weighting: a Gaussian over octaves centred on octave 5 of this scale (27.5 Hz * 2^5 = 880 Hz), width 2.
    weights = weights * np.exp(-0.5 * ((semitones / N_CHROMA - 5.0) / 2.0) ** 2)
    # The scale starts at A; roll by 3 semitones so that row 0 is C. Keep the non-negative frequencies only.
    weights = np.roll(weights, -3, axis=0)[:, : n_fft // 2 + 1]
    return torch.from_numpy(np.ascontiguousarray(weights)).float()
    # --- end exercise: chroma_filter_bank ---


# --- spectrogram and chromagram ---------------------------------------------------------------------------------------
def power_spectrogram(wav, n_fft=N_FFT, hop_length=None):
    """|STFT|^2 of mono audio [B, N] → [B, n_fft // 2 + 1, frames], frames = 1 + max(N, n_fft) // hop_length.

    Periodic Hann window, centred frames with reflect padding, scaled by 1 / sqrt(sum(w^2)): torchaudio's
    `Spectrogram(normalized=True)`, which audiocraft's chroma extractor uses. The scale cannot change the argmax;
    it is kept so that the soft chroma has the references' values too."""
    hop_length = hop_length or n_fft // 4
    if wav.shape[-1] < n_fft:  # too short for one window: centre it in n_fft samples of silence
        pad = n_fft - wav.shape[-1]
        wav = torch.nn.functional.pad(wav, (pad // 2, pad - pad // 2))
    window = torch.hann_window(n_fft, device=wav.device)  # periodic, as for spectral analysis
    window = window / window.pow(2).sum().sqrt()  # unit energy: the same as dividing the STFT by sqrt(sum(w^2))
    spec = torch.stft(wav, n_fft, hop_length, window=window, center=True, pad_mode="reflect", return_complex=True)
    return spec.real.square() + spec.imag.square()  # |X|^2 without the square root of abs() (twice as fast)


def chromagram(wav, sample_rate, argmax=True, target_rate=SAMPLE_RATE, n_fft=N_FFT, hop_length=None):
    """Chroma of a waveform ([N], [C, N] or [B, C, N]) → [B, frames, 12], frames = 1 + max(N, n_fft) // hop_length.

    With argmax=True (what the model sees) each frame is one-hot on its loudest pitch class; silent frames and exact
    ties go to the first candidate, C. With argmax=False each frame is divided by its maximum (values in [0, 1]).
    Audio that is not mono or not at `target_rate` is downmixed / resampled, with a notice.
    The defaults are the released melody model's; a model trained at another rate should keep the window about
    0.5 s long (a power of two) and the hop a quarter of it, e.g. target_rate=16000, n_fft=8192."""
    wav = audio.prepare(wav, sample_rate, target_rate, channels=1, what="melody")[:, 0]  # [B, N]
    # Outside any autocast: a bf16 matmul would move the chroma enough to flip close argmax decisions.
    with torch.autocast(wav.device.type, enabled=False):
        power = power_spectrogram(wav, n_fft, hop_length)  # [B, F, frames]
        filters = chroma_filter_bank(target_rate, n_fft).to(wav.device)  # [12, F]
        chroma = torch.einsum("cf,bft->btc", filters, power)  # [B, frames, 12]
    # per-frame ∞-norm with eps 1e-6, as audiocraft's chroma extractor normalises its frames
    chroma = chroma / chroma.amax(dim=-1, keepdim=True).clamp(min=1e-6)
    return bottleneck(chroma) if argmax else chroma


def bottleneck(chroma):
    """[..., 12] → one-hot of the loudest pitch class per frame (Paper §2.3).

    torch.argmax returns the first maximal index, so exact ties and all-zero (silent) frames become C."""
    # --- exercise: chroma_bottleneck ---
    return torch.nn.functional.one_hot(chroma.argmax(dim=-1), N_CHROMA).float()
    # --- end exercise: chroma_bottleneck ---


# --- what generation needs --------------------------------------------------------------------------------------------
def fit_length(chroma, length=CHROMA_LENGTH):
    """Force [B, T, 12] to [B, length, 12]: a short melody is repeated whole (looped) then cut, a long one is cut.

    In the released model the chroma is not aligned to the 50 Hz audio tokens: it is a fixed 235-frame (30 s) prefix
    and the LM learned the alignment itself (the laptop model reads one frame per token: hop_length 1280). Both
    references loop a short melody this way: audiocraft's chroma conditioner (`audiocraft/modules/conditioners.py`)
    and transformers' `modeling_musicgen_melody.py` (`chroma_length` 235)."""
    repeats = math.ceil(length / chroma.shape[1])
    return chroma.repeat(1, repeats, 1)[:, :length]


def null_melody(batch_size, length=CHROMA_LENGTH, device=None):
    """The "no melody" condition [B, length, 12]: every frame one-hot on C.

    It is what a silent reference gives (argmax of an all-zero frame is C), used for the unconditional branch of
    classifier-free guidance and when no melody is passed. transformers (`modeling_musicgen_melody.py`) builds it
    this way; audiocraft gets the same from the chroma of a silent waveform. Note it is not a zero vector."""
    chroma = torch.zeros(batch_size, length, N_CHROMA, device=device)
    chroma[..., 0] = 1.0
    return chroma


def melody_chroma(wav, sample_rate, length=CHROMA_LENGTH, hop_length=HOP_LENGTH):
    """The melody condition for generation: one-hot chroma [B, length, 12] of a reference waveform.

    wav: [N], [C, N], [B, C, N], or a list of those with different lengths (each item is chromagram'd and looped on
    its own; Hugging Face instead zero-pads a batch to its longest item, which gives the short ones trailing C frames).
    Like Hugging Face, the waveform is cut to its first 30 s before the STFT, so 30 s give exactly 235 frames."""
    if isinstance(wav, (list, tuple)):
        return torch.cat([melody_chroma(w, sample_rate, length, hop_length) for w in wav])
    wav = audio.prepare(wav, sample_rate, SAMPLE_RATE, channels=1, what="melody")
    wav = wav[..., : MAX_SECONDS * SAMPLE_RATE]
    return fit_length(chromagram(wav, SAMPLE_RATE, hop_length=hop_length), length)


def window_chroma(wav, sample_rate, length, hop_length=HOP_LENGTH):
    """The melody condition of held-out windows (evaluate.py): wav [B, 1, N] at the codec's rate -> one-hot chroma
    [B, length, 12] of the very audio whose codes the LM predicts (Paper §2.3: the model is conditioned on its
    target's own chromagram). melody_chroma without its notice: one per batch would flood the log."""
    return melody_chroma(audio.resample(wav, sample_rate, SAMPLE_RATE), None, length, hop_length)


# --- looking at it ----------------------------------------------------------------------------------------------------
def pitch_sequence(onehot):
    """One-hot chroma [T, 12] → run-length string of pitch classes, e.g. "C*4 E*2 G*9"."""
    names = [PITCH_CLASSES[i] for i in onehot.argmax(dim=-1).tolist()]
    return " ".join(f"{name}*{len(list(run))}" for name, run in itertools.groupby(names))


def save_chroma_png(chroma, path, frame_rate=FRAME_RATE, titles=None):
    """Draw chroma [T, 12] (or [P, T, 12]: P panels stacked, e.g. soft and one-hot) as a picture at `path`."""
    try:  # matplotlib's Figure directly, not pyplot: no window, and a notebook's backend is left alone
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("save_chroma_png needs matplotlib, an optional dependency: pip install matplotlib") from None
    chroma = torch.as_tensor(chroma).detach().float().cpu()
    panels = chroma[None] if chroma.dim() == 2 else chroma  # [P, T, 12]
    titles = titles or [None] * len(panels)
    fig = Figure(figsize=(10, 2.6 * len(panels)), layout="tight")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, panel, title in zip(axes, panels, titles):
        seconds = panel.shape[0] / frame_rate
        # Pitch classes on the vertical axis, C at the bottom, time in seconds along.
        ax.imshow(panel.T.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=1,
                  interpolation="nearest", extent=(0, seconds, -0.5, N_CHROMA - 0.5))
        ax.set_yticks(range(N_CHROMA), PITCH_CLASSES)
        ax.set_ylabel("pitch class")
        if title:
            ax.set_title(title)
    axes[-1].set_xlabel("time (s)")
    fig.savefig(path, dpi=100)


def save_clip_png(path, wav, sample_rate, melody=None):
    """Spectrogram (dB) and chromagram of a generated clip [C, N] (a stereo clip: the mean of its channels) at `path`,
    plus the chroma of a melody (wav, sample rate) if one was given: whether the music follows it shows as the same
    pitch classes lighting up in both."""
    try:  # as in save_chroma_png
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("save_clip_png needs matplotlib, an optional dependency: pip install matplotlib") from None
    wav = wav.mean(dim=0, keepdim=True)  # [1, N]
    spec = torch.stft(wav[0], 1024, 256, window=torch.hann_window(1024), return_complex=True).abs()  # [513, frames]
    db = 20 * torch.log10(spec.clamp(min=1e-5))  # 1024-point frames every 256 samples; the floor avoids log(0)
    # the generated chroma as energies (argmax=False): more readable than the one-hot the model reads
    heard = audio.resample(wav, sample_rate, SAMPLE_RATE)  # the chroma's 32 kHz, without chromagram's notice
    panels = [("generated: chroma", chromagram(heard, SAMPLE_RATE, argmax=False)[0])]
    if melody is not None:
        panels.insert(0, ("melody: what the model reads (one-hot chroma)", chromagram(*melody)[0]))
    fig = Figure(figsize=(10, 2.6 * (1 + len(panels))), layout="tight")  # one row per panel, time on the x axis
    axes = fig.subplots(1 + len(panels), 1, squeeze=False)[:, 0]  # spectrogram on top, then the chromagrams
    axes[0].imshow(db.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=float(db.max()) - 80,
                   extent=(0, wav.shape[-1] / sample_rate, 0, sample_rate / 2000))  # 80 dB of range, axis in kHz
    axes[0].set(title="generated: spectrogram (dB)", ylabel="kHz")
    for ax, (title, panel) in zip(axes[1:], panels):  # panel: [frames, 12]
        ax.imshow(panel.T.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=1,
                  interpolation="nearest", extent=(0, panel.shape[0] / FRAME_RATE, -0.5, N_CHROMA - 0.5))
        ax.set_yticks(range(N_CHROMA), PITCH_CLASSES)  # C, C#, ..., B from the bottom
        ax.set(title=title, ylabel="pitch class")
    axes[-1].set_xlabel("time (s)")
    fig.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description="Print the dominant pitch class per chroma frame of an audio file.")
    parser.add_argument("wav", help="any audio file soundfile can read")
    parser.add_argument("--png", help="also draw the chromagram (soft, and the one-hot the model sees) to this file")
    args = parser.parse_args()
    try:
        wav, sr = audio.read(args.wav)
        soft = chromagram(wav, sr, argmax=False)[0]  # [T, 12]
    except audio.AudioError as e:  # unreadable, empty or NaN: say so in one line
        raise SystemExit(f"error: {e}") from None
    onehot = bottleneck(soft)
    print(f"{onehot.shape[0]} frames at {FRAME_RATE} Hz (the model reads {CHROMA_LENGTH}: cut, or looped if shorter)")
    print(pitch_sequence(onehot))
    if args.png:
        titles = ["chroma, each frame divided by its max", "argmax bottleneck: what the model sees"]
        save_chroma_png(torch.stack([soft, onehot]), args.png, titles=titles)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
