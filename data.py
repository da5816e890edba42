"""
data.py: the music we learn from, turned into what the two models eat.

MusicGen is trained in two stages (paper §2.1, §3.1): a codec learns to turn waveforms into K streams of tokens,
then the language model learns to predict those tokens given a text description. This file provides both diets:

    corpus    →  list[Clip]         a clip = an audio file on disk + its caption + a coarse style label
    audio     →  audio_batch(...)   random waveform crops, for training the codec
    tokens    →  tokenize(...)      every clip encoded once by the codec and cached (the paper's pipeline:
                 token_batch(...)   audio → codec codes → LM); random windows of codes + captions for the LM

Three corpora, chosen by name in load_corpus:
  * "builtin": music21's bundled scores rendered by our synthesizer, five coarse styles (corpus.builtin_corpus).
  * "synthetic": a few seconds of simple melodies in three styles, for fast tests (corpus.synthetic_corpus).
  * a folder: your own audio files with captions (a .txt beside each file, or a metadata.jsonl): folder_corpus.
corpus.py holds the two corpora we render ourselves; this file holds what every corpus shares.

Every clip has a fixed train/valid split decided by a hash of its id (of the *piece* for the built-in corpus, so
windows of one piece never land on both sides): the held-out set never changes between runs.

Batches are stateless: `audio_batch` and `token_batch` draw their random choices from a generator seeded by
(seed, step) only. A run resumed at step i therefore gets exactly the batch an uninterrupted run had at step i —
the data position of a checkpoint is just the step number.

API used by train.py and evaluate.py:
    Clip(id, path, caption, style, split, meta)
    load_corpus(settings, sample_rate) -> list[Clip]   (settings.data: "builtin", "synthetic" or a folder)
    folder_corpus(folder, cache_dir="cache", sample_rate=16000)
    select(clips, split) -> list[Clip];  summary(clips) -> str
    clip_audio(clip, sample_rate) -> [1, N]
    audio_batch(clips, step, batch, samples, sample_rate, seed=0) -> wav [B, 1, samples]
    tokenize(codec, clips, path) -> TokenSet(codes list of [K, T_i], captions, ids, styles, splits, frame_rate)
    token_batch(tokens, step, batch, frames, seed=0, augment=False) -> (codes [B, K, frames], captions list[str],
                                                                         windows [(clip index, first frame)] * B)
    augment_caption(caption, rng, drop_field=0.5, word_dropout=0.3) -> str
"""

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import audio
from checkpoints import atomic_torch_save, atomic_write

VALID_FRACTION = 0.1  # share of pieces / files held out for validation and evaluation


@dataclass
class Clip:
    """One captioned piece of audio: what both training stages and the evaluation read, whatever the corpus."""

    id: str  # stable name, e.g. "bach/bwv1.6@0" (piece @ window)
    path: str  # audio file (mono, at the corpus sample rate for built-in/synthetic clips)
    caption: str  # the text description the LM is conditioned on
    style: str  # coarse label for the evaluation classifier ("" when unknown, e.g. your own folder)
    split: str  # "train" or "valid"
    meta: dict = field(default_factory=dict)  # everything the caption was built from (composer, key, bpm, ...)


def select(clips, split):
    """The clips of one split, "train" or "valid", in corpus order."""
    return [c for c in clips if c.split == split]


def summary(clips):
    """One line: how many clips, minutes of audio, per style and split."""
    styles = sorted({c.style for c in clips})
    parts = [f"{s or 'no style'}: {sum(c.style == s for c in clips)}" for s in styles]
    minutes = sum(c.meta.get("seconds", 0.0) for c in clips) / 60
    n_valid = len(select(clips, "valid"))
    head = f"{len(clips)} clips ({minutes:.1f} min; {len(clips) - n_valid} train / {n_valid} valid)"
    return head + " — " + ", ".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# Deterministic held-out split
#
# The held-out clips must be the same in every run (or a "better" validation loss may just be easier clips), and
# adding files to a folder must not move the old ones across the line. A hash of each key decides, alone: no
# random generator, no dependence on the order or the number of keys.


def _unit_hash(key):
    """A number in [0, 1) that depends only on `key` (not on Python's per-run hash seed)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2**32


def assign_splits(keys, valid_fraction=VALID_FRACTION):
    """{key: "train"/"valid"} by hash; if no key falls in the valid share, the smallest hash is held out anyway,
    so even a tiny folder gets a validation clip (and this stays deterministic for a given set of files)."""
    keys = sorted(set(keys))  # sorted: the fallback below must not depend on the order the keys came in
    split = {k: "valid" if _unit_hash(k) < valid_fraction else "train" for k in keys}
    if len(keys) >= 2 and "valid" not in split.values():
        split[min(keys, key=_unit_hash)] = "valid"
    return split


# ----------------------------------------------------------------------------------------------------------------
# Caches: a corpus is a folder of WAVs plus clips.json; written last, so its presence means "complete".
# Rendering or converting audio takes minutes; reading a manifest, milliseconds. The folder's name holds every
# argument the audio depends on, so a changed argument gets a new folder instead of a stale one.


def save_manifest(folder, clips):
    """Write clips.json for the clips of `folder` (atomically: an interrupted write leaves no half manifest)."""
    # Paths are stored relative to the folder, so the cache still works when a script runs from another directory.
    text = json.dumps([dict(asdict(c), path=os.path.relpath(c.path, folder)) for c in clips], indent=1)
    atomic_write(Path(folder) / "clips.json", lambda tmp: Path(tmp).write_text(text))


def load_manifest(folder):
    """The clips of a finished corpus folder, or None when it has to be built (again)."""
    manifest = Path(folder) / "clips.json"
    if not manifest.exists():
        return None
    clips = [Clip(**dict(c, path=os.path.join(folder, c["path"]))) for c in json.loads(manifest.read_text())]
    return clips if all(os.path.exists(c.path) for c in clips) else None  # a deleted WAV: rebuild, do not crash later


def write_wav(path, wav, sample_rate):
    """Save a mono waveform (numpy [N]) as a WAV, making its folder first."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    audio.write(path, torch.from_numpy(wav), sample_rate)


# ----------------------------------------------------------------------------------------------------------------
# Your own audio folder

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")  # what audio.read opens (soundfile's formats)


def _folder_captions(folder, files):
    """{file: (caption, style)} from metadata.jsonl (paths relative to the folder) and/or .txt sidecars."""
    found = {}  # keyed by resolved path: "sub/a.wav" in the jsonl and the file found on disk must meet
    meta_file = folder / "metadata.jsonl"
    if meta_file.exists():
        for n, line in enumerate(meta_file.read_text().splitlines(), 1):
            if not line.strip():  # blank lines (a trailing newline, spacing) are allowed
                continue
            try:
                row = json.loads(line)
                found[(folder / row["path"]).resolve()] = (str(row["caption"]).strip(), str(row.get("style", "")))
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{meta_file}, line {n}: expected a JSON object with \"path\" and \"caption\", "
                                 f"got {line[:80]!r}.") from None
    # A .txt beside a file captions it unless metadata.jsonl already did: the jsonl wins where both exist.
    for f in files:
        sidecar = f.with_suffix(".txt")
        if f.resolve() not in found and sidecar.exists():
            found[f.resolve()] = (sidecar.read_text().strip(), "")
    return found


def load_corpus(settings, sample_rate):
    """The corpus a training run or an evaluation names: `settings.data` is "builtin", "synthetic" or a folder;
    it also carries cache_dir, clip_seconds, clips_per_style and seed (train.TrainConfig and evaluate's args do)."""
    # Imported here: corpus.py builds its clips with this file's Clip and manifests, so it imports data itself.
    import corpus

    if settings.data == "builtin":
        return corpus.builtin_corpus(settings.cache_dir, sample_rate, settings.clip_seconds, settings.clips_per_style,
                                     settings.seed)
    if settings.data == "synthetic":
        return corpus.synthetic_corpus(settings.cache_dir, sample_rate, n=12, seconds=settings.clip_seconds,
                                       seed=settings.seed)
    return folder_corpus(settings.data, settings.cache_dir, sample_rate)


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
            write_wav(target, wav[0].numpy(), sample_rate)
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
    """The clip's waveform [1, N] at `sample_rate`, read (and resampled) once, then served from memory."""
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
    out = torch.zeros(batch, 1, samples)  # [B, 1, samples]
    for b, i in enumerate(rng.integers(len(clips), size=batch)):  # clips drawn with replacement
        wav = clip_audio(clips[i], sample_rate)
        start = int(rng.integers(max(wav.shape[-1] - samples, 0) + 1))
        crop = wav[:, start : start + samples]
        out[b, :, : crop.shape[-1]] = crop
    return out


# ----------------------------------------------------------------------------------------------------------------
# Token cache (LM training): audio → codec codes once, then windows of codes


@dataclass
class TokenSet:
    """A corpus as the LM sees it: the codec's codes of every clip, with the clip's caption, id, style, split.
    Saved with torch.save as a plain dict (asdict), so loading it needs no pickled class (weights_only=True)."""

    codes: list  # one int16 (or int64) tensor [K, T_i] per clip
    captions: list  # the per-clip lists below run parallel to `codes`
    ids: list
    styles: list
    splits: list
    frame_rate: float  # codec frames per second: turns a window length in seconds into frames
    key: str = ""  # fingerprint of (codec, clips) the codes were made with

    def select(self, split):
        """The clips of one split, as a TokenSet of their own."""
        keep = [i for i, s in enumerate(self.splits) if s == split]
        return TokenSet([self.codes[i] for i in keep], [self.captions[i] for i in keep], [self.ids[i] for i in keep],
                        [self.styles[i] for i in keep], [split] * len(keep), self.frame_rate, self.key)


def fingerprint(codec, clips):
    """Changes whenever the codec (config or any weight) or the clip list changes → the cache must be rebuilt."""
    h = hashlib.sha1()
    # The codec's configuration, in its Hugging Face form where it has one (a stable, sorted JSON).
    config = getattr(codec, "config", None)
    h.update(json.dumps(config.to_hf(), sort_keys=True).encode() if hasattr(config, "to_hf") else repr(config).encode())
    # Every weight, byte for byte: a codec trained one more step gives other codes, so it must not reuse the cache.
    for name, tensor in sorted(codec.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    # Each clip by its file's name and size, not its whole path: the same corpus cached under another folder
    # (`cache` or `/home/me/musicgen/cache`) is the same clips. The size catches a re-rendered or re-converted WAV.
    for c in clips:
        h.update(f"{c.id}|{Path(c.path).name}|{c.caption}|{c.split}|{os.path.getsize(c.path)}".encode())
    return h.hexdigest()


# Whole clips go through the codec two at a time: on a CPU the full-rate layers of 8 x 10 s clips make 80 MB
# temporaries that no cache holds, and encoding them takes twice as long as two clips at a time (same codes).
CODEC_CLIPS = 2


def cached_tokens(path, key):
    """The TokenSet saved at `path` if it was made with the fingerprint `key` (same codec, same clips), else None."""
    if Path(path).exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("key") == key:
                return TokenSet(**saved)
        except Exception:  # truncated or foreign file: rebuild it
            pass
    return None


@torch.no_grad()
def tokenize(codec, clips, path, batch=CODEC_CLIPS):
    """Encode every clip once with `codec` and save codes + captions to `path` (reused when nothing changed)."""
    key = fingerprint(codec, clips)
    path = Path(path)
    tokens = cached_tokens(path, key)
    if tokens is not None:
        return tokens
    was_training = codec.training  # restored at the end: tokenizing in the middle of training changes nothing
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
    """Paper §3.1 text augmentation, adapted to our captions.

    The released training merges a description with metadata fields (key, bpm, instrument, ...) keeping each with
    p=0.5 (audiocraft `audiocraft/data/music_dataset.py`, `augment_music_info_description`), then its T5
    conditioner drops words with p=0.3 (`word_dropout` in `audiocraft/modules/conditioners.py`).
    Our captions are "<description>, <field>, <field>, ...": each field after the first is dropped with
    `drop_field`, then each word with `word_dropout`. At least one word always survives, so the model also sees
    short prompts like "baroque chorale" during training."""
    fields = [f.strip() for f in caption.split(",")]
    kept = fields[:1] + [f for f in fields[1:] if rng.random() >= drop_field]  # the description always stays
    # Commas become words of their own, so that word dropout can tell them from real words and never drops them.
    words = " , ".join(kept).split()
    survivors = [w for w in words if w == "," or rng.random() >= word_dropout]
    # Glue the commas back; a field whose words all dropped leaves two commas in a row, merged into one here.
    text = " ".join(survivors).replace(" ,", ",").strip(" ,")
    text = re.sub(r"(,\s*)+", ", ", text).strip(" ,")
    return text or words[int(rng.integers(len(words)))]  # everything dropped: keep one random word


def token_batch(tokens, step, batch, frames, seed=0, augment=False):
    """Random windows of `frames` frames from random clips → (codes LongTensor [B, K, frames], captions list[str],
    windows: (clip index in `tokens`, first frame) of each row, to find the audio the codes encode).

    Stateless: the same (seed, step) always gives the same batch. With `augment`, captions go through
    `augment_caption` (training); leave it off for validation."""
    if not tokens.codes:
        raise ValueError("token_batch got an empty TokenSet (is the split empty?).")
    shortest = min(c.shape[-1] for c in tokens.codes)
    if frames > shortest:
        raise ValueError(f"Asked for windows of {frames} frames but the shortest clip has {shortest} "
                         f"({shortest / tokens.frame_rate:.1f} s). Use shorter windows or longer clips.")
    rng = _rng(seed, step)
    picks = rng.integers(len(tokens.codes), size=batch)  # which clips (with replacement), then where in each
    starts = [int(rng.integers(tokens.codes[i].shape[-1] - frames + 1)) for i in picks]
    codes = torch.stack([tokens.codes[i][:, s : s + frames].long() for i, s in zip(picks, starts)])
    # Captions last, so `augment` changes the words but never which windows are drawn.
    captions = [augment_caption(tokens.captions[i], rng) if augment else tokens.captions[i] for i in picks]
    return codes, captions, list(zip(picks.tolist(), starts))
