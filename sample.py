"""
sample.py: text prompts in, WAV files out.

    python sample.py --prompt "baroque harpsichord"                       # our trained model in out/small
    python sample.py --model facebook/musicgen-small --duration 8 \\
        --prompt "80s pop with synths" --prompt "lofi hip hop"            # one WAV per prompt
    python sample.py --prompt ""                                          # unconditional

Sampling follows the paper (§3.1): top-k 250, temperature 1, classifier-free guidance 3. The same --seed gives
the same music on the same machine. Nothing is downloaded: --model is a directory, or a hub id already in
the Hugging Face cache.
"""

import argparse
import time
from pathlib import Path

import torch

import audio
from checkpoints import CheckpointError
from musicgen import MusicGen

DEFAULT_MODEL = "out/small"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", action="append", help="text description; repeat for several (one WAV each)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="MusicGen directory (HF layout) or cached hub id")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of audio")
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible sampling")
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance coefficient (1 = off)")
    p.add_argument("--top-k", type=int, default=250, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling mass; > 0 replaces top-k")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--out", default="samples", help="output directory, or a .wav path for a single prompt")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args()


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


def output_paths(out, prompts):
    if out.endswith(".wav"):
        if len(prompts) > 1:
            raise SystemExit("--out names a single .wav file but there are several prompts; pass a directory.")
        return [Path(out)]
    names = ["_".join(p.split())[:40].replace("/", "-") or "unconditional" for p in prompts]
    return [Path(out) / f"{i:02d}_{name}.wav" for i, name in enumerate(names)]


def main():
    args = parse_args()
    prompts = args.prompt if args.prompt is not None else [""]
    mg = load(args.model).to(args.device)
    paths = output_paths(args.out, prompts)
    t0 = time.perf_counter()
    try:
        wav = mg.generate(prompts, duration=args.duration, cfg_coef=args.cfg, top_k=args.top_k, top_p=args.top_p,
                          temperature=args.temperature, seed=args.seed, progress=True)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    seconds = time.perf_counter() - t0
    for path, clip in zip(paths, wav):
        path.parent.mkdir(parents=True, exist_ok=True)
        audio.write(path, clip, mg.sample_rate)
        print(f"wrote {path}")
    generated = wav.shape[-1] / mg.sample_rate
    print(f"{seconds:.1f} s for {len(prompts)} x {generated:.1f} s of audio on {args.device}: "
          f"{seconds / generated:.2f} s per generated second (batch of {len(prompts)})")


if __name__ == "__main__":
    main()
