"""
train.py: train a text-to-music MusicGen from scratch on a laptop, offline (or fine-tune a public one).

The paper trains on 20k hours of music with 32+ GPUs (§3.1, §3.2). This is the "I only have a laptop" version:

    python train.py --config small             # ~13 min on 2 CPU cores: corpus -> codec -> tokens -> LM
    python sample.py --prompt "baroque"        # then listen (reads out/small/model)
    python train.py --config small --max_steps=3000 --lr=5e-4      # any key can be changed with --key=value
    python train.py --config musicgen-small --data my_music/       # the 300M architecture on one GPU
    python train.py --config finetune --init-from facebook/musicgen-small --data my_music/
    torchrun --nproc_per_node 4 train.py --config musicgen-small   # several GPUs (or CPU processes)
    python train.py --help                     # every config and key

The pipeline has four stages, each written to --out_dir, resumable, and skipped when already done:

    data     the clips: music21's bundled scores rendered by synth.py (default), or your folder (--data DIR)
    codec    EncodecLite trained on short crops (Paper §2.1), or a public codec loaded (--codec DIR)
    tokens   every clip encoded once into codes [K, T] (the LM never sees audio)
    lm       the text encoder + transformer LM (Paper §2.3, §2.4) trained on windows of those codes, then
             exported in the Hugging Face layout (MusicGen.save_pretrained) to model/, with a few WAV samples

Every key is checked (check_config) before the first stage: a bad value fails in a second, with one line that names
it, instead of after twenty minutes of corpus and codec.

The two stages that learn, codec and lm, share one loop (training_loop.train_steps): resume from the stage's
checkpoint, then for every step reseed torch, take one step, stop on a non-finite loss before it is saved, log,
checkpoint. What differs between them (the batch, the loss, the optimiser step, what a checkpoint holds) is a small
class each here: CodecSteps and LMSteps. Reading order: TrainConfig and CONFIGS, then the stages in pipeline order.

Text encoder: the paper uses a frozen, pretrained T5 (§2.3). With --t5 DIR (or t5-base found in the Hugging Face
cache, for the GPU configs) we do the same. Offline, with no pretrained weights, a small T5 is trained jointly with
the LM, on a SentencePiece vocabulary learnt from the corpus captions: the same T5Encoder code, just small and not
frozen.

Exact resume: a checkpoint holds model, optimiser and step. Everything else is a function of (seed, step): the
batches (data.token_batch), the condition dropout draw, the learning rate, and the torch seed for dropout and input
noise, which is reset at every step. So a run killed at any point and restarted replays exactly what an uninterrupted
run does. Ctrl-C finishes the steps up to the next logged one, saves and exits. Checkpoints are written atomically
(never half a file).

Outputs in --out_dir (default out/<config>):
    codec/                 the trained codec (HF EncodecModel layout)
    codec_ckpt.pt          codec training state while it trains
    tokens.pt              the token cache
    text/spiece.model      the vocabulary of the T5 trained from scratch
    codec_log.jsonl        codec losses and codebook usage (perplexity per codebook) every log_every steps
    ckpt.pt                LM training state (resume)
    log.jsonl              one JSON line per logged step: losses per codebook, grad norm, lr, steps/s, val loss
    samples/*.wav          a few clips generated at the end, with their prompts in samples/prompts.txt
    model/                 the final MusicGen, and only it: what sample.py, evaluate.py and from_pretrained read
        config.json, model.safetensors, spiece.model, generation_config.json     the Hugging Face layout
        training_config.json   this TrainConfig as run (evaluate.py reads its corpus options from it)
        README.md              the model card: what it was trained on, under which licences, how to sample
"""

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

# Before torch starts its OpenMP threads: on a machine busy with another process, threads that spin while they wait
# take the cores it needs and slow a run by an order of magnitude; passive waiting yields the core.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import audio
import chroma
import data
from checkpoints import (CheckpointError, atomic_write, find_in_hf_cache, log, pick_device, read_config,
                         resolve_model_dir)
from corpus import CLIPS_PER_STYLE, STYLES, SYNTHETIC_STYLES
from encodec_lite import PRESETS as CODEC_PRESETS
from encodec_lite import CodecTrainer, EncodecLite
from evaluate import unigram_entropy
from training_loop import Processes, TrainingError, all_mean, loss_and_stop, say, setup_processes, train_steps
from musicgen import LM, MusicGen, lm_config
from musicgen import PRESETS as LM_PRESETS
from t5_encoder import T5_PRESETS, T5Encoder, T5Tokenizer

# -------------------- configuration: one dataclass, a few named presets, any key overridable from the command line


def opt(default, help):
    """A TrainConfig field with its --help text."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    out_dir: str = opt("out/small", "where the stages write their results, and the final model in model/")
    cache_dir: str = opt("cache", "rendered audio and parsed scores, shared between runs")
    seed: int = opt(0, "every random choice of the run derives from it")
    device: str = opt("auto", "cuda / cpu / cuda:1 / mps; auto = cuda, else mps, else cpu")
    threads: int = opt(0, "CPU threads for torch; 0 = torch's default (1 is faster on a machine busy with other work)")
    # data (Paper §3.2: 20k hours of licensed music; ours: rendered scores)
    data: str = opt("builtin", "builtin (music21 scores), synthetic (tests) or a folder of audio files + captions")
    clip_seconds: float = opt(10.0, "length of each built-in / synthetic clip")
    clips_per_style: int = opt(CLIPS_PER_STYLE, "built-in corpus size: clips per style (5 styles)")
    # codec (Paper §2.1)
    codec: str = opt("small", "an encodec_lite preset to train (small, small-seanet, tiny...) or a codec dir to load")
    codec_steps: int = opt(3000, "codec training steps (more steps: more of the notes survive the codec)")
    codec_batch: int = opt(16, "codec batch size (crops)")
    codec_crop_seconds: float = opt(0.64, "codec training crop length in seconds (EnCodec: 1 s)")
    codec_lr: float = opt(5e-4, "codec Adam peak learning rate, cosine down to a tenth")
    codec_warmup: float = opt(0.3, "fraction of codec steps trained as a plain auto-encoder, before the RVQ is on")
    reuse: str = opt("", "a run folder (e.g. out/small) whose codec and tokens this run takes when they are done "
                         "and made from the same corpus (else it trains its own)")
    # text encoder (Paper §2.3)
    t5: str = opt("", "'' = train a small T5 from scratch; auto = t5-base from the HF cache if there; or a directory")
    t5_preset: str = opt("tiny", "size of the T5 trained from scratch (t5_encoder.T5_PRESETS)")
    vocab_size: int = opt(1000, "SentencePiece vocabulary learnt from the captions (upper bound)")
    init_from: str = opt("", "a MusicGen directory / hub id to fine-tune (its codec, T5 and LM replace ours)")
    # language model (Paper §2.4, §3.1)
    lm: str = opt("small", "LM preset, musicgen.PRESETS: tiny, small, base, musicgen-small, ...")
    dropout: float = opt(0.0, "dropout in the LM and the T5 trained from scratch; try 0.1 on a large corpus")
    input_noise: float = opt(0.1, "share of input codes made random (musicgen.corrupt_codes); 0 for a large corpus")
    batch_size: int = opt(16, "global batch (split across processes under torchrun)")
    segment_seconds: float = opt(5.0, "length of the training windows (Paper: 30 s)")
    max_steps: int = opt(1000, "LM training steps")
    lr: float = opt(2e-3, "peak learning rate; lower it if the loss goes non-finite")
    min_lr: float = opt(2e-4, "learning rate at the end of the cosine, ~ lr / 10")
    warmup_steps: int = opt(50, "linear warm-up steps (Paper: 4000)")
    weight_decay: float = opt(0.1, "AdamW decoupled weight decay, on matrices only")
    beta2: float = opt(0.95, "AdamW beta2 (beta1 = 0.9)")
    grad_clip: float = opt(1.0, "clip the gradient norm to this")
    cond_dropout: float = opt(0.3, "probability of training a batch without its condition (guidance, Paper §3.1)")
    melody_dropout: float = opt(0.5, "melody LMs: probability of a batch with the null melody (text only; audiocraft)")
    text_dropout: float = opt(0.0, "melody LMs: probability of a batch with its melody but no text (melody_guidance)")
    guidance: float = opt(6.0, "the exported model's default guidance (Paper: 3); raise it if samples ignore prompts")
    melody_guidance: float = opt(0.0, "melody LMs: the exported model's guidance for the melody (0: as guidance)")
    temperature: float = opt(1.2, "the exported model's sampling temperature (Paper: 1; above 1 the laptop LM's clips "
                                  "change notes more often)")
    # bookkeeping
    log_every: int = opt(10, "steps between log lines (log.jsonl, codec_log.jsonl)")
    eval_every: int = opt(100, "steps between validation losses")
    eval_batches: int = opt(4, "validation batches (the same ones every time)")
    ckpt_every: int = opt(100, "steps between checkpoints")
    samples: int = opt(5, "clips generated at the end (one prompt per style)")
    sample_seconds: float = opt(8.0, "length of those clips")


CONFIGS = {
    # A laptop CPU, ~13 minutes from nothing to samples: the TrainConfig defaults above (RESULTS.md, "The laptop
    # model v2: 25 frames/s, 5 s windows, temperature 1.2").
    "small": TrainConfig(),
    # Unit tests: a dozen 3 s synthetic clips, everything tiny; the whole pipeline runs in seconds.
    "tiny": TrainConfig(
        out_dir="out/tiny", data="synthetic", clip_seconds=3.0, codec="tiny-spectral", codec_steps=20,
        codec_batch=4, codec_crop_seconds=0.5, vocab_size=100, lm="tiny", batch_size=4, segment_seconds=1.0,
        max_steps=6, lr=3e-3, min_lr=3e-4, warmup_steps=2, log_every=1, eval_every=3, eval_batches=1, ckpt_every=3,
        samples=1, sample_seconds=1.0),
    # The melody model (Paper §2.3) on the laptop: the codec and tokens of `small` (trained here if that run is not
    # done), an LM that reads [chroma ; text] as a prefix; audiocraft's guidance dropout (0.2), the melody dropped in
    # 0.2 of the batches rather than its 0.5, the text alone in 0.2 of those that keep their melody; 40 % of the input
    # codes made random (small's 10 %): without, on the codes of a codec that has heard its training clips, it
    # predicts them from the codes before and ignores the chroma (RESULTS.md, "The melody model ignored its
    # melody"); guided apart, the melody by 4 and the text by 6 (small's; chosen on training captions): the melody
    # is followed and the caption still sets the style (RESULTS.md, "The melody model guided apart").
    "small-melody": TrainConfig(out_dir="out/small-melody", reuse="out/small", lm="small-melody", cond_dropout=0.2,
                                melody_dropout=0.2, text_dropout=0.2, input_noise=0.4, max_steps=1500,
                                guidance=6.0, melody_guidance=4.0, temperature=1.0),
    # One GPU, hours: the same recipe scaled up (more music, a longer-trained codec, the 'base' LM, 10 s windows).
    "gpu": TrainConfig(
        out_dir="out/gpu", clips_per_style=400, codec_steps=20000, codec_batch=32,
        codec_lr=3e-4, t5_preset="small", lm="base", dropout=0.1, input_noise=0.0, batch_size=64,
        segment_seconds=10.0, max_steps=20000, lr=1e-3, min_lr=1e-4, warmup_steps=1000, eval_every=1000,
        ckpt_every=1000, guidance=3.0, temperature=1.0, sample_seconds=10.0),
    # The released 300M architecture (Paper Table 5) from scratch, on the public EnCodec 32 kHz and, if it is in the
    # Hugging Face cache, a frozen t5-base (as the paper): one big GPU, a day.
    "musicgen-small": TrainConfig(
        out_dir="out/musicgen-small", clips_per_style=400, codec="facebook/encodec_32khz", t5="auto",
        t5_preset="small", lm="musicgen-small", dropout=0.1, input_noise=0.0, batch_size=32, segment_seconds=10.0,
        max_steps=50000, lr=3e-4, min_lr=3e-5, warmup_steps=2000, eval_every=1000, ckpt_every=1000, guidance=3.0,
        temperature=1.0, sample_seconds=10.0),
    # Fine-tune a public MusicGen on your folder: --init-from facebook/musicgen-small --data DIR
    # (its codec, T5 and LM are used; the LM keeps its own size, whatever --lm says).
    "finetune": TrainConfig(
        out_dir="out/finetune", input_noise=0.0, batch_size=8, segment_seconds=10.0, max_steps=2000, lr=1e-5,
        min_lr=1e-6, warmup_steps=100, eval_every=200, ckpt_every=200, guidance=3.0, temperature=1.0,
        sample_seconds=10.0),
}

STAGES = ("data", "codec", "tokens", "lm")


def parse_args(argv=None):
    """--config NAME picks a preset; then every key of TrainConfig can be set with --key=value (or --key value)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--config", default="small", choices=list(CONFIGS),
                        help="named preset, writing to out/NAME (default small, whose values the defaults below are)")
    parser.add_argument("--stage", default="lm", choices=STAGES,
                        help="run the pipeline up to this stage (done stages are skipped); default: all of it")
    for f in fields(TrainConfig):
        flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])  # --a_b or --a-b
        parser.add_argument(*flags, dest=f.name, type=f.type, default=None,  # the field's type parses the value
                            help=f"{f.metadata['help']} (default {f.default!r})")
    args = parser.parse_args(argv)
    # only the keys given on the command line replace the preset's values (None = not given)
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    return replace(CONFIGS[args.config], **given), args.stage


# What each number may be, checked before the first stage: a bad value found only where it is used would cost the
# corpus, codec and tokens stages first (or, like max_steps=-5, train nothing and export an untrained model).
RANGES = {"greater than 0": (lambda v: v > 0, "clip_seconds clips_per_style codec_steps codec_batch codec_crop_seconds "
                             "codec_lr vocab_size batch_size segment_seconds max_steps lr grad_clip guidance log_every "
                             "eval_every eval_batches ckpt_every sample_seconds"),
          "0 or more": (lambda v: v >= 0, "threads warmup_steps min_lr weight_decay samples "
                                         "melody_guidance"),
          "a fraction between 0 and 1": (lambda v: 0 <= v <= 1, "codec_warmup dropout input_noise cond_dropout "
                                                                          "melody_dropout text_dropout beta2")}


def check_config(config):
    """Raise a one-line TrainingError (or CheckpointError, for the device) naming the first key that cannot work
    and what to give instead. run() calls it before it writes or starts anything."""
    for rule, (ok, keys) in RANGES.items():
        for key in keys.split():
            if not ok(getattr(config, key)):  # `not ok`: a NaN fails too
                raise TrainingError(f"--{key}={getattr(config, key)}: must be {rule}")
    if config.min_lr > config.lr:  # e.g. --lr=1e-4 alone: the "cosine" would climb to the preset's min_lr
        raise TrainingError(f"--min_lr={config.min_lr} is above --lr={config.lr}: the cosine goes down to min_lr")
    if config.data not in ("builtin", "synthetic") and not Path(config.data).is_dir():  # a misspelt folder
        raise TrainingError(f"--data {config.data}: not builtin, synthetic or an existing folder of audio files")
    # Every training window is cut out of one clip (data.token_batch); a folder's clips vary, so only ours are known.
    if config.data in ("builtin", "synthetic") and config.segment_seconds > config.clip_seconds:
        raise TrainingError(f"--segment_seconds={config.segment_seconds} is longer than the clips "
                            f"(--clip_seconds={config.clip_seconds}): shorten the windows or lengthen the clips")
    if config.init_from:  # a fine-tuned model brings its own LM, T5 and codec: their names are not used then
        check_dir("init_from", config.init_from, "a MusicGen directory, or a hub id in the Hugging Face cache")
    else:
        if config.lm not in LM_PRESETS:
            raise TrainingError(f"--lm {config.lm}: not an LM preset; use one of {', '.join(LM_PRESETS)}")
        if config.codec not in CODEC_PRESETS:  # not a preset to train: a codec to load, so it must exist now
            check_dir("codec", config.codec, f"a codec preset ({', '.join(CODEC_PRESETS)}) or a codec directory")
        if config.t5 == "" and config.t5_preset not in T5_PRESETS:  # the size of the T5 trained from scratch
            raise TrainingError(f"--t5_preset {config.t5_preset}: not a T5 preset; use one of {', '.join(T5_PRESETS)}")
        if config.t5 not in ("", "auto"):
            check_dir("t5", config.t5, "'' (a T5 trained from scratch), auto, or a T5 directory")
    world = int(os.environ.get("WORLD_SIZE", 1))  # the number of processes torchrun starts (1 without it)
    if config.batch_size % world:
        raise TrainingError(f"--batch_size={config.batch_size}: must be a multiple of the {world} processes (each "
                            "takes an equal slice of the global batch)")
    pick_device(config.device)  # the call run() makes: a device that is not here (e.g. 'gpu') fails now


def check_dir(key, name, expected):
    """A model directory (or a cached hub id) that must exist before the stages start."""
    try:
        resolve_model_dir(name)
    except CheckpointError as e:
        raise TrainingError(f"--{key} {name}: {e} Expected {expected}.") from None


def millions(module):
    """The number of parameters of a module, in millions."""
    return sum(p.numel() for p in module.parameters()) / 1e6


def cosine_lr(step, peak, final, total, warmup=0):
    """Linear warm-up over `warmup` steps, then a cosine from `peak` down to `final` at step `total`."""
    if step < warmup:  # step + 1: the first step already learns, at peak / warmup
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))  # 0 -> 1 over the cosine, then held at 1
    return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * progress))


# -------------------- stage 1: data


def stage_data(config, proc):
    """Paper §3.2 (our substitute): a list of clips with captions; rendered / converted audio is cached."""
    # The corpus is rendered at the codec's rate, so the codec's config is needed before the audio exists.
    if config.codec in CODEC_PRESETS and not config.init_from:
        sample_rate = CODEC_PRESETS[config.codec].sampling_rate
    else:
        saved = read_config(resolve_model_dir(config.init_from or config.codec))
        sample_rate = saved.get("audio_encoder", saved)["sampling_rate"]  # a MusicGen dir or a codec dir
    if proc.main:
        data.load_corpus(config, sample_rate)  # the first process renders, the others then read the cache
    proc.barrier()  # the cache is complete
    clips = data.load_corpus(config, sample_rate)  # clips: audio file, caption, style and split each
    say(proc, f"[data] {data.summary(clips)}")
    if not data.select(clips, "train") or not data.select(clips, "valid"):  # say so now, not after the codec
        raise TrainingError(f"The corpus needs clips in both splits; got {data.summary(clips)}. Add more clips.")
    return clips


# -------------------- stage 2: codec, Paper §2.1
# Trained by the first process only: it is small, the LM is where time goes.


def stage_codec(config, clips, proc):
    """-> the codec: loaded when given (--codec DIR, --init-from), trained and saved when it is a preset name."""
    out = Path(config.out_dir)
    if config.init_from or config.codec not in CODEC_PRESETS:  # a public / earlier codec: load, do not train
        return EncodecLite.from_pretrained(config.init_from or config.codec)
    reused = Path(config.reuse, "codec")
    if config.reuse and (reused / "config.json").exists():  # trained by an earlier run (its tokens: stage_tokens)
        codec = EncodecLite.from_pretrained(reused)
        if codec.sample_rate != CODEC_PRESETS[config.codec].sampling_rate:  # the corpus was rendered at the preset's
            raise TrainingError(f"--reuse {config.reuse}: its codec runs at {codec.sample_rate} Hz, not the "
                                f"{CODEC_PRESETS[config.codec].sampling_rate} Hz of --codec {config.codec}")
        say(proc, f"[codec] reusing {reused} (--reuse {config.reuse}; --reuse '' trains one here)")
        return codec
    if config.reuse:
        say(proc, f"[codec] no trained codec in {reused} to reuse: training one here")
    if (out / "codec" / "config.json").exists():
        say(proc, f"[codec] already trained: {out / 'codec'}")
    elif proc.main:  # the other processes wait at the barrier below
        steps = CodecSteps(config, data.select(clips, "train"), proc.device)
        train_steps(steps, config, Processes(device=proc.device))  # a world of one: no all-reduce
        steps.trainer.use_average()  # the decoder's weights averaged over the last ~500 steps (CodecTrainer)
        steps.codec.save_pretrained(out / "codec")
        say(proc, f"[codec] saved {out / 'codec'}")
    proc.barrier()  # codec/ is saved
    return EncodecLite.from_pretrained(out / "codec")  # every process: the codec as saved


class CodecSteps:
    """The codec stage's steps: random crops of the training clips through the codec; CodecTrainer computes the
    reconstruction and commitment losses and takes its Adam step."""

    name, seed_stream, remedy = "codec", 0, "Lower --codec_lr"  # seed stream 0: see step_seed

    def __init__(self, config, clips, device):
        self.config, self.clips, self.steps = config, clips, config.codec_steps
        self.ckpt_path, self.log_path = Path(config.out_dir, "codec_ckpt.pt"), Path(config.out_dir, "codec_log.jsonl")
        torch.manual_seed(config.seed)  # the codec's initial weights
        self.codec = EncodecLite(CODEC_PRESETS[config.codec]).to(device)
        self.trainer = CodecTrainer(self.codec, lr=config.codec_lr)  # Adam + the codec's losses (encodec_lite.py)
        self.architecture = {"codec": self.codec.config.to_hf()}  # its config.json: what a resume must match
        self.parts = {"trainer": self.trainer}  # what a checkpoint saves: weights, codebooks and Adam's moments
        self.samples = int(config.codec_crop_seconds * self.codec.sample_rate)  # crop length in samples
        # Quantizer warm-up: VQ on a random encoder collapses (its latent barely varies, one code wins every frame).
        # So the codec first learns as a plain auto-encoder; the first quantised step then k-means-initialises each
        # codebook from the latents of the *trained* encoder (VectorQuantizer.kmeans_init), and the RVQ stays on.
        self.warmup = round(config.codec_warmup * config.codec_steps)
        codec = self.codec
        tqdm.write(f"[codec] EncodecLite '{config.codec}': {codec.sample_rate} Hz, {codec.frame_rate:g} frames/s, "
                   f"K={codec.num_codebooks} codebooks of {codec.codebook_size}, {millions(codec):.2f}M parameters; "
                   f"{config.codec_steps} steps of {config.codec_batch} x {config.codec_crop_seconds:g} s crops "
                   f"from {len(clips)} clips")

    def step(self, step, stop):
        config = self.config
        wav = data.audio_batch(self.clips, step, config.codec_batch, self.samples, self.codec.sample_rate,
                               seed=config.seed)  # [B, 1, samples]
        # A cosine from codec_lr down to a tenth of it: a short run can start fast and still settle at the end.
        for group in self.trainer.opt.param_groups:
            group["lr"] = cosine_lr(step, config.codec_lr, config.codec_lr / 10, config.codec_steps)
        # float32, also where the CPU multiplies bf16: bf16 makes a quiet step 1.15x faster but loses ~2/3 of the
        # speed beside another busy process, fp32 ~1/4 (RESULTS.md, "The laptop model v2")
        return dict(self.trainer.step(wav, quantize=step >= self.warmup), stop=stop.requested)  # stats: the log row

    def update(self):
        """Nothing left to do: CodecTrainer.step has applied its update (a non-finite loss stops before a save)."""

    def evaluate(self, done, row, rate):
        """Nothing here: the codec is measured by `python evaluate.py codec`."""

    def postfix(self, row):  # codebook usage: a perplexity near 1 is a collapsed codebook
        ppl = [f"{row.get(f'ppl{q}', 0):.0f}" for q in range(self.codec.num_codebooks)]
        return {"loss": f"{row['loss']:.3f}", "ppl": "/".join(ppl)}


# -------------------- stage 3: tokens. The LM is trained on codes, never on audio: encode every clip once


def stage_tokens(config, codec, clips, proc):
    """-> data.TokenSet: the codes [K, T] of every clip, with its caption and split, cached in tokens.pt."""
    path = Path(config.out_dir) / "tokens.pt"
    reused = Path(config.reuse, "tokens.pt")
    tokens = data.cached_tokens(reused, data.fingerprint(codec, clips)) if config.reuse else None
    if tokens is not None:  # read, never written: the earlier run's file stays as it was
        say(proc, f"[tokens] reusing {reused}: the codes of these clips by this codec")
        return tokens
    if proc.main:
        t0 = time.time()
        tokens = data.tokenize(codec, clips, path)  # rebuilt only when the codec or the clips changed
        say(proc, f"[tokens] {len(tokens.codes)} clips, K={codec.num_codebooks}, {tokens.frame_rate:g} frames/s "
                  f"({time.time() - t0:.0f} s) -> {path}")
    proc.barrier()  # tokens.pt is written
    return data.tokenize(codec, clips, path)  # now a cache hit on every process


# -------------------- stage 4: the language model, Paper §2.2-§2.4, §3.1


class TextToMusic(torch.nn.Module):
    """What the LM stage optimises: text encoder + LM, one forward = the loss of one batch (so DDP can wrap it).

    Condition dropout (Paper §3.1; audiocraft's ClassifierFreeGuidanceDropout in `audiocraft/modules/conditioners.py`
    draws once per batch): with probability cond_dropout, a *whole batch* is trained with the null condition (all
    zeros, mask 0), the same input guidance uses as its unconditional branch at sampling time. The condition is
    multiplied by zero rather than skipped so every parameter stays in the graph (DDP expects gradients for all of
    them). A melody model's `melody` (chroma [B, T_c, 12]) comes with the batch, already the null melody when
    dropped (lm_batch)."""

    def __init__(self, text_encoder, lm, train_text, input_noise=0.0):
        super().__init__()
        self.text_encoder, self.lm, self.train_text, self.input_noise = text_encoder, lm, train_text, input_noise
        if not train_text:
            text_encoder.requires_grad_(False)  # frozen: no gradient (and no dropout: train below)

    def train(self, mode=True):
        """model.train() / .eval() switch the LM (dropout, input noise); a frozen text encoder stays in eval mode
        whatever the LM does: its dropout would only add noise to conditions it can never learn from."""
        super().train(mode)
        if not self.train_text:
            self.text_encoder.eval()
        return self

    def forward(self, codes, ids, mask, drop_condition, melody=None):
        with torch.set_grad_enabled(self.train_text and torch.is_grad_enabled()):  # a frozen T5 keeps no graph
            condition = self.text_encoder(ids, mask)  # [B, L, d_text]
        if drop_condition:  # drawn once per batch in lm_batch
            condition, mask = condition * 0, mask * 0
        noise = self.input_noise if self.training else 0.0  # validation scores clean inputs
        return self.lm.compute_loss(codes, condition, mask, chroma=melody, input_noise=noise)  # (loss, loss [K])


def build_models(config, codec, tokens, proc):
    """-> (tokenizer, text_encoder, lm, train_text). Seeded, so every process starts from the same weights."""
    torch.manual_seed(config.seed)  # the initial weights of the T5 and the LM
    if config.init_from:
        mg = MusicGen.from_pretrained(config.init_from)
        say(proc, f"[lm] fine-tuning {config.init_from}: its frozen T5 and its LM")
        return mg.tokenizer, mg.text_encoder, mg.lm, False
    t5 = config.t5
    if t5 == "auto":  # a public t5-base if the Hugging Face cache has one, else a small T5 trained from scratch
        t5 = str(find_in_hf_cache("google-t5/t5-base") or find_in_hf_cache("t5-base") or "")
        say(proc, f"[lm] t5=auto: {'t5-base found in' if t5 else 'no t5-base in'} the Hugging Face cache")
    if t5:
        tokenizer, text_encoder, train_text = T5Tokenizer.from_pretrained(t5), T5Encoder.from_pretrained(t5), False
        say(proc, f"[lm] text encoder: pretrained T5 from {t5}, frozen (Paper §2.3)")
    else:
        spiece = Path(config.out_dir) / "text" / "spiece.model"
        if proc.main and not spiece.exists():  # one process learns the vocabulary, the others wait, then read it
            T5Tokenizer.train(tokens.select("train").captions, spiece, config.vocab_size)
        proc.barrier()  # spiece.model is written
        tokenizer = T5Tokenizer(spiece)
        t5_config = replace(T5_PRESETS[config.t5_preset], vocab_size=tokenizer.vocab_size, dropout_rate=config.dropout)
        # trained with the LM: the condition means whatever helps the LM predict the codes
        text_encoder, train_text = T5Encoder(t5_config), True
        say(proc, f"[lm] text encoder: T5 '{config.t5_preset}' trained from scratch with the LM, on a "
                  f"{tokenizer.vocab_size}-piece vocabulary from the captions ({spiece}); --t5 DIR: a pretrained "
                  "t5-base, as the paper")
    # The preset as named; only what the data decides changes: K and the card N come from the codec, the
    # cross-attention input width from the text encoder, a melody model's prefix from the window length (its chroma)
    # and the longest caption (its text, padded to that length so that audio step t always sits at the same
    # distance from chroma frame t).
    melody = {}
    if LM_PRESETS[config.lm].melody:
        hop = round(chroma.SAMPLE_RATE / codec.frame_rate)  # one chroma frame per codec frame: 1280 at 25 frames/s
        melody = {"chroma_hop": hop, "chroma_length": chroma.chroma_frames(config.segment_seconds, hop),
                  "text_length": tokenizer(list(tokens.captions))[0].shape[1]}
    lm = LM(lm_config(config.lm, num_codebooks=codec.num_codebooks, card=codec.codebook_size,
                      text_dim=text_encoder.config.d_model, dropout=config.dropout, **melody))
    return tokenizer, text_encoder, lm, train_text


def make_optimizer(model, config, device):
    """Paper §3.1: AdamW, betas (0.9, 0.95), decoupled weight decay 0.1 on weight matrices (and embeddings) only;
    biases and norm gains are not decayed (decaying a gain towards 0 shrinks a whole layer). On a CPU or CUDA,
    `fused` updates every parameter in one kernel instead of a dozen small ops per tensor."""
    params = [p for p in model.parameters() if p.requires_grad]  # not a frozen T5
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = torch.device(device).type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, config.beta2), fused=fused)


def learning_rate(step, config):
    """Paper §3.1: linear warm-up, then a cosine from lr down to min_lr at max_steps."""
    return cosine_lr(step, config.lr, config.min_lr, config.max_steps, config.warmup_steps)


def lm_batch(tokens, tokenizer, step, config, frames, proc, train=True, melody=None):
    """This process's slice of global batch `step`: (codes [b, K, T], ids [b, L], mask [b, L], drop_condition,
    chroma [b, T_c, 12] or None).

    Every process builds the same global batch (a pure function of (seed, step)) and keeps its own rows, so the
    run computes the same loss whatever the number of processes. Captions are tokenized before slicing so that
    every process pads to the same length. Training batches get the paper's text augmentation (word dropout,
    data.augment_caption) and condition dropout; validation batches neither.

    melody (melody models): as melody_source. Each window is conditioned on the chroma of its own audio (Paper
    §2.3): the chroma frames of its clip that the window spans. Or on the null melody when the batch drops its
    conditions (guidance: text and melody together) or its melody alone (melody_dropout, as audiocraft's
    AttributeDropout: one draw per batch, so the model also learns to follow the text with no melody). Of the batches
    that keep their melody, text_dropout drop their text alone: the melody-only branch of separate guidance
    (musicgen.guided_logits), a case audiocraft's two dropouts never draw."""
    codes, captions, windows = data.token_batch(tokens, step, config.batch_size, frames,
                                                seed=config.seed if train else config.seed + 1, augment=train)
    ids, mask = tokenizer(captions)  # [B, L]: padded to the longest caption of the global batch
    rows = slice(proc.rank * len(captions) // proc.world, (proc.rank + 1) * len(captions) // proc.world)
    draws = np.random.default_rng([config.seed, step, 1]).random(3)  # one draw a batch each
    drop = train and draws[0] < config.cond_dropout
    melody_chroma = None
    if melody is not None:
        clip_chroma, chroma_per_frame, length = melody
        melody_chroma = torch.stack([chroma.fit_length(clip_chroma[clip][None, round(start * chroma_per_frame) :],
                                                       length)[0] for clip, start in windows[rows]])  # [b, T_c, 12]
        if drop or (train and draws[1] < config.melody_dropout):
            melody_chroma = chroma.null_melody(len(melody_chroma), length)
        elif train and draws[2] < config.text_dropout:
            drop = True  # the text alone: the melody stays
        melody_chroma = melody_chroma.to(proc.device)
    return (codes[rows].to(proc.device), ids[rows].to(proc.device), mask[rows].to(proc.device), bool(drop),
            melody_chroma)


def melody_source(token_set, clips, codec, lm):
    """What lm_batch needs to condition a melody LM's windows on their own chroma: (the one-hot chroma [T_c, 12] of
    each clip of `token_set`, in its order; chroma frames per codec frame; the LM's chroma_length). None for a text
    LM. Each clip's chroma is computed once, here: a window's chroma is then a slice of it (exactly its frames when,
    as train.py builds them, the LM reads one chroma frame per codec frame), with the clip around the window as the
    context of its first and last 0.5 s STFT windows."""
    if not lm.config.melody:
        return None
    by_id = {clip.id: clip for clip in clips}
    hop = lm.config.chroma_hop
    clip_chroma = [chroma.chromagram(audio.resample(data.clip_audio(by_id[i], codec.sample_rate), codec.sample_rate,
                                                    chroma.SAMPLE_RATE), chroma.SAMPLE_RATE, hop_length=hop)[0]
                   for i in token_set.ids]  # [T_c, 12] each
    return clip_chroma, chroma.SAMPLE_RATE / codec.frame_rate / hop, lm.config.chroma_length


def autocast(device):
    """bf16 autocast (no loss scaler needed, unlike fp16) on CUDA, and on a CPU that multiplies bf16 in hardware
    (AVX-512 BF16 or AMX: LM steps ~1.5x faster); plain fp32 on other CPUs, where bf16 is emulated and slower."""
    if str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=native)


class LMSteps:
    """The LM stage's steps (Paper §3.1): on each process, its slice of the global batch forward and backward (DDP
    averages the gradients), clipping, one all-reduce of the losses; update() is the AdamW step."""

    name, remedy = "lm", "Lower --lr or raise --warmup_steps"  # a divergence early in training: warm up longer

    def __init__(self, config, codec, tokens, clips, proc):
        self.config, self.proc, self.steps = config, proc, config.max_steps
        self.ckpt_path, self.log_path = Path(config.out_dir, "ckpt.pt"), Path(config.out_dir, "log.jsonl")
        self.seed_stream = 2 + proc.rank  # each process its own dropout masks (different rows, different masks)
        self.frames = round(config.segment_seconds * tokens.frame_rate)  # T of a training window
        self.tokenizer, text_encoder, self.lm, train_text = build_models(config, codec, tokens, proc)
        self.model = TextToMusic(text_encoder, self.lm, train_text, config.input_noise).to(proc.device)
        self.model.train()  # dropout and input noise on (a frozen text encoder stays in eval mode: TextToMusic.train)
        # the codec is part of it: the LM's codes mean something only for the codec that made them
        self.architecture = {"lm": asdict(self.lm.config), "codec": codec.config.to_hf(),
                             "text_encoder": dict(text_encoder.config.to_hf(), trained=train_text)}
        self.optimizer = make_optimizer(self.model, config, proc.device)
        self.parts = {"lm": self.lm, "optimizer": self.optimizer, "text_encoder": text_encoder if train_text else None}
        self.params = [p for p in self.model.parameters() if p.requires_grad]  # what gradient clipping measures
        # DDP wraps the model: its backward() averages the gradients over processes as they are computed.
        device_ids = [torch.device(proc.device)] if "cuda" in proc.device else None  # the GPU this process owns
        self.ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids) if proc.world > 1 else self.model
        self.train_set, self.val_set = tokens.select("train"), tokens.select("valid")  # data.TokenSet each
        largest = max(int(codes.max()) for codes in tokens.codes)  # checked once here, not in every step's loss
        if largest >= self.lm.config.card:
            raise TrainingError(f"The token cache holds code {largest}, the LM has {self.lm.config.card} per codebook: "
                                f"delete {Path(config.out_dir, 'tokens.pt')} and rerun to encode the clips again")
        # a melody model's windows need their audio (lm_batch): the clips of each set, in the set's order
        self.train_melody, self.val_melody = (melody_source(s, clips, codec, self.lm) for s in (self.train_set,
                                                                                                self.val_set))
        self.next_batch = (None,)  # (step, codes, ids, mask, drop, chroma) of the step after the last one run

    def step(self, step, stop):
        config, proc = self.config, self.proc
        lr = learning_rate(step, config)  # a function of the step: nothing to save for the schedule
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        _, codes, ids, mask, drop, melody = self.next_batch if self.next_batch[0] == step else self.batch(step)
        with autocast(proc.device):
            loss, per_codebook = self.ddp(codes, ids, mask, drop, melody)  # cross-entropy: mean, per codebook [K]
        loss.backward()  # under DDP this also averages the gradients over processes
        # Scale the whole gradient down when its norm is over grad_clip: one unlucky batch cannot throw the weights
        # far. The norm returned is the one before clipping, as logged.
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, config.grad_clip)
        # one small all-reduce: the global loss, and whether any process was asked to stop (all stop together)
        stats = all_mean(loss_and_stop(per_codebook, stop.requested), proc)
        # Prefetch: the GPU is still working through the kernels queued above, so the CPU builds the next batch now
        # instead of leaving the GPU idle at the start of the next step (a batch is a function of its step alone).
        if step + 1 < self.steps:  # none after the last step
            self.next_batch = self.batch(step + 1)
        return {"loss": stats[:-1].mean(), "per_codebook": stats[:-1], "grad_norm": grad_norm, "lr": lr,
                "cond_dropped": drop, "stop": stats[-1]}  # tensors on the device until train_steps logs them

    def batch(self, step):
        return (step, *lm_batch(self.train_set, self.tokenizer, step, self.config, self.frames, self.proc,
                                melody=self.train_melody))

    def update(self):
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # backward() adds to .grad: start the next step from none

    @torch.no_grad()
    def evaluate(self, done, row, rate):
        """The mean loss per codebook over the same eval_batches held-out batches every time."""
        self.model.eval()  # no dropout, no input noise: the loss of the model as it will generate
        total = 0
        for i in range(self.config.eval_batches):
            codes, ids, mask, _, melody = lm_batch(self.val_set, self.tokenizer, i, self.config, self.frames,
                                                   self.proc, False, self.val_melody)
            with autocast(self.proc.device):
                _, per_codebook = self.model(codes, ids, mask, False, melody)
            total = total + per_codebook.float()  # [K]
        self.model.train()
        val = all_mean(total / self.config.eval_batches, self.proc)  # over every process's rows
        if self.proc.main:
            log(self.log_path, step=done, val_loss=float(val.mean()), val_per_codebook=val.tolist())
        say(self.proc, f"step {done}: train {row['loss']:.3f} ({fmt(row['per_codebook'])})  val "
                       f"{float(val.mean()):.3f} ({fmt(val.tolist())})  grad norm {row['grad_norm']:.2f}  "
                       f"lr {row['lr']:.1e}  {rate:.2f} steps/s")

    def postfix(self, row):  # the loss, the gradient norm before clipping, the learning rate
        return {"loss": f"{row['loss']:.3f}", "gn": f"{row['grad_norm']:.2f}", "lr": f"{row['lr']:.1e}"}


def fmt(per_codebook):
    """[4.12, 3.80, ...] -> '4.12/3.80/...': one loss per codebook, the first (coarsest) first."""
    return "/".join(f"{x:.2f}" for x in per_codebook)


def stage_lm(config, codec, tokens, clips, proc):
    """Train the LM (resuming if a checkpoint is there), then export it with the codec and text encoder."""
    out = Path(config.out_dir)
    steps = LMSteps(config, codec, tokens, clips, proc)  # builds the models and the optimiser (no checkpoint read yet)
    lm, text_encoder = steps.lm, steps.model.text_encoder
    say(proc, f"[lm] LM '{config.init_from or config.lm}' {millions(lm):.2f}M parameters (+ text encoder "
              f"{millions(text_encoder):.2f}M, {'trained' if steps.model.train_text else 'frozen'}); "
              f"{len(steps.train_set.codes)} train / {len(steps.val_set.codes)} valid clips; batch "
              f"{config.batch_size} x {steps.frames} frames ({config.segment_seconds:g} s); {proc.world} process(es) "
              f"on {proc.device}")
    # the loss of a model that ignores all context: the LM's cross-entropy must go well below it
    entropy = unigram_entropy(torch.cat(steps.train_set.codes, dim=-1))  # [K, all training frames]
    say(proc, "[lm] unigram entropy per codebook (the loss of a context-free guess): "
              + " / ".join(f"{h:.2f}" for h in entropy))
    train_steps(steps, config, proc)
    if proc.main:  # the weights are the same in every process: one export
        # generate with windows no longer than the training windows: positions beyond them were never trained
        mg = MusicGen(steps.tokenizer, text_encoder, codec, lm, context_frames=steps.frames,
                      guidance=config.guidance, melody_guidance=config.melody_guidance or None,
                      temperature=config.temperature).eval()
        export(mg, config, out / "model")
        write_samples(mg, steps.val_set, config, out / "samples", clips)
    return lm


def export(mg, config, folder):
    """The model folder: the Hugging Face files only (training state stays beside it), the config as run, and a
    model card. sample.py, evaluate.py and MusicGen.from_pretrained read it like a public checkpoint."""
    mg.save_pretrained(folder)  # config.json, model.safetensors, spiece.model, generation_config.json
    # The settings as run, beside the weights: evaluate.py reads the corpus (data, seed, ...) and so holds out the
    # clips this run held out, and a reader of the folder alone can still tell how it was made.
    atomic_write(folder / "training_config.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(asdict(config), indent=1) + "\n"))
    val = [json.loads(line) for line in Path(config.out_dir, "log.jsonl").read_text().splitlines()]
    val = [row for row in val if "val_per_codebook" in row][-1:]  # the last validation row of the log (or none)
    atomic_write(folder / "README.md", lambda tmp: Path(tmp).write_text(model_card(config, folder, val)))
    tqdm.write(f"[lm] exported the model to {folder} (Hugging Face MusicGen layout, with its model card)")


def model_card(config, folder, val):
    """README.md of the exported model: what it learnt from, under which licences, how to sample and score it."""
    origin = f"fine-tuned from {config.init_from}" if config.init_from else f"LM preset '{config.lm}', from scratch"
    styles = {"builtin": list(STYLES), "synthetic": list(SYNTHETIC_STYLES)}.get(config.data, [])  # the prompts known
    corpus = {"builtin": f"music21's bundled scores rendered by synth.py ({config.clips_per_style} clips per style)",
              "synthetic": "the synthetic test corpus"}.get(config.data, f"the audio files of {config.data}")
    lines = [f"# A MusicGen trained by train.py ({origin})",  # one paragraph each
             f"Trained on {corpus}; {config.max_steps} LM steps, seed {config.seed} (every setting: "
             "training_config.json)." + (f" Styles: {', '.join(styles)}." if styles else "")]
    if config.data == "builtin":  # the terms corpus.builtin_corpus describes
        lines.append("Licences: some of music21's encodings are for non-commercial use only (the Essen folk songs "
                     "among them); check music21's corpus licences before using this model for anything else.")
    if config.init_from:  # a fine-tuned model is a derivative of the weights it started from
        lines.append(f"It keeps the licence of {config.init_from} (the public MusicGen weights: CC-BY-NC 4.0).")
    if val:  # the last validation of the training run: the one number recorded with the model
        lines.append(f"Validation cross-entropy per codebook at step {val[0]['step']}: "
                     f"{fmt(val[0]['val_per_codebook'])} nats.")
    prompt = styles[0] if styles else "a caption like those of the training files"  # the card's example command
    usage = (f"    python sample.py --model {folder} --prompt \"{prompt}\"\n"
             f"    python evaluate.py all --model {folder}    # held-out numbers\n")
    return "\n\n".join(lines + [usage])


def write_samples(mg, val_set, config, folder, clips):
    """A few clips from held-out captions, one per style, to listen to; a melody model follows the melody of the
    clip each caption describes."""
    if config.samples <= 0:
        return
    by_style = {}
    for i, style in enumerate(val_set.styles):
        by_style.setdefault(style, i)  # the first held-out clip of each style
    picks = (list(by_style.values()) * config.samples)[: config.samples]  # cycle through the styles
    prompts = [val_set.captions[i] for i in picks]
    by_id = {clip.id: clip for clip in clips}
    tunes = {"melody": [data.clip_audio(by_id[val_set.ids[i]], mg.sample_rate) for i in picks],
             "melody_sample_rate": mg.sample_rate} if mg.lm.config.melody else {}
    t0 = time.time()
    wav = mg.generate(prompts, duration=config.sample_seconds, seed=config.seed, **tunes)  # [B, 1, N], one batch
    audio.write_clips(folder, wav, mg.sample_rate, prompts)  # 00.wav, 01.wav... and prompts.txt
    tqdm.write(f"[samples] {len(prompts)} x {config.sample_seconds:g} s in {time.time() - t0:.0f} s -> {folder}")


# -------------------- the pipeline


def run(config, stage="lm"):
    """Run the stages up to `stage`, skipping those already done. Returns the trained LM (or None)."""
    check_config(config)  # before anything is written: a bad key costs a second, not the stages before its use
    proc = setup_processes(str(pick_device(config.device)))  # 'auto': cuda, else mps, else cpu
    if config.threads:  # else torch's default: one thread per core
        torch.set_num_threads(config.threads)
    if proc.device.startswith("cuda"):
        # TF32 matmuls where bf16 autocast does not apply (the quantizer opts out: encodec_lite.full_fp32_matmuls)
        torch.set_float32_matmul_precision("high")
    Path(config.out_dir).mkdir(parents=True, exist_ok=True)  # every stage writes in it
    say(proc, f"[train] out_dir {config.out_dir}, device {proc.device}, seed {config.seed}")
    t0 = time.time()
    last = STAGES.index(stage)  # run the stages up to this one
    clips = stage_data(config, proc)  # list of clips (audio + caption)
    codec = stage_codec(config, clips, proc).to(proc.device) if last >= 1 else None  # audio <-> codes [K, T]
    tokens = stage_tokens(config, codec, clips, proc) if last >= 2 else None  # the codes of every clip
    lm = stage_lm(config, codec, tokens, clips, proc) if last >= 3 else None  # captions -> codes
    say(proc, f"[train] done in {(time.time() - t0) / 60:.1f} min")
    return lm


def main(argv=None):
    """The command line: run, and turn the errors a user can fix into one line on stderr and an exit code."""
    config, stage = parse_args(argv)
    try:
        run(config, stage)
        if dist.is_initialized():
            # Leave together: rank 0 still exports the model and writes samples after the last step, and a gloo
            # process that tears its group down while a peer is still connected can abort (SIGABRT) at exit.
            dist.barrier()
    except KeyboardInterrupt:
        print(f"\nInterrupted; rerun the same command to resume from the checkpoint in {config.out_dir}.",
              file=sys.stderr)
        sys.exit(130)  # the shell's code for "ended by Ctrl-C"
    except (CheckpointError, TrainingError, audio.AudioError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)  # one line the user can act on, no traceback
        sys.exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()  # close the processes' connections cleanly


if __name__ == "__main__":
    main()
