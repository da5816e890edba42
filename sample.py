"""
sample.py: text prompts (and optionally a melody, or a clip to continue) in, WAV files out.

    python sample.py --prompt "baroque harpsichord"                       # our trained model in out/small
    python sample.py --model facebook/musicgen-small --duration 8 \\
        --prompt "80s pop with synths" --prompt "lofi hip hop"            # one WAV per prompt, one batch
    python sample.py --unconditional                                      # no text (same as --prompt "")
    python sample.py --model facebook/musicgen-melody --prompt "jazz" --melody tune.wav --plot
    python sample.py --prompt "rock" --continue clip.wav --duration 12    # 12 s, starting with the clip
    python sample.py --prompt "ambient" --duration 60                     # longer than the model's 30 s: windows

Sampling follows the paper (§3.1): top-k 250 (of 2048 codes; a model with a smaller codebook keeps the same
share), temperature 1, classifier-free guidance 3, unless the model's generation_config.json says otherwise (ours
from train.py --config small: top-k 31, guidance 6; README). Every WAV gets a .json beside it with all the settings
(seed included: without --seed one is drawn and recorded, so any output can be made again on the same machine), and
--plot draws its spectrogram and chromagram (needs matplotlib). Nothing is downloaded: --model is a directory, or a
hub id already in the Hugging Face cache.
"""

import argparse
import json
import random
import time
from pathlib import Path

import torch

import audio
import chroma
from checkpoints import CheckpointError
from musicgen import MusicGen

DEFAULT_MODEL = "out/small"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", action="append", help="text description; repeat for several (one WAV each)")
    p.add_argument("--unconditional", action="store_true", help="no text at all (guidance then costs nothing)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="MusicGen directory (HF layout) or cached hub id")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of audio (including a --continue clip)")
    p.add_argument("--melody", help="audio file whose melody to follow (melody models)")
    p.add_argument("--continue", dest="continue_from", help="audio file to continue (the output starts with it)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: drawn at random and recorded)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance coefficient (1 = off); "
                   "default: the model's (3.0 for the released models, what train.py measured best for ours)")
    p.add_argument("--top-k", type=int, default=None,
                   help="sample among the k most likely tokens (0 = all); default: the model's (250 for the released "
                        "models, the same 12 %% share of a smaller codebook for ours)")
    p.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling mass; > 0 replaces top-k")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--window", type=float, default=None, help="seconds per generation window (default: the "
                   "model's training length, 30 s for the released models)")
    p.add_argument("--extend-stride", type=float, default=None, help="seconds each window moves on (default 0.6 "
                   "window); the rest of the window is context from the previous one")
    p.add_argument("--plot", action="store_true", help="also write a spectrogram + chromagram PNG per WAV")
    p.add_argument("--out", default="samples", help="output directory, or a .wav path for a single prompt")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def load(model):
    try:
        return MusicGen.from_pretrained(model)
    except CheckpointError as e:
        if model == DEFAULT_MODEL and not (Path(model) / "config.json").exists():
            raise SystemExit(
                f"No trained model in {DEFAULT_MODEL}. Train one with `python train.py` (it saves there), or pass\n"
                "--model with a Hugging Face MusicGen directory or cached hub id, e.g. after\n"
                "    huggingface-cli download facebook/musicgen-small --local-dir models/musicgen-small\n"
                "use --model models/musicgen-small."
            ) from None
        raise SystemExit(f"Could not load --model {model}:\n{e}") from None


def read_audio(path, what):
    try:
        return audio.read(path)  # (wav [C, N], sample rate)
    except Exception as e:  # soundfile's errors vary by format; name the file and the flag
        raise SystemExit(f"Could not read the {what} file {path}: {e}") from None


def output_paths(out, prompts):
    if out.endswith(".wav"):
        if len(prompts) > 1:
            raise SystemExit("--out names a single .wav file but there are several prompts; pass a directory.")
        return [Path(out)]
    names = ["_".join(p.split())[:40].replace("/", "-") or "unconditional" for p in prompts]
    return [Path(out) / f"{i:02d}_{name}.wav" for i, name in enumerate(names)]


def save_plot(path, wav, sample_rate, melody=None):
    """Spectrogram (dB) and chromagram of a generated clip [1, N], plus the melody's chroma if one was given."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no window, no global state
    except ImportError:
        audio.notice("--plot needs matplotlib (pip install matplotlib); skipping the pictures.")
        return False
    spec = torch.stft(wav[0], 1024, 256, window=torch.hann_window(1024), return_complex=True).abs()
    db = 20 * torch.log10(spec.clamp(min=1e-5))
    heard = audio.resample(wav, sample_rate, chroma.SAMPLE_RATE) if sample_rate != chroma.SAMPLE_RATE else wav
    panels = [("generated: chroma", chroma.chromagram(heard, chroma.SAMPLE_RATE, argmax=False)[0])]
    if melody is not None:
        panels.insert(0, ("melody: what the model reads (one-hot chroma)", chroma.chromagram(*melody)[0]))
    fig = Figure(figsize=(10, 2.6 * (1 + len(panels))), layout="tight")
    axes = fig.subplots(1 + len(panels), 1, squeeze=False)[:, 0]
    seconds = wav.shape[-1] / sample_rate
    axes[0].imshow(db.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=float(db.max()) - 80,
                   extent=(0, seconds, 0, sample_rate / 2000))
    axes[0].set(title="generated: spectrogram (dB)", ylabel="kHz")
    for ax, (title, c) in zip(axes[1:], panels):
        ax.imshow(c.T.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=1, interpolation="nearest",
                  extent=(0, c.shape[0] / chroma.FRAME_RATE, -0.5, 11.5))
        ax.set_yticks(range(12), chroma.PITCH_CLASSES)
        ax.set(title=title, ylabel="pitch class")
    axes[-1].set_xlabel("time (s)")
    fig.savefig(path, dpi=100)
    return True


def main(argv=None):
    args = parse_args(argv)
    if args.unconditional and args.prompt:
        raise SystemExit("--unconditional generates without text: drop the --prompt flags, or drop it.")
    prompts = [""] if args.unconditional or args.prompt is None else args.prompt
    seed = args.seed if args.seed is not None else random.randrange(2**31)  # recorded, so the run can be repeated
    mg = load(args.model).to(args.device)
    conditions = dict(window=args.window, extend_stride=args.extend_stride)
    if args.melody:
        melody, melody_sr = read_audio(args.melody, "--melody")
        conditions.update(melody=melody, melody_sample_rate=melody_sr)
    if args.continue_from:
        clip, clip_sr = read_audio(args.continue_from, "--continue")
        conditions.update(prompt_audio=clip, prompt_sample_rate=clip_sr)
    paths = output_paths(args.out, prompts)

    t0 = time.perf_counter()
    try:
        wav = mg.generate(prompts, duration=args.duration, cfg_coef=args.cfg, top_k=args.top_k, top_p=args.top_p,
                          temperature=args.temperature, seed=seed, progress=True, **conditions).cpu()
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    seconds = time.perf_counter() - t0

    generated = wav.shape[-1] / mg.sample_rate
    settings = {"model": str(args.model), "duration": generated, "seed": seed,
                "cfg": mg.guidance if args.cfg is None else args.cfg,
                "top_k": mg.top_k if args.top_k is None else args.top_k, "top_p": args.top_p,
                "temperature": args.temperature,
                "melody": args.melody, "continue": args.continue_from, "window": args.window,
                "extend_stride": args.extend_stride, "batch_size": len(prompts), "device": args.device,
                "sample_rate": mg.sample_rate, "seconds_taken": round(seconds, 3)}
    for path, prompt, clip in zip(paths, prompts, wav):
        path.parent.mkdir(parents=True, exist_ok=True)
        audio.write(path, clip, mg.sample_rate)
        path.with_suffix(".json").write_text(json.dumps(dict(prompt=prompt, **settings), indent=2) + "\n")
        print(f"wrote {path} (+ .json)")
        melody_plot = (melody, melody_sr) if args.melody else None
        if args.plot and save_plot(path.with_suffix(".png"), clip, mg.sample_rate, melody_plot):
            print(f"wrote {path.with_suffix('.png')}")
    print(f"{seconds:.1f} s for {len(prompts)} x {generated:.1f} s of audio on {args.device}: "
          f"{seconds / generated:.2f} s per generated second (batch of {len(prompts)}; seed {seed})")


if __name__ == "__main__":
    main()
