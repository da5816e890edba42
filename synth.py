"""
synth.py: a tiny additive synthesizer that turns notes into sound, so we can make training music from scores.

The paper trains on 20k hours of licensed recordings (§3.2). We have none, so `corpus.py` takes scores (music21's
bundled corpus) and renders them here. Every sound is built the same simple way:

    note = envelope(t) * sum_h  a_h * decay_h(t) * sin(2π · h · f0 · t + vibrato)

* a_h (the spectrum) gives each instrument its colour: an organ has strong octave and fifth partials, a flute is
  nearly a pure sine, bowed strings have a bright sawtooth-like 1/h spectrum.
* decay_h(t) lets plucked and struck sounds die away, upper partials faster than the fundamental (as on a real harp
  or piano string); sustained instruments keep decay 1.
* the ADSR envelope (attack, decay, sustain level, release) shapes loudness over the note;
  vibrato is a slow sine wobble of the pitch for the instruments that use it (strings, flute).

A short synthetic reverb (exponentially decaying noise, convolved with FFT) puts the dry notes in a room.
Everything is vectorised numpy over the samples and partials of a note; the loop is only over notes.
Same notes + same seed → bit-identical audio.

    notes = [Note(onset=0.0, duration=0.5, pitch=60, velocity=90, voice=0), ...]
    wav = render(notes, sample_rate=16000, instrument="flute", seed=0)     # float32 [N], peak 0.8
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Note:
    onset: float  # seconds from the start
    duration: float  # seconds (the release tail is added after it)
    pitch: int  # MIDI note number, 60 = middle C
    velocity: int = 90  # MIDI velocity 1..127, maps to loudness
    voice: int = 0  # which part plays it (gives each voice its own tiny detune, like real players)


@dataclass(frozen=True)
class Instrument:
    partials: tuple  # a_h: amplitude of harmonic h = 1, 2, 3, ...
    attack: float  # seconds to full level
    decay: float  # seconds from full level down to the sustain level
    sustain: float  # level held while the note is on (0..1)
    release: float  # seconds to silence after the note ends
    damping: float = 0.0  # plucked/struck: partial h dies as exp(-t · damping · (1 + 0.5 (h-1))); 0 = sustained
    vibrato_hz: float = 0.0
    vibrato_depth: float = 0.0  # fraction of the frequency (0.004 ≈ 7 cents)
    inharmonicity: float = 0.0  # stiff strings (piano): partial h sits at h · f0 · sqrt(1 + B h²)
    breath: float = 0.0  # amount of filtered noise mixed in (flute)


# Spectra are hand-tuned by ear to be recognisably different from each other, not to imitate recordings.
INSTRUMENTS = {
    # Flue pipes at 8', 4', 2 2/3', 2' pitches: the octave and fifth partials are loud, no vibrato, organ attack.
    "church organ": Instrument(partials=(1.0, 0.7, 0.45, 0.5, 0.12, 0.3, 0.05, 0.22), attack=0.04, decay=0.05,
                               sustain=0.95, release=0.08),
    # Bowed strings: sawtooth-like spectrum (1/h), slow bow attack, vibrato.
    "strings": Instrument(partials=tuple(1.0 / h for h in range(1, 13)), attack=0.09, decay=0.1, sustain=0.85,
                          release=0.15, vibrato_hz=5.5, vibrato_depth=0.004),
    # Flute: almost a sine with a weak octave, some breath noise, gentle vibrato.
    "flute": Instrument(partials=(1.0, 0.35, 0.12, 0.05), attack=0.06, decay=0.08, sustain=0.8, release=0.08,
                        vibrato_hz=5.0, vibrato_depth=0.003, breath=0.04),
    # Harp: plucked, no sustain; upper partials die first.
    "harp": Instrument(partials=tuple(1.0 / h**1.4 for h in range(1, 11)), attack=0.004, decay=0.0, sustain=1.0,
                       release=0.3, damping=2.0),
    # Piano-like: struck stiff string, slightly sharp upper partials, faster decay.
    "piano": Instrument(partials=(1.0, 0.55, 0.4, 0.25, 0.18, 0.12, 0.08, 0.05), attack=0.003, decay=0.0,
                        sustain=1.0, release=0.2, damping=1.2, inharmonicity=2e-4),
}


def midi_to_hz(pitch):
    return 440.0 * 2.0 ** ((np.asarray(pitch, dtype=np.float64) - 69) / 12)


def adsr(n_on, n_total, sample_rate, inst):
    """Loudness envelope [n_total]: attack → decay → sustain while the note is held (n_on samples) → release."""
    t = np.arange(n_total) / sample_rate
    attack = np.minimum(t / max(inst.attack, 1e-4), 1.0)
    decay = 1.0 - (1.0 - inst.sustain) * np.clip((t - inst.attack) / max(inst.decay, 1e-4), 0.0, 1.0)
    env = attack * decay
    held = env[n_on - 1] if n_on > 0 else 0.0  # level reached when the key is let go
    t_rel = (np.arange(n_total) - n_on) / sample_rate
    release = held * np.clip(1.0 - t_rel / max(inst.release, 1e-4), 0.0, 1.0)
    return np.where(np.arange(n_total) < n_on, env, release)


def render_note(note, sample_rate, inst, rng):
    """One note → float64 samples (its start is `note.onset`, its length includes the release tail)."""
    n_on = max(int(note.duration * sample_rate), 1)
    n_total = n_on + int(inst.release * sample_rate)
    t = np.arange(n_total) / sample_rate  # [n]
    f0 = midi_to_hz(note.pitch) * (1.0 + 0.0015 * np.sin(1.7 * note.voice + 1.0))  # per-voice detune (~±2.6 cents)
    h = np.arange(1, len(inst.partials) + 1)  # [H]
    freqs = h * f0 * np.sqrt(1.0 + inst.inharmonicity * h**2)
    keep = freqs < 0.45 * sample_rate  # drop partials above Nyquist: they would alias into wrong pitches
    h, freqs, amps = h[keep], freqs[keep], np.asarray(inst.partials)[keep]
    phase = 2 * np.pi * t  # [n]
    if inst.vibrato_depth:
        # Vibrato fades in over 0.3 s, as players do; integrate the frequency wobble to get the phase wobble.
        depth = inst.vibrato_depth * np.minimum(t / 0.3, 1.0)
        phase = 2 * np.pi * np.cumsum(1.0 + depth * np.sin(2 * np.pi * inst.vibrato_hz * t)) / sample_rate
    start_phase = rng.uniform(0, 2 * np.pi, size=len(h))  # [H] random phases: no click-like pulse at the onset
    # float32 sin is ~10x faster than float64 (SIMD); a phase error of ~1e-3 rad is inaudible.
    partials = np.sin((freqs[:, None] * phase[None, :] + start_phase[:, None]).astype(np.float32))  # [H, n]
    if inst.damping:
        # Higher partials of plucked/struck strings lose energy faster; higher notes decay faster overall.
        rate = inst.damping * (1 + 0.5 * (h - 1)) * (f0 / 262.0) ** 0.5
        partials *= np.exp((-rate[:, None] * t[None, :]).astype(np.float32))
    wave = amps.astype(np.float32) @ partials  # [n]
    if inst.breath:
        noise = np.convolve(rng.standard_normal(n_total), np.ones(8) / 8, mode="same")  # crude low-pass
        wave += inst.breath * amps.sum() * noise
    loudness = (note.velocity / 127.0) ** 1.5
    return loudness * adsr(n_on, n_total, sample_rate, inst) * wave


def reverb(wav, sample_rate, rng, seconds=0.8, mix=0.15):
    """A small room: convolve with decaying noise (−60 dB after `seconds`) and mix it under the dry signal."""
    from scipy.signal import fftconvolve

    n = int(seconds * sample_rate)
    impulse = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n)  # exp(-6.9) ≈ 1e-3 = −60 dB
    impulse /= np.sqrt(np.sum(impulse**2))
    wet = fftconvolve(wav, impulse)[: len(wav)]
    return (1 - mix) * wav + mix * wet


def render(notes, sample_rate, instrument, seconds=None, seed=0, reverb_mix=0.15, peak=0.8):
    """Render `notes` with one instrument → mono float32 [N] with peak amplitude `peak`.

    `seconds` fixes the length (notes are cut there); by default it is the end of the last release tail."""
    if instrument not in INSTRUMENTS:
        raise ValueError(f"Unknown instrument {instrument!r}; choose one of {sorted(INSTRUMENTS)}.")
    inst = INSTRUMENTS[instrument]
    rng = np.random.default_rng(seed)
    if seconds is None:
        seconds = max((n.onset + n.duration for n in notes), default=0.0) + inst.release
    out = np.zeros(int(round(seconds * sample_rate)))
    for note in notes:
        start = int(round(note.onset * sample_rate))
        if start >= len(out) or note.duration <= 0:
            continue
        wave = render_note(note, sample_rate, inst, rng)[: len(out) - start]
        out[start : start + len(wave)] += wave
    if reverb_mix:
        out = reverb(out, sample_rate, rng, mix=reverb_mix)
    top = np.max(np.abs(out)) if len(out) else 0.0
    if top > 0:
        out *= peak / top
    return out.astype(np.float32)
