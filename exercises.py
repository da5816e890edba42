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

Why grade with the project's own tests: they are what keeps the real code right, several of them compare with
transformers (the reference implementation), and a student who passes them has written code that the rest of the
project runs on. Each exercise names a few cheap tests, so `check` answers in seconds.

    python exercises.py list                              # name, file, paper section, one line each
    python exercises.py make ~/hw                         # a student copy with every exercise stubbed
    python exercises.py make ~/hw --only delay_pattern    # ... or only some of them
    python exercises.py check delay_pattern               # run its grading tests (in the copy or here): pass/fail
    python exercises.py check                             # every exercise, one pytest run

`check` first makes sure pytest and torch are installed (else: pip install -r requirements-dev.txt), so that a
missing package is never blamed on the student's code; a grader that skips (no transformers) says SKIPPED, not FAIL.

The open-ended experiments (delay vs parallel, codebooks, text encoder) are in experiments.py.
"""

import argparse
import importlib.util
import json
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

ROOT = Path(__file__).resolve().parent  # the project (or a student copy of it): where the marked files are
COPY_NOTE = ".student_copy"  # written by `make`: which exercises a copy has stubbed (the meta-tests skip there)


@dataclass(frozen=True)
class Exercise:
    """One piece of the real code that students write themselves, with what they need to write and check it."""

    name: str  # the marker name in the file, and the argument of `make --only` and `check`
    file: str  # where its marked region(s) are
    paper: str  # the section to read first
    summary: str  # one line for `list`
    instructions: str  # what to write: goes into the stub as a comment
    hint: str  # printed when the check fails
    tests: tuple  # pytest node ids of the grading tests (cheap unit tests that need no reference assets)


# Prefixes of the grading tests' pytest node ids, one per test file.
MG, CH, T5 = "tests/test_musicgen.py::", "tests/test_chroma.py::", "tests/test_t5_encoder.py::"
EN, EX = "tests/test_encodec.py::", "tests/test_exercises.py::"

# In reading order: the codebook patterns and the LM (musicgen.py) first, then the conditions (chroma, T5),
# then the codec that makes the tokens.

EXERCISES = {e.name: e for e in [
    # The paper's central trick (§2.2): K codebooks per frame, one transformer step per frame. Writing the shift
    # by hand makes the T + K steps of generation, and the special tokens around them, concrete.
    # Everything else in the LM (the loss mask, generation, the KV cache) is built on top of it.
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
    # The loss must skip the targets that the delay pattern fills with the special token: predicting them is free
    # and would flatter the loss. The mask is the pattern read from the training side.
    # Getting it wrong costs no error message, only a model that learns less: the test is the only witness.
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
    # The LM knows where a step sits only through this table. Small details (the divisor, the cos half first) are
    # what makes released weights work, so the grader compares with transformers to 1e-6.
    # The second grader runs the whole tiny LM against transformers' decoder with your table inside.
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
    # Why fast generation is fast: each new step attends to cached keys/values instead of recomputing the past,
    # and the mask keeps every step from seeing the future. The grader checks cached against full decoding.
    # The same mask serves training (a whole sequence at once) and generation (one step after a cache).
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
        (MG + "test_cached_decoding_equals_full_forward",
         MG + "test_reference_and_fast_generation_give_the_same_tokens", EX + "test_lm_matches_transformers_decoder"),
    ),
    # Classifier-free guidance (§3.1) is one line that matters more than most: it is what makes the music follow
    # the text. The grader checks it against transformers' logits processor.
    # The batch holds each prompt twice (with the text, with the null condition), so one forward gives both.
    Exercise(
        "guidance", "musicgen.py", "§3.1",
        "classifier-free guidance on the logits (cond vs null condition)",
        "logits [2B, ...]: the first B rows were computed with the text, the last B with the null condition. "
        "Return [B, ...] = uncond + cfg_coef * (cond - uncond).",
        "logits.chunk(2) splits cond from uncond. At cfg_coef 1 you must get exactly the conditional logits, at 0 "
        "the unconditional ones.",
        (MG + "test_guidance_one_equals_the_conditional_logits", EX + "test_guidance_matches_transformers"),
    ),
    # Sampling from the full distribution gives noise; argmax gives loops. Top-k (k = 250 in the paper) keeps
    # only the plausible tokens: a small function whose effect you hear at once.
    # Try `python sample.py` with --top-k 1 and with the default to hear the difference.
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
    # Melody conditioning (§2.3) starts from a chromagram: the spectrum folded onto 12 pitch classes. Building the
    # filter bank shows how a frequency becomes a note name; the grader matches transformers' bank to 1e-6.
    # The released melody model was trained with exactly this bank, so an approximation would change its input.
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
    # Why only the loudest pitch class: the paper keeps the melody but not the timbre, so the model cannot copy
    # the reference audio. One argmax per frame is the whole information bottleneck.
    # Silent frames need a rule too (here: C), or the model would see NaNs where the music rests.
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
    # T5 (the text encoder) has no position table: attention adds a learned bias per distance bucket, exact for
    # near words, logarithmic for far ones. A pure integer function with a table to check against.
    # The released T5 weights hold one learned bias per bucket: the buckets must be T5's exactly.
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
    # Residual vector quantization (§2.1) is where the K token streams come from: each codebook codes what the
    # ones before it left over. Four lines of loop; the rest of the codec is given.
    # The graders recover a latent built from codebook entries exactly, and watch the error fall stage by stage.
    Exercise(
        "rvq_encode", "encodec_lite.py", "§2.1",
        "the residual VQ loop: a latent frame -> K codes",
        "residual [B*T, D] holds the encoder latent, one row per frame. For each of the first num_codebooks "
        "layers: pick the nearest code of every row (layer.nearest), subtract its vector (layer.lookup) from the "
        "residual, and append the indices (a [B*T] tensor) to the list `codes`.",
        "Stage q quantises what stages 0..q-1 left over: subtract after every stage, and pass the updated residual "
        "to the next one, not the original latent.",
        (EN + "test_latent_made_of_codebook_entries_is_recovered_exactly",
         EN + "test_error_falls_as_codebooks_are_added"),
    ),
]}


# ----------------------------------------------------------------------------------------------------------------
# Marked regions and stubs

# A marker line alone on its line, at any indentation; the start marker's indentation is the stub's.
START = re.compile(r"^(?P<indent>[ \t]*)# --- exercise: (?P<name>[\w-]+) ---[ \t]*$")
END = re.compile(r"^[ \t]*# --- end exercise: (?P<name>[\w-]+) ---[ \t]*$")


class ExerciseError(ValueError):
    """A mistake in the markers, the table or the command line: main() prints it as one line, no traceback."""


def regions(lines, name, path="file"):
    """(start, end, indent) of every region of exercise `name`: lines[start] and lines[end] are its markers.

    An exercise may have several regions (delay_pattern: the pattern and its inverse). A marker out of place
    would make `make` cut the wrong lines, so every mismatch is an error naming the file and line."""
    found, open_at = [], None  # open_at: line of a start marker whose end marker is not found yet
    for i, line in enumerate(lines):
        start, end = START.match(line), END.match(line)
        if start and start["name"] == name:
            # Regions of one exercise cannot nest: a second start before the end means a marker is missing.
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
    """Whether the exercise's file exists in `root` and holds its markers (`list` flags the ones that do not)."""
    path = Path(root) / exercise.file
    # `regions` also validates the markers, so a broken pair shows up here as an error, not as "missing".
    return path.exists() and bool(regions(path.read_text().splitlines(), exercise.name, path))


def stub_lines(exercise, indent):
    """What replaces a region: the instructions as comments, then NotImplementedError (same indentation).

    The stub keeps the file importable (so every other test still runs) while the missing piece fails loudly,
    with a message the grader recognises: a stub fails its own tests, not some unrelated one."""
    width = max(60, 110 - len(indent))  # wrapped to stay within the project's 120 columns, at any indentation
    # Two paragraphs: what to write (with the paper section to read first), then the command that grades it.
    text = [f"EXERCISE {exercise.name} (Paper {exercise.paper}). {exercise.instructions}",
            f"Check: python exercises.py check {exercise.name}"]
    # The instructions become comments at the region's indentation, so the stub sits where the code was (inside
    # a function, an if branch, a method) and the file still compiles.
    comments = [f"{indent}# {line}" for para in text for line in textwrap.wrap(para, width)]
    # tests/test_exercises.py looks for this message to tell "fails on its stub" from "fails for another reason".
    message = f"exercise {exercise.name}: not written yet (see the comment above; EXERCISES.md)"
    return comments + [f"{indent}raise NotImplementedError({message!r})"]


def stub_text(text, exercise, path="file"):
    """The file's text with every region of `exercise` replaced by its stub (marker lines kept).

    The markers stay in the copy, so a student's copy can itself be stubbed again, and its regions are easy to
    find with a text search."""
    lines = text.split("\n")
    found = regions(lines, exercise.name, path)
    if not found:
        raise ExerciseError(
            f"{path} has no region for exercise '{exercise.name}': add the two lines "
            f"'# --- exercise: {exercise.name} ---' and '# --- end exercise: {exercise.name} ---' around its code.")
    # Only the lines between the markers are replaced; the stub may be shorter or longer than the code it hides.
    for start, end, indent in reversed(found):  # from the bottom up, so earlier line numbers stay valid
        lines[start + 1 : end] = stub_lines(exercise, indent)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# list / make / check


def project_files(root=ROOT):
    """The files a student copy gets: git's tracked (and not ignored) files, else the .py/.md/requirements files.

    Asking git keeps out what a run leaves behind (out/, cache/, checkpoints: gigabytes) without a list to
    maintain here; untracked files that git would not ignore are kept, so a new file is copied before its commit."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, text=True, check=True).stdout.split("\n")
        files = [f for f in out if f and (Path(root) / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        files = []
    if not files:  # not a git checkout (e.g. a student copy, or git missing): the project's own kinds of files
        patterns = ["*.py", "*.md", "requirements*.txt", "tests/*.py", ".ci/*", ".gitignore"]
        files = sorted({str(p.relative_to(root)) for pat in patterns for p in Path(root).glob(pat) if p.is_file()})
    return sorted(set(files) - {COPY_NOTE})  # a copy of a copy gets a fresh note from `make`


def selected(names):
    """The Exercise entries for `names` (none given: all of them, in table order). A misspelt name is an error
    that points at `list`, rather than a check that silently grades nothing."""
    unknown = [n for n in names if n not in EXERCISES]
    if unknown:
        raise ExerciseError(f"Unknown exercise(s): {', '.join(unknown)}. Run `python exercises.py list`.")
    return [EXERCISES[n] for n in names] if names else list(EXERCISES.values())


def cmd_list(args):
    """python exercises.py list: one line per exercise, in the order of the table (the reading order)."""
    print(f"{'exercise':<26}{'file':<16}{'paper':<15}what you write")
    for e in EXERCISES.values():
        # A file edited by hand (or an older checkout) may have lost its markers: say so here, before `make` fails.
        missing = "" if has_markers(e) else "   [markers missing in this checkout]"
        print(f"{e.name:<26}{e.file:<16}{e.paper:<15}{e.summary}{missing}")


def make(dest, names=(), root=ROOT):
    """Write a student copy of the project at `dest` with the chosen exercises (default: all) stubbed.

    The copy is the whole project, tests included: the student runs `check` there exactly as here."""
    dest, root = Path(dest), Path(root)
    # Never write into a folder with content: a student's finished work must not be overwritten by a new copy.
    if dest.exists() and any(dest.iterdir()):
        raise ExerciseError(f"{dest} exists and is not empty: choose a new folder for the student copy.")
    exercises = selected(names)
    stubbed = {}  # file -> its text with the chosen exercises stubbed (several exercises may share one file)
    for e in exercises:  # check every marker before writing anything, so a bad marker leaves no half-made copy
        stubbed[e.file] = stub_text(stubbed.get(e.file) or (root / e.file).read_text(), e, root / e.file)
    # Every other file is copied unchanged: the student gets the whole working project around the holes.
    for f in project_files(root):
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        if f in stubbed:
            target.write_text(stubbed[f])
        else:
            shutil.copy2(root / f, target)  # copy2 keeps the modification time, as a plain copy of the project would
    # The note tells the meta-tests in tests/test_exercises.py that they are inside a copy, where they skip.
    (dest / COPY_NOTE).write_text(json.dumps({"stubbed": [e.name for e in exercises]}) + "\n")
    return exercises


def cmd_make(args):
    """python exercises.py make DIR [--only NAME ...]: write the copy, then say what to write and how to check it."""
    exercises = make(args.dir, args.only)
    # The next step for each exercise: the command that grades it, to be run inside the copy.
    print(f"wrote a student copy to {args.dir} with {len(exercises)} exercise(s) to write:")
    for e in exercises:
        print(f"  {e.name:<26} {e.file:<16} then: python exercises.py check {e.name}")


def run_tests(node_ids, root=ROOT, verbose=False):
    """Run pytest on `node_ids` in `root` -> ({"file::test": (outcome, message)}, pytest's output).

    pytest runs in a fresh process, in `root`: it imports the student's files as they are on disk now, not the
    modules this process may already hold. Its JUnit XML report gives every test's outcome and first error line
    without parsing pytest's console output, which changes between versions."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        # The graders compare with transformers' code, never with downloaded weights: no network needed or wanted.
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        # -p no:cacheprovider: leave no .pytest_cache behind in the student's folder.
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *node_ids]
        # With --verbose pytest writes straight to the terminal; otherwise its output is kept for when no report comes.
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=not verbose, text=True)
        return read_report(report), (proc.stdout or "") + (proc.stderr or "")


def read_report(path):
    """pytest's JUnit XML report -> {"tests/file.py::test[param]": (passed / failure / error / skipped, message)}."""
    results = {}
    if not Path(path).exists():  # pytest stopped before it could write one (e.g. a bad argument)
        return results
    for case in ET.parse(path).iter("testcase"):
        # JUnit names a test by dotted module ("tests.test_chroma") and name: back to pytest's node id.
        node = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
        outcome, message = "passed", ""  # a passing test case has no child element
        for child in case:  # the first failure, error or skip element is the outcome, with its one-line message
            if child.tag in ("failure", "error", "skipped"):
                outcome, message = child.tag, (child.get("message") or "").strip()
                break
        results[node] = (outcome, message)
    return results


def grade(exercise, results):
    """(passed, lines to print) for one exercise from the test results.

    An exercise passes when all its grading tests ran and passed. One whose tests passed or skipped (a grader that
    compares with transformers skips without it) is SKIPPED: not graded, and not the student's fault. A failure
    shows at most three tests and the first line of each error (the full output is `check -v`), then the hint."""
    # A parametrized test appears once per parameter: "name[1.5]", "name[3.0]" all belong to "name".
    mine = {n: r for n, r in results.items() if any(n == t or n.startswith(t + "[") for t in exercise.tests)}
    # Failed, errored or skipped: a skipped grader proves nothing either, so it does not count as a pass.
    bad = {n: r for n, r in mine.items() if r[0] != "passed"}
    if mine and not bad:  # "mine" empty means nothing ran: that is a failure too, not a pass
        return True, [f"PASS  {exercise.name}  ({len(mine)} tests)"]
    skipped = [message for outcome, message in bad.values() if outcome == "skipped"]
    if mine and len(skipped) == len(bad):  # nothing failed, something skipped
        reason = (skipped[0].splitlines() or ["no reason given"])[0][:150]  # e.g. could not import 'transformers'
        return False, [f"SKIPPED  {exercise.name}  ({len(bad)} of {len(mine)} tests skipped: {reason})",
                       "      not graded; the graders need the dev requirements: pip install -r requirements-dev.txt"]
    lines = [f"FAIL  {exercise.name}  ({len(bad)} of {len(mine)} tests did not pass)" if mine else
             f"FAIL  {exercise.name}  (its tests did not run: an import or syntax error? rerun with -v)"]
    shown = ""  # the last error line printed
    for node, (outcome, message) in list(bad.items())[:3]:
        lines.append(f"      {outcome}: {node}")
        message = message.splitlines()[0][:150] if message else ""
        if message and message != shown:  # the same error under every test is printed once
            lines.append(f"        {message}")
            shown = message
    lines.append(f"      hint: {exercise.hint}")
    return False, lines


GRADING_PACKAGES = ("pytest", "torch")  # what every grading run imports; requirements-dev.txt installs them


def missing_packages():
    """The grading packages this Python cannot find (found without importing them: `check` stays quick)."""
    return [name for name in GRADING_PACKAGES if importlib.util.find_spec(name) is None]


def check(names=(), root=ROOT, verbose=False):
    """Run the grading tests of the chosen exercises (one pytest run); print pass/fail. -> all passed?"""
    exercises = selected(names)
    missing = missing_packages()  # else pytest's failure to start would read as the student's import error
    if missing:
        raise ExerciseError(f"grading needs {', '.join(missing)}, not installed in this Python ({sys.executable}): "
                            "pip install -r requirements-dev.txt")
    # One pytest run for all of them: torch and transformers are imported once, not once per exercise.
    node_ids = sorted({t for e in exercises for t in e.tests})
    results, output = run_tests(node_ids, root, verbose)
    if not results and not verbose:  # no report at all: show pytest's own words (the end, where the error is)
        print(output[-3000:])
    ok = True
    for e in exercises:
        passed, lines = grade(e, results)
        ok &= passed
        print("\n".join(lines))
    return ok


def cmd_check(args):
    """python exercises.py check [NAME ...]: exit status 0 when every chosen exercise passes (usable in scripts)."""
    sys.exit(0 if check(args.names, verbose=args.verbose) else 1)


# ----------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    """The three commands, each a subcommand whose `fn` runs it. This module imports no torch, so `list` and
    `make` answer at once, and `check` leaves all the heavy imports to the pytest it starts."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="every exercise: name, file, paper section, one line").set_defaults(fn=cmd_list)
    make_parser = commands.add_parser("make", help="write a student copy of the project with exercises stubbed")
    make_parser.add_argument("dir", help="new (or empty) folder for the copy")
    make_parser.add_argument("--only", nargs="+", default=[], metavar="NAME",
                             help="stub only these exercises (default: all)")
    make_parser.set_defaults(fn=cmd_make)
    check_parser = commands.add_parser("check", help="run the grading tests of exercises (default: all), say pass/fail")
    check_parser.add_argument("names", nargs="*", metavar="NAME")
    check_parser.add_argument("-v", "--verbose", action="store_true", help="show pytest's own output")
    check_parser.set_defaults(fn=cmd_check)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        args.fn(args)
    except ExerciseError as e:  # our own errors are the user's to fix: one line, no traceback
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
