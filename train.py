"""
train.py: train a text-to-music MusicGen from scratch on a laptop, offline (or fine-tune a public one).

The paper trains on 20k hours of music with 32+ GPUs (§3.1, §3.2). This is the "I only have a laptop" version:

    python train.py --config small             # ~30 min on 2 CPU cores: corpus -> codec -> tokens -> LM
    python sample.py --prompt "baroque"        # then listen (reads out/small)
    python train.py --config small --max_steps=3000 --lr=5e-4      # any key can be changed with --key=value
    python train.py --config musicgen-small --data my_music/       # the 300M architecture on one GPU
    python train.py --config finetune --init-from facebook/musicgen-small --data my_music/
    torchrun --nproc_per_node 4 train.py --config musicgen-small   # several GPUs (or CPU processes)
    python train.py --help                     # every config and key

The pipeline has four stages, each written to --out_dir, resumable, and skipped when already done:

    data     the clips: music21's bundled scores rendered by synth.py (default), or your folder (--data DIR)
    codec    EncodecLite trained on 1-second crops (Paper §2.1), or a public codec loaded (--codec DIR)
    tokens   every clip encoded once into codes [K, T] (the LM never sees audio)
    lm       the text encoder + transformer LM (Paper §2.3, §2.4) trained on windows of those codes, then
             exported in the Hugging Face layout (MusicGen.save_pretrained) with a few WAV samples

Text encoder: the paper uses a frozen, pretrained T5 (§2.3). With --t5 DIR (or t5-base found in the Hugging Face
cache, for the GPU configs) we do the same. Offline, with no pretrained weights, a small T5 is trained jointly with
the LM, on a SentencePiece vocabulary learnt from the corpus captions: the same T5Encoder code, just small and not
frozen.

Exact resume: a checkpoint holds model, optimiser and step. Everything else is a function of (seed, step): the
batches (data.token_batch), the condition dropout draw, the learning rate, and the torch seed for dropout and input
noise, which is reset at every step. So a run killed at any point and restarted replays exactly what an uninterrupted
run does. Ctrl-C finishes the current step, saves and exits. Checkpoints are written atomically (never half a file).

Outputs in --out_dir (default out/<config>):
    codec/                 the trained codec (HF EncodecModel layout)
    codec_ckpt.pt          codec training state while it trains
    tokens.pt              the token cache
    text/spiece.model      the vocabulary of the T5 trained from scratch
    codec_log.jsonl        codec losses and codebook usage (perplexity per codebook) every log_every steps
    ckpt.pt                LM training state (resume)
    log.jsonl              one JSON line per logged step: losses per codebook, grad norm, lr, steps/s, val loss
    config.json, model.safetensors, spiece.model, generation_config.json      the final MusicGen (HF layout)
    samples/*.wav          a few clips generated at the end, with their prompts in samples/prompts.txt
"""

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import audio
import data
from checkpoints import (CheckpointError, atomic_torch_save, find_in_hf_cache, load_into, read_config,
                         resolve_model_dir)
from data import CLIPS_PER_STYLE  # (inside TrainConfig, `data` is the name of a field)
from encodec_lite import PRESETS as CODEC_PRESETS
from encodec_lite import CodecTrainer, EncodecLite
from musicgen import LM, MusicGen, lm_config
from t5_encoder import T5_PRESETS, T5Encoder, T5Tokenizer

# ----------------------------------------------------------------------------------------------------------------
# Configuration: one dataclass, a few named presets, any key overridable from the command line


def opt(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    out_dir: str = opt("out/small", "where the stages write their results and the final model")
    cache_dir: str = opt("cache", "rendered audio and parsed scores, shared between runs")
    seed: int = opt(0, "every random choice of the run derives from it")
    device: str = opt("auto", "cuda / cpu / cuda:1 ...; auto = cuda if available")
    threads: int = opt(0, "CPU threads for torch; 0 = torch's default (1 is faster on a machine busy with other work)")
    # data (Paper §3.2: 20k hours of licensed music; ours: rendered scores)
    data: str = opt("builtin", "builtin (music21 scores), synthetic (tests) or a folder of audio files + captions")
    clip_seconds: float = opt(10.0, "length of each built-in / synthetic clip")
    clips_per_style: int = opt(CLIPS_PER_STYLE, "built-in corpus size: clips per style (5 styles)")
    # codec (Paper §2.1)
    codec: str = opt("small", "an encodec_lite preset to train (small: spectral; small-seanet, tiny, "
                                 "tiny-spectral), or a directory / hub id to load")
    codec_clips_per_style: int = opt(60, "built-in corpus: the codec trains on the first N clips of each style (0 = "
                                         "all; a folder: always all): it needs less music than the LM (README)")
    codec_steps: int = opt(4000, "codec training steps (more steps: more of the notes survive the codec)")
    codec_batch: int = opt(16, "codec batch size (crops)")
    codec_crop_seconds: float = opt(0.5, "codec training crop length (EnCodec: 1 s; 16 x 0.5 s learn faster than 8 x 1 s)")
    codec_lr: float = opt(5e-4, "codec Adam peak learning rate, cosine down to a tenth")
    codec_warmup: float = opt(0.3, "fraction of codec steps trained as a plain auto-encoder, before the RVQ is on")
    # text encoder (Paper §2.3)
    t5: str = opt("", "'' = train a small T5 from scratch; auto = t5-base from the HF cache if there; or a directory")
    t5_preset: str = opt("tiny", "size of the T5 trained from scratch (t5_encoder.T5_PRESETS)")
    vocab_size: int = opt(1000, "SentencePiece vocabulary learnt from the captions (upper bound)")
    init_from: str = opt("", "a MusicGen directory / hub id to fine-tune (its codec, T5 and LM replace ours)")
    # language model (Paper §2.4, §3.1)
    lm: str = opt("small", "LM size (musicgen.PRESETS): tiny, small, musicgen-small, ...")
    lm_dim: int = opt(192, "change the preset's width D (heads of 64 channels, FFN 4 D); 0 = keep it")
    lm_layers: int = opt(4, "change the preset's number of layers; 0 = keep it")
    dropout: float = opt(0.0, "dropout in the LM and the T5 trained from scratch")
    input_noise: float = opt(0.1, "share of the LM's input codes replaced by random ones while training "
                                  "(musicgen.corrupt_codes: a small corpus is memorised less; README)")
    batch_size: int = opt(16, "global batch (split across processes under torchrun)")
    segment_seconds: float = opt(2.5, "length of the training windows (Paper: 30 s)")
    max_steps: int = opt(1500, "LM training steps")
    lr: float = opt(2e-3, "peak learning rate")
    min_lr: float = opt(2e-4, "learning rate at the end of the cosine")
    warmup_steps: int = opt(50, "linear warm-up steps (Paper: 4000)")
    weight_decay: float = opt(0.1, "AdamW decoupled weight decay, on matrices only")
    beta2: float = opt(0.95, "AdamW beta2 (beta1 = 0.9)")
    grad_clip: float = opt(1.0, "clip the gradient norm to this")
    cond_dropout: float = opt(0.3, "probability of training a batch without its condition (guidance, Paper §3.1)")
    guidance: float = opt(6.0, "the exported model's default guidance coefficient (Paper: 3; our laptop LM follows "
                               "the prompt better at 6, README)")
    # bookkeeping
    log_every: int = opt(10, "steps between log.jsonl lines")
    eval_every: int = opt(100, "steps between validation losses")
    eval_batches: int = opt(4, "validation batches (the same ones every time)")
    ckpt_every: int = opt(100, "steps between checkpoints")
    samples: int = opt(5, "clips generated at the end (one prompt per style)")
    sample_seconds: float = opt(8.0, "length of those clips")


CONFIGS = {
    # A laptop CPU, ~30 minutes from nothing to samples: the TrainConfig defaults above (numbers in the README).
    "small": TrainConfig(),
    # Unit tests: a dozen 3 s synthetic clips, everything tiny; the whole pipeline runs in seconds.
    "tiny": TrainConfig(
        out_dir="out/tiny", data="synthetic", clip_seconds=3.0, codec="tiny-spectral", codec_steps=20,
        codec_batch=4, codec_crop_seconds=0.5, vocab_size=100, lm="tiny", lm_dim=0, lm_layers=0, batch_size=4,
        segment_seconds=1.0, max_steps=6, lr=3e-3, min_lr=3e-4, warmup_steps=2, log_every=1, eval_every=3,
        eval_batches=1, ckpt_every=3, samples=1, sample_seconds=1.0),
    # One GPU, hours: the same recipe scaled up (more music, a longer-trained codec, a 25M LM, 10 s windows).
    "gpu": TrainConfig(
        out_dir="out/gpu", clips_per_style=400, codec_clips_per_style=0, codec_steps=20000, codec_batch=32,
        codec_lr=3e-4, t5_preset="small", lm_dim=512, lm_layers=8, dropout=0.1, input_noise=0.0, batch_size=64,
        segment_seconds=10.0, max_steps=20000, lr=1e-3, min_lr=1e-4, warmup_steps=1000, eval_every=1000,
        ckpt_every=1000, guidance=3.0, sample_seconds=10.0),
    # The released 300M architecture (Paper Table 5) from scratch, on the public EnCodec 32 kHz and, if it is in the
    # Hugging Face cache, a frozen t5-base (as the paper): one big GPU, a day.
    "musicgen-small": TrainConfig(
        out_dir="out/musicgen-small", clips_per_style=400, codec="facebook/encodec_32khz", t5="auto",
        t5_preset="small", lm="musicgen-small", lm_dim=0, lm_layers=0, dropout=0.1, input_noise=0.0,
        batch_size=32, segment_seconds=10.0, max_steps=50000, lr=3e-4, min_lr=3e-5, warmup_steps=2000, eval_every=1000,
        ckpt_every=1000, guidance=3.0, sample_seconds=10.0),
    # Fine-tune a public MusicGen on your folder: --init-from facebook/musicgen-small --data DIR
    # (its codec, T5 and LM are used; the LM keeps its own size).
    "finetune": TrainConfig(
        out_dir="out/finetune", lm_dim=0, lm_layers=0, input_noise=0.0, batch_size=8, segment_seconds=10.0,
        max_steps=2000, lr=1e-5, min_lr=1e-6, warmup_steps=100, eval_every=200, ckpt_every=200, guidance=3.0,
        sample_seconds=10.0),
}

STAGES = ("data", "codec", "tokens", "lm")


def parse_args(argv=None):
    """--config NAME picks a preset; then every key of TrainConfig can be set with --key=value (or --key value)."""
    lines = [f"  {name:<15} {CONFIGS[name].out_dir}" for name in CONFIGS]
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(), formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="configs (--config NAME; each writes to its own out_dir):\n" + "\n".join(lines)
        + "\n\nThe defaults shown are those of --config small; the other configs change some of them.")
    parser.add_argument("--config", default="small", choices=list(CONFIGS), help="named preset (default small)")
    parser.add_argument("--stage", default="lm", choices=STAGES,
                        help="run the pipeline up to this stage (done stages are skipped); default: all of it")
    for f in fields(TrainConfig):
        flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        parser.add_argument(*flags, dest=f.name, type=f.type, default=None,
                            help=f"{f.metadata['help']} (default {f.default!r})")
    args = parser.parse_args(argv)
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    return replace(CONFIGS[args.config], **given), args.stage


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, bad settings); the message says why and what to do."""


# ----------------------------------------------------------------------------------------------------------------
# Processes: one, or several under torchrun (DistributedDataParallel)


@dataclass
class Processes:
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def main(self):
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()


def setup_processes(device):
    """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them this is a single process.
    gloo on CPU, nccl on CUDA. The long timeout lets the other processes wait while rank 0 trains the codec."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if "RANK" not in os.environ:
        return Processes(0, 1, device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device.startswith("cuda"):
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=timedelta(hours=3))
    return Processes(rank, world, device)


def say(proc, message):
    """Print from the first process only (the others would repeat it)."""
    if proc.main:
        tqdm.write(message)


def step_seed(seed, step, stream):
    """A 63-bit seed made from (seed, step, stream): the randomness of a step, recomputable after a resume."""
    return int(np.random.default_rng([seed, step, stream]).integers(2**63))


class StopRequest:
    """Ctrl-C (or SIGTERM from a scheduler) asks to stop: the current step finishes, a checkpoint is written, the
    run exits. A second Ctrl-C interrupts at once."""

    def __enter__(self):
        self.requested, self.previous = False, {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # only the main thread may set handlers; elsewhere, no Ctrl-C
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("\nStopping after this step and saving a checkpoint (Ctrl-C again to abort without saving).")

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: written atomically; loading explains what is wrong instead of failing inside torch


def read_checkpoint(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, pickled junk...
        raise CheckpointError(
            f"Cannot read checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). It is corrupt "
            "or not a checkpoint of train.py. Delete it to start this stage over, or use another --out_dir."
        ) from None


def check_architecture(ckpt, architecture, path):
    """The checkpoint must describe the same models; training settings may change (with a notice)."""
    saved = ckpt.get("architecture") if isinstance(ckpt, dict) else None
    if saved is None:
        raise CheckpointError(f"{path} is not a checkpoint written by train.py (no 'architecture' entry). Delete it "
                              "or use another --out_dir.")
    diffs = [f"{part}.{k}: checkpoint {saved.get(part, {}).get(k)!r} vs now {v!r}"
             for part, now in architecture.items() for k, v in now.items() if saved.get(part, {}).get(k) != v]
    if diffs:
        raise CheckpointError(
            f"{path} was written for a different model, so it cannot be resumed:\n  " + "\n  ".join(diffs[:12])
            + "\nUse the settings it was made with, another --out_dir, or delete the checkpoint to start over.")


def plain(d):
    """Tuples -> lists etc., so a description compares equal to itself after a save / load round trip."""
    return json.loads(json.dumps(d))


def notice_changed_settings(ckpt, cfg, proc):
    ignore = {"out_dir", "cache_dir", "device", "threads", "log_every", "eval_every", "eval_batches", "ckpt_every",
              "samples", "sample_seconds", "guidance"}
    changed = [f"{k} {v!r} -> {getattr(cfg, k)!r}" for k, v in ckpt.get("config", {}).items()
               if k not in ignore and hasattr(cfg, k) and getattr(cfg, k) != v]
    if changed:
        say(proc, "Resuming with changed settings (no longer an exact continuation): " + ", ".join(changed))


# ----------------------------------------------------------------------------------------------------------------
# Stage 1: data


def codec_sample_rate(cfg):
    """The corpus is rendered at the codec's rate, so the codec config is needed before the audio exists."""
    if cfg.codec in CODEC_PRESETS and not cfg.init_from:
        return CODEC_PRESETS[cfg.codec].sampling_rate
    config = read_config(resolve_model_dir(cfg.init_from or cfg.codec))
    return config.get("audio_encoder", config)["sampling_rate"]  # a MusicGen dir or a codec dir


def stage_data(cfg, proc):
    """Paper §3.2 (our substitute): a list of clips with captions; rendered / converted audio is cached."""
    sample_rate = codec_sample_rate(cfg)
    if proc.main:
        data.load_corpus(cfg, sample_rate)  # the first process renders, the others then read the cache
    proc.barrier()
    clips = data.load_corpus(cfg, sample_rate)
    say(proc, f"[data] {data.summary(clips)}")
    if not data.select(clips, "train") or not data.select(clips, "valid"):
        raise TrainingError(f"The corpus needs clips in both splits; got {data.summary(clips)}. Add more clips.")
    return clips


# ----------------------------------------------------------------------------------------------------------------
# Stage 2: codec (Paper §2.1). Trained by the first process only: it is small, the LM is where time goes.


def stage_codec(cfg, clips, proc):
    out = Path(cfg.out_dir)
    if cfg.init_from:
        return EncodecLite.from_pretrained(cfg.init_from)
    if cfg.codec not in CODEC_PRESETS:  # a public / earlier codec: load, do not train
        return EncodecLite.from_pretrained(cfg.codec)
    if not (out / "codec" / "config.json").exists():
        if proc.main:
            if cfg.data == "builtin":  # the first clips of each style: the codec measured in the README
                clips = data.first_per_style(clips, cfg.codec_clips_per_style)
            train_codec(cfg, data.select(clips, "train"), proc)
        proc.barrier()
    else:
        say(proc, f"[codec] already trained: {out / 'codec'}")
    return EncodecLite.from_pretrained(out / "codec")


def train_codec(cfg, clips, proc):
    out = Path(cfg.out_dir)
    ckpt_path = out / "codec_ckpt.pt"
    torch.manual_seed(cfg.seed)
    codec = EncodecLite(CODEC_PRESETS[cfg.codec]).to(proc.device)
    trainer = CodecTrainer(codec, lr=cfg.codec_lr)
    architecture = plain({"codec": codec.config.to_hf()})
    start = 0
    if ckpt_path.exists():
        ckpt = read_checkpoint(ckpt_path)
        check_architecture(ckpt, architecture, ckpt_path)
        trainer.load_state_dict(ckpt["trainer"])
        start = ckpt["step"]
        tqdm.write(f"[codec] resuming from {ckpt_path} at step {start}")
    n_params = sum(p.numel() for p in codec.parameters())
    tqdm.write(f"[codec] EncodecLite '{cfg.codec}': {codec.sample_rate} Hz, {codec.frame_rate:g} frames/s, "
               f"K={codec.num_codebooks} codebooks of {codec.codebook_size}, {n_params / 1e6:.2f}M parameters; "
               f"{cfg.codec_steps} steps of {cfg.codec_batch} x {cfg.codec_crop_seconds:g} s crops "
               f"from {len(clips)} clips")
    samples = int(cfg.codec_crop_seconds * codec.sample_rate)
    # Quantizer warm-up: VQ on a random encoder collapses (its latent barely varies, one code wins every frame). So
    # the codec first learns as a plain auto-encoder; the first quantised step then k-means-initialises each codebook
    # from the latents of the *trained* encoder (VectorQuantizer.kmeans_init), and the RVQ stays on from there.
    warmup = round(cfg.codec_warmup * cfg.codec_steps)
    keep_log_until(out / "codec_log.jsonl", start)

    def save(step):
        state = {"step": step, "trainer": trainer.state_dict(), "config": asdict(cfg),
                 "architecture": architecture}
        atomic_torch_save(state, ckpt_path)

    bar = tqdm(total=cfg.codec_steps, initial=start, desc="codec", dynamic_ncols=True)
    with StopRequest() as stop:
        for step in range(start, cfg.codec_steps):
            torch.manual_seed(step_seed(cfg.seed, step, 0))  # k-means init and dead-code reseeding draw from it
            wav = data.audio_batch(clips, step, cfg.codec_batch, samples, codec.sample_rate, seed=cfg.seed)
            # A cosine from codec_lr down to a tenth of it: a short run can start fast and still settle at the end.
            for group in trainer.opt.param_groups:
                group["lr"] = cosine_lr(step, cfg.codec_lr, cfg.codec_lr / 10, cfg.codec_steps)
            stats = trainer.step(wav, quantize=step >= warmup)
            if not math.isfinite(stats["loss"]):
                raise TrainingError(f"Codec loss is {stats['loss']} at step {step}. Lower --codec_lr and rerun "
                                    f"(it resumes from {ckpt_path} if one was saved).")
            bar.update()
            shown = {k: f"{stats[k]:.3f}" for k in ("loss", "mel", "chroma") if k in stats}  # mel: SEANet only
            bar.set_postfix(**shown, ppl="/".join(f"{stats.get(f'ppl{q}', 0):.0f}" for q in range(codec.num_codebooks)))
            done = step + 1
            if done % cfg.log_every == 0:
                log(out / "codec_log.jsonl", step=done, **stats)
            if stop.requested:
                save(done)
                raise KeyboardInterrupt
            if done % cfg.ckpt_every == 0:
                save(done)
    bar.close()
    codec.save_pretrained(out / "codec")
    tqdm.write(f"[codec] saved {out / 'codec'}")


# ----------------------------------------------------------------------------------------------------------------
# Stage 3: tokens. The LM is trained on codes, never on audio: encode every clip once.


def stage_tokens(cfg, codec, clips, proc):
    path = Path(cfg.out_dir) / "tokens.pt"
    if proc.main:
        t0 = time.time()
        tokens = data.tokenize(codec, clips, path)
        say(proc, f"[tokens] {len(tokens.codes)} clips, K={codec.num_codebooks}, {tokens.frame_rate:g} frames/s "
                  f"({time.time() - t0:.0f} s) -> {path}")
    proc.barrier()
    return data.tokenize(codec, clips, path)  # now a cache hit on every process


# ----------------------------------------------------------------------------------------------------------------
# Stage 4: the language model


class TextToMusic(torch.nn.Module):
    """What the LM stage optimises: text encoder + LM, one forward = the loss of one batch (so DDP can wrap it).

    Condition dropout (Paper §3.1, facts §3.4): with probability cond_dropout, a *whole batch* is trained with
    the null condition (all zeros, mask 0), the same input guidance uses as its unconditional branch at sampling
    time. The condition is multiplied by zero rather than skipped so every parameter stays in the graph (DDP
    expects gradients for all of them)."""

    def __init__(self, text_encoder, lm, train_text, input_noise=0.0):
        super().__init__()
        self.text_encoder, self.lm, self.train_text, self.input_noise = text_encoder, lm, train_text, input_noise

    def forward(self, codes, ids, mask, drop_condition):
        with torch.set_grad_enabled(self.train_text and torch.is_grad_enabled()):
            condition = self.text_encoder(ids, mask)  # [B, L, d_text]
        if drop_condition:
            condition, mask = condition * 0, mask * 0
        noise = self.input_noise if self.training else 0.0  # validation scores clean inputs
        return self.lm.compute_loss(codes, condition, mask, input_noise=noise)  # (loss, per-codebook loss [K])


def find_t5(cfg, proc):
    """Which text encoder: a public T5 (frozen, as in the paper) or '' for a small one trained from scratch."""
    if cfg.t5 != "auto":
        return cfg.t5
    cached = find_in_hf_cache("google-t5/t5-base") or find_in_hf_cache("t5-base")
    if cached is None:
        say(proc, "[lm] t5=auto: no t5-base in the Hugging Face cache, training a small T5 from scratch instead")
    return str(cached or "")


def build_models(cfg, codec, tokens, proc):
    """-> (tokenizer, text_encoder, lm, train_text). Seeded, so every process starts from the same weights."""
    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        mg = MusicGen.from_pretrained(cfg.init_from)
        say(proc, f"[lm] fine-tuning {cfg.init_from}: its frozen T5 and its LM")
        return mg.tokenizer, mg.text_encoder, mg.lm, False
    t5 = find_t5(cfg, proc)
    if t5:
        tokenizer, text_encoder, train_text = T5Tokenizer.from_pretrained(t5), T5Encoder.from_pretrained(t5), False
        say(proc, f"[lm] text encoder: pretrained T5 from {t5}, frozen (Paper §2.3)")
    else:
        spiece = Path(cfg.out_dir) / "text" / "spiece.model"
        if proc.main and not spiece.exists():
            T5Tokenizer.train(data_captions(tokens), spiece, cfg.vocab_size)
        proc.barrier()
        tokenizer = T5Tokenizer(spiece)
        t5_config = replace(T5_PRESETS[cfg.t5_preset], vocab_size=tokenizer.vocab_size, dropout_rate=cfg.dropout)
        text_encoder, train_text = T5Encoder(t5_config), True
        say(proc, f"[lm] text encoder: T5 '{cfg.t5_preset}' trained from scratch with the LM, on a "
                  f"{tokenizer.vocab_size}-piece vocabulary learnt from the captions ({spiece}). "
                  "Pass --t5 DIR to use a pretrained t5-base instead, as the paper does.")
    lm = LM(lm_config(cfg.lm, num_codebooks=codec.num_codebooks, card=codec.codebook_size,
                      text_dim=text_encoder.config.d_model, dropout=cfg.dropout, **lm_size(cfg)))
    return tokenizer, text_encoder, lm, train_text


def lm_size(cfg):
    """--lm_dim / --lm_layers: resize a preset without defining a new one (head size 64 and FFN 4 D, as released)."""
    size = {"num_layers": cfg.lm_layers} if cfg.lm_layers else {}
    if cfg.lm_dim:
        size.update(dim=cfg.lm_dim, num_heads=max(1, cfg.lm_dim // 64), ffn_dim=4 * cfg.lm_dim)
    return size


def data_captions(tokens):
    return [c for c, s in zip(tokens.captions, tokens.splits) if s == "train"]


def make_optimizer(model, cfg, device):
    """Paper §3.1: AdamW, betas (0.9, 0.95), decoupled weight decay 0.1 on weight matrices (and embeddings) only;
    biases and norm gains are not decayed (decaying a gain towards 0 shrinks a whole layer)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), fused=str(device).startswith("cuda"))


def cosine_lr(step, peak, final, total, warmup=0):
    """Linear warm-up over `warmup` steps, then a cosine from `peak` down to `final` at step `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * progress))


def learning_rate(step, cfg):
    """Paper §3.1: linear warm-up, then a cosine from lr down to min_lr at max_steps."""
    return cosine_lr(step, cfg.lr, cfg.min_lr, cfg.max_steps, cfg.warmup_steps)


def lm_batch(tokens, tokenizer, step, cfg, frames, proc, train=True):
    """This process's slice of global batch `step`: (codes [b, K, T], ids [b, L], mask [b, L], drop_condition).

    Every process builds the same global batch (a pure function of (seed, step)) and keeps its own rows, so the
    run computes the same loss whatever the number of processes. Captions are tokenized before slicing so that
    every process pads to the same length. Training batches get the paper's text augmentation (word dropout,
    data.augment_caption) and condition dropout; validation batches neither."""
    codes, captions = data.token_batch(tokens, step, cfg.batch_size, frames, seed=cfg.seed if train else cfg.seed + 1,
                                       augment=train)
    ids, mask = tokenizer(captions)
    rows = slice(proc.rank * len(captions) // proc.world, (proc.rank + 1) * len(captions) // proc.world)
    drop = train and np.random.default_rng([cfg.seed, step, 1]).random() < cfg.cond_dropout
    return codes[rows].to(proc.device), ids[rows].to(proc.device), mask[rows].to(proc.device), bool(drop)


def autocast(device):
    """bf16 autocast on CUDA (no loss scaler needed, unlike fp16); plain fp32 on CPU."""
    if str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def validation_loss(model, tokens, tokenizer, cfg, frames, proc):
    """Mean loss and per-codebook loss over the same eval_batches held-out batches every time."""
    model.eval()
    total = 0
    for i in range(cfg.eval_batches):
        codes, ids, mask, _ = lm_batch(tokens, tokenizer, i, cfg, frames, proc, train=False)
        with autocast(proc.device):
            _, per_codebook = model(codes, ids, mask, False)
        total = total + per_codebook.float()
    model.train()
    return all_mean(total / cfg.eval_batches, proc)


def all_mean(x, proc):
    """Average a tensor over processes (the per-process means are over equal-sized slices)."""
    if proc.world > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= proc.world
    return x


def unigram_entropy(tokens, K):
    """Per codebook, the entropy (nats) of the token frequencies: the loss of a model that ignores all context.
    The LM's cross-entropy must go well below it to have learnt anything about music."""
    codes = torch.cat([c.long() for c, s in zip(tokens.codes, tokens.splits) if s == "train"], dim=-1)  # [K, sum T]
    out = []
    for k in range(K):
        p = torch.bincount(codes[k]).float()
        p = p[p > 0] / p.sum()
        out.append(float(-(p * p.log()).sum()) + 0.0)  # + 0.0: print 0.00, not -0.00
    return out


def stage_lm(cfg, codec, tokens, proc):
    out = Path(cfg.out_dir)
    ckpt_path = out / "ckpt.pt"
    frames = round(cfg.segment_seconds * tokens.frame_rate)
    if cfg.batch_size % proc.world:
        raise TrainingError(f"batch_size {cfg.batch_size} must be a multiple of the number of processes "
                            f"({proc.world}): each one takes an equal slice of the global batch.")
    tokenizer, text_encoder, lm, train_text = build_models(cfg, codec, tokens, proc)
    if not train_text:
        text_encoder.requires_grad_(False).eval()
    model = TextToMusic(text_encoder, lm, train_text, cfg.input_noise).to(proc.device)
    architecture = plain({"lm": asdict(lm.config), "codec": codec.config.to_hf(),
                          "text_encoder": dict(text_encoder.config.to_hf(), trained=train_text)})
    optimizer = make_optimizer(model, cfg, proc.device)
    train_set, val_set = tokens.select("train"), tokens.select("valid")

    start = 0
    if ckpt_path.exists():
        ckpt = read_checkpoint(ckpt_path)
        check_architecture(ckpt, architecture, ckpt_path)
        load_into(lm, ckpt["lm"], source=f"{ckpt_path} (lm)")
        if train_text:
            load_into(text_encoder, ckpt["text_encoder"], source=f"{ckpt_path} (text_encoder)")
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{ckpt_path}: optimiser state does not fit this model ({e}). Delete it to "
                                  "start over.") from None
        start = ckpt["step"]
        notice_changed_settings(ckpt, cfg, proc)
        say(proc, f"[lm] resuming from {ckpt_path} at step {start}")

    n_lm = sum(p.numel() for p in lm.parameters())
    n_text = sum(p.numel() for p in text_encoder.parameters())
    say(proc, f"[lm] LM '{cfg.lm}' {n_lm / 1e6:.2f}M parameters (+ text encoder {n_text / 1e6:.2f}M, "
              f"{'trained' if train_text else 'frozen'}); {len(train_set.codes)} train / {len(val_set.codes)} valid "
              f"clips; batch {cfg.batch_size} x {frames} frames ({cfg.segment_seconds:g} s); {proc.world} "
              f"process(es) on {proc.device}")
    entropy = unigram_entropy(tokens, codec.num_codebooks)
    say(proc, "[lm] unigram entropy per codebook (the loss of a context-free guess): "
              + " / ".join(f"{h:.2f}" for h in entropy))

    if start < cfg.max_steps:
        train_loop(cfg, model, optimizer, tokenizer, train_set, val_set, frames, start, architecture, proc)
    else:
        say(proc, f"[lm] already trained to step {start} (max_steps {cfg.max_steps})")
    if proc.main:
        # generate with windows no longer than the training windows: positions beyond them were never trained
        mg = MusicGen(tokenizer, text_encoder, codec, lm, context_frames=frames, guidance=cfg.guidance).eval()
        mg.save_pretrained(out)
        say(proc, f"[lm] exported the model to {out} (Hugging Face MusicGen layout)")
        write_samples(mg, val_set, cfg, out / "samples")
    return lm


def train_loop(cfg, model, optimizer, tokenizer, train_set, val_set, frames, start, architecture, proc):
    out = Path(cfg.out_dir)
    ckpt_path, log_path = out / "ckpt.pt", out / "log.jsonl"
    text_encoder, lm = model.text_encoder, model.lm
    ddp = (torch.nn.parallel.DistributedDataParallel(model, device_ids=[torch.device(proc.device)] if "cuda" in proc.device
                                                     else None) if proc.world > 1 else model)
    params = [p for p in model.parameters() if p.requires_grad]
    if proc.main:
        keep_log_until(log_path, start)

    def save(step):
        if proc.main:
            atomic_torch_save({"step": step, "lm": lm.state_dict(), "optimizer": optimizer.state_dict(),
                               "text_encoder": text_encoder.state_dict() if model.train_text else None,
                               "config": asdict(cfg), "architecture": architecture}, ckpt_path)

    model.train()
    if not model.train_text:
        text_encoder.eval()  # frozen: no dropout either
    bar = tqdm(total=cfg.max_steps, initial=start, desc="lm", dynamic_ncols=True, disable=not proc.main)
    t_last, s_last = time.time(), start
    with StopRequest() as stop:
        for step in range(start, cfg.max_steps):
            torch.manual_seed(step_seed(cfg.seed, step, 2 + proc.rank))  # dropout masks and input noise of this step
            lr = learning_rate(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            codes, ids, mask, drop = lm_batch(train_set, tokenizer, step, cfg, frames, proc)
            with autocast(proc.device):
                loss, per_codebook = ddp(codes, ids, mask, drop)
            loss.backward()  # under DDP this also averages the gradients over processes
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            # one small all-reduce: the global loss, and whether any process was asked to stop
            stats = all_mean(torch.cat([per_codebook.detach().float().cpu(), torch.tensor([float(stop.requested)])]),
                             proc)
            per_codebook, loss_value, stop_now = stats[:-1], float(stats[:-1].mean()), bool(stats[-1] > 0)
            if not (math.isfinite(loss_value) and math.isfinite(float(grad_norm))):
                bar.close()
                last = f"the last good checkpoint is {ckpt_path} (step {read_step(ckpt_path)})" \
                    if ckpt_path.exists() else "no checkpoint was saved yet"
                raise TrainingError(
                    f"Loss is {loss_value} (grad norm {float(grad_norm)}) at step {step}: training diverged and was "
                    f"stopped before the bad update; {last}, left untouched. Lower --lr (now {cfg.lr:g}) or raise "
                    f"--warmup_steps, then rerun to resume from it.")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            bar.update()
            bar.set_postfix(loss=f"{loss_value:.3f}", gn=f"{float(grad_norm):.2f}", lr=f"{lr:.1e}")
            if proc.main and (done % cfg.log_every == 0 or done == cfg.max_steps):
                now = time.time()
                log(log_path, step=done, loss=loss_value, per_codebook=per_codebook.tolist(),
                    grad_norm=float(grad_norm), lr=lr, cond_dropped=drop,
                    steps_per_s=(done - s_last) / max(now - t_last, 1e-9))
                t_last, s_last = now, done
            if done % cfg.eval_every == 0 or done == cfg.max_steps:
                val = validation_loss(model, val_set, tokenizer, cfg, frames, proc)
                if proc.main:
                    log(log_path, step=done, val_loss=float(val.mean()), val_per_codebook=val.tolist())
                say(proc, f"step {done}: train {loss_value:.3f} ({fmt(per_codebook)})  "
                          f"val {float(val.mean()):.3f} ({fmt(val)})  grad norm {float(grad_norm):.2f}  lr {lr:.1e}  "
                          f"{bar.format_dict['rate'] or 0:.2f} steps/s")
            if stop_now:
                save(done)
                bar.close()
                raise KeyboardInterrupt
            if done % cfg.ckpt_every == 0 or done == cfg.max_steps:
                save(done)
    bar.close()


def fmt(per_codebook):
    return "/".join(f"{x:.2f}" for x in per_codebook.tolist())


def read_step(path):
    return read_checkpoint(path).get("step")


def log(path, **row):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def keep_log_until(path, step):
    """On resume, drop log lines from after the checkpoint (steps that will be redone), so the log reads as one run."""
    if path.exists():
        rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(row + "\n" for row in rows))


def write_samples(mg, val_set, cfg, folder):
    """A few clips from held-out captions, one per style (the README's listening test)."""
    if cfg.samples <= 0:
        return
    by_style = {}
    for caption, style in zip(val_set.captions, val_set.styles):
        by_style.setdefault(style, caption)
    prompts = (list(by_style.values()) * cfg.samples)[: cfg.samples]
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    wav = mg.generate(prompts, duration=cfg.sample_seconds, seed=cfg.seed)  # [B, 1, N]
    for i, w in enumerate(wav):
        audio.write(folder / f"{i:02d}.wav", w, mg.sample_rate)
    (folder / "prompts.txt").write_text("".join(f"{i:02d}.wav\t{p}\n" for i, p in enumerate(prompts)))
    tqdm.write(f"[samples] {len(prompts)} x {cfg.sample_seconds:g} s in {time.time() - t0:.0f} s -> {folder}")


# ----------------------------------------------------------------------------------------------------------------
# The pipeline


def run(cfg, stage="lm"):
    """Run the stages up to `stage`, skipping those already done. Returns the trained LM (or None)."""
    proc = setup_processes(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if proc.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls where bf16 autocast does not apply
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    say(proc, f"[train] out_dir {cfg.out_dir}, device {proc.device}, seed {cfg.seed}")
    t0 = time.time()
    clips = stage_data(cfg, proc)
    if stage == "data":
        return None
    codec = stage_codec(cfg, clips, proc).to(proc.device)
    if stage == "codec":
        return None
    tokens = stage_tokens(cfg, codec, clips, proc)
    if stage == "tokens":
        return None
    lm = stage_lm(cfg, codec, tokens, proc)
    say(proc, f"[train] done in {(time.time() - t0) / 60:.1f} min")
    return lm


def main(argv=None):
    cfg, stage = parse_args(argv)
    try:
        run(cfg, stage)
        if dist.is_initialized():
            # Leave together: rank 0 still exports the model and writes samples after the last step, and a gloo
            # process that tears its group down while a peer is still connected can abort (SIGABRT) at exit.
            dist.barrier()
    except KeyboardInterrupt:
        print(f"\nInterrupted; rerun the same command to resume from the checkpoint in {cfg.out_dir}.",
              file=sys.stderr)
        sys.exit(130)
    except (CheckpointError, TrainingError, audio.AudioError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
