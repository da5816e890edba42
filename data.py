"""
data.py: the music we learn from, turned into what the two models eat.

MusicGen is trained in two stages (paper §2.1, §3.1): a codec learns to turn waveforms into K streams of tokens,
then the language model learns to predict those tokens given a text description. This file provides both diets:

    corpus    →  list[Clip]         a clip = an audio file on disk + its caption + a coarse style label
    audio     →  audio_batch(...)   random waveform crops, for training the codec
    tokens    →  tokenize(...)      every clip encoded once by the codec and cached (the paper's pipeline:
                 token_batch(...)   audio → codec codes → LM); random windows of codes + captions for the LM

Three corpora:
  * builtin_corpus: scores bundled with music21 (no download), rendered by our synthesizer (synth.py) with random
    tempo, transposition and instrument. Five coarse styles (STYLES); captions built from the score's metadata and
    from the render choices, which we know exactly. See the licence note in `builtin_corpus`.
  * folder_corpus: your own audio files with captions (a .txt beside each file, or a metadata.jsonl).
  * synthetic_corpus: a few seconds of simple melodies in three styles, no music21 — for fast tests.

Every clip has a fixed train/valid split decided by a hash of its id (of the *piece* for the built-in corpus, so
windows of one piece never land on both sides): the held-out set never changes between runs.

Batches are stateless: `audio_batch` and `token_batch` draw their random choices from a generator seeded by
(seed, step) only. A run resumed at step i therefore gets exactly the batch an uninterrupted run had at step i —
the data position of a checkpoint is just the step number.

API used by train.py and evaluate.py:
    Clip(id, path, caption, style, split, meta)
    builtin_corpus(cache_dir="cache", sample_rate=16000, clip_seconds=10.0, clips_per_style=CLIPS_PER_STYLE, seed=0,
                   workers=2)
    folder_corpus(folder, cache_dir="cache", sample_rate=16000)
    synthetic_corpus(cache_dir="cache", sample_rate=16000, n=12, seconds=3.0, seed=0)
    select(clips, split) -> list[Clip];  first_per_style(clips, n) -> list[Clip];  summary(clips) -> str
    clip_audio(clip, sample_rate) -> [1, N]
    audio_batch(clips, step, batch, samples, sample_rate, seed=0) -> wav [B, 1, samples]
    tokenize(codec, clips, path) -> TokenSet(codes list of [K, T_i], captions, ids, styles, splits, frame_rate)
    token_batch(tokens, step, batch, frames, seed=0, augment=False) -> (codes [B, K, frames], captions list[str])
    augment_caption(caption, rng, drop_field=0.5, word_dropout=0.3) -> str
"""

import hashlib
import json
import os
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import audio
import synth
from checkpoints import atomic_torch_save, atomic_write

VALID_FRACTION = 0.1  # share of pieces / files held out for validation and evaluation
CLIPS_PER_STYLE = 120  # default size of the built-in corpus (train.py's small config, evaluate.py, exercises.py)
CORPUS_VERSION = 3  # bump when rendering changes, so old caches are not reused


@dataclass
class Clip:
    id: str  # stable name, e.g. "bach/bwv1.6@0" (piece @ window)
    path: str  # audio file (mono, at the corpus sample rate for built-in/synthetic clips)
    caption: str  # the text description the LM is conditioned on
    style: str  # coarse label for the evaluation classifier ("" when unknown, e.g. your own folder)
    split: str  # "train" or "valid"
    meta: dict = field(default_factory=dict)  # everything the caption was built from (composer, key, bpm, ...)


def select(clips, split):
    return [c for c in clips if c.split == split]


def first_per_style(clips, n):
    """The first `n` clips of each style, in corpus order (n = 0: all of them). The built-in corpus draws its clips
    in a fixed order, so the first 60 of a 120-per-style corpus are exactly the clips of a 60-per-style one."""
    kept, count = [], {}
    for c in clips:
        count[c.style] = count.get(c.style, 0) + 1
        if not n or count[c.style] <= n:
            kept.append(c)
    return kept


def summary(clips):
    """One line: how many clips, minutes of audio, per style and split."""
    styles = sorted({c.style for c in clips})
    parts = [f"{s or 'no style'}: {sum(c.style == s for c in clips)}" for s in styles]
    minutes = sum(c.meta.get("seconds", 0.0) for c in clips) / 60
    n_valid = len(select(clips, "valid"))
    return f"{len(clips)} clips ({minutes:.1f} min; {len(clips) - n_valid} train / {n_valid} valid) — " + ", ".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# Deterministic held-out split


def _unit_hash(key):
    """A number in [0, 1) that depends only on `key` (not on Python's per-run hash seed)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2**32


def assign_splits(keys, valid_fraction=VALID_FRACTION):
    """{key: "train"/"valid"} by hash; if no key falls in the valid share, the smallest hash is held out anyway,
    so even a tiny folder gets a validation clip (and this stays deterministic for a given set of files)."""
    keys = sorted(set(keys))
    split = {k: "valid" if _unit_hash(k) < valid_fraction else "train" for k in keys}
    if len(keys) >= 2 and "valid" not in split.values():
        split[min(keys, key=_unit_hash)] = "valid"
    return split


# ----------------------------------------------------------------------------------------------------------------
# Caches: a corpus is a folder of WAVs plus clips.json; written last, so its presence means "complete".


def _save_manifest(folder, clips):
    # Paths are stored relative to the folder, so the cache still works when a script runs from another directory.
    text = json.dumps([dict(asdict(c), path=os.path.relpath(c.path, folder)) for c in clips], indent=1)
    atomic_write(Path(folder) / "clips.json", lambda tmp: Path(tmp).write_text(text))


def _load_manifest(folder):
    manifest = Path(folder) / "clips.json"
    if not manifest.exists():
        return None
    clips = [Clip(**dict(c, path=os.path.join(folder, c["path"]))) for c in json.loads(manifest.read_text())]
    return clips if all(os.path.exists(c.path) for c in clips) else None


def _write_wav(path, wav, sample_rate):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    audio.write(path, torch.from_numpy(wav), sample_rate)


# ----------------------------------------------------------------------------------------------------------------
# Built-in corpus: music21's bundled scores → notes → synth.py


@dataclass(frozen=True)
class Style:
    description: str  # how captions start
    instruments: dict  # instrument → probability (synth.INSTRUMENTS names)
    quarter_bpm: tuple  # tempo range, quarter notes per minute
    transpose: tuple = (-2, 2)  # semitones, inclusive


# The coarse labels (≥ 4 classes) used by the evaluation classifier. Instruments are mostly typical for the style,
# with some randomness so that a style is not just a timbre.
STYLES = {
    "baroque chorale": Style("baroque chorale", {"church organ": 0.7, "strings": 0.15, "piano": 0.15}, (60, 88)),
    "celtic dance": Style("celtic dance", {"flute": 0.45, "strings": 0.35, "harp": 0.2}, (150, 200)),
    "folk song": Style("folk song", {"flute": 0.35, "harp": 0.35, "piano": 0.3}, (80, 120)),
    "classical string quartet": Style("classical string quartet", {"strings": 0.8, "piano": 0.2}, (80, 132)),
    "renaissance polyphony": Style("renaissance polyphony", {"strings": 0.4, "church organ": 0.4, "flute": 0.2},
                                   (110, 150)),
}
DANCE_BPM = {"reel": (190, 230), "jig": (160, 190), "slip jig": (160, 190), "hornpipe": (140, 170),
             "strathspey": (120, 150)}  # quarter notes per minute, typical session tempos
NUMBER_WORDS = {1: "solo", 2: "two-voice", 3: "three-voice", 4: "four-voice", 5: "five-voice", 6: "six-voice",
                7: "seven-voice", 8: "eight-voice"}
KEY_NAMES = {"major": ["C", "D flat", "D", "E flat", "E", "F", "F sharp", "G", "A flat", "A", "B flat", "B"],
             "minor": ["C", "C sharp", "D", "E flat", "E", "F", "F sharp", "G", "G sharp", "A", "B flat", "B"]}


def _m21_dir():
    import music21

    return Path(music21.__file__).parent / "corpus"


def _abc_tunes(path):
    """Split an ABC file into tunes (each starts with an X: line); return (tune text, {field letter: value})."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    tunes = []
    for chunk in re.split(r"\n(?=X:)", "\n" + text)[1:]:
        fields = {}
        for line in chunk.splitlines():
            m = re.match(r"^([A-Z]):\s*(.*)$", line)
            if m and m.group(1) not in fields:
                fields[m.group(1)] = m.group(2).strip().strip('"')
        tunes.append((chunk, fields))
    return tunes


def _dance(rhythm):
    rhythm = rhythm.lower().replace("slipjig", "slip jig").replace("double jig", "jig")
    for dance in ("slip jig", "jig", "reel", "hornpipe", "strathspey"):
        if dance in rhythm:
            return dance
    return None


def _candidates(style, rng):
    """Every usable piece of one style, in a seeded random order: dicts with id, source, caption metadata."""
    root = _m21_dir()
    pieces = []
    if style == "baroque chorale":
        for p in sorted((root / "bach").glob("bwv*.mxl")):
            if p.stat().st_size > 8000:  # the big files are cantata movements with instruments, not chorales
                continue
            pieces.append({"id": f"bach/{p.stem}", "file": str(p), "composer": "J.S. Bach",
                           "what": "chorale", "bwv": p.stem[3:]})
    elif style == "celtic dance":
        sources = [(p, "Ryan's Mammoth Collection", None) for p in sorted((root / "ryansMammoth").glob("*.abc"))]
        sources += [(p, "O'Neill's Music of Ireland", "irish") for p in sorted((root / "oneills1850").glob("*.abc"))]
        for p, book, book_region in sources:
            for i, (text, f) in enumerate(_abc_tunes(p)):
                dance = _dance(f.get("R", ""))
                if dance:
                    region = book_region or ("scottish" if dance == "strathspey" else None)
                    pieces.append({"id": f"{p.parent.name}/{p.stem}#{i}", "abc": text, "dance": dance,
                                   "book": book, "region": region, "title": f.get("T", "")})
    elif style == "folk song":
        groups = {"chinese": ["han1", "han2"],
                  "german": ["altdeu10", "altdeu20", "ballad10", "ballad20", "ballad30", "boehme10", "erk10",
                             "erk20", "fink0", "kinder0", "zuccal0"]}
        by_region = {}
        for region, stems in groups.items():
            for stem in stems:
                for i, (text, f) in enumerate(_abc_tunes(root / "essenFolksong" / f"{stem}.abc")):
                    place = f.get("O", "").replace("Europa, Mitteleuropa, ", "").strip()
                    by_region.setdefault(region, []).append(
                        {"id": f"essenFolksong/{stem}#{i}", "abc": text, "region": region, "origin": place,
                         "title": f.get("T", "")})
        # Half German, half Chinese: alternate the two shuffled lists.
        lists = [by_region[r] for r in sorted(by_region)]
        for lst in lists:
            rng.shuffle(lst)
        return [p for pair in zip(*lists) for p in pair]
    elif style == "classical string quartet":
        for composer, name in (("haydn", "Haydn"), ("mozart", "Mozart"), ("beethoven", "Beethoven")):
            for p in sorted((root / composer).rglob("movement*.mxl")):
                # Long movements take many seconds each to parse (whole quartets in one file: minutes), and 10 s
                # windows do not need them: keep the 19 short ones (several windows each). k545 is a piano sonata.
                if p.stat().st_size < 20000 and "k545" not in str(p):
                    pieces.append({"id": str(p.relative_to(root).with_suffix("")), "file": str(p),
                                   "composer": name, "what": "string quartet"})
    elif style == "renaissance polyphony":
        for p in sorted((root / "palestrina").glob("*_*.krn")):
            if p.stat().st_size > 12000:  # long movements parse slowly; we only need 10 s of each
                continue
            pieces.append({"id": f"palestrina/{p.stem}", "file": str(p), "composer": "Palestrina",
                           "what": f"mass movement ({p.stem.split('_')[0]})"})
    rng.shuffle(pieces)
    return pieces


def _parse_piece(piece):
    """Worker: score → notes [(onset, duration) in quarter notes, MIDI pitch, voice] + meter, voices, length.
    Ties are merged, chords split into notes, repeats expanded when the score marks them; None if unusable."""
    import warnings

    from music21 import bar, converter

    warnings.filterwarnings("ignore")
    try:
        score = converter.parse(piece["abc"], format="abc") if "abc" in piece else converter.parse(piece["file"])
        if hasattr(score, "scores"):  # an Opus (several tunes): take the first
            score = score.scores[0]
        if score.recurse().getElementsByClass(bar.Repeat):
            try:
                score = score.expandRepeats()
            except Exception:  # malformed repeat marks: play it as written
                pass
        score = score.stripTies()
        notes = []
        parts = list(score.parts) or [score]
        voice = 0
        for part in parts:
            found = False
            for n in part.flatten().notes:
                if n.duration.quarterLength <= 0:  # grace notes
                    continue
                for p in n.pitches:
                    notes.append((float(n.offset), float(n.duration.quarterLength), int(p.midi), voice))
                    found = True
            voice += found
        if len(notes) < 8:
            return None
        ts = score.recurse().getElementsByClass("TimeSignature").first()
    except Exception:
        return None
    return dict(piece, notes=notes, voices=voice, meter=ts.ratioString if ts is not None else "4/4",
                length=float(max(on + d for on, d, _, _ in notes)))


def _pool_map(fn, items, workers):
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    import multiprocessing as mp

    # "spawn", not "fork": a process forked after torch has run a parallel op inherits a busy OpenMP thread pool that
    # no longer exists, and hangs the first time it computes (building the corpus after loading a model did).
    with mp.get_context("spawn").Pool(workers) as pool:
        return pool.map(fn, items, chunksize=1)


def _parsed_pieces(cache_dir, style, count, seed, workers):
    """`count` parsed pieces of `style`, reusing cache/music21/<style>.json (music21 parsing is the slow part)."""
    cache = Path(cache_dir) / "music21" / f"{style.replace(' ', '_')}.json"
    done = json.loads(cache.read_text()) if cache.exists() else {}
    rng = np.random.default_rng([seed, zlib.crc32(style.encode())])  # each style its own stream
    chosen = []
    candidates = _candidates(style, rng)
    while len(chosen) < count and candidates:
        need = count - len(chosen)
        batch, candidates = candidates[: need + need // 10 + 1], candidates[need + need // 10 + 1 :]  # a few spare
        todo = [p for p in batch if p["id"] not in done]
        for p, parsed in zip(todo, _pool_map(_parse_piece, todo, workers)):
            done[p["id"]] = parsed  # None marks "unusable", so it is not parsed again next time
        chosen += [done[p["id"]] for p in batch if done[p["id"]] is not None]
        cache.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(done)
        atomic_write(cache, lambda tmp: Path(tmp).write_text(text))
    if not chosen:
        raise RuntimeError(f"No usable music21 scores found for style {style!r}; is music21's corpus installed?")
    return chosen[:count]


def _window(piece, start_q, length_q):
    """Notes sounding in [start_q, start_q + length_q) quarter notes; the piece loops if it is too short
    (folk tunes are sung verse after verse anyway)."""
    notes = np.array([n[:4] for n in piece["notes"]], dtype=np.float64)  # [n, 4]: onset, dur, pitch, voice
    period = max(piece["length"], 1.0)
    out = []
    for k in range(int(start_q // period), int((start_q + length_q) // period) + 1):
        shifted = notes.copy()
        shifted[:, 0] += k * period - start_q
        out.append(shifted[(shifted[:, 0] >= 0) & (shifted[:, 0] < length_q)])
    return np.concatenate(out)


def _caption(style, piece, key, instrument, bpm):
    """E.g. "baroque chorale by J.S. Bach, four-voice, in F sharp minor, 4/4 time, church organ, 72 bpm".
    The first field describes the music; the rest are metadata fields that `augment_caption` may drop."""
    voices = NUMBER_WORDS.get(piece["voices"], f"{piece['voices']}-voice")
    if style == "celtic dance":
        region = f"{piece['region']} " if piece.get("region") else ""
        head = f"celtic dance, {region}{piece['dance']} from {piece['book']}"
    elif style == "folk song":
        origin = piece["origin"].split(",")[-1].strip() if piece.get("origin") else ""
        where = f" from {origin}" if origin and origin.lower() not in ("china", "deutschland") else ""
        head = f"{piece['region']} folk song{where}, {voices} melody"
    elif style == "renaissance polyphony":
        head = f"renaissance polyphony by {piece['composer']}, {voices} {piece['what']}"
    else:  # baroque chorale, classical string quartet
        head = f"{STYLES[style].description} by {piece['composer']}, {voices}"
    return f"{head}, in {key}, {piece['meter']} time, {instrument}, {bpm} bpm"


# Krumhansl–Kessler key profiles: how strongly each scale degree (from the tonic) is heard in major / minor music.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def estimate_key(pitches, durations):
    """Key of the notes actually in the clip (after transposition), e.g. "F sharp minor": the duration-weighted
    pitch-class histogram is correlated with the 24 rotated major/minor profiles and the best match wins."""
    histogram = np.bincount(np.asarray(pitches, dtype=int) % 12, weights=durations, minlength=12)
    best = max((np.corrcoef(histogram, np.roll(profile, tonic))[0, 1], tonic, mode)
               for mode, profile in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)) for tonic in range(12))
    return f"{KEY_NAMES[best[2]][best[1]]} {best[2]}"


def _clip_notes(piece, start_q, seconds, bpm, shift, rng):
    """A window of the piece → synth.Note list in seconds, transposed by `shift`, with simple dynamics."""
    sec_per_q = 60.0 / bpm
    beat = 1.5 if piece["meter"].endswith("/8") else 1.0  # compound meters (6/8, 9/8) count dotted quarters
    notes = []
    for onset, dur, pitch, voice in _window(piece, start_q, seconds / sec_per_q):
        pitch = pitch + shift
        while pitch < 28:  # keep every voice in a range the instruments can play
            pitch += 12
        while pitch > 100:
            pitch -= 12
        accent = 8 if (onset + start_q) % beat < 1e-6 else 0  # metric accent on the beat
        velocity = 78 + accent + int(rng.integers(-8, 9)) + (6 if voice == 0 else 0)  # the top part sings out
        notes.append(synth.Note(onset * sec_per_q, dur * sec_per_q * 0.95, int(pitch), velocity, int(voice)))
    return notes


def _render_job(job):
    """Worker: one clip's notes → WAV on disk."""
    notes, instrument, sample_rate, seconds, seed, path = job
    _write_wav(path, synth.render(notes, sample_rate, instrument, seconds=seconds, seed=seed), sample_rate)


def builtin_corpus(cache_dir="cache", sample_rate=16000, clip_seconds=10.0, clips_per_style=CLIPS_PER_STYLE,
                   seed=0, workers=2):
    """Render `clips_per_style` clips of `clip_seconds` for each of the STYLES from music21's bundled scores.

    Parsed scores are cached in cache/music21/, rendered WAVs in cache/builtin-.../ (both never committed); a second
    call with the same arguments only reads clips.json. music21 is imported only here (and in the worker).

    Licences: music21's corpus is distributed "with the permission of the encoders"; some encodings are licensed for
    non-commercial use only — the Essen folk song collection (essenFolksong/license.txt: permission "for
    non-commercial distribution and use") in particular. Bach, Palestrina, the string quartets and the dance-tune
    books are old public-domain music, but the *encodings* carry their own terms (see music21/corpus/license.txt).
    Models trained on this corpus are for study, not for commercial use.
    """
    folder = Path(cache_dir) / f"builtin-v{CORPUS_VERSION}-{sample_rate}hz-{clip_seconds:g}s-{clips_per_style}x-seed{seed}"
    clips = _load_manifest(folder)
    if clips is not None:
        return clips
    audio.notice(f"building the built-in corpus: {clips_per_style} clips x {len(STYLES)} styles of {clip_seconds:g} s "
                 f"from music21's scores (cached in {folder})")
    clips, jobs = [], []
    for style_name, style in STYLES.items():
        pieces = _parsed_pieces(cache_dir, style_name, clips_per_style, seed, workers)
        splits = assign_splits([p["id"] for p in pieces])
        for j in range(clips_per_style):
            piece, window = pieces[j % len(pieces)], j // len(pieces)  # few pieces (quartets): several windows each
            rng = np.random.default_rng([seed, zlib.crc32(style_name.encode()), j])  # this clip's choices
            lo, hi = DANCE_BPM.get(piece.get("dance"), style.quarter_bpm)
            bpm = int(rng.integers(lo, hi + 1))
            shift = int(rng.integers(style.transpose[0], style.transpose[1] + 1))
            names = list(style.instruments)
            instrument = names[rng.choice(len(names), p=list(style.instruments.values()))]
            start_q = (window * clip_seconds * bpm / 60) % max(piece["length"], 1.0)
            notes = _clip_notes(piece, start_q, clip_seconds, bpm, shift, rng)
            key = estimate_key([n.pitch for n in notes], [n.duration for n in notes])
            clip_id = f"{piece['id']}@{window}"
            path = folder / (re.sub(r"[^A-Za-z0-9_.@-]+", "_", clip_id) + ".wav")
            jobs.append((notes, instrument, sample_rate, clip_seconds, int(rng.integers(2**31)), str(path)))
            meta = {k: piece[k] for k in ("composer", "dance", "region", "origin", "book", "title", "bwv")
                    if piece.get(k)}
            meta.update(key=key, meter=piece["meter"], voices=piece["voices"], instrument=instrument, bpm=bpm,
                        transpose=shift, start_quarter=start_q, seconds=clip_seconds)
            clips.append(Clip(clip_id, str(path), _caption(style_name, piece, key, instrument, bpm), style_name,
                              splits[piece["id"]], meta))
    _pool_map(_render_job, jobs, workers)
    _save_manifest(folder, clips)
    return clips


# ----------------------------------------------------------------------------------------------------------------
# Synthetic corpus (tests): three easy-to-tell styles, no music21


SYNTHETIC_STYLES = {
    # style: (instrument, notes per beat, how notes are chosen)
    "flute melody": ("flute", 2, "scale"),
    "organ chords": ("church organ", 0.5, "triads"),
    "harp arpeggios": ("harp", 4, "arpeggio"),
}


def _synthetic_notes(kind, rate, bpm, seconds, tonic, rng):
    step = 60.0 / bpm / rate
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    notes, degree, t, i = [], 0, 0.0, 0
    while t < seconds:
        if kind == "scale":  # a random walk on the major scale
            degree = int(np.clip(degree + rng.integers(-2, 3), 0, 7))
            notes.append(synth.Note(t, step * 0.9, int(tonic + 12 + scale[degree]), 90, 0))
        elif kind == "triads":  # I, IV, V, I as sustained three-note chords
            root = [0, 5, 7, 0][i % 4]
            for v, third in enumerate((0, 4, 7)):
                notes.append(synth.Note(t, step * 0.95, int(tonic + root + third), 80, v))
        else:  # broken chords going up
            notes.append(synth.Note(t, step * 2, int(tonic + [0, 4, 7, 12][i % 4] + 12 * (i // 4 % 2)), 85, 0))
        t, i = t + step, i + 1
    return notes


def synthetic_corpus(cache_dir="cache", sample_rate=16000, n=12, seconds=3.0, seed=0):
    """`n` clips of `seconds`, cycling through SYNTHETIC_STYLES, rendered in well under a second each.
    Every fourth clip is held out (split by index: tiny corpora need a guaranteed validation clip)."""
    folder = Path(cache_dir) / f"synthetic-v{CORPUS_VERSION}-{sample_rate}hz-{seconds:g}s-{n}x-seed{seed}"
    clips = _load_manifest(folder)
    if clips is not None:
        return clips
    clips = []
    for i in range(n):
        style = list(SYNTHETIC_STYLES)[i % len(SYNTHETIC_STYLES)]
        instrument, rate, kind = SYNTHETIC_STYLES[style]
        rng = np.random.default_rng([seed, i])
        bpm, tonic = int(rng.integers(80, 130)), int(rng.integers(55, 67))
        key = f"{KEY_NAMES['major'][tonic % 12]} major"
        wav = synth.render(_synthetic_notes(kind, rate, bpm, seconds, tonic, rng), sample_rate, instrument,
                           seconds=seconds, seed=int(rng.integers(2**31)))
        clip_id = f"synthetic/{i:04d}"
        path = folder / f"{i:04d}.wav"
        _write_wav(path, wav, sample_rate)
        meta = {"instrument": instrument, "bpm": bpm, "key": key, "seconds": seconds}
        clips.append(Clip(clip_id, str(path), f"{style}, in {key}, {instrument}, {bpm} bpm", style,
                          "valid" if i % 4 == 3 else "train", meta))
    _save_manifest(folder, clips)
    return clips


# ----------------------------------------------------------------------------------------------------------------
# Your own audio folder

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def _folder_captions(folder, files):
    """{file: (caption, style)} from metadata.jsonl (paths relative to the folder) and/or .txt sidecars."""
    found = {}
    meta_file = folder / "metadata.jsonl"
    if meta_file.exists():
        for n, line in enumerate(meta_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                found[(folder / row["path"]).resolve()] = (str(row["caption"]).strip(), str(row.get("style", "")))
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{meta_file}, line {n}: expected a JSON object with \"path\" and \"caption\", "
                                 f"got {line[:80]!r}.") from None
    for f in files:
        sidecar = f.with_suffix(".txt")
        if f.resolve() not in found and sidecar.exists():
            found[f.resolve()] = (sidecar.read_text().strip(), "")
    return found


def load_corpus(settings, sample_rate):
    """The corpus a training run or an evaluation names: `settings.data` is "builtin", "synthetic" or a folder;
    it also carries cache_dir, clip_seconds, clips_per_style and seed (train.TrainConfig and evaluate's args do)."""
    s = settings
    if s.data == "builtin":
        return builtin_corpus(s.cache_dir, sample_rate, s.clip_seconds, s.clips_per_style, s.seed)
    if s.data == "synthetic":
        return synthetic_corpus(s.cache_dir, sample_rate, n=12, seconds=s.clip_seconds, seed=s.seed)
    return folder_corpus(s.data, s.cache_dir, sample_rate)


def folder_corpus(folder, cache_dir="cache", sample_rate=16000):
    """Your own music: every wav/flac/ogg/mp3 under `folder` with a caption from `<file>.txt` or from
    `metadata.jsonl` lines {"path": "relative/file.wav", "caption": "...", "style": "optional"}.

    Files are converted once to mono WAVs at `sample_rate` in the cache (downmix = channel mean, polyphase
    resampling), so training never resamples on the fly."""
    import soundfile as sf

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Data folder {folder} does not exist.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ValueError(f"No audio files ({', '.join(AUDIO_SUFFIXES)}) found in {folder}. "
                         "Put your music there, with a caption for each file.")
    captions = _folder_captions(folder, files)
    missing = [str(f.relative_to(folder)) for f in files if not captions.get(f.resolve(), ("", ""))[0]]
    if missing:
        raise ValueError(f"{len(missing)} audio file(s) in {folder} have no caption, e.g. {missing[0]}. Add a .txt "
                         "file with the same name beside each one, or a line {\"path\": ..., \"caption\": ...} "
                         "in metadata.jsonl.")
    tag = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:8]
    out = Path(cache_dir) / f"folder-{folder.name}-{tag}-{sample_rate}hz"
    ids = [str(f.relative_to(folder).with_suffix("")) for f in files]
    splits = assign_splits(ids)
    clips, converted = [], 0
    for f, clip_id in zip(files, ids):
        target = out / (clip_id + ".wav")
        stat = f.stat()
        stamp = target.with_suffix(".src")  # remembers which source version the cached WAV was made from
        source_tag = f"{stat.st_size}:{stat.st_mtime_ns}"
        if not target.exists() or not stamp.exists() or stamp.read_text() != source_tag:
            wav, sr = audio.read(f)  # [C, N]
            audio.check_finite(wav, str(f))
            wav = audio.resample(wav.mean(0, keepdim=True), sr, sample_rate)
            _write_wav(target, wav[0].numpy(), sample_rate)
            stamp.write_text(source_tag)
            converted += 1
        caption, style = captions[f.resolve()]
        seconds = sf.info(str(target)).frames / sample_rate
        clips.append(Clip(clip_id, str(target), caption, style, splits[clip_id],
                          {"source": str(f), "seconds": seconds}))
    if converted:
        audio.notice(f"converted {converted} file(s) from {folder} to mono {sample_rate} Hz WAV in {out}")
    return clips


# ----------------------------------------------------------------------------------------------------------------
# Waveform batches (codec training)

_AUDIO = {}  # (path, sample_rate) → [1, N]; the corpora are small enough to keep in memory once read


def clip_audio(clip, sample_rate):
    key = (clip.path, int(sample_rate))
    if key not in _AUDIO:
        _AUDIO[key] = audio.load(clip.path, sample_rate)
    return _AUDIO[key]


def _rng(seed, step):
    """The only source of randomness for batches: a generator that depends on (seed, step) and nothing else."""
    return np.random.default_rng([int(seed), int(step)])


def audio_batch(clips, step, batch, samples, sample_rate, seed=0):
    """Random crops of `samples` samples from random clips → wav [B, 1, samples] (zero-padded if a clip is short)."""
    if not clips:
        raise ValueError("audio_batch got no clips (is the train split empty?).")
    rng = _rng(seed, step)
    out = torch.zeros(batch, 1, samples)
    for b, i in enumerate(rng.integers(len(clips), size=batch)):
        wav = clip_audio(clips[i], sample_rate)
        start = int(rng.integers(max(wav.shape[-1] - samples, 0) + 1))
        crop = wav[:, start : start + samples]
        out[b, :, : crop.shape[-1]] = crop
    return out


# ----------------------------------------------------------------------------------------------------------------
# Token cache (LM training): audio → codec codes once, then windows of codes


@dataclass
class TokenSet:
    codes: list  # one LongTensor [K, T_i] per clip
    captions: list
    ids: list
    styles: list
    splits: list
    frame_rate: float
    key: str = ""  # fingerprint of (codec, clips) the codes were made with

    def select(self, split):
        keep = [i for i, s in enumerate(self.splits) if s == split]
        return TokenSet([self.codes[i] for i in keep], [self.captions[i] for i in keep], [self.ids[i] for i in keep],
                        [self.styles[i] for i in keep], [split] * len(keep), self.frame_rate, self.key)


def _fingerprint(codec, clips):
    """Changes whenever the codec (config or any weight) or the clip list changes → the cache must be rebuilt."""
    h = hashlib.sha1()
    config = getattr(codec, "config", None)
    h.update(json.dumps(config.to_hf(), sort_keys=True).encode() if hasattr(config, "to_hf") else repr(config).encode())
    for name, tensor in sorted(codec.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for c in clips:
        h.update(f"{c.id}|{c.path}|{c.caption}|{c.split}|{os.path.getsize(c.path)}".encode())
    return h.hexdigest()


# Whole clips go through the codec two at a time: on a CPU the full-rate layers of 8 x 10 s clips make 80 MB
# temporaries that no cache holds, and encoding them takes twice as long as two clips at a time (same codes).
CODEC_CLIPS = 2


@torch.no_grad()
def tokenize(codec, clips, path, batch=CODEC_CLIPS):
    """Encode every clip once with `codec` and save codes + captions to `path` (reused when nothing changed)."""
    key = _fingerprint(codec, clips)
    path = Path(path)
    if path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("key") == key:
                return TokenSet(**saved)
        except Exception:  # truncated or foreign file: rebuild it
            pass
    was_training = codec.training
    codec.eval()
    codes = [None] * len(clips)
    by_length = {}  # encode equal-length clips together (the built-in corpus: all of them)
    for i, c in enumerate(clips):
        by_length.setdefault(clip_audio(c, codec.sample_rate).shape[-1], []).append(i)
    for idx in by_length.values():
        for j in range(0, len(idx), batch):
            chunk = idx[j : j + batch]
            wav = torch.stack([clip_audio(clips[i], codec.sample_rate) for i in chunk])  # [b, 1, N]
            for i, c in zip(chunk, codec.encode(wav).cpu()):  # [b, K, T]
                codes[i] = c.to(torch.int16 if codec.codebook_size <= 32767 else torch.long)  # 4x smaller on disk
    codec.train(was_training)
    tokens = TokenSet(codes, [c.caption for c in clips], [c.id for c in clips], [c.style for c in clips],
                      [c.split for c in clips], float(codec.frame_rate), key)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(asdict(tokens), path)
    return tokens


def augment_caption(caption, rng, drop_field=0.5, word_dropout=0.3):
    """Paper §3.1 text augmentation, adapted to our captions (facts §3.4).

    The paper merges a description with metadata fields (key, bpm, instrument, ...) keeping each with p=0.5, then
    drops words with p=0.3. Our captions are "<description>, <field>, <field>, ...": each field after the first is
    dropped with `drop_field`, then each word with `word_dropout`. At least one word always survives, so the model
    also sees short prompts like "baroque chorale" during training."""
    fields = [f.strip() for f in caption.split(",")]
    kept = fields[:1] + [f for f in fields[1:] if rng.random() >= drop_field]
    words = " , ".join(kept).split()
    survivors = [w for w in words if w == "," or rng.random() >= word_dropout]
    text = " ".join(survivors).replace(" ,", ",").strip(" ,")
    text = re.sub(r"(,\s*)+", ", ", text).strip(" ,")
    return text or words[int(rng.integers(len(words)))]


def token_batch(tokens, step, batch, frames, seed=0, augment=False):
    """Random windows of `frames` frames from random clips → (codes LongTensor [B, K, frames], captions list[str]).

    Stateless: the same (seed, step) always gives the same batch. With `augment`, captions go through
    `augment_caption` (training); leave it off for validation."""
    if not tokens.codes:
        raise ValueError("token_batch got an empty TokenSet (is the split empty?).")
    shortest = min(c.shape[-1] for c in tokens.codes)
    if frames > shortest:
        raise ValueError(f"Asked for windows of {frames} frames but the shortest clip has {shortest} "
                         f"({shortest / tokens.frame_rate:.1f} s). Use shorter windows or longer clips.")
    rng = _rng(seed, step)
    picks = rng.integers(len(tokens.codes), size=batch)
    starts = [int(rng.integers(tokens.codes[i].shape[-1] - frames + 1)) for i in picks]
    codes = torch.stack([tokens.codes[i][:, s : s + frames].long() for i, s in zip(picks, starts)])
    # Captions last, so `augment` changes the words but never which windows are drawn.
    captions = [augment_caption(tokens.captions[i], rng) if augment else tokens.captions[i] for i in picks]
    return codes, captions
