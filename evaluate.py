"""
evaluate.py: numbers that say whether a trained codec and LM are any good, measured on held-out clips.

    python evaluate.py codec --model out/small/model   # the codec of a MusicGen dir (or an EncodecLite dir)
    python evaluate.py lm    --model out/small/model   # the language model: cross-entropy and prompt following
    python evaluate.py all   --model out/small/model --json eval.json --device cuda
    python evaluate.py melody --model out/small-melody/model --text-model out/small/model   # melody following

The paper scores models with FAD, a KL over AudioSet classifier labels, the CLAP score and listening tests (§3.3).
Those need large pretrained networks; here everything is small, offline and explainable:

codec (held-out clips → encode → decode; paper §2.1):
    SI-SNR            scale-invariant signal-to-noise ratio of the reconstruction, dB (higher is better; means
                      nothing for the spectral codec, which keeps the spectrum but makes its own phases)
    mel distance      mean absolute difference of log-mel spectrograms, dB (lower is better)
    chroma agreement  share of chroma frames whose dominant pitch class is the same before and after the codec:
                      does the music keep its notes? (chroma.py's chromagram, ~0.5 s window; target ≥ 80 %)
    code changes      per codebook, the share of frames whose code differs from the previous frame's: how steady
                      the tokens the LM must predict are (a held chord coded by ever-changing codes is hard to learn)
lm:
    validation CE     per-codebook cross-entropy (nats) on held-out clips, next to the unigram entropy of those
                      tokens (the loss of a model that ignores all context: the LM must go well below it)
    prompt following  a small style classifier (logistic regression on log-mel + chroma statistics) is trained on
                      the *training* clips and checked on the held-out ones (how good the judge is); then the LM
                      generates from held-out captions of each style and the judge labels the results: accuracy vs
                      chance (1 / number of styles; target ≥ 70 %). Two judges: one trained on real audio, one on
                      codec reconstructions of it (generated audio comes out of the same decoder; see
                      prompt_following). This is our stand-in for the paper's KL / CLAP "does the audio match the
                      text" metrics.
    note events       per style, how often the dominant pitch class moves to a new one (and how many onsets)
                      per second in the generated clips, over the same in the held-out real clips (and their codec
                      reconstructions): 1 moves as often as the real music, near 0 holds chords and drones, which
                      the judges above can miss (target ≥ 0.8 on average, ≥ 0.6 for every style)
melody (melody models):
    SIM               the paper's chroma cosine similarity (§4.2, Table 2) between the melody of held-out clips and
                      music generated from their captions: (a) given that melody, (b) given none, (c) given another
                      clip's, (d) by a text-only model; and the codec judge's style accuracy of the same clips (does
                      the caption still set the style when a melody is given?)

The held-out clips are those of the corpus the model was trained on: the corpus options (--data, --seed, ...) are
read from the model's training_config.json (train.py writes it), else train.py's defaults. An option given on the
command line wins, with a warning when it differs from the training run's (another --seed holds out other clips).
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path

# Before torch starts its OpenMP threads: on a machine busy with another process, threads that spin while they wait
# take the cores it needs and slow a run by an order of magnitude; passive waiting yields the core.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F
from tqdm import tqdm

import audio
import chroma
import data

# ----------------------------------------------------------------------------------------------------------------
# Metric functions: waveforms [B, 1, N] (or [B, N]) at one sample rate → one number per item [B]


def _flat(wav):
    """Any waveform batch -> [B, N] float32 (channels folded into time; our clips are mono)."""
    wav = torch.as_tensor(wav, dtype=torch.float32)
    return wav.reshape(wav.shape[0], -1) if wav.dim() > 1 else wav[None]


def _same_length(ref, est):
    n = min(ref.shape[-1], est.shape[-1])  # the codec pads to whole frames; compare the common part
    return ref[..., :n], est[..., :n]


def si_snr(ref, est, eps=1e-8):
    """Scale-invariant SNR in dB (Le Roux et al. 2019): project the estimate on the reference, then compare the
    energy of that projection with the energy of what is left. Identical → very large; unrelated noise → ≲ 0 dB."""
    ref, est = _same_length(_flat(ref), _flat(est))
    ref = ref - ref.mean(-1, keepdim=True)  # zero mean: a DC offset is neither signal nor noise
    est = est - est.mean(-1, keepdim=True)
    # the projection <est, ref> ref / |ref|²: the part of the estimate that is the reference, at any scale
    target = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps) * ref
    noise = est - target  # whatever the reference does not explain
    return 10 * torch.log10((target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))


def log_mel(wav, sample_rate, n_fft=1024, n_mels=64):
    """[B, N] → log-mel magnitude in dB [B, n_mels, frames], floored at −80 dB so silence does not dominate."""
    from encodec_lite import mel_filterbank

    window = torch.hann_window(n_fft)
    spec = torch.stft(wav, n_fft, hop_length=n_fft // 4, window=window, return_complex=True).abs()  # [B, F, frames]
    mel = mel_filterbank(sample_rate, n_fft, n_mels) @ spec  # [B, n_mels, frames]
    return 20 * torch.log10(mel.clamp(min=1e-4))  # 1e-4 = −80 dB re full scale


def mel_distance(ref, est, sample_rate):
    """Mean |log-mel(ref) − log-mel(est)| in dB: how different the two sound, band by band, frame by frame."""
    ref, est = _same_length(_flat(ref), _flat(est))
    return (log_mel(ref, sample_rate) - log_mel(est, sample_rate)).abs().mean(dim=(1, 2))


def chroma_fft(sample_rate):
    """The chroma window for a sample rate: the power of two closest to 0.5 s, as in the paper (2^14 at 32 kHz)."""
    return 2 ** round(math.log2(sample_rate / 2))


def chroma_agreement(ref, est, sample_rate):
    """Share of chroma frames (0..1) where ref and est have the same dominant pitch class."""
    ref, est = _same_length(_flat(ref), _flat(est))
    n_fft = chroma_fft(sample_rate)
    kw = dict(target_rate=sample_rate, n_fft=n_fft)  # chroma at the audio's own rate (no resampling to 32 kHz)
    a = chroma.chromagram(ref[:, None], sample_rate, **kw).argmax(-1)  # [B, frames]
    b = chroma.chromagram(est[:, None], sample_rate, **kw).argmax(-1)
    return (a == b).float().mean(-1)


# ----------------------------------------------------------------------------------------------------------------
# Note events: does the music move? The style judge below hears timbre and register; a drone in the right timbre
# passes it. Counting notes needs no transcription: a melody shows up as the loudest pitch class changing, and a
# repeated note as a burst of new energy (an onset).

NOTE_FRAME_SECONDS = 0.1  # one decision per 0.1 s: a sixteenth note at 150 bpm still gets a frame of its own


def note_frames(wav, sample_rate):
    """[B, N] -> (dominant pitch class [B, T], -1 where the frame is silent; onset [B, T] bool), 0.1 s frames."""
    from encodec_lite import mel_filterbank

    hop = round(NOTE_FRAME_SECONDS * sample_rate)
    n_fft = 2 ** round(math.log2(1.3 * hop))  # ~0.13 s: short enough for fast notes, 8 Hz bins at 16 kHz
    power = chroma.power_spectrogram(_flat(wav), n_fft, hop)  # [B, F, T]
    classes = torch.einsum("cf,bft->bct", chroma.chroma_filter_bank(sample_rate, n_fft), power)  # [B, 12, T]
    energy = power.sum(1)  # [B, T]
    sounding = energy > 1e-3 * energy.amax(-1, keepdim=True)  # within 30 dB of the clip's loudest frame
    dominant = torch.where(sounding, classes.argmax(1), -1)
    # Spectral flux: by how many dB the spectrum gets louder from one frame to the next, averaged over 32 mel
    # bands. A note that starts is a peak of it, also when it repeats the pitch of the note before.
    bands = 10 * torch.log10(mel_filterbank(sample_rate, n_fft, 32) @ power + 1e-8 * energy.amax())  # [B, 32, T]
    flux = F.pad((bands[..., 1:] - bands[..., :-1]).clamp(min=0).mean(1), (1, 0))  # [B, T], frame 0: no rise
    peak = (flux >= F.pad(flux[:, :-1], (1, 0))) & (flux >= F.pad(flux[:, 1:], (0, 1)))
    return dominant, peak & (flux > ONSET_DB) & sounding


ONSET_DB = 3.0  # a frame whose bands get 3 dB louder on average: a new note, not the wobble of a held one


def note_events(wav, sample_rate):
    """[B, N] -> {"pitch_changes": [B], "onsets": [B]}, per second. A pitch change is the dominant pitch class
    moving to a new one that holds for two frames, so that the flicker of a held chord between two of its notes
    does not count. Onsets also count repeated notes, but a held note that wobbles in loudness makes some too:
    pitch changes are the headline measure."""
    dominant, onset = note_frames(wav, sample_rate)
    change = torch.zeros_like(onset)
    for b, row in enumerate(dominant.tolist()):
        held = row[0]  # the last pitch class that held for two frames
        for t in range(1, len(row) - 1):
            if row[t] >= 0 and row[t] == row[t + 1] and row[t] != held:
                change[b, t], held = held >= 0, row[t]  # from silence to a note: an onset, not a change
    seconds = _flat(wav).shape[-1] / sample_rate
    return {"pitch_changes": change.sum(-1) / seconds, "onsets": onset.sum(-1) / seconds}


# ----------------------------------------------------------------------------------------------------------------
# The style classifier (the judge of prompt following)


def features(wav, sample_rate):
    """[B, N] → [B, 216]: mean and std over time of the log-mel bands (timbre, loudness, register) and of the soft
    chroma (harmony, key), plus how fast the spectrum changes (rhythm: mean |Δ log-mel|)."""
    wav = _flat(wav)
    mel = log_mel(wav, sample_rate)  # [B, 64, frames]
    n_fft = chroma_fft(sample_rate)
    soft = chroma.chromagram(wav[:, None], sample_rate, argmax=False, target_rate=sample_rate, n_fft=n_fft)
    flux = (mel[..., 1:] - mel[..., :-1]).abs().mean(-1)  # [B, 64]: large for notes that start and stop often
    return torch.cat([mel.mean(-1), mel.std(-1), flux, soft.mean(1), soft.std(1)], dim=1) / 10  # ≈ unit scale


class StyleClassifier:
    """Multinomial logistic regression on standardised features: small, convex, trains in a second."""

    def __init__(self, styles):
        self.styles = list(styles)

    def fit(self, x, labels, steps=300, weight_decay=1e-2):
        """x [B, features], labels: one style name per row. Full-batch L-BFGS: the problem is small and convex."""
        y = torch.tensor([self.styles.index(s) for s in labels])  # [B] class indices
        self.mean, self.std = x.mean(0), x.std(0) + 1e-6  # the training set's statistics, reused by predict
        self.linear = torch.nn.Linear(x.shape[1], len(self.styles))  # one score per style
        optimizer = torch.optim.LBFGS(self.linear.parameters(), max_iter=steps, line_search_fn="strong_wolfe")
        x = (x - self.mean) / self.std

        def closure():  # L-BFGS evaluates the loss several times per step (line search)
            optimizer.zero_grad()
            # the L2 penalty keeps the weights finite when the training styles are perfectly separable
            loss = F.cross_entropy(self.linear(x), y) + weight_decay * self.linear.weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        return self

    @torch.no_grad()
    def predict(self, x):
        """x [B, features] -> the most likely style name of each row."""
        return [self.styles[i] for i in self.linear((x - self.mean) / self.std).argmax(-1)]


def accuracy(predicted, truth):
    """Share of labels predicted right (0 for no labels)."""
    return sum(p == t for p, t in zip(predicted, truth)) / max(len(truth), 1)


# ----------------------------------------------------------------------------------------------------------------
# Evaluations


def _clip_batches(clips, sample_rate, batch=data.CODEC_CLIPS, desc=None):
    """Held-out clips as equal-length waveform batches [b, 1, N] (the corpus clips share one length); with `desc`, a
    progress bar (on stderr) over the batches."""
    waves = [data.clip_audio(c, sample_rate) for c in clips]  # [1, N_i] each, cached by data.clip_audio
    n = min(w.shape[-1] for w in waves)  # a folder corpus may differ by a few samples: cut to the shortest
    for i in tqdm(range(0, len(waves), batch), desc=desc, disable=desc is None, leave=False):
        yield clips[i : i + batch], torch.stack([w[:, :n] for w in waves[i : i + batch]])


@torch.no_grad()
def evaluate_codec(codec, clips):
    """SI-SNR, mel distance and chroma agreement of codec reconstructions, and code changes per codebook, averaged
    over `clips`."""
    sr = codec.sample_rate
    scores = {"si_snr_db": [], "mel_distance_db": [], "chroma_agreement": []}  # one value per clip each
    changes = []
    for _, wav in _clip_batches(clips, sr, desc="codec"):
        codes = codec.encode(wav)  # [b, K, T]
        rec = codec.decode(codes).cpu()  # [b, 1, N'], N' >= N: whole frames
        scores["si_snr_db"] += si_snr(wav, rec).tolist()
        scores["mel_distance_db"] += mel_distance(wav, rec, sr).tolist()
        scores["chroma_agreement"] += chroma_agreement(wav, rec, sr).tolist()
        changes.append(code_changes(codes.cpu()) * len(wav))  # weighted by the batch size for the mean below
    out = {k: sum(v) / len(v) for k, v in scores.items()}  # means over clips
    out["code_changes"] = (sum(changes) / len(clips)).tolist()
    out["clips"] = len(clips)
    return out


def code_changes(codes):
    """codes [B, K, T] → per codebook [K], the share of frames whose code differs from the frame before."""
    return (codes[..., 1:] != codes[..., :-1]).float().mean(dim=(0, 2))


def unigram_entropy(codes):
    """codes [K, M] → per codebook, the entropy (nats) of the token frequencies: the cross-entropy of a model that
    ignores all context and always predicts how often each code occurs. An LM has learnt something about music only
    when its loss goes well below it (train.py prints it before training; validation_loss reports it beside the LM's).
    """
    out = []
    for row in codes.long():  # one codebook at a time: each has its own distribution
        p = torch.bincount(row).float()  # how often each code occurs
        p = p[p > 0] / p.sum()  # frequencies of the codes that occur (0 log 0 = 0)
        out.append(float(-(p * p.log()).sum()) + 0.0)  # + 0.0: print 0.00, not -0.00
    return out


@torch.no_grad()
def validation_loss(mg, clips, segment_seconds=5.0, batch=8):
    """Per-codebook cross-entropy (nats) of the LM on non-overlapping windows of the held-out clips, with their
    captions, next to the unigram entropy of the same tokens."""
    frames = max(int(segment_seconds * mg.frame_rate), mg.lm.config.num_codebooks)  # at least K: the delay pattern
    if mg.context_frames:  # no longer than the LM's training windows: positions beyond them were never trained
        frames = min(frames, mg.context_frames)
    hop = round(mg.sample_rate / mg.frame_rate)  # samples per frame: a melody model hears each window's own tune
    windows, captions, tunes = [], [], []
    for clip in clips:
        wav = data.clip_audio(clip, mg.sample_rate)  # [1, N]
        codes = mg.codec.encode(wav[None]).cpu()[0]  # [K, T]
        for start in range(0, codes.shape[-1] - frames + 1, frames):  # non-overlapping windows, the tail dropped
            windows.append(codes[:, start : start + frames])
            captions.append(clip.caption)
            tunes.append(wav[:, start * hop : (start + frames) * hop])
    if not windows:
        raise ValueError(f"The held-out clips are shorter than {segment_seconds} s; pass a smaller --segment-seconds.")
    total = 0.0
    for i in range(0, len(windows), batch):
        codes = torch.stack(windows[i : i + batch]).to(mg.device)
        condition, mask = mg.encode_text(captions[i : i + batch])  # the clip's caption, as at generation
        melody = (chroma.window_chroma(torch.stack(tunes[i : i + batch]), mg.sample_rate, mg.lm.config.chroma_length,
                                     mg.lm.config.chroma_hop)
                  .to(mg.device) if mg.lm.config.melody else None)  # each window's own tune, as sample.py hears one
        _, per_codebook = mg.lm.compute_loss(codes, condition, mask, melody)  # [K], the training loss without noise
        total = total + per_codebook.float().cpu() * len(codes)  # weighted: the last batch may be smaller
    return {"val_ce": (total / len(windows)).tolist(), "unigram_entropy": unigram_entropy(torch.cat(windows, -1)),
            "windows": len(windows)}


@torch.no_grad()
def prompt_following(mg, clips, per_style=24, seconds=5.0, seed=0, batch=10, captions="valid"):
    """Does the generated music have the prompted style, and does it move like the music it learnt from? Generate
    from held-out captions of each style, let two judges label the results, and count their note events.

    * the real-audio judge, trained on the training clips' real audio (checked on the held-out real clips). Generated
      audio also went through the codec's decoder, so we report how this judge does on codec reconstructions of
      the held-out real clips too: that is the ceiling a given codec sets, whatever the LM does;
    * the codec judge, trained on codec reconstructions of the training clips (encode → decode). It hears the same
      codec artefacts as the generated clips, so what it measures is whether the LM picks the tokens of the prompted
      style — the paper's KL/CLAP question — separately from the codec's fidelity (the codec metrics above);
    * note events per second (note_event_rates) of the generated clips, against the held-out real clips of the same
      style and their codec reconstructions. Counted on the clips the judges label: noise would raise the count,
      but the judges would not take it for the style."""
    sr = mg.sample_rate
    train, valid = data.select(clips, "train"), data.select(clips, "valid")
    styles = sorted({c.style for c in clips if c.style})
    if len(styles) < 2:
        raise ValueError("Prompt following needs clips with at least 2 style labels (the built-in corpus has 5).")
    n = int(seconds * sr)  # samples per judged crop
    train_wav, train_styles = judge_crops(mg, train, n)
    real_judge = StyleClassifier(styles).fit(features(train_wav, sr), train_styles)
    codec_judge = StyleClassifier(styles).fit(features(judge_crops(mg, train, n, True)[0], sr), train_styles)
    real, valid_styles = judge_crops(mg, valid, n)
    reconstructed, _ = judge_crops(mg, valid, n, through_codec=True)
    picks = prompt_clips(clips, styles, per_style, captions)
    prompts, truth = [c.caption for c in picks], [c.style for c in picks]
    generated = generate_clips(mg, prompts, seconds, seed, batch)  # [M, n]
    x_real, x_codec, x_generated = features(real, sr), features(reconstructed, sr), features(generated, sr)
    predicted = codec_judge.predict(x_generated)  # the headline number uses the codec judge
    return {"styles": styles, "chance": 1 / len(styles), "generated": len(prompts), "guidance": mg.guidance,
            "temperature": mg.temperature, "top_k": mg.top_k,
            "captions": SPLITS[captions],
            "judge_accuracy_real": accuracy(real_judge.predict(x_real), valid_styles),
            "judge_accuracy_codec_ceiling": accuracy(real_judge.predict(x_codec), valid_styles),
            "accuracy_generated_real_judge": accuracy(real_judge.predict(x_generated), truth),
            "codec_judge_accuracy": accuracy(codec_judge.predict(x_codec), valid_styles),
            "accuracy_generated": accuracy(predicted, truth),
            "confusion": confusion_matrix(truth, predicted, styles),
            "confusions": [[p, t, q] for p, t, q in zip(prompts, truth, predicted) if t != q],
            "note_events": note_event_rates(styles, sr, real=(real, valid_styles),
                                            reconstructed=(reconstructed, valid_styles), generated=(generated, truth))}


def judge_crops(mg, clips, n, through_codec=False):
    """Every whole n-sample crop of each clip (as long as the generated clips), as heard by a judge: waveforms
    [M, n] and the style of each [M]; through_codec: after the codec's encoder and decoder."""
    x, y = [], []
    for batch, wav in _clip_batches(clips, mg.sample_rate, desc="judge clips" + " (codec)" * through_codec):
        if through_codec:
            wav = mg.codec.decode(mg.codec.encode(wav)).cpu()[..., : wav.shape[-1]]
        for start in range(0, wav.shape[-1] - n + 1, n):
            x.append(wav[:, 0, start : start + n])
            y += [c.style for c in batch]
    return torch.cat(x), y


SPLITS = {"valid": "held-out", "train": "training"}  # whose captions prompt the LM (--captions)


def prompt_clips(clips, styles, per_style, split="valid"):
    """per_style clips of each style whose captions prompt the LM, those of `split` first (held-out ones, or the
    training ones to choose sampling settings without looking at the held-out clips; cycled if too few): the same
    number per style, so an accuracy weighs every style equally."""
    picks = []
    for style in styles:
        pool = [c for c in clips if c.style == style and c.split == split] or [c for c in clips if c.style == style]
        picks += [pool[i % len(pool)] for i in range(per_style)]
    return picks


def generate_clips(mg, prompts, seconds, seed, batch, melodies=None):
    """Generate `seconds` of music per prompt, `batch` prompts at a time (seeds seed + first index of the batch)
    -> waveforms [M, seconds * sample_rate]; melodies: one 32 kHz waveform [1, N] per prompt (melody models)."""
    n, out = int(seconds * mg.sample_rate), []
    for i in tqdm(range(0, len(prompts), batch), desc="generate", leave=False):
        tunes = {} if melodies is None else {"melody": melodies[i : i + batch],
                                             "melody_sample_rate": chroma.SAMPLE_RATE}
        out.append(mg.generate(prompts[i : i + batch], duration=seconds, seed=seed + i, **tunes).cpu()[:, 0, :n])
    return torch.cat(out)


def note_event_rates(styles, sample_rate, **clips):
    """clips: {name: (wav [M, n], style of each [M])} with names real, reconstructed, generated -> per name and
    style the mean rate of each note_events measure; per measure and style the ratio generated / real, and the
    headline: the mean over styles of the pitch-change ratio (1 moves as often as the real music, 0 is a drone)."""
    out = {}
    for name, (wav, labels) in clips.items():
        rates = note_events(wav, sample_rate)  # {measure: [M]}
        out[name] = {style: {measure: float(r[torch.tensor([s == style for s in labels])].mean())
                             for measure, r in rates.items()} for style in styles}
    out["ratio"] = {style: {measure: generated / max(out["real"][style][measure], 1e-6)
                            for measure, generated in out["generated"][style].items()} for style in styles}
    out["mean_ratio"] = sum(out["ratio"][style]["pitch_changes"] for style in styles) / len(styles)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Melody following (Paper §4.2, Table 2): does the music follow the tune the melody model was given?


def melody_frames(wav, sample_rate):
    """Waveforms [B, N] -> the one-hot chroma [B, frames, 12] a melody model hears (chroma.py at 32 kHz)."""
    wav = audio.resample(_flat(wav)[:, None], sample_rate, chroma.SAMPLE_RATE)  # quietly: no notice per batch
    return chroma.chromagram(wav, chroma.SAMPLE_RATE)


def chroma_similarity(reference, generated, sample_rate):
    """The paper's SIM (§4.2) per item [B]: the mean over frames of the cosine similarity between the quantised
    chroma of the reference melody and of the generated audio. Quantised = one-hot on the dominant pitch class, so
    a frame scores 1 when both have the same one and 0 otherwise: SIM is the share of frames that agree."""
    reference, generated = _same_length(_flat(reference), _flat(generated))
    return F.cosine_similarity(melody_frames(reference, sample_rate), melody_frames(generated, sample_rate),
                               dim=-1).mean(-1)


@torch.no_grad()
def melody_following(mg, clips, text_model=None, per_style=24, seconds=5.0, seed=0, batch=10, captions="valid"):
    """SIM between the melody of held-out clips (their first `seconds`) and music generated from their captions:

        given       the melody model, given the clip's own melody: it should follow it (paper: 0.66)
        null        the same model with no melody (the null melody): what text alone gives
        mismatched  the same model given the melody of a clip of another style, scored against the clip it was
                    not given: how often any two tunes share a pitch class by chance (same key, same chords)
        text_only   a text model (`text_model`, e.g. out/small/model) from the same captions (paper: 0.10)

    and, with the codec judge of prompt_following, whether the caption still sets the style when a melody is given:
    its accuracy on `given` and `mismatched` next to the text model's."""
    sr, n = mg.sample_rate, int(seconds * mg.sample_rate)
    styles = sorted({c.style for c in clips if c.style})
    picks = prompt_clips(clips, styles, per_style, captions)  # per_style clips of each style, of `captions` first
    prompts, truth = [c.caption for c in picks], [c.style for c in picks]
    tunes = [data.clip_audio(c, sr)[:, :n] for c in picks]  # [1, n] each: the reference melodies
    references = torch.cat(tunes)  # [M, n]
    melodies = [audio.resample(t, sr, chroma.SAMPLE_RATE) for t in tunes]  # as the model hears them, 32 kHz
    others = melodies[per_style:] + melodies[:per_style]  # clip i gets the melody of clip i + per_style: next style
    generated = {"given": generate_clips(mg, prompts, seconds, seed, batch, melodies),
                 "null": generate_clips(mg, prompts, seconds, seed, batch),
                 "mismatched": generate_clips(mg, prompts, seconds, seed, batch, others)}
    if text_model is not None:
        generated["text_only"] = generate_clips(text_model, prompts, seconds, seed, batch)
    train_crops, train_styles = judge_crops(mg, data.select(clips, "train"), n, through_codec=True)
    judge = StyleClassifier(styles).fit(features(train_crops, sr), train_styles)
    out = {"styles": styles, "clips": len(picks), "captions": SPLITS[captions], "seconds": seconds,
           "guidance": [mg.guidance, mg.melody_guidance], "sim": {}, "sim_by_style": {}, "style_accuracy": {}}
    for name, wav in generated.items():
        sim = chroma_similarity(references, wav, sr)  # [M]
        out["sim"][name] = float(sim.mean())
        out["sim_by_style"][name] = {s: float(sim[torch.tensor([t == s for t in truth])].mean()) for s in styles}
        out["style_accuracy"][name] = accuracy(judge.predict(features(wav, sr)), truth)
    return out


def confusion_matrix(truth, predicted, styles):
    """Counts [prompted style][judged style]: which styles the LM gets and what it makes instead of the others."""
    return [[sum(t == a and p == b for t, p in zip(truth, predicted)) for b in styles] for a in styles]


# ----------------------------------------------------------------------------------------------------------------
# Command line


def print_codec(r):
    """The codec results as a small table on stdout."""
    print(f"codec ({r['clips']} held-out clips)")
    print(f"  SI-SNR            {r['si_snr_db']:7.2f} dB")
    print(f"  mel distance      {r['mel_distance_db']:7.2f} dB")
    print(f"  chroma agreement  {100 * r['chroma_agreement']:7.1f} %   (target >= 80 %)")
    print("  code changes      " + " ".join(f"{100 * x:3.0f} %" for x in r["code_changes"])
          + "   (per codebook: frames whose code differs from the previous one)")


def print_lm(r):
    """The LM results: cross-entropy next to the unigram entropy, then prompt following and its confusion matrix."""
    ce = r["validation"]
    print(f"lm ({ce['windows']} held-out windows)")
    print("  validation CE per codebook (nats)  " + " ".join(f"{x:6.3f}" for x in ce["val_ce"]))
    print("  unigram entropy of those tokens    " + " ".join(f"{x:6.3f}" for x in ce["unigram_entropy"]))
    if "prompt_following" in r:
        p = r["prompt_following"]
        pct = lambda key: f"{100 * p[key]:6.1f} %"  # noqa: E731
        print(f"  prompt following: {len(p['styles'])} styles, chance {100 * p['chance']:.1f} %, "
              f"{p['generated']} clips generated from {p['captions']} captions with guidance {p['guidance']:g}, "
              f"temperature {p['temperature']:g}, top-k {p['top_k']}; target >= 80 %")
        print(f"    real-audio judge:  held-out real clips {pct('judge_accuracy_real')}, their codec reconstructions "
              f"{pct('judge_accuracy_codec_ceiling')}, generated clips {pct('accuracy_generated_real_judge')}")
        print(f"    codec judge:       held-out reconstructions {pct('codec_judge_accuracy')}, "
              f"generated clips {pct('accuracy_generated')}")
        print("    generated clips by prompted style (rows) and codec judge's label (columns):")
        print(" " * 32 + " ".join(f"{s[:5]:>5}" for s in p["styles"]))
        for style, row in zip(p["styles"], p["confusion"]):
            print(f"      {style:<26}" + " ".join(f"{n:5d}" for n in row))
        print_note_events(p["note_events"], p["styles"])


def print_note_events(r, styles):
    """Note events per second by style: real held-out clips, their reconstructions, the generated clips, ratios."""
    print(f"  note events per second, generated / real pitch changes: mean {r['mean_ratio']:.2f} (target >= 0.8)")
    print(" " * 32 + "pitch changes per second       onsets per second")
    print(" " * 32 + ("real codec   gen ratio" + " " * 8) * 2)
    for style in styles:
        line = f"      {style:<26}"
        for measure in ("pitch_changes", "onsets"):
            rates = [r[name][style][measure] for name in ("real", "reconstructed", "generated")]
            line += "".join(f"{x:<6.2f}" for x in rates) + f"{r['ratio'][style][measure]:<5.2f}" + " " * 8
        print(line)


def print_melody(r):
    """SIM per condition (and style), with the codec judge's style accuracy of the same clips."""
    text, melody = r["guidance"]
    print(f"melody following: chroma cosine similarity SIM (Paper §4.2), {r['clips']} {r['captions']} clips of "
          f"{r['seconds']:g} s, {len(r['styles'])} styles; guidance {text:g}"
          + ("" if melody is None else f", the melody's {melody:g}"))
    print(" " * 40 + "SIM   style judge   " + " ".join(f"{s[:7]:>7}" for s in r["styles"]))
    labels = {"given": "(a) melody model, its own melody", "null": "(b) melody model, null melody",
              "mismatched": "(c) melody model, another melody", "text_only": "(d) text-only model"}
    for name, sim in r["sim"].items():
        print(f"  {labels[name]:<36} {sim:5.3f}   {100 * r['style_accuracy'][name]:6.1f} %    "
              + " ".join(f"{r['sim_by_style'][name][s]:7.3f}" for s in r["styles"]))


def with_sampling(mg, args):
    """The model with --cfg / --melody-cfg / --temperature / --top-k in place of its own defaults (those not given
    stay)."""
    mg.guidance = mg.guidance if args.cfg is None else args.cfg
    mg.melody_guidance = mg.melody_guidance if args.melody_cfg is None else args.melody_cfg
    mg.temperature = mg.temperature if args.temperature is None else args.temperature
    mg.top_k = mg.top_k if args.top_k is None else args.top_k
    return mg


CORPUS_OPTIONS = ("data", "cache_dir", "clip_seconds", "clips_per_style", "seed")  # what data.load_corpus reads


def corpus_options(args):
    """Fill in the corpus options left out (None) from the model's training_config.json, else from train.py's
    defaults; warn when one given differs from the training run's: the clips held out here are then other clips,
    possibly ones the model was trained on."""
    from train import TrainConfig  # here, not at the top: train.py imports this file

    path = Path(args.model) / "training_config.json"
    trained = json.loads(path.read_text()) if path.is_file() else {}  # a public checkpoint has none
    for key in CORPUS_OPTIONS:
        given, used = getattr(args, key), trained.get(key, getattr(TrainConfig, key))  # the class holds defaults
        if given is None:
            setattr(args, key, used)
        elif key in trained and given != used:
            print(f"warning: --{key.replace('_', '-')} {given} is not the training run's {used} ({path}): the "
                  "clips held out here are other clips, possibly ones the model was trained on", file=sys.stderr)
    return args


def main(argv=None):
    """The command line: the corpus of the model's training run, the chosen device, one line for a user's error."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["codec", "lm", "all", "melody"])
    parser.add_argument("--model", default="out/small/model",
                        help="a MusicGen directory (or an EncodecLite one for codec)")
    corpus_help = "(default: the model's training_config.json, else train.py's default)"
    parser.add_argument("--data", help=f"builtin, synthetic or a folder {corpus_help}")
    parser.add_argument("--cache-dir", help=f"where the rendered corpus is cached {corpus_help}")
    parser.add_argument("--clip-seconds", type=float, help=corpus_help)
    parser.add_argument("--clips-per-style", type=int, help=corpus_help)
    parser.add_argument("--seed", type=int, help=f"picks the held-out clips and the generation seeds {corpus_help}")
    parser.add_argument("--segment-seconds", type=float, default=5.0,
                        help="LM validation window length (at most the model's training window)")
    parser.add_argument("--per-style", type=int, default=24,
                        help="generated clips per style (24 x 5 styles: the accuracy is known to about ±4 points)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of generated / judged clips")
    parser.add_argument("--captions", default="valid", choices=["valid", "train"],
                        help="lm, melody: prompt with held-out captions (and melodies), or training ones, to choose "
                             "--cfg and the like without looking at the held-out clips")
    parser.add_argument("--cfg", type=float, help="lm, melody: guidance instead of the model's, as sample.py --cfg")
    parser.add_argument("--melody-cfg", type=float,
                        help="melody: the melody's own guidance instead of the model's, as sample.py --melody-cfg")
    parser.add_argument("--temperature", type=float, help="lm, melody: instead of the model's, as sample.py")
    parser.add_argument("--top-k", type=int, help="lm, melody: instead of the model's, as sample.py (0 = all)")
    parser.add_argument("--no-generate", action="store_true", help="lm: only the cross-entropy, no generation")
    parser.add_argument("--text-model", default="out/small/model",
                        help="melody: the text-only model to compare with (skipped with a notice if absent)")
    parser.add_argument("--int8", action="store_true", help="lm: the LM's weights in int8, as sample.py --int8")
    parser.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch; 0 = torch's default (1 is faster on a busy machine)")
    parser.add_argument("--json", help="also write the results to this file")
    args = corpus_options(parser.parse_args(argv))

    from checkpoints import CheckpointError, atomic_write, pick_device  # like the models: when the command runs

    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"model": args.model, "int8": args.int8}
    try:
        device = pick_device(args.device)  # an unknown or absent device fails here, before any loading
        if args.what in ("codec", "all"):
            from encodec_lite import EncodecLite

            codec = EncodecLite.from_pretrained(args.model).to(device)
            clips = data.select(data.load_corpus(args, codec.sample_rate), "valid")  # held-out clips only
            results["codec"] = evaluate_codec(codec, clips)
            print_codec(results["codec"])
        if args.what in ("lm", "all"):
            from musicgen import MusicGen

            mg = with_sampling(MusicGen.from_pretrained(args.model, quantize="int8" if args.int8 else None).to(device),
                               args)
            clips = data.load_corpus(args, mg.sample_rate)
            r = {"validation": validation_loss(mg, data.select(clips, "valid"), args.segment_seconds)}
            if not args.no_generate:
                r["prompt_following"] = prompt_following(mg, clips, args.per_style, args.seconds, args.seed,
                                                         captions=args.captions)
            results["lm"] = r
            print_lm(r)
        if args.what == "melody":
            from musicgen import MusicGen

            mg = with_sampling(MusicGen.from_pretrained(args.model, device).to(device), args)
            if not mg.lm.config.melody:
                raise ValueError(f"{args.model} is a text-only model: pass a melody model (train.py --config "
                                 "small-melody writes out/small-melody/model)")
            text_model = None
            if Path(args.text_model).is_dir():
                text_model = MusicGen.from_pretrained(args.text_model, device)
                if text_model.sample_rate != mg.sample_rate:  # SIM compares their audio frame by frame
                    raise ValueError(f"--text-model {args.text_model} makes {text_model.sample_rate} Hz audio, the "
                                     f"melody model {mg.sample_rate} Hz: compare models of the same codec")
            else:
                print(f"note: no text-only model at {args.text_model}: (d) skipped (--text-model DIR)", file=sys.stderr)
            clips = data.load_corpus(args, mg.sample_rate)
            results["melody"] = melody_following(mg, clips, text_model, args.per_style, args.seconds, args.seed,
                                                 captions=args.captions)
            print_melody(results["melody"])
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        sys.exit(f"evaluate.py: {e}")  # one line the user can act on, no traceback
    if args.json:  # written whole or not at all: a run killed here leaves no half a file
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))


if __name__ == "__main__":
    main()
