"""
exercises.py: classroom exercises cut out of the real code, graded by the project's own tests.

Students write the core pieces of MusicGen themselves (the delay pattern, guidance, top-k, the chroma
bottleneck, ...), then check them with the same tests that keep this project correct, and listen to the result.
Nothing here holds a second copy of a solution: each piece lives once, in its file, between two marker lines

    # --- exercise: NAME ---
    ...the real code...
    # --- end exercise: NAME ---

and `make` writes a copy of the project where that code is replaced by a stub (the instructions as a comment and
`raise NotImplementedError`). The table EXERCISES below is the single source for every command and for EXERCISES.md.

    python exercises.py list                              # name, file, paper section, one line each
    python exercises.py make ~/hw                         # a student copy with every exercise stubbed
    python exercises.py make ~/hw --only delay_pattern    # ... or only some of them
    python exercises.py check delay_pattern               # run its grading tests (in the copy or here): pass/fail
    python exercises.py check                             # every exercise, one pytest run
    python exercises.py experiment patterns               # open-ended experiments, see EXERCISES.md
    python exercises.py experiment codebooks
    python exercises.py experiment text-encoder
"""

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
COPY_NOTE = ".student_copy"  # written by `make`: which exercises a copy has stubbed (the meta-tests skip there)


@dataclass(frozen=True)
class Exercise:
    name: str
    file: str  # where its marked region(s) are
    paper: str  # the section to read first
    summary: str  # one line for `list`
    instructions: str  # what to write: goes into the stub as a comment
    hint: str  # printed when the check fails
    tests: tuple  # pytest node ids of the grading tests (cheap unit tests, no ../shared needed)


MG, CH, T5, EN = "tests/test_musicgen.py::", "tests/test_chroma.py::", "tests/test_t5_encoder.py::", "tests/test_encodec.py::"
EX = "tests/test_exercises.py::"

EXERCISES = {e.name: e for e in [
    Exercise(
        "delay_pattern", "musicgen.py", "§2.2, eq. (6)",
        "the delay interleaving of the K codebooks, and its inverse",
        "delay_pattern: codes [B, K, T] -> seq [B, K, T + K], filled with `special` except seq[:, k, s] = "
        "codes[:, k, s - 1 - k] for 0 <= s - 1 - k < T (step 0 is all special; see the diagram above). "
        "revert_delay: the inverse, seq [B, K, S] -> codes [B, K, S - K].",
        "Codebook k starts at step k + 1: one slice assignment per codebook is enough (codes.new_full makes the "
        "special-filled tensor), and revert_delay reads the same slices back.",
        (MG + "test_delay_pattern_layout_matches_the_diagram", MG + "test_delay_and_parallel_revert_are_identities"),
    ),
    Exercise(
        "valid_target_mask", "musicgen.py", "§2.2, §2.4",
        "which delayed targets the training loss may use",
        "Return a bool tensor [K, T] on `device`: True where target (k, t) of a T-frame training crop is a real "
        "token. Training feeds delayed steps 0..T-1 and predicts steps 1..T; among those, codebook k is still the "
        "special token at its first k targets.",
        "Row k is False for t < k and True from t = k on: compare a [1, T] arange with a [K, 1] arange "
        "(broadcasting).",
        (MG + "test_valid_target_mask_matches_the_pattern", MG + "test_loss_ignores_special_and_invalid_targets"),
    ),
    Exercise(
        "sinusoids", "musicgen.py", "§2.4",
        "the sinusoidal position embedding of the steps, as released",
        "positions [S] (integers) -> [S, dim] float32: the first dim/2 columns cos(p * f_i), the last dim/2 "
        "sin(p * f_i), i = 0..dim/2 - 1, with f_i = 10000^(-i / (dim/2 - 1)), computed as "
        "exp(-i * log(10000) / (dim/2 - 1)) in float32 on the device of `positions`.",
        "Mind the divisor dim/2 - 1 (not dim/2) and the two halves (not interleaved): "
        "phase = positions[:, None] * freqs[None, :], then torch.cat([cos, sin], dim=1).",
        (EX + "test_sinusoids_match_transformers", EX + "test_lm_matches_transformers_decoder"),
    ),
    Exercise(
        "causal_kv_cache", "musicgen.py", "§2.4, §3.1",
        "the causal mask and the key/value cache of fast decoding",
        "causal_args: the mask keyword arguments of F.scaled_dot_product_attention for n new queries at positions "
        "offset..offset+n-1 over keys 0..offset+n-1: {'is_causal': True} for a first chunk (offset 0, n > 1), {} "
        "for a single query, else {'mask': bool [n, offset + n], True = may attend}. "
        "LayerCache.update: write keys/values [B, H, n, D/H] at steps offset..offset+n-1 of self.keys/self.values "
        "[B, H, max_steps, D/H] (allocated on the first call) and return everything cached so far, "
        "[B, H, offset + n, D/H] each.",
        "Query i sits at position offset + i and may see keys 0..offset + i: torch.ones(n, offset + n).tril(offset). "
        "Allocate with keys.new_empty(B, H, self.max_steps, Dh) so that dtype and device follow the layer.",
        (MG + "test_cached_decoding_equals_full_forward", MG + "test_reference_and_fast_generation_give_the_same_tokens",
         EX + "test_lm_matches_transformers_decoder"),
    ),
    Exercise(
        "guidance", "musicgen.py", "§3.1",
        "classifier-free guidance on the logits (cond vs null condition)",
        "logits [2B, ...]: the first B rows were computed with the text, the last B with the null condition. "
        "Return [B, ...] = uncond + cfg_coef * (cond - uncond).",
        "logits.chunk(2) splits cond from uncond. At cfg_coef 1 you must get exactly the conditional logits, at 0 "
        "the unconditional ones.",
        (MG + "test_guidance_one_equals_the_conditional_logits", EX + "test_guidance_matches_transformers"),
    ),
    Exercise(
        "top_k", "musicgen.py", "§3.1",
        "top-k filtering of the logits before sampling (the paper: k = 250)",
        "Inside sample_tokens: `logits` [B, K, N] are already divided by the temperature. Keep the top_k largest "
        "logits of every row and set all the others to -inf, so that the softmax below spreads the probability "
        "over those k tokens only. top_k may be larger than N.",
        "logits.topk(min(top_k, N), dim=-1).values[..., -1:] is the k-th largest value of each row; masked_fill "
        "everything below it with float('-inf').",
        (EX + "test_top_k_matches_transformers", MG + "test_reference_and_fast_generation_give_the_same_tokens"),
    ),
    Exercise(
        "chroma_filter_bank", "chroma.py", "§2.3, §3.1",
        "the chroma filter bank: FFT bins -> 12 pitch classes (melody conditioning)",
        "Return weights [12, n_fft // 2 + 1] float32 (librosa's design, tuning 0), computed in float64 over all n_fft "
        "bins. Bin j >= 1 (frequency j * sample_rate / n_fft) sits at 12 * log2(f / 27.5) semitones above A0; bin 0 "
        "(DC) at bin 1's position minus 18. Width of a bin: max(next bin's position - its own, 1); the last bin 1. "
        "For pitch class c = 0..11, d = position - c wrapped into [-6, 6); weight exp(-0.5 * (2 d / width)^2). "
        "Normalise every bin (column) to unit L2 norm over the 12 classes, multiply by the octave weighting "
        "exp(-0.5 * ((position / 12 - 5) / 2)^2), roll the rows by -3 so that row 0 is C, keep columns "
        "0..n_fft // 2.",
        "numpy broadcasting: positions [n_fft] against classes [12, 1]. The test compares with transformers' "
        "audio_utils.chroma_filter_bank to 1e-6, so the wrap must be np.remainder(d + 6 + 120, 12) - 6 and "
        "everything float64 until the end.",
        (CH + "test_filter_bank_matches_transformers", CH + "test_sine_gives_its_pitch_class"),
    ),
    Exercise(
        "chroma_bottleneck", "chroma.py", "§2.3",
        "the argmax bottleneck: only the loudest pitch class of each frame",
        "chroma [..., 12] -> float one-hot [..., 12] on the loudest pitch class of each frame. Exact ties and "
        "all-zero (silent) frames go to the first class, C.",
        "argmax(dim=-1) already returns the first maximal index; torch.nn.functional.one_hot(index, N_CHROMA) "
        "gives integers: make them float.",
        (CH + "test_sine_gives_its_pitch_class", CH + "test_silence_is_C_without_nan",
         CH + "test_fit_length_loops_then_cuts"),
    ),
    Exercise(
        "relative_position_bucket", "t5_encoder.py", "§2.3 (T5)",
        "the relative-position buckets of the T5 text encoder",
        "relative_position (key - query, integers) -> bucket ids of the same shape (bidirectional). Distances > 0 "
        "use the upper half of the buckets (offset half = num_buckets // 2), the others the lower half. Within a "
        "half, |d| < exact = half // 2 is its own bucket; a larger |d| gets exact + floor(log(|d| / exact) / "
        "log(max_distance / exact) * (half - exact)), computed in float32 and capped at half - 1.",
        "Compute both branches for every entry and choose with torch.where(n < exact, n, far); clamp n to at least "
        "`exact` before the log so that small distances give no log(0). The docstring's table is what the test "
        "checks first.",
        (T5 + "test_relative_position_buckets_match_table_and_hf",),
    ),
    Exercise(
        "rvq_encode", "encodec_lite.py", "§2.1",
        "the residual VQ loop: a latent frame -> K codes",
        "residual [B*T, D] holds the encoder latent, one row per frame. For each of the first num_codebooks "
        "layers: pick the nearest code of every row (layer.nearest), subtract its vector (layer.lookup) from the "
        "residual, and append the indices (a [B*T] tensor) to the list `codes`.",
        "Stage q quantises what stages 0..q-1 left over: subtract after every stage, and pass the updated residual "
        "to the next one, not the original latent.",
        (EN + "test_latent_made_of_codebook_entries_is_recovered_exactly", EN + "test_error_falls_as_codebooks_are_added"),
    ),
]}


# ----------------------------------------------------------------------------------------------------------------
# Marked regions and stubs

START = re.compile(r"^(?P<indent>[ \t]*)# --- exercise: (?P<name>[\w-]+) ---[ \t]*$")
END = re.compile(r"^[ \t]*# --- end exercise: (?P<name>[\w-]+) ---[ \t]*$")


class ExerciseError(ValueError):
    pass


def regions(lines, name, path="file"):
    """(start, end, indent) of every region of exercise `name`: lines[start] and lines[end] are its markers."""
    found, open_at = [], None
    for i, line in enumerate(lines):
        start, end = START.match(line), END.match(line)
        if start and start["name"] == name:
            if open_at is not None:
                raise ExerciseError(f"{path}:{i + 1}: exercise '{name}' starts again before its end marker.")
            open_at, indent = i, start["indent"]
        elif end and end["name"] == name:
            if open_at is None:
                raise ExerciseError(f"{path}:{i + 1}: end marker of '{name}' without a start marker.")
            found.append((open_at, i, indent))
            open_at = None
    if open_at is not None:
        raise ExerciseError(f"{path}:{open_at + 1}: exercise '{name}' has no '# --- end exercise: {name} ---' line.")
    return found


def has_markers(exercise, root=ROOT):
    path = Path(root) / exercise.file
    return path.exists() and bool(regions(path.read_text().splitlines(), exercise.name, path))


def stub_lines(exercise, indent):
    """What replaces a region: the instructions as comments, then NotImplementedError (same indentation)."""
    width = max(60, 110 - len(indent))
    text = [f"EXERCISE {exercise.name} (Paper {exercise.paper}). {exercise.instructions}",
            f"Check: python exercises.py check {exercise.name}"]
    comments = [f"{indent}# {line}" for para in text for line in textwrap.wrap(para, width)]
    message = f"exercise {exercise.name}: not written yet (see the comment above; EXERCISES.md)"
    return comments + [f"{indent}raise NotImplementedError({message!r})"]


def stub_text(text, exercise, path="file"):
    """The file's text with every region of `exercise` replaced by its stub (marker lines kept)."""
    lines = text.split("\n")
    found = regions(lines, exercise.name, path)
    if not found:
        raise ExerciseError(
            f"{path} has no region for exercise '{exercise.name}': add the two lines "
            f"'# --- exercise: {exercise.name} ---' and '# --- end exercise: {exercise.name} ---' around its code.")
    for start, end, indent in reversed(found):  # from the bottom up, so earlier line numbers stay valid
        lines[start + 1 : end] = stub_lines(exercise, indent)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# list / make / check


def project_files(root=ROOT):
    """The files a student copy gets: git's tracked (and not ignored) files, else the .py/.md/requirements files."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, text=True, check=True).stdout.split("\n")
        files = [f for f in out if f and (Path(root) / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        files = []
    if not files:  # not a git checkout (e.g. a student copy): the project's own kinds of files
        patterns = ["*.py", "*.md", "requirements*.txt", "tests/*.py", ".ci/*", ".gitignore"]
        files = sorted({str(p.relative_to(root)) for pat in patterns for p in Path(root).glob(pat) if p.is_file()})
    return sorted(set(files) - {COPY_NOTE})


def selected(names):
    unknown = [n for n in names if n not in EXERCISES]
    if unknown:
        raise ExerciseError(f"Unknown exercise(s): {', '.join(unknown)}. Run `python exercises.py list`.")
    return [EXERCISES[n] for n in names] if names else list(EXERCISES.values())


def cmd_list(args):
    print(f"{'exercise':<26}{'file':<16}{'paper':<15}what you write")
    for e in EXERCISES.values():
        missing = "" if has_markers(e) else "   [markers missing in this checkout]"
        print(f"{e.name:<26}{e.file:<16}{e.paper:<15}{e.summary}{missing}")


def make(dest, names=(), root=ROOT):
    """Write a student copy of the project at `dest` with the chosen exercises (default: all) stubbed."""
    dest, root = Path(dest), Path(root)
    if dest.exists() and any(dest.iterdir()):
        raise ExerciseError(f"{dest} exists and is not empty: choose a new folder for the student copy.")
    exercises = selected(names)
    stubbed = {}
    for e in exercises:  # check every marker before writing anything
        stubbed[e.file] = stub_text(stubbed.get(e.file) or (root / e.file).read_text(), e, root / e.file)
    for f in project_files(root):
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        if f in stubbed:
            target.write_text(stubbed[f])
        else:
            shutil.copy2(root / f, target)
    (dest / COPY_NOTE).write_text(json.dumps({"stubbed": [e.name for e in exercises]}) + "\n")
    return exercises


def cmd_make(args):
    exercises = make(args.dir, args.only)
    print(f"wrote a student copy to {args.dir} with {len(exercises)} exercise(s) to write:")
    for e in exercises:
        print(f"  {e.name:<26} {e.file:<16} then: python exercises.py check {e.name}")


def run_tests(node_ids, root=ROOT, verbose=False):
    """Run pytest on `node_ids` in `root` -> ({"file::test": (outcome, message)}, pytest's output)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *node_ids]
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=not verbose, text=True)
        return read_report(report), (proc.stdout or "") + (proc.stderr or "")


def read_report(path):
    """pytest's JUnit XML report -> {"tests/file.py::test[param]": (passed / failure / error / skipped, message)}."""
    results = {}
    if not Path(path).exists():
        return results
    for case in ET.parse(path).iter("testcase"):
        node = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome, message = child.tag, (child.get("message") or "").strip()
                break
        results[node] = (outcome, message)
    return results


def grade(exercise, results):
    """(passed, lines to print) for one exercise from the test results."""
    mine = {n: r for n, r in results.items() if any(n == t or n.startswith(t + "[") for t in exercise.tests)}
    bad = {n: r for n, r in mine.items() if r[0] != "passed"}
    if mine and not bad:
        return True, [f"PASS  {exercise.name}  ({len(mine)} tests)"]
    lines = [f"FAIL  {exercise.name}  ({len(bad)} of {len(mine)} tests did not pass)" if mine else
             f"FAIL  {exercise.name}  (its tests did not run: an import or syntax error? rerun with -v)"]
    shown = ""
    for node, (outcome, message) in list(bad.items())[:3]:
        lines.append(f"      {outcome}: {node}")
        message = message.splitlines()[0][:150] if message else ""
        if message and message != shown:  # the same error under every test is printed once
            lines.append(f"        {message}")
            shown = message
    lines.append(f"      hint: {exercise.hint}")
    return False, lines


def check(names=(), root=ROOT, verbose=False):
    """Run the grading tests of the chosen exercises (one pytest run); print pass/fail. -> all passed?"""
    exercises = selected(names)
    node_ids = sorted({t for e in exercises for t in e.tests})
    results, output = run_tests(node_ids, root, verbose)
    if not results and not verbose:
        print(output[-3000:])
    ok = True
    for e in exercises:
        passed, lines = grade(e, results)
        ok &= passed
        print("\n".join(lines))
    return ok


def cmd_check(args):
    sys.exit(0 if check(args.names, verbose=args.verbose) else 1)


# ----------------------------------------------------------------------------------------------------------------
# Experiment 1: delay vs parallel pattern at equal training steps (Paper §2.2, Table 4)


def pattern_loss(lm, codes, pattern):
    """Per-codebook cross-entropy [K] of an unconditional LM on clean codes [B, K, T] under `pattern`.

    Both patterns feed steps 0..T-1 and predict steps 1..T. parallel: every target is a real token (frame s-1 at
    step s). delay: codebook k's first k targets are special and skipped (exactly LM.compute_loss)."""
    import torch
    import torch.nn.functional as F

    import musicgen

    B, K, T = codes.shape
    if pattern == "delay":
        seq, valid = musicgen.delay_pattern(codes, lm.special), musicgen.valid_target_mask(K, T, codes.device)
    else:
        seq, valid = musicgen.parallel_pattern(codes, lm.special), torch.ones(K, T, dtype=torch.bool)
    inputs, targets = seq[..., :T], seq[..., 1 : T + 1].masked_fill(~valid, -100)
    null = torch.zeros(B, 1, lm.config.text_dim), torch.zeros(B, 1, dtype=torch.long)  # unconditional
    logits = lm(inputs, *null)  # [B, K, T, N]
    ce = F.cross_entropy(logits.flatten(0, 2), targets.flatten(), reduction="none").view(B, K, T)
    return ce.sum(dim=(0, 2)) / (B * valid.sum(dim=1))


def experiment_tokens(args):
    """The token cache to train on: --tokens if it exists, else a tiny synthetic one built by train.py's stages."""
    import torch

    import data

    path = Path(args.tokens)
    if not path.exists():
        import train
        from dataclasses import replace

        out = Path(args.out_dir) / "synthetic-tokens"
        print(f"{path} not found (train with `python train.py` to make it): using the synthetic corpus, tokenized "
              f"by a quickly trained tiny codec, in {out}")
        train.run(replace(train.CONFIGS["tiny"], out_dir=str(out), cache_dir=args.cache_dir, samples=0), "tokens")
        path = out / "tokens.pt"
    return data.TokenSet(**torch.load(path, map_location="cpu", weights_only=True))


def experiment_patterns(args):
    import torch

    import data
    import musicgen

    torch.manual_seed(args.seed)
    tokens = experiment_tokens(args)
    train_set, val_set = tokens.select("train"), tokens.select("valid")
    K, card = tokens.codes[0].shape[0], int(max(c.max() for c in tokens.codes)) + 1  # every code that occurs
    frames = min(args.frames, min(c.shape[-1] for c in tokens.codes))
    config = musicgen.lm_config(args.lm, num_codebooks=K, card=card, text_dim=16, dropout=0.0)
    rows = []
    for pattern in ("delay", "parallel"):
        torch.manual_seed(args.seed)  # the same initial weights and the same batches for both patterns
        lm = musicgen.LM(config).train()
        opt = torch.optim.AdamW(lm.parameters(), lr=args.lr, betas=(0.9, 0.95))
        for step in range(args.steps):
            codes, _ = data.token_batch(train_set, step, args.batch, frames, seed=args.seed)
            loss = pattern_loss(lm, codes, pattern).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        lm.eval()
        with torch.no_grad():
            val = sum(pattern_loss(lm, data.token_batch(val_set, i, args.batch, frames, seed=args.seed + 1)[0],
                                   pattern) for i in range(args.eval_batches)) / args.eval_batches
        rows.append((pattern, "T + K" if pattern == "delay" else "T + 1", val.tolist()))
    lines = [f"| pattern  | steps per T frames | train steps | val CE per codebook (nats) | mean  |",
             f"|----------|--------------------|-------------|{'-' * 28}|-------|"]
    for pattern, steps, ce in rows:
        lines.append(f"| {pattern:<8} | {steps:<18} | {args.steps:<11} | {' '.join(f'{x:.3f}' for x in ce):<26} "
                     f"| {sum(ce) / len(ce):.3f} |")
    emit(lines, args.table, f"LM '{args.lm}', K={K}, N={card}, windows of {frames} frames, batch {args.batch}, "
                            "unconditional. Paper Table 4: delay beats parallel. Same ordering here?")


# ----------------------------------------------------------------------------------------------------------------
# Experiment 2: how many codebooks does the codec need? (Paper §2.1: quality vs bitrate)


def experiment_codebooks(args):
    import torch

    import data
    import evaluate
    from encodec_lite import EncodecLite

    codec = EncodecLite.from_pretrained(args.model).eval()  # an EnCodec directory or a whole MusicGen one
    clips = data.select(data.load_corpus(args, codec.sample_rate), "valid")[: args.clips]
    if not clips:
        raise ExerciseError("No held-out clips in that corpus.")
    wav = torch.cat([w for _, w in evaluate._clip_batches(clips, codec.sample_rate)])  # [B, 1, N]
    lines = ["| codebooks | kbit/s | SI-SNR (dB) | mel distance (dB) |", "|-----------|--------|-------------|-------------------|"]
    points = []
    with torch.no_grad():
        codes = codec.encode(wav)  # [B, K, T]
        for k in range(1, codec.num_codebooks + 1):
            rec = codec.decoder(codec.quantizer.decode(codes[:, :k]))  # the latent of the first k stages only
            snr = float(evaluate.si_snr(wav, rec).mean())
            mel = float(evaluate.mel_distance(wav, rec, codec.sample_rate).mean())
            kbps = k * math.log2(codec.codebook_size) * codec.frame_rate / 1000
            lines.append(f"| {k:<9} | {kbps:<6.2f} | {snr:<11.2f} | {mel:<17.2f} |")
            points.append((kbps, snr, mel))
    emit(lines, args.table, f"{len(clips)} held-out clips, codec {args.model} ({codec.frame_rate:g} frames/s, "
                            f"N = {codec.codebook_size}). Where do extra codebooks stop paying?")
    if args.png:
        plot_codebooks(points, args.png)


def plot_codebooks(points, path):
    from matplotlib.figure import Figure  # optional dependency, only for --png

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
# Experiment 3: pretrained T5 vs a T5 trained from scratch (Paper §2.3, A.2)

T5_HOWTO = """No pretrained T5 found (pass --t5 DIR, or put t5-base in the Hugging Face cache). On a machine with network:
    pip install huggingface_hub
    huggingface-cli download google-t5/t5-base config.json model.safetensors spiece.model --local-dir models/t5-base
then copy models/t5-base here and run:
    python exercises.py experiment text-encoder --t5 models/t5-base"""


def experiment_text_encoder(args):
    from dataclasses import replace

    import data
    import evaluate
    import train
    from checkpoints import find_in_hf_cache
    from musicgen import MusicGen

    t5 = args.t5 or find_in_hf_cache("google-t5/t5-base") or find_in_hf_cache("t5-base")
    if not t5:
        print(T5_HOWTO)
        return
    base = replace(train.CONFIGS[args.config], max_steps=args.steps, samples=0, cache_dir=args.cache_dir)
    trained_codec = Path(base.out_dir) / "codec"
    if trained_codec.is_dir():  # reuse the codec (and corpus) of the main run instead of training two more
        base = replace(base, codec=str(trained_codec))
    rows = []
    for label, t5_dir in (("pretrained (frozen)", str(t5)), ("from scratch", "")):
        cfg = replace(base, t5=t5_dir, out_dir=str(Path(args.out_dir) / f"text-encoder-{'pretrained' if t5_dir else 'scratch'}"))
        train.run(cfg)
        mg = MusicGen.from_pretrained(cfg.out_dir)
        clips = data.select(data.load_corpus(corpus_args(cfg), mg.sample_rate), "valid")
        ce = evaluate.validation_loss(mg, clips, cfg.segment_seconds)["val_ce"]
        row = [label, f"{sum(ce) / len(ce):.3f}"]
        if args.per_style:
            judged = evaluate.prompt_following(mg, data.load_corpus(corpus_args(cfg), mg.sample_rate),
                                               args.per_style, cfg.segment_seconds, cfg.seed)
            row.append(f"{100 * judged['accuracy_generated']:.0f} % (chance {100 * judged['chance']:.0f} %)")
        rows.append(row)
    lines = ["| text encoder | val CE (nats) | style of generated clips |", "|---|---|---|"]
    lines += [f"| {' | '.join(r + ['-'] * (3 - len(r)))} |" for r in rows]
    emit(lines, args.table, f"config {args.config}, {args.steps} LM steps each. Paper A.2: does T5's pretraining help "
                            "when the captions are this simple?")


def corpus_args(cfg):
    """data.load_corpus reads these fields (the training corpus of `cfg`)."""
    return argparse.Namespace(data=cfg.data, cache_dir=cfg.cache_dir, clip_seconds=cfg.clip_seconds,
                              clips_per_style=cfg.clips_per_style, seed=cfg.seed)


def emit(lines, path, caption):
    """Print a markdown table (and its caption); also write it to `path` if given."""
    text = "\n".join(lines + ["", caption])
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
        print(f"wrote {path}")


# ----------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every exercise: name, file, paper section, one line").set_defaults(fn=cmd_list)
    m = sub.add_parser("make", help="write a student copy of the project with exercises stubbed")
    m.add_argument("dir", help="new (or empty) folder for the copy")
    m.add_argument("--only", nargs="+", default=[], metavar="NAME", help="stub only these exercises (default: all)")
    m.set_defaults(fn=cmd_make)
    c = sub.add_parser("check", help="run the grading tests of exercises (default: all) and say pass/fail")
    c.add_argument("names", nargs="*", metavar="NAME")
    c.add_argument("-v", "--verbose", action="store_true", help="show pytest's own output")
    c.set_defaults(fn=cmd_check)

    e = sub.add_parser("experiment", help="open-ended experiments (see EXERCISES.md)")
    kinds = e.add_subparsers(dest="experiment", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--table", help="also write the result table to this file")
    common.add_argument("--cache-dir", default="cache", help="rendered corpora (as train.py)")
    common.add_argument("--seed", type=int, default=0)

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
    cb.add_argument("--model", default="out/small", help="a MusicGen or EnCodec directory")
    cb.add_argument("--data", default="builtin", help="builtin, synthetic or a folder (as used for training)")
    cb.add_argument("--clip-seconds", type=float, default=10.0)
    cb.add_argument("--clips-per-style", type=int, default=120, help="as used for training (data.CLIPS_PER_STYLE)")
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
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        args.fn(args)
    except ExerciseError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
