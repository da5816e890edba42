"""
corpus.py: the two corpora this project renders itself, with captions built from what we know about each clip.

The paper trains on 20,000 hours of licensed music with text descriptions (paper §3.2). A student has no such thing,
so this file makes a small captioned corpus on the spot, with no download:

  * builtin_corpus: scores bundled with music21 (Bach chorales, Irish and Scottish dance tunes, German and Chinese
    folk songs, Haydn / Mozart / Beethoven quartet movements, Palestrina masses), rendered by our synthesizer
    (synth.py) with a random tempo, transposition and instrument. Five coarse styles (STYLES) give the evaluation
    its labels. Because we render the audio ourselves, every caption field (key, meter, instrument, bpm) is true.
  * synthetic_corpus: a few seconds of simple melodies in three styles, no music21: for fast tests.

Each builder writes WAVs and a clips.json manifest (data.save_manifest) into a cache folder whose name holds every
argument, so a second call with the same arguments reads the manifest and renders nothing. data.py holds the
generic pipeline that consumes these clips (splits, batches, the token cache) and your own folder of audio.

    builtin_corpus(cache_dir="cache", sample_rate=16000, clip_seconds=10.0, clips_per_style=CLIPS_PER_STYLE, seed=0,
                   workers=2) -> list[data.Clip]
    synthetic_corpus(cache_dir="cache", sample_rate=16000, n=12, seconds=3.0, seed=0) -> list[data.Clip]
    estimate_key(pitches, durations) -> "F sharp minor"
"""

import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import audio
import synth
from checkpoints import atomic_write
from data import Clip, assign_splits, load_manifest, save_manifest, write_wav

CLIPS_PER_STYLE = 120  # default size of the built-in corpus (train.py's small config, evaluate.py, experiments.py)
CORPUS_VERSION = 3  # part of every cache folder's name: bump it when rendering changes, so old caches are not reused


# ----------------------------------------------------------------------------------------------------------------
# Built-in corpus: music21's bundled scores → notes → synth.py


@dataclass(frozen=True)
class Style:
    """How the clips of one style are rendered: the choices drawn for every clip, within these ranges."""

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
                7: "seven-voice", 8: "eight-voice"}  # how a caption names the number of parts
# Key names as a musician spells them: flats in major keys, the sharps of the usual minor keys (C sharp, G sharp).
KEY_NAMES = {"major": ["C", "D flat", "D", "E flat", "E", "F", "F sharp", "G", "A flat", "A", "B flat", "B"],
             "minor": ["C", "C sharp", "D", "E flat", "E", "F", "F sharp", "G", "G sharp", "A", "B flat", "B"]}


def _m21_dir():
    """music21's bundled scores. Imported here, not at the top: only the built-in corpus needs music21."""
    import music21

    return Path(music21.__file__).parent / "corpus"


# ---------------------------------------------------------------- which pieces each style draws from


def _abc_tunes(path):
    """Split an ABC file into tunes (each starts with an X: line); return (tune text, {field letter: value})."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    tunes = []
    # The leading "\n" lets the split find an X: on the very first line too; [1:] drops the file's preamble.
    for chunk in re.split(r"\n(?=X:)", "\n" + text)[1:]:
        fields = {}
        for line in chunk.splitlines():
            # Header fields are "T: title", "R: reel", "O: origin", ...; the first of each letter wins (the title).
            m = re.match(r"^([A-Z]):\s*(.*)$", line)
            if m and m.group(1) not in fields:
                fields[m.group(1)] = m.group(2).strip().strip('"')
        tunes.append((chunk, fields))
    return tunes


def _dance(rhythm):
    """The dance a tune's R: field names ("Reel", "Double Jig", "slipjig", ...), or None for anything else."""
    rhythm = rhythm.lower().replace("slipjig", "slip jig").replace("double jig", "jig")
    for dance in ("slip jig", "jig", "reel", "hornpipe", "strathspey"):  # "slip jig" first: it contains "jig"
        if dance in rhythm:
            return dance
    return None


def _bach_chorales(root):
    """Bach's four-part chorales (the bwv files), the classic corpus of four-voice harmony."""
    pieces = []
    for p in sorted((root / "bach").glob("bwv*.mxl")):
        if p.stat().st_size > 8000:  # the big files are cantata movements with instruments, not chorales
            continue
        pieces.append({"id": f"bach/{p.stem}", "file": str(p), "composer": "J.S. Bach",
                       "what": "chorale", "bwv": p.stem[3:]})
    return pieces


def _celtic_dances(root):
    """Every tune of the two dance-tune books whose rhythm names a dance (the rest are airs, marches, songs)."""
    sources = [(p, "Ryan's Mammoth Collection", None) for p in sorted((root / "ryansMammoth").glob("*.abc"))]
    sources += [(p, "O'Neill's Music of Ireland", "irish") for p in sorted((root / "oneills1850").glob("*.abc"))]
    pieces = []
    for p, book, book_region in sources:
        for i, (text, f) in enumerate(_abc_tunes(p)):
            dance = _dance(f.get("R", ""))
            if dance:
                # Ryan's book mixes traditions; of its dances only the strathspey says where it is from.
                region = book_region or ("scottish" if dance == "strathspey" else None)
                # The id names the book file and the tune's place in it: stable as long as music21's files are.
                pieces.append({"id": f"{p.parent.name}/{p.stem}#{i}", "abc": text, "dance": dance,
                               "book": book, "region": region, "title": f.get("T", "")})
    return pieces


def _folk_songs(root, rng):
    """Essen collection songs, half German, half Chinese: the two shuffled lists alternate, so any prefix of the
    list (a smaller corpus) stays balanced between the two traditions."""
    groups = {"chinese": ["han1", "han2"],
              "german": ["altdeu10", "altdeu20", "ballad10", "ballad20", "ballad30", "boehme10", "erk10",
                         "erk20", "fink0", "kinder0", "zuccal0"]}
    by_region = {}
    for region, stems in groups.items():
        for stem in stems:
            for i, (text, f) in enumerate(_abc_tunes(root / "essenFolksong" / f"{stem}.abc")):
                place = f.get("O", "").replace("Europa, Mitteleuropa, ", "").strip()  # the O: field, made shorter
                by_region.setdefault(region, []).append(
                    {"id": f"essenFolksong/{stem}#{i}", "abc": text, "region": region, "origin": place,
                     "title": f.get("T", "")})
    lists = [by_region[r] for r in sorted(by_region)]
    for lst in lists:
        rng.shuffle(lst)
    return [p for pair in zip(*lists) for p in pair]


def _string_quartets(root):
    """Quartet movements of Haydn, Mozart and Beethoven: few pieces, so each gives several windows (clips)."""
    pieces = []
    for composer, name in (("haydn", "Haydn"), ("mozart", "Mozart"), ("beethoven", "Beethoven")):
        for p in sorted((root / composer).rglob("movement*.mxl")):
            # Long movements take many seconds each to parse (whole quartets in one file: minutes), and 10 s
            # windows do not need them: keep the 19 short ones (several windows each). k545 is a piano sonata.
            if p.stat().st_size < 20000 and "k545" not in str(p):
                pieces.append({"id": str(p.relative_to(root).with_suffix("")), "file": str(p),
                               "composer": name, "what": "string quartet"})
    return pieces


def _palestrina(root):
    """Movements of Palestrina's masses (Humdrum .krn files): vocal polyphony in several independent voices."""
    pieces = []
    for p in sorted((root / "palestrina").glob("*_*.krn")):
        if p.stat().st_size > 12000:  # long movements parse slowly; a clip needs only 10 s of each
            continue
        pieces.append({"id": f"palestrina/{p.stem}", "file": str(p), "composer": "Palestrina",
                       "what": f"mass movement ({p.stem.split('_')[0]})"})
    return pieces


def _candidates(style, rng):
    """Every usable piece of one style, in a seeded random order: dicts with id, source (a file or ABC text) and
    the caption's metadata. The order fixes which pieces a corpus of n clips per style uses: the first ones."""
    root = _m21_dir()
    if style == "folk song":  # shuffles its two halves itself
        return _folk_songs(root, rng)
    pieces = {"baroque chorale": _bach_chorales, "celtic dance": _celtic_dances,
              "classical string quartet": _string_quartets, "renaissance polyphony": _palestrina}[style](root)
    rng.shuffle(pieces)
    return pieces


# ---------------------------------------------------------------- parsing scores (slow, cached)


def _parse_piece(piece):
    """Worker: score → notes [(onset, duration) in quarter notes, MIDI pitch, voice] + meter, voices, length.
    Ties are merged, chords split into notes, repeats expanded when the score marks them; None if unusable."""
    import warnings

    from music21 import bar, converter

    warnings.filterwarnings("ignore")  # music21 warns about every odd ABC header; the clips do not need them
    try:
        score = converter.parse(piece["abc"], format="abc") if "abc" in piece else converter.parse(piece["file"])
        if hasattr(score, "scores"):  # an Opus (several tunes): take the first
            score = score.scores[0]
        if score.recurse().getElementsByClass(bar.Repeat):
            try:
                score = score.expandRepeats()
            except Exception:  # malformed repeat marks: play it as written
                pass
        score = score.stripTies()  # a note tied over a bar line becomes one long note: one attack in the synth
        notes = []
        parts = list(score.parts) or [score]  # a single-line ABC tune has no parts: the score is the part
        voice = 0
        for part in parts:
            found = False
            for n in part.flatten().notes:
                if n.duration.quarterLength <= 0:  # grace notes
                    continue
                for p in n.pitches:  # a chord gives one note per pitch, all in this part's voice
                    notes.append((float(n.offset), float(n.duration.quarterLength), int(p.midi), voice))
                    found = True
            voice += found  # empty parts (lyrics, a figured bass line with no notes) get no voice number
        if len(notes) < 8:  # a fragment, not a piece
            return None
        ts = score.recurse().getElementsByClass("TimeSignature").first()
    except Exception:  # music21 cannot read every encoding in its corpus: skip the piece
        return None
    # length: where the last note ends, in quarter notes (the period with which _window loops the piece).
    return dict(piece, notes=notes, voices=voice, meter=ts.ratioString if ts is not None else "4/4",
                length=float(max(on + d for on, d, _, _ in notes)))


def _pool_map(fn, items, workers):
    """[fn(x) for x in items], on `workers` processes when there is more than one item to share."""
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    import multiprocessing as mp

    # "spawn", not "fork": a process forked after torch has run a parallel op inherits a busy OpenMP thread pool that
    # no longer exists, and hangs the first time it computes (as when the corpus is built after a model is loaded).
    with mp.get_context("spawn").Pool(workers) as pool:
        return pool.map(fn, items, chunksize=1)


def _parsed_pieces(cache_dir, style, count, seed, workers):
    """`count` parsed pieces of `style`, reusing cache/music21/<style>.json (music21 parsing is the slow part)."""
    # {piece id: parsed piece or None}, shared by every corpus size and sample rate: a bigger corpus parses only
    # the pieces it adds.
    cache = Path(cache_dir) / "music21" / f"{style.replace(' ', '_')}.json"
    done = json.loads(cache.read_text()) if cache.exists() else {}
    rng = np.random.default_rng([seed, zlib.crc32(style.encode())])  # each style its own stream
    chosen = []
    candidates = _candidates(style, rng)
    # Parse in order until `count` pieces are usable: a few spare ones per batch absorb the unparseable scores.
    while len(chosen) < count and candidates:
        need = count - len(chosen)
        batch, candidates = candidates[: need + need // 10 + 1], candidates[need + need // 10 + 1 :]
        todo = [p for p in batch if p["id"] not in done]
        for p, parsed in zip(todo, _pool_map(_parse_piece, todo, workers)):
            done[p["id"]] = parsed  # None marks "unusable", so it is not parsed again next time
        chosen += [done[p["id"]] for p in batch if done[p["id"]] is not None]
        # Saved after every batch, so an interrupted build keeps what it has parsed.
        cache.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(done)
        atomic_write(cache, lambda tmp: Path(tmp).write_text(text))
    if not chosen:
        raise RuntimeError(f"No usable music21 scores found for style {style!r}; is music21's corpus installed?")
    return chosen[:count]  # fewer than `count` when a style runs out of pieces: the clips then reuse pieces


# ---------------------------------------------------------------- one clip: a window of notes, its key, its caption


def _window(piece, start_q, length_q):
    """Notes sounding in [start_q, start_q + length_q) quarter notes; the piece loops if it is too short
    (folk tunes are sung verse after verse anyway)."""
    notes = np.array([n[:4] for n in piece["notes"]], dtype=np.float64)  # [n, 4]: onset, dur, pitch, voice
    period = max(piece["length"], 1.0)  # in quarter notes; at least one, so a tiny fragment is not looped endlessly
    out = []
    # Every repetition k of the piece that overlaps the window, shifted so that the window starts at 0.
    for k in range(int(start_q // period), int((start_q + length_q) // period) + 1):
        shifted = notes.copy()
        shifted[:, 0] += k * period - start_q
        # A note is in the window when it starts there; a note still ringing from before the window is left out.
        out.append(shifted[(shifted[:, 0] >= 0) & (shifted[:, 0] < length_q)])
    return np.concatenate(out)


def _caption(style, piece, key, instrument, bpm):
    """E.g. "baroque chorale by J.S. Bach, four-voice, in F sharp minor, 4/4 time, church organ, 72 bpm".
    The first field describes the music; the rest are metadata fields that `data.augment_caption` may drop."""
    voices = NUMBER_WORDS.get(piece["voices"], f"{piece['voices']}-voice")
    # Each style names what a listener would: the dance and its book, the folk region, the composer.
    if style == "celtic dance":
        region = f"{piece['region']} " if piece.get("region") else ""
        head = f"celtic dance, {region}{piece['dance']} from {piece['book']}"
    elif style == "folk song":
        # The origin names a village or region; "China" and "Deutschland" would only repeat the region word.
        origin = piece["origin"].split(",")[-1].strip() if piece.get("origin") else ""
        where = f" from {origin}" if origin and origin.lower() not in ("china", "deutschland") else ""
        head = f"{piece['region']} folk song{where}, {voices} melody"
    elif style == "renaissance polyphony":
        head = f"renaissance polyphony by {piece['composer']}, {voices} {piece['what']}"
    else:  # baroque chorale, classical string quartet
        head = f"{STYLES[style].description} by {piece['composer']}, {voices}"
    return f"{head}, in {key}, {piece['meter']} time, {instrument}, {bpm} bpm"


# Krumhansl–Kessler key profiles: how strongly each scale degree (from the tonic) is heard in major / minor music
# (C. Krumhansl, "Cognitive Foundations of Musical Pitch", 1990).
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def estimate_key(pitches, durations):
    """Key of the notes actually in the clip (after transposition), e.g. "F sharp minor": the duration-weighted
    pitch-class histogram is correlated with the 24 rotated major/minor profiles and the best match wins.
    A score's written key signature would be wrong after a random transposition, and a 10 s window of a long
    piece may sit in another key than its start: measuring the clip keeps the caption true."""
    histogram = np.bincount(np.asarray(pitches, dtype=int) % 12, weights=durations, minlength=12)  # [12], C first
    best = max((np.corrcoef(histogram, np.roll(profile, tonic))[0, 1], tonic, mode)
               for mode, profile in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)) for tonic in range(12))
    return f"{KEY_NAMES[best[2]][best[1]]} {best[2]}"  # best = (correlation, tonic, mode)


def _clip_notes(piece, start_q, seconds, bpm, shift, rng):
    """A window of the piece → synth.Note list in seconds, transposed by `shift`, with simple dynamics."""
    sec_per_q = 60.0 / bpm  # seconds per quarter note
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
        # Notes end at 95 % of their written length, so repeated notes are heard as separate attacks.
        notes.append(synth.Note(onset * sec_per_q, dur * sec_per_q * 0.95, int(pitch), velocity, int(voice)))
    return notes


def _render_job(job):
    """Worker: one clip's notes → WAV on disk. A job is a plain tuple, so that it pickles to a spawned process."""
    notes, instrument, sample_rate, seconds, seed, path = job
    write_wav(path, synth.render(notes, sample_rate, instrument, seconds=seconds, seed=seed), sample_rate)


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
    name = f"builtin-v{CORPUS_VERSION}-{sample_rate}hz-{clip_seconds:g}s-{clips_per_style}x-seed{seed}"
    folder = Path(cache_dir) / name
    clips = load_manifest(folder)
    if clips is not None:
        return clips
    audio.notice(f"building the built-in corpus: {clips_per_style} clips x {len(STYLES)} styles of {clip_seconds:g} s "
                 f"from music21's scores (cached in {folder})")
    # First every clip's choices and notes (fast, in this process), then all the rendering at once (slow, shared
    # among the workers).
    clips, jobs = [], []
    for style_name, style in STYLES.items():
        pieces = _parsed_pieces(cache_dir, style_name, clips_per_style, seed, workers)
        # Split by piece, not by clip: two windows of one piece never land on both sides of the held-out line.
        splits = assign_splits([p["id"] for p in pieces])
        for j in range(clips_per_style):
            piece, window = pieces[j % len(pieces)], j // len(pieces)  # few pieces (quartets): several windows each
            # Each clip draws its tempo, key, instrument and dynamics from its own generator, seeded by its place
            # (seed, style, j) alone: clip j is the same whatever the corpus size, so a smaller corpus is exactly
            # the first clips of a bigger one.
            rng = np.random.default_rng([seed, zlib.crc32(style_name.encode()), j])
            lo, hi = DANCE_BPM.get(piece.get("dance"), style.quarter_bpm)
            bpm = int(rng.integers(lo, hi + 1))
            shift = int(rng.integers(style.transpose[0], style.transpose[1] + 1))
            names = list(style.instruments)
            instrument = names[rng.choice(len(names), p=list(style.instruments.values()))]
            # Window w of a piece starts w clip-lengths in (at this clip's tempo), wrapping around the piece.
            start_q = (window * clip_seconds * bpm / 60) % max(piece["length"], 1.0)
            notes = _clip_notes(piece, start_q, clip_seconds, bpm, shift, rng)
            key = estimate_key([n.pitch for n in notes], [n.duration for n in notes])
            clip_id = f"{piece['id']}@{window}"
            path = folder / (re.sub(r"[^A-Za-z0-9_.@-]+", "_", clip_id) + ".wav")  # a safe file name
            jobs.append((notes, instrument, sample_rate, clip_seconds, int(rng.integers(2**31)), str(path)))
            # meta keeps every fact the caption was made from (and a few more), so an evaluation or a student can
            # ask "which clips are jigs in D major?" without parsing captions.
            meta = {k: piece[k] for k in ("composer", "dance", "region", "origin", "book", "title", "bwv")
                    if piece.get(k)}
            meta.update(key=key, meter=piece["meter"], voices=piece["voices"], instrument=instrument, bpm=bpm,
                        transpose=shift, start_quarter=start_q, seconds=clip_seconds)
            clips.append(Clip(clip_id, str(path), _caption(style_name, piece, key, instrument, bpm), style_name,
                              splits[piece["id"]], meta))
    # Rendering is the other slow part: every clip's notes and seed are fixed above, so the workers can take
    # the clips in any order and still write the same WAVs.
    _pool_map(_render_job, jobs, workers)
    save_manifest(folder, clips)  # last: its presence means the corpus is complete
    return clips


# ----------------------------------------------------------------------------------------------------------------
# Synthetic corpus (tests): three easy-to-tell styles, no music21


# Three styles that differ in instrument, rhythm and texture at once, so that even a codec and an LM trained for a
# few steps in a unit test can tell them apart.
SYNTHETIC_STYLES = {
    # style: (instrument, notes per beat, how notes are chosen)
    "flute melody": ("flute", 2, "scale"),
    "organ chords": ("church organ", 0.5, "triads"),
    "harp arpeggios": ("harp", 4, "arpeggio"),
}


def _synthetic_notes(kind, rate, bpm, seconds, tonic, rng):
    """`seconds` of notes of one SYNTHETIC_STYLES kind in the major key of MIDI pitch `tonic`, `rate` per beat."""
    step = 60.0 / bpm / rate  # seconds between two note onsets
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])  # the major scale in semitones above the tonic
    notes, degree, t, i = [], 0, 0.0, 0  # degree: position on the scale; t: onset in seconds; i: note index
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
    return notes  # MIDI pitches 55..90 (G3 to F sharp 6)


def synthetic_corpus(cache_dir="cache", sample_rate=16000, n=12, seconds=3.0, seed=0):
    """`n` clips of `seconds`, cycling through SYNTHETIC_STYLES, rendered in well under a second each.
    Every fourth clip is held out (split by index: tiny corpora need a guaranteed validation clip)."""
    # Like the built-in corpus: every argument is in the folder name, so a cached corpus is found and reused.
    folder = Path(cache_dir) / f"synthetic-v{CORPUS_VERSION}-{sample_rate}hz-{seconds:g}s-{n}x-seed{seed}"
    clips = load_manifest(folder)
    if clips is not None:
        return clips
    clips = []
    for i in range(n):
        style = list(SYNTHETIC_STYLES)[i % len(SYNTHETIC_STYLES)]
        instrument, rate, kind = SYNTHETIC_STYLES[style]
        rng = np.random.default_rng([seed, i])  # clip i's own choices, as in the built-in corpus
        bpm, tonic = int(rng.integers(80, 130)), int(rng.integers(55, 67))
        key = f"{KEY_NAMES['major'][tonic % 12]} major"  # every synthetic style is in a major key
        wav = synth.render(_synthetic_notes(kind, rate, bpm, seconds, tonic, rng), sample_rate, instrument,
                           seconds=seconds, seed=int(rng.integers(2**31)))
        clip_id = f"synthetic/{i:04d}"
        path = folder / f"{i:04d}.wav"
        write_wav(path, wav, sample_rate)
        meta = {"instrument": instrument, "bpm": bpm, "key": key, "seconds": seconds}
        clips.append(Clip(clip_id, str(path), f"{style}, in {key}, {instrument}, {bpm} bpm", style,
                          "valid" if i % 4 == 3 else "train", meta))
    save_manifest(folder, clips)
    return clips
