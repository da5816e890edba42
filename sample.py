"""
sample.py: text prompts (and optionally a melody, or a clip to continue) in, WAV files out.

    python sample.py --prompt "baroque harpsichord"                       # our trained model in out/small/model
    python sample.py --model facebook/musicgen-small --duration 8 \\
        --prompt "80s pop with synths" --prompt "lofi hip hop"            # one WAV per prompt, one batch
    python sample.py --unconditional                                      # no text (same as --prompt "")
    python sample.py --model facebook/musicgen-melody --prompt "jazz" --melody tune.wav --plot
    python sample.py --model facebook/musicgen-stereo-small --prompt "jazz"   # stereo WAVs (2 channels)
    python sample.py --prompt "rock" --continue clip.wav --duration 12    # 12 s, starting with the clip
    python sample.py --prompt "ambient" --duration 60                     # longer than the model's 30 s: windows
    python sample.py --model facebook/musicgen-small --download --prompt "jazz"   # fetch it into the HF cache first
    python sample.py --model facebook/musicgen-small --int8 --prompt "jazz"       # int8 weights: 1/4 of the bytes

Sampling follows the paper (§3.1): top-k 250 (of 2048 codes; a model with a smaller codebook keeps the same
share), temperature 1, classifier-free guidance 3, unless the model's generation_config.json says otherwise (train.py
writes the settings it trained and measured with there). Every WAV gets a .json beside it with all the settings
(seed included: without --seed one is drawn and recorded, so any output can be made again on the same machine), and
--plot draws its spectrogram and chromagram (needs matplotlib). Files are named after the prompt and the seed
(samples/00_baroque_seed1234.wav) and never overwritten: a taken name gets -2, -3... Ctrl-C keeps the music made so
far (its .json says "partial"). Nothing is downloaded unless --download is given: --model is a directory, or a hub id
already in the Hugging Face cache. Every setting is checked before the model loads.
"""

import argparse
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

# OpenMP threads that spin while they wait for work take the core from any other busy process, which slows both by
# an order of magnitude on a shared machine; waiting passively yields the core. Set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

import audio
import checkpoints
import chroma
import int8
from checkpoints import CheckpointError
from musicgen import Interrupted, MusicGen

DEFAULT_MODEL = "out/small/model"  # where `python train.py` exports its final model
INTERRUPTED = 130  # the exit status of a program stopped by Ctrl-C (128 + SIGINT)


def parse_args(argv=None):
    """The command line. Only --prompt is needed; every other flag has a default that suits a first try."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # what to generate
    p.add_argument("--prompt", action="append", help="text description; repeat for several (one WAV each)")
    p.add_argument("--unconditional", action="store_true", help="no text at all (guidance then costs nothing)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="MusicGen directory (HF layout) or cached hub id")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of audio (including a --continue clip)")
    p.add_argument("--melody", help="audio file whose melody to follow (melody models)")
    p.add_argument("--continue", dest="continue_from", help="audio file to continue (the output starts with it)")
    # how to sample (Paper §3.1); None = what the model's generation_config.json says
    p.add_argument("--seed", type=int, default=None, help="random seed (default: drawn at random and recorded)")
    # guidance: 1 = off; higher follows the prompt more closely, at some cost in variety
    p.add_argument("--cfg", type=float, default=None, help="guidance coefficient, 1 = off (default: the model's)")
    p.add_argument("--melody-cfg", type=float, default=None,
                   help="with --melody and a prompt: the melody's own guidance, --cfg then the text's (default: the "
                        "model's; else --cfg for both)")
    # top-k: smaller is safer, larger more varied
    p.add_argument("--top-k", type=int, default=None, help="keep the k likeliest codes, 0 = all (default: the model's)")
    p.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling mass, e.g. 0.9; > 0 replaces top-k")
    p.add_argument("--temperature", type=float, default=None,
                   help="below 1: safer, above 1: wilder; 0 = greedy (default: the model's)")
    # music longer than the model was trained on: overlapping windows (musicgen.py, MusicGen.window_frames)
    # by default a window is the model's training length (30 s for the released models) and moves on by 0.6 of it;
    # the rest of each window is context from the one before: more context (a shorter stride) gives smoother joins
    # but takes more windows
    p.add_argument("--window", type=float, default=None, help="seconds per window (default: the model's training crop)")
    p.add_argument("--extend-stride", type=float, default=None, help="seconds a window moves on (default: 0.6 window)")
    # where the results go
    p.add_argument("--plot", action="store_true", help="also write a spectrogram + chromagram PNG per WAV")
    p.add_argument("--out", default="samples", help="output directory, or a .wav path for a single prompt")
    # where and how it runs
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU, else Apple's MPS, else the CPU), cpu, cuda...")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the LM's dtype: bfloat16 (or float16) is for GPUs, about twice as fast there; the CPU is "
                        "fastest in float32. T5 and the codec stay in float32")
    # int8: a quarter of the bytes read per step, at a small cost in fidelity; the speed-up depends on the CPU
    # (RESULTS.md, "int8 weight-only generation")
    p.add_argument("--int8", action="store_true", help="the LM's weights in int8: less memory, faster on some CPUs")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: torch's, one per core); 1 is far faster on a busy machine")
    p.add_argument("--download", action="store_true", help="fetch a hub id --model that is not on disk (needs network)")
    return p.parse_args(argv)


def fail(problem):
    """Stop at once with one line, 'sample.py: <problem>; <fix>', and a non-zero exit status."""
    sys.exit(f"sample.py: {problem}")


def check_settings(args):
    """Every setting that can be wrong, checked before anything is loaded -> (prompts, device)."""
    if args.unconditional and args.prompt:  # contradictory: say which flag to drop
        fail("--unconditional generates without text; drop the --prompt flags, or drop --unconditional")
    if not (math.isfinite(args.duration) and args.duration > 0):  # "nan" and "inf" parse as floats too
        fail(f"--duration {args.duration} is not a length; pass a positive number of seconds, e.g. --duration 10")
    if args.temperature is not None and not args.temperature >= 0:  # "not >= 0": NaN fails too; None: the model's
        fail(f"--temperature {args.temperature} is negative; use 0 (greedy), 1 (plain sampling) or anything above 0")
    if args.top_k is not None and args.top_k < 0:  # None: the model's own default
        fail(f"--top-k {args.top_k} is negative; use 0 (every code) or a positive count, e.g. --top-k 250")
    if not 0 <= args.top_p <= 1:  # a probability mass: above 1 or below 0 means nothing
        fail(f"--top-p {args.top_p} is not a probability mass; use a value in [0, 1], e.g. 0.9 (0 = top-k instead)")
    # only the sign here: whether a window fits the model's positions is known once the model is loaded
    for flag, value in (("--window", args.window), ("--extend-stride", args.extend_stride)):
        if value is not None and not value > 0:
            fail(f"{flag} {value} is not a length; pass a positive number of seconds, or leave it out")
    if args.threads is not None and args.threads < 1:  # torch would fail later with a RuntimeError of its own
        fail(f"--threads {args.threads} is below 1; pass 1 or more, or leave it out for one per core")
    # below 1, guidance moves the logits away from the conditional ones (Paper §3.1's formula allows it), i.e. away
    # from the prompt: allowed, as an experiment, but probably not what was meant
    for flag, value in (("--cfg", args.cfg), ("--melody-cfg", args.melody_cfg)):
        if value is not None and value < 1:
            audio.notice(f"{flag} {value} is below 1: that steers away from the prompt (1 = no guidance, 3 = "
                         "default).")
    if args.melody_cfg is not None and not args.melody:
        fail("--melody-cfg guides by a melody; pass --melody FILE too, or drop --melody-cfg")
    if args.download and not checkpoints.is_hub_id(args.model):  # only a hub id has something to download
        fail(f"--download needs a hub id owner/name as --model, not {args.model}; e.g. facebook/musicgen-small")
    if args.plot:
        try:
            import matplotlib  # only to know it is there before the slow part
        except ImportError:
            fail("--plot needs matplotlib; pip install matplotlib, or drop --plot")
    try:  # auto: a CUDA GPU, else MPS, else the CPU; a device that is not here fails now, not after loading
        device = checkpoints.pick_device(args.device)
    except CheckpointError as e:
        fail(e)
    if args.int8 and device.type == "cpu" and not int8.HAS_CPU_KERNEL:  # the fallback is slower than float32 here
        fail(f"--int8 needs torch's CPU int8 kernel (torch 2.4 or later, this is {torch.__version__}); "
             "upgrade torch, or drop --int8")
    if args.int8 and device.type != "cpu":
        audio.notice(f"--int8 on {device}: the fast int8 kernel is a CPU one; here it saves memory, not time.")
    prompts = [""] if args.unconditional or args.prompt is None else args.prompt  # "" = the null condition
    return prompts, device


def check_out(out, prompts):
    """The folder the files go to (created; a file is tried in it) and the single .wav named by --out, or None."""
    path = Path(out)
    # we write WAV only; --out x.flac must not quietly become a folder named x.flac (an existing folder may have a dot)
    if path.suffix != ".wav" and path.suffix and not path.is_dir():
        fail(f"--out {out}: only .wav files are written; pass --out {path.with_suffix('.wav')}, or a directory")
    if path.suffix == ".wav" and len(prompts) > 1:  # one file cannot hold several clips
        fail(f"--out {out} names one .wav file but there are {len(prompts)} prompts; pass a directory")
    folder = path.parent if path.suffix == ".wav" else path  # where the files go either way
    # the only sure test of writability (permissions, a read-only disk, /proc) is to make the folder and a file in
    # it: now, rather than after minutes of generation
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()  # deleted on close: nothing is left behind
    except OSError as e:
        fail(f"cannot write to {folder} ({e.strerror}); pass --out with a folder you can write to")
    return folder, path if path.suffix == ".wav" else None


def load(args, device):
    """MusicGen.from_pretrained (after a download if asked for), with the next step to take when there is no model."""
    model = args.model
    # --download fetches only what is missing: a directory on disk or a cached copy is used as it is
    if args.download and not Path(model).is_dir() and checkpoints.find_in_hf_cache(model) is None:
        print(f"downloading {model} into {checkpoints.hf_cache_dir()}")  # gigabytes for the released models
        try:
            model = checkpoints.download(model)
        except CheckpointError as e:
            fail(e)
    try:
        return MusicGen.from_pretrained(model, device=device, dtype=getattr(torch, args.dtype),
                                        quantize="int8" if args.int8 else None)
    except CheckpointError as e:
        if model == DEFAULT_MODEL and not (Path(model) / "config.json").exists():  # the user has not trained yet
            fail(f"no trained model in {DEFAULT_MODEL}; train one with `python train.py`, or pass a MusicGen "
                 "directory or hub id, e.g. --model facebook/musicgen-small --download")
        fail(f"cannot load --model {model}: {e}")


def read_audio(path, what):
    """(wav [C, N], sample rate) of an audio file, or a one-line error naming the file and the flag."""
    try:
        return audio.read(path)
    except Exception as e:  # soundfile's errors vary by format
        fail(f"cannot read the {what} file {path}: {e}")


def file_name(index, prompt, seed):
    """NN_prompt_seedS.wav: the prompt in ASCII letters, digits, - and _ (no emoji, no : / ?), at most 40 of them."""
    # spaces become _, then everything else outside A-Z a-z 0-9 _ - goes: emoji, accents, and : / ? \ * that some
    # file systems refuse; 40 characters keep the name readable in a listing
    name = re.sub(r"[^A-Za-z0-9_-]", "", "_".join(prompt.split()))[:40]
    # NN keeps the files in the order of the prompts; a prompt of emoji only still gets a word
    return f"{index:02d}_{name or ('prompt' if prompt.strip() else 'unconditional')}_seed{seed}.wav"


def free_path(path):
    """path, else path-2.wav, path-3.wav...: the first whose WAV, JSON and PNG are all free (nothing is overwritten)."""
    # the same prompt and seed give the same name, and a second run must not overwrite the first: the seed in the
    # name tells runs apart, the -N suffix the rest
    candidate, n = path, 1
    while any(candidate.with_suffix(suffix).exists() for suffix in (".wav", ".json", ".png")):
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}.wav")
    return candidate


def generate(mg, prompts, args, seed, melody, clip):
    """All prompts in one batch -> (waveforms [B, C, N], C = 2 for a stereo model, partial): the whole clips, or
    after Ctrl-C the frames finished so far (partial = True). Ctrl-C before the first frame exits at once."""
    try:
        wav = mg.generate(prompts, duration=args.duration, cfg_coef=args.cfg, melody_coef=args.melody_cfg,
                          top_k=args.top_k, top_p=args.top_p,
                          temperature=args.temperature, seed=seed, progress=True, melody=melody[0],
                          melody_sample_rate=melody[1], prompt_audio=clip[0], prompt_sample_rate=clip[1],
                          window=args.window, extend_stride=args.extend_stride)  # [B, C, N]
        return wav.cpu(), False  # soundfile and the plots read numpy arrays, which live on the CPU
    except ValueError as e:  # settings that need the model to check (a window too long...): one line, no trace
        fail(e)
    except Interrupted as stop:  # Ctrl-C: the frames finished so far are music already paid for
        if stop.codes.shape[-1] == 0:  # stopped within the first K steps: not one whole frame to keep
            raise KeyboardInterrupt from None
        print(f"interrupted: keeping the {stop.codes.shape[-1] / mg.frame_rate:.1f} s generated so far",
              file=sys.stderr)
        with torch.inference_mode():  # the codes are inference tensors, made under MusicGen.generate's own
            return mg.decode_audio(stop.codes).cpu(), True


def main(argv=None):
    """Check the settings, load the model, generate every prompt in one batch, write WAV + JSON (+ PNG) per prompt."""
    args = parse_args(argv)
    prompts, device = check_settings(args)
    folder, single = check_out(args.out, prompts)  # before the slow part: a bad --out fails at once
    seed = args.seed if args.seed is not None else random.randrange(2**31)  # recorded, so the run can be repeated
    # the conditions beyond text, (wav, sample rate) or (None, None): MusicGen.generate resamples and downmixes
    melody = read_audio(args.melody, "--melody") if args.melody else (None, None)
    clip = read_audio(args.continue_from, "--continue") if args.continue_from else (None, None)
    if args.threads:  # torch's default, a thread per core, fights any other busy process for every core
        torch.set_num_threads(args.threads)
    mg = load(args, device)  # T5 and codec in float32, the LM in --dtype
    # the plan, before the slow part; then one bar counts the steps of all windows and estimates the time left
    print(f"generating {len(prompts)} x {args.duration:g} s with {args.model} on {device}, seed {seed} "
          "(Ctrl-C stops and keeps what is done)", flush=True)
    t0 = time.perf_counter()
    try:
        wav, partial = generate(mg, prompts, args, seed, melody, clip)
    except KeyboardInterrupt:  # before the first frame (or while T5 read the prompts): nothing to keep
        print("sample.py: interrupted before any music was made; nothing written", file=sys.stderr)
        sys.exit(INTERRUPTED)
    seconds = time.perf_counter() - t0

    # Every setting that made the clip, the model's defaults resolved, goes into a .json beside each WAV.
    generated = wav.shape[-1] / mg.sample_rate  # seconds made: less than --duration after a Ctrl-C
    melody_cfg = mg.melody_guidance if args.melody_cfg is None else args.melody_cfg
    settings = {"model": str(args.model), "duration": generated, "seed": seed, "partial": partial,
                "cfg": mg.guidance if args.cfg is None else args.cfg,
                "melody_cfg": melody_cfg if args.melody else None,  # None: guided by cfg, with the text
                "top_k": mg.top_k if args.top_k is None else args.top_k, "top_p": args.top_p,
                "temperature": mg.temperature if args.temperature is None else args.temperature,
                "melody": args.melody, "continue": args.continue_from,
                "window": args.window, "extend_stride": args.extend_stride, "batch_size": len(prompts),
                "int8": args.int8, "device": str(device), "threads": torch.get_num_threads(),
                "sample_rate": mg.sample_rate, "seconds_taken": round(seconds, 3), "dtype": args.dtype}
    for i, (prompt, out) in enumerate(zip(prompts, wav)):
        path = free_path(single or folder / file_name(i, prompt, seed))  # an explicit --out x.wav is not overwritten
        # written under a temporary name and renamed: a crash or a second Ctrl-C leaves no half-written file
        checkpoints.atomic_write(path, lambda tmp: audio.write(tmp, out, mg.sample_rate))
        text = json.dumps(dict(prompt=prompt, **settings), indent=2) + "\n"
        checkpoints.atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text))
        print(f"wrote {path} (+ .json)")
        if args.plot:
            chroma.save_clip_png(path.with_suffix(".png"), out, mg.sample_rate, melody if args.melody else None)
            print(f"wrote {path.with_suffix('.png')}")
    # Speed as seconds of compute per second of music (a batch shares the cost: divide by its size per clip).
    print(f"{seconds:.1f} s for {len(prompts)} x {generated:.1f} s of audio on {device}: "
          f"{seconds / generated:.2f} s per generated second (batch of {len(prompts)}; seed {seed})")
    if partial:  # the shell and scripts learn that the run was stopped, though its files are fine
        sys.exit(INTERRUPTED)


if __name__ == "__main__":
    main()
