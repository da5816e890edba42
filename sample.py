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
share), temperature 1, classifier-free guidance 3, unless the model's generation_config.json says otherwise (train.py
writes the settings it trained and measured with there). Every WAV gets a .json beside it with all the settings
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

DEFAULT_MODEL = "out/small"  # where `python train.py` saves its final model


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
    # top-k: smaller is safer, larger more varied
    p.add_argument("--top-k", type=int, default=None, help="keep the k likeliest codes, 0 = all (default: the model's)")
    p.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling mass, e.g. 0.9; > 0 replaces top-k")
    p.add_argument("--temperature", type=float, default=1.0, help="below 1: safer, above 1: wilder; 0 = greedy")
    # music longer than the model was trained on: overlapping windows (musicgen.py, MusicGen.window_frames)
    # by default a window is the model's training length (30 s for the released models) and moves on by 0.6 of it;
    # the rest of each window is context from the one before: more context (a shorter stride) gives smoother joins
    # but takes more windows
    p.add_argument("--window", type=float, default=None, help="seconds per window (default: the model's training crop)")
    p.add_argument("--extend-stride", type=float, default=None, help="seconds a window moves on (default: 0.6 window)")
    # where the results go
    p.add_argument("--plot", action="store_true", help="also write a spectrogram + chromagram PNG per WAV")
    p.add_argument("--out", default="samples", help="output directory, or a .wav path for a single prompt")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def load(model):
    """MusicGen.from_pretrained, with the next step to take when there is no model yet."""
    try:
        return MusicGen.from_pretrained(model)
    except CheckpointError as e:
        if model == DEFAULT_MODEL and not (Path(model) / "config.json").exists():  # the user has not trained yet
            raise SystemExit(f"No trained model in {DEFAULT_MODEL}: train one with `python train.py`, or pass --model "
                             "with a MusicGen directory, e.g. `huggingface-cli download facebook/musicgen-small "
                             "--local-dir models/musicgen-small`, then --model models/musicgen-small.") from None
        raise SystemExit(f"Could not load --model {model}:\n{e}") from None


def read_audio(path, what):
    """(wav [C, N], sample rate) of an audio file, or a one-line error naming the file and the flag."""
    try:
        return audio.read(path)
    except Exception as e:  # soundfile's errors vary by format
        raise SystemExit(f"Could not read the {what} file {path}: {e}") from None


def output_paths(out, prompts):
    """One WAV per prompt: out itself if it names a .wav (one prompt), else out/NN_first_words_of_prompt.wav."""
    if out.endswith(".wav"):
        if len(prompts) > 1:
            raise SystemExit("--out names a single .wav file but there are several prompts; pass a directory.")
        return [Path(out)]
    names = ["_".join(p.split())[:40].replace("/", "-") or "unconditional" for p in prompts]  # safe file names
    return [Path(out) / f"{i:02d}_{name}.wav" for i, name in enumerate(names)]


def save_plot(path, wav, sample_rate, melody=None):
    """Spectrogram (dB) and chromagram of a generated clip [1, N], plus the melody's chroma if one was given:
    whether the music follows the melody shows as the same pitch classes lighting up in both chromagrams."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no window, no global state
    except ImportError:
        audio.notice("--plot needs matplotlib (pip install matplotlib); skipping the pictures.")
        return False
    spec = torch.stft(wav[0], 1024, 256, window=torch.hann_window(1024), return_complex=True).abs()  # [513, frames]
    db = 20 * torch.log10(spec.clamp(min=1e-5))  # 1024-point frames every 256 samples; the floor avoids log(0)
    # chroma.py works at 32 kHz, as the melody models' chroma does: a model of another rate is resampled first
    heard = audio.resample(wav, sample_rate, chroma.SAMPLE_RATE) if sample_rate != chroma.SAMPLE_RATE else wav
    # the generated chroma as energies (argmax=False): more readable than the one-hot the model reads
    panels = [("generated: chroma", chroma.chromagram(heard, chroma.SAMPLE_RATE, argmax=False)[0])]
    if melody is not None:
        panels.insert(0, ("melody: what the model reads (one-hot chroma)", chroma.chromagram(*melody)[0]))
    fig = Figure(figsize=(10, 2.6 * (1 + len(panels))), layout="tight")  # one row per panel, time on the x axis
    axes = fig.subplots(1 + len(panels), 1, squeeze=False)[:, 0]  # spectrogram on top, then the chromagrams
    axes[0].imshow(db.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=float(db.max()) - 80,
                   extent=(0, wav.shape[-1] / sample_rate, 0, sample_rate / 2000))  # 80 dB of range, axis in kHz
    axes[0].set(title="generated: spectrogram (dB)", ylabel="kHz")
    for ax, (title, panel) in zip(axes[1:], panels):  # panel: [frames, 12]
        ax.imshow(panel.T.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=1,
                  interpolation="nearest", extent=(0, panel.shape[0] / chroma.FRAME_RATE, -0.5, 11.5))
        ax.set_yticks(range(12), chroma.PITCH_CLASSES)  # C, C#, ..., B from the bottom
        ax.set(title=title, ylabel="pitch class")
    axes[-1].set_xlabel("time (s)")
    fig.savefig(path, dpi=100)
    return True


def main(argv=None):
    """Load the model, generate every prompt in one batch, write WAV + JSON (+ PNG) per prompt, report the speed."""
    args = parse_args(argv)
    if args.unconditional and args.prompt:  # contradictory: say which flag to drop
        raise SystemExit("--unconditional generates without text: drop the --prompt flags, or drop it.")
    prompts = [""] if args.unconditional or args.prompt is None else args.prompt  # "" = the null condition
    seed = args.seed if args.seed is not None else random.randrange(2**31)  # recorded, so the run can be repeated
    mg = load(args.model).to(args.device)  # T5, codec and LM in float32 (the released weights' dtype)
    # the conditions beyond text, (wav, sample rate) or (None, None): MusicGen.generate resamples and downmixes
    melody = read_audio(args.melody, "--melody") if args.melody else (None, None)
    clip = read_audio(args.continue_from, "--continue") if args.continue_from else (None, None)
    paths = output_paths(args.out, prompts)  # before the slow part: a bad --out fails at once

    # All prompts in one batch (one random stream: the same prompts and seed give the same files).
    t0 = time.perf_counter()
    try:
        wav = mg.generate(prompts, duration=args.duration, cfg_coef=args.cfg, top_k=args.top_k, top_p=args.top_p,
                          temperature=args.temperature, seed=seed, progress=True, melody=melody[0],
                          melody_sample_rate=melody[1], prompt_audio=clip[0], prompt_sample_rate=clip[1],
                          window=args.window, extend_stride=args.extend_stride).cpu()  # [B, 1, N]
    except ValueError as e:  # bad settings (a window too long, a prompt clip too long, ...): one line, no trace
        raise SystemExit(f"error: {e}") from None
    seconds = time.perf_counter() - t0

    # Every setting that made the clip, the model's defaults resolved, goes into a .json beside each WAV.
    generated = wav.shape[-1] / mg.sample_rate
    settings = {"model": str(args.model), "duration": generated, "seed": seed,
                "cfg": mg.guidance if args.cfg is None else args.cfg,
                "top_k": mg.top_k if args.top_k is None else args.top_k, "top_p": args.top_p,
                "temperature": args.temperature, "melody": args.melody, "continue": args.continue_from,
                "window": args.window, "extend_stride": args.extend_stride, "batch_size": len(prompts),
                "device": args.device, "sample_rate": mg.sample_rate, "seconds_taken": round(seconds, 3)}
    for path, prompt, out in zip(paths, prompts, wav):
        path.parent.mkdir(parents=True, exist_ok=True)  # --out may name a directory that does not exist yet
        audio.write(path, out, mg.sample_rate)
        path.with_suffix(".json").write_text(json.dumps(dict(prompt=prompt, **settings), indent=2) + "\n")
        print(f"wrote {path} (+ .json)")
        if args.plot and save_plot(path.with_suffix(".png"), out, mg.sample_rate, melody if args.melody else None):
            print(f"wrote {path.with_suffix('.png')}")
    # Speed as seconds of compute per second of music (a batch shares the cost: divide by its size per clip).
    print(f"{seconds:.1f} s for {len(prompts)} x {generated:.1f} s of audio on {args.device}: "
          f"{seconds / generated:.2f} s per generated second (batch of {len(prompts)}; seed {seed})")


if __name__ == "__main__":
    main()
