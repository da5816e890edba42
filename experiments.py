"""
experiments.py: three open-ended classroom experiments, each a question the paper answers at full scale, asked
again at the scale of a laptop. EXERCISES.md says what to look for; the answers are yours to write down.

    python experiments.py patterns        # delay vs parallel codebook pattern at equal steps (Paper §2.2, Table 4)
    python experiments.py codebooks       # codec quality from 1..K codebooks: quality vs bitrate (Paper §2.1)
    python experiments.py text-encoder    # pretrained T5 vs a T5 trained from scratch (Paper §2.3, Appendix A.2)

Each prints a markdown table and its question (--table also writes it to a file), and reads what `python train.py`
left in out/small when it is there: the token cache, the codec, the trained configuration. Without a token cache,
`patterns` builds a tiny synthetic one itself, so it runs on a fresh clone too.

The graded exercises (write a piece of MusicGen, run its tests) are in exercises.py.
"""

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path

import torch

import data
import evaluate
import musicgen
import train
from checkpoints import find_in_hf_cache
from corpus import CLIPS_PER_STYLE
from encodec_lite import EncodecLite


def emit(lines, path, caption):
    """Print a markdown table (and its caption); also write it to `path` if given."""
    text = "\n".join(lines + ["", caption])
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
        print(f"wrote {path}")


# ----------------------------------------------------------------------------------------------------------------
# Experiment 1: delay vs parallel pattern at equal training steps (Paper §2.2, Table 4)
#
# The paper compares ways of laying the K codebooks of a frame out in time. The parallel pattern predicts all K
# codes of a frame in one step (T + 1 steps for T frames), so codebook k cannot see codebook k-1 of the same frame.
# The delay pattern shifts codebook k by k steps (T + K steps): when codebook k is predicted, codebooks 0..k-1 of
# that frame are already known. Table 4 finds delay close to the (much slower) flattened pattern and parallel worse.
# Here both patterns train the same unconditional LM from the same initial weights on the same batches; only the
# layout differs (LM.compute_loss(codes, pattern=...)), so any gap in validation loss is the pattern's.


def experiment_tokens(args):
    """The token cache to train on: --tokens if it exists, else a tiny synthetic one built by train.py's stages."""
    path = Path(args.tokens)
    # The real token cache (tokens.pt of `python train.py`) is the codes of the built-in corpus under the trained
    # codec: the same data the LM of the main run learns from.
    if not path.exists():
        out = Path(args.out_dir) / "synthetic-tokens"
        print(f"{path} not found (train with `python train.py` to make it): using the synthetic corpus, tokenized "
              f"by a quickly trained tiny codec, in {out}")
        # train.py's "tiny" configuration, stopped after the "tokens" stage: a codec trained for a few steps
        # on the synthetic corpus, and every clip encoded with it. samples=0: no audio examples are written.
        train.run(replace(train.CONFIGS["tiny"], out_dir=str(out), cache_dir=args.cache_dir, samples=0), "tokens")
        path = out / "tokens.pt"
    # A TokenSet saved as a plain dict: weights_only=True loads it without running any pickled code.
    return data.TokenSet(**torch.load(path, map_location="cpu", weights_only=True))


def experiment_patterns(args):
    """Train one LM per pattern for --steps steps; print each one's validation cross-entropy per codebook."""
    torch.manual_seed(args.seed)
    tokens = experiment_tokens(args)
    train_set, val_set = tokens.select("train"), tokens.select("valid")  # held-out clips score the two LMs
    # The LM is sized to the token cache: its K codebooks, and a card N that covers every code that occurs.
    K, card = tokens.codes[0].shape[0], int(max(c.max() for c in tokens.codes)) + 1
    frames = min(args.frames, min(c.shape[-1] for c in tokens.codes))  # a window no clip is too short for
    # text_dim is a placeholder: the LM is trained unconditionally (compute_loss with no condition).
    config = musicgen.lm_config(args.lm, num_codebooks=K, card=card, text_dim=16, dropout=0.0)
    rows = []
    for pattern in ("delay", "parallel"):
        torch.manual_seed(args.seed)  # the same initial weights and the same batches for both patterns
        lm = musicgen.LM(config).train()
        # AdamW with the paper's betas (§3.1), a constant learning rate: short runs, no schedule to tune.
        optimizer = torch.optim.AdamW(lm.parameters(), lr=args.lr, betas=(0.9, 0.95))
        for step in range(args.steps):
            codes, _, _ = data.token_batch(train_set, step, args.batch, frames, seed=args.seed)  # [B, K, frames]
            loss, _ = lm.compute_loss(codes, pattern=pattern)  # unconditional: condition None
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        lm.eval()
        with torch.no_grad():
            # Validation batches come from another seed, so they are not the training windows of the same steps.
            val = sum(lm.compute_loss(data.token_batch(val_set, i, args.batch, frames, seed=args.seed + 1)[0],
                                      pattern=pattern)[1] for i in range(args.eval_batches)) / args.eval_batches
        rows.append((pattern, "T + K" if pattern == "delay" else "T + 1", val.tolist()))  # val: [K]
    # One row per pattern: its cost in steps for T frames, and its loss per codebook and on average.
    lines = ["| pattern  | steps per T frames | train steps | val CE per codebook (nats) | mean  |",
             f"|----------|--------------------|-------------|{'-' * 28}|-------|"]
    for pattern, steps, ce in rows:
        lines.append(f"| {pattern:<8} | {steps:<18} | {args.steps:<11} | {' '.join(f'{x:.3f}' for x in ce):<26} "
                     f"| {sum(ce) / len(ce):.3f} |")
    emit(lines, args.table, f"LM '{args.lm}', K={K}, N={card}, windows of {frames} frames, batch {args.batch}, "
                            "unconditional. Paper Table 4: delay beats parallel. Same ordering here?")


# ----------------------------------------------------------------------------------------------------------------
# Experiment 2: how many codebooks does the codec need? (Paper §2.1: quality vs bitrate)
#
# Residual vector quantization refines the latent stage by stage: codebook 1 codes the latent, codebook 2 what
# codebook 1 left over, and so on. Decoding only the first k stages therefore gives a valid, coarser reconstruction
# at k * log2(N) * frame rate bits per second. The curve of quality against bitrate shows what each extra codebook
# buys, and why the LM has to model all K of them.


def experiment_codebooks(args):
    """Encode held-out clips once, decode them from the first k codebooks for every k; print quality per k."""
    codec = EncodecLite.from_pretrained(args.model).eval()  # an EnCodec directory or a whole MusicGen one
    # The held-out clips of the corpus the codec was trained on: audio it has never reconstructed before.
    clips = data.select(data.load_corpus(args, codec.sample_rate), "valid")[: args.clips]
    if not clips:
        sys.exit(f"error: the corpus {args.data!r} has no held-out clips; pass --data with a corpus that has some.")
    wav = torch.cat([w for _, w in evaluate._clip_batches(clips, codec.sample_rate)])  # [B, 1, N]
    # One row per k, from the coarsest reconstruction (one codebook) to the full codec.
    lines = ["| codebooks | kbit/s | SI-SNR (dB) | mel distance (dB) |",
             "|-----------|--------|-------------|-------------------|"]
    points = []
    with torch.no_grad():
        codes = codec.encode(wav)  # [B, K, T]: encoded once, with all K codebooks
        for k in range(1, codec.num_codebooks + 1):
            rec = codec.decoder(codec.quantizer.decode(codes[:, :k]))  # the latent of the first k stages only
            # SI-SNR measures the waveform (phase included); the mel distance is closer to what the ear hears.
            snr = float(evaluate.si_snr(wav, rec).mean())
            mel = float(evaluate.mel_distance(wav, rec, codec.sample_rate).mean())
            kbps = k * math.log2(codec.codebook_size) * codec.frame_rate / 1000  # k codes of log2(N) bits a frame
            lines.append(f"| {k:<9} | {kbps:<6.2f} | {snr:<11.2f} | {mel:<17.2f} |")
            points.append((kbps, snr, mel))
    emit(lines, args.table, f"{len(clips)} held-out clips, codec {args.model} ({codec.frame_rate:g} frames/s, "
                            f"N = {codec.codebook_size}). Where do extra codebooks stop paying?")
    if args.png:
        plot_codebooks(points, args.png)


def plot_codebooks(points, path):
    """SI-SNR and mel distance against kbit/s, side by side, as a PNG."""
    from matplotlib.figure import Figure  # optional dependency, only for --png

    # matplotlib's Figure directly, without pyplot: no window, no GUI backend, works on a server.
    fig = Figure(figsize=(8, 3), layout="tight")
    left, right = fig.subplots(1, 2)
    kbps = [p[0] for p in points]
    left.plot(kbps, [p[1] for p in points], "o-")
    left.set(xlabel="kbit/s", ylabel="SI-SNR (dB)", title="higher is better")
    right.plot(kbps, [p[2] for p in points], "o-")
    right.set(xlabel="kbit/s", ylabel="mel distance (dB)", title="lower is better")
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


# ----------------------------------------------------------------------------------------------------------------
# Experiment 3: pretrained T5 vs a T5 trained from scratch (Paper §2.3, Appendix A.2)
#
# MusicGen conditions on a frozen, pretrained T5: its words arrive already meaning something. With captions as
# simple and regular as ours, a small text encoder trained from scratch with the LM might do as well. Two training
# runs that differ only in the text encoder answer it: their validation loss, and how often a style classifier
# recognises the style each one was asked for.

T5_HOWTO = """No pretrained T5 found (pass --t5 DIR, or put t5-base in the Hugging Face cache). On a machine online:
    pip install huggingface_hub
    huggingface-cli download google-t5/t5-base config.json model.safetensors spiece.model --local-dir models/t5-base
then copy models/t5-base here and run:
    python experiments.py text-encoder --t5 models/t5-base"""


def corpus_args(config):
    """The fields data.load_corpus reads, taken from a training configuration (the corpus it trained on)."""
    return argparse.Namespace(data=config.data, cache_dir=config.cache_dir, clip_seconds=config.clip_seconds,
                              clips_per_style=config.clips_per_style, seed=config.seed)


def experiment_text_encoder(args):
    """Train the LM twice (pretrained T5, T5 from scratch) and print each run's validation loss and style score."""
    # The pretrained T5 cannot be downloaded from here: it must be on disk already (see T5_HOWTO).
    t5 = args.t5 or find_in_hf_cache("google-t5/t5-base") or find_in_hf_cache("t5-base")
    if not t5:
        print(T5_HOWTO)
        return
    # Both runs share one configuration (samples=0: no audio examples); only the text encoder differs.
    base = replace(train.CONFIGS[args.config], max_steps=args.steps, samples=0, cache_dir=args.cache_dir,
                   seed=args.seed)
    trained_codec = Path(base.out_dir) / "codec"
    if trained_codec.is_dir():  # reuse the codec (and corpus) of the main run instead of training two more
        base = replace(base, codec=str(trained_codec))
    rows = []
    for label, t5_dir in (("pretrained (frozen)", str(t5)), ("from scratch", "")):  # t5 "": train.py's own T5
        out_dir = Path(args.out_dir) / f"text-encoder-{'pretrained' if t5_dir else 'scratch'}"
        config = replace(base, t5=t5_dir, out_dir=str(out_dir))
        train.run(config)  # every stage; a finished run is skipped, so a rerun only evaluates again
        model = musicgen.MusicGen.from_pretrained(Path(config.out_dir) / "model")  # train.py exports it there
        clips = data.load_corpus(corpus_args(config), model.sample_rate)
        ce = evaluate.validation_loss(model, data.select(clips, "valid"), config.segment_seconds)["val_ce"]
        row = [label, f"{sum(ce) / len(ce):.3f}"]  # mean over the K codebooks
        if args.per_style:  # generate clips for every style's prompts and let evaluate.py's classifier judge them
            judged = evaluate.prompt_following(model, clips, args.per_style, config.segment_seconds, config.seed)
            row.append(f"{100 * judged['accuracy_generated']:.0f} % (chance {100 * judged['chance']:.0f} %)")
        rows.append(row)
    # The table, one row per text encoder: the CE says how well each LM predicts held-out codes, the style column
    # whether the music follows the words.
    lines = ["| text encoder | val CE (nats) | style of generated clips |", "|---|---|---|"]
    lines += [f"| {' | '.join(r + ['-'] * (3 - len(r)))} |" for r in rows]  # "-" where the judge was skipped
    emit(lines, args.table, f"config {args.config}, {args.steps} LM steps each. Paper A.2: does T5's pretraining help "
                            "when the captions are this simple?")


# ----------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    """One subcommand per experiment; its `fn` runs it. Defaults are the laptop settings EXERCISES.md describes."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = parser.add_subparsers(dest="experiment", required=True)
    # The options every experiment takes, in a parent parser that each subcommand inherits.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--table", help="also write the result table to this file")
    common.add_argument("--cache-dir", default="cache", help="rendered corpora (as train.py)")
    common.add_argument("--seed", type=int, default=0, help="seeds the weights, the batches, the corpus")

    pat = kinds.add_parser("patterns", parents=[common], help="delay vs parallel pattern at equal training steps")
    pat.add_argument("--tokens", default="out/small/tokens.pt", help="token cache of train.py (else: synthetic)")
    pat.add_argument("--out-dir", default="out/experiments", help="where a synthetic token cache goes")
    pat.add_argument("--lm", default="tiny", help="LM preset (musicgen.PRESETS), resized to the codec's K and N")
    pat.add_argument("--steps", type=int, default=300, help="training steps per pattern")
    pat.add_argument("--batch", type=int, default=16)
    pat.add_argument("--frames", type=int, default=100, help="training window in frames")
    pat.add_argument("--lr", type=float, default=2e-3)
    pat.add_argument("--eval-batches", type=int, default=4)
    pat.set_defaults(fn=experiment_patterns)

    cb = kinds.add_parser("codebooks", parents=[common], help="codec quality when decoding the first k codebooks")
    cb.add_argument("--model", default="out/small/model", help="a MusicGen or EnCodec directory")
    cb.add_argument("--data", default="builtin", help="builtin, synthetic or a folder (as used for training)")
    cb.add_argument("--clip-seconds", type=float, default=10.0)
    cb.add_argument("--clips-per-style", type=int, default=CLIPS_PER_STYLE, help="as used for training")
    cb.add_argument("--clips", type=int, default=16, help="held-out clips to score")
    cb.add_argument("--png", help="also plot SI-SNR and mel distance against kbit/s (needs matplotlib)")
    cb.set_defaults(fn=experiment_codebooks)

    te = kinds.add_parser("text-encoder", parents=[common], help="pretrained T5 vs T5 trained from scratch")
    te.add_argument("--t5", help="a T5 directory (default: t5-base from the Hugging Face cache)")
    te.add_argument("--config", default="small", help="train.py config for both runs")
    te.add_argument("--steps", type=int, default=700, help="LM training steps of each run")
    te.add_argument("--out-dir", default="out/experiments")
    te.add_argument("--per-style", type=int, default=4, help="generated clips per style for the judge (0: skip)")
    te.set_defaults(fn=experiment_text_encoder)
    return parser.parse_args(argv)


def main(argv=None):
    """python experiments.py EXPERIMENT [options]; also called by the tests with a list of arguments."""
    args = parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
