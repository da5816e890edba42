"""
Audio in and out: read any file soundfile understands, bring it to the rate and channel count a model wants
(with a one-line notice, never silently), and write WAVs.

Shapes follow torch conventions: a waveform is [C, N] (one clip) or [B, C, N] (a batch), float32 in [-1, 1].
"""

import math
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch


class AudioError(ValueError):
    """Audio that cannot be used as given (empty, non-finite, unreadable)."""


def notice(message):
    """One line on stderr: something was changed for the user (resampled, downmixed) and they should know."""
    print(f"[musicgen] {message}", file=sys.stderr)


def resample(wav, from_rate, to_rate):
    """Polyphase resampling along the last axis (scipy.signal.resample_poly), any leading shape."""
    if from_rate == to_rate:
        return wav
    from scipy.signal import resample_poly

    ratio = Fraction(int(to_rate), int(from_rate))  # e.g. 48 kHz -> 32 kHz: up 2, down 3
    # upsample by the numerator, low-pass (a windowed FIR filter against aliasing), downsample by the denominator
    out = resample_poly(wav.detach().cpu().double().numpy(), ratio.numerator, ratio.denominator, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(out)).to(wav.dtype).to(wav.device)  # back to the caller's dtype


def check_finite(wav, what="audio"):
    """Refuse empty or non-finite audio with a message naming `what` (a NaN would silently spoil a whole batch)."""
    if wav.numel() == 0 or wav.shape[-1] == 0:
        raise AudioError(f"The {what} is empty (0 samples). Pass at least a few milliseconds of sound.")
    if not torch.isfinite(wav).all():
        raise AudioError(f"The {what} contains NaN or infinite samples. Check how it was produced or decoded.")


def prepare(wav, sample_rate, target_rate, channels=1, what="audio", notify=notice):
    """Bring `wav` ([N], [C, N] or [B, C, N]) to `target_rate` and `channels`, returning [B, channels, N'].

    Stereo → mono is the channel mean (what both reference implementations do); mono → stereo duplicates. What was
    changed goes to `notify` (one line each; a caller preparing many clips collects them to say each once)."""
    wav = torch.as_tensor(wav, dtype=torch.float32, device=wav.device if torch.is_tensor(wav) else "cpu")
    if wav.dim() == 1:  # [N]: one mono clip
        wav = wav[None, None]
    elif wav.dim() == 2:  # [C, N]: one clip
        wav = wav[None]
    if wav.dim() != 3:
        raise AudioError(f"The {what} must be [N], [C, N] or [B, C, N]; got shape {tuple(wav.shape)}.")
    check_finite(wav, what)
    if wav.shape[1] != channels:  # [B, C, N]: C is dim 1
        if channels == 1:
            notify(f"{what}: downmixed {wav.shape[1]} channels to mono.")
            wav = wav.mean(dim=1, keepdim=True)
        elif wav.shape[1] == 1:
            notify(f"{what}: duplicated mono to {channels} channels.")
            wav = wav.expand(-1, channels, -1)  # a view: made contiguous on return
        else:
            raise AudioError(f"The {what} has {wav.shape[1]} channels; the model wants {channels}.")
    if sample_rate is not None and int(sample_rate) != int(target_rate):  # None: the caller vouches for the rate
        notify(f"{what}: resampled from {sample_rate} Hz to {target_rate} Hz.")
        wav = resample(wav, int(sample_rate), int(target_rate))
    return wav.contiguous()  # [B, channels, N']


def read(path):
    """Read an audio file → (wav [C, N] float32, sample_rate)."""
    import soundfile as sf  # libsndfile: WAV, FLAC, OGG, MP3 (imported here: the models need no audio files)

    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [N, C]
    except Exception as e:  # soundfile raises several types; the user needs the path and the reason
        raise AudioError(f"Could not read audio file {path}: {e}") from None
    return torch.from_numpy(data.T.copy()), sr  # .T: channels first, as torch expects


def load(path, target_rate, channels=1):
    """Read a file and bring it to `target_rate` / `channels` → [channels, N]."""
    wav, sr = read(path)
    return prepare(wav, sr, target_rate, channels, what=str(path))[0]


def write(path, wav, sample_rate):
    """Write [C, N] or [N] float audio as 16-bit WAV, clipping to [-1, 1] so overshoot cannot wrap around."""
    import soundfile as sf

    wav = torch.as_tensor(wav).detach().float().cpu()
    if wav.dim() == 1:
        wav = wav[None]  # [1, N]
    # WAV whatever the name's extension (a temporary name, while checkpoints.atomic_write writes it); 16-bit: what
    # players expect
    sf.write(str(path), wav.clamp(-1, 1).T.numpy(), int(sample_rate), format="WAV", subtype="PCM_16")


def write_clips(folder, wavs, sample_rate, captions):
    """Write a batch [B, C, N] as folder/00.wav, 01.wav... and, in folder/prompts.txt, each file's caption."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, wav in enumerate(wavs):  # wav [C, N]
        write(folder / f"{i:02d}.wav", wav, sample_rate)
    (folder / "prompts.txt").write_text("".join(f"{i:02d}.wav\t{c}\n" for i, c in enumerate(captions)))


def duration_to_frames(seconds, frame_rate):
    """Whole frames covering `seconds` of audio at `frame_rate` (rounded up)."""
    return int(math.ceil(seconds * frame_rate - 1e-9))  # - 1e-9: a product like 50.0000001 is 50 frames
