"""Classroom exercises (exercises.py): the graders, and the machinery that cuts the exercises out and checks them;
and the classroom experiments (experiments.py) on a tiny setting.

Two kinds of tests live here:
  * graders: small parity tests against transformers for pieces no other unit test pins down cheaply (sinusoids,
    guidance, top-k, the whole tiny LM). exercises.py lists them as grading tests; they need no ../shared, so they
    also run in a student copy.
  * meta-tests: build student copies, check that every stub fails its grader and that the real code passes it,
    that a copy still imports and runs, that the experiments run on a tiny setting, and that EXERCISES.md agrees
    with the table. They skip inside a student copy, so running the suite there never copies the copy.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import exercises
import musicgen as M

ROOT = Path(__file__).resolve().parents[1]
IN_STUDENT_COPY = (ROOT / exercises.COPY_NOTE).exists()
meta = pytest.mark.skipif(IN_STUDENT_COPY, reason="a student copy: the exercise machinery is tested in the original")


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------------------------
# graders


def test_sinusoids_match_transformers():
    pytest.importorskip("transformers")  # without it the grader skips (exercises.py says SKIPPED), never fails
    from transformers.models.musicgen.modeling_musicgen import MusicgenSinusoidalPositionalEmbedding as Ref

    for dim in (64, 1024):
        ours = M.sinusoids(torch.arange(2048), dim)
        assert ours.shape == (2048, dim) and ours.dtype == torch.float32
        torch.testing.assert_close(ours, Ref.get_embedding(2048, dim), atol=1e-6, rtol=0)
    torch.testing.assert_close(M.sinusoids(torch.tensor([5, 700]), 64), M.sinusoids(torch.arange(701), 64)[[5, 700]])


def test_lm_matches_transformers_decoder():
    """A tiny LM (our weights) against transformers' MusicGen decoder: positions, causal self-attention, padded
    cross-attention, heads. The text projection runs on our side (it sits outside HF's decoder)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    lm = M.LM(M.lm_config("tiny", text_dim=32)).eval()
    hf = transformers.MusicgenForCausalLM(transformers.MusicgenDecoderConfig(**lm.config.to_hf())).eval()
    decoder = {n[len("decoder."):]: t for n, t in lm.hf_state_dict().items() if n.startswith("decoder.")}
    hf.load_state_dict(decoder, strict=False)  # HF's sinusoid table is a buffer it computes itself
    B, K, S = 2, 4, 9
    seq = torch.randint(0, 65, (B, K, S), generator=torch.Generator().manual_seed(0))
    seq[:, :, 0] = 64
    condition, mask = torch.randn(B, 5, 32), torch.ones(B, 5, dtype=torch.long)
    mask[1, 3:] = 0
    with torch.no_grad():
        memory, _ = lm.project_condition(condition, mask)
        ref = hf(input_ids=seq.reshape(B * K, S), encoder_hidden_states=memory, encoder_attention_mask=mask).logits
        ours = lm(seq, condition, mask)
    torch.testing.assert_close(ours, ref.view(B, K, S, -1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cfg_coef", [1.5, 3.0, 7.0])
def test_guidance_matches_transformers(cfg_coef):
    from transformers.generation.logits_process import ClassifierFreeGuidanceLogitsProcessor

    logits = torch.randn(6, 4, 50)  # [2B, K, N]: B = 3 conditional rows, then their 3 null-condition rows
    ref = ClassifierFreeGuidanceLogitsProcessor(cfg_coef)(torch.zeros(12, 1), logits.reshape(24, 50))
    torch.testing.assert_close(M.guided_logits(logits, cfg_coef), ref.view(3, 4, 50))
    torch.testing.assert_close(M.guided_logits(logits, 0.0), logits[3:])  # cfg 0: the unconditional logits


@pytest.mark.parametrize("top_k", [1, 5, 50, 500])
def test_top_k_matches_transformers(top_k, monkeypatch):
    """The distribution sample_tokens draws from must be transformers' top-k warper's (N = 50, temperature 0.7)."""
    from transformers.generation.logits_process import TopKLogitsWarper

    logits = torch.randn(2, 4, 50)
    seen = {}

    def spy(probs, n, generator=None):
        seen["probs"] = probs
        return probs.argmax(dim=-1, keepdim=True)

    monkeypatch.setattr(M.torch, "multinomial", spy)
    M.sample_tokens(logits, temperature=0.7, top_k=top_k)
    ref = TopKLogitsWarper(min(top_k, 50))(None, (logits / 0.7).reshape(8, 50)).softmax(dim=-1)
    torch.testing.assert_close(seen["probs"], ref)


# ----------------------------------------------------------------------------------------------------------------
# the exercise machinery


def run(cmd, cwd, timeout=300):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home()),
                               "OMP_NUM_THREADS": "1"})


READY = [e for e in exercises.EXERCISES.values() if exercises.has_markers(e, ROOT)]


@meta
def test_table_markers_graders_and_markdown_agree():
    guide = (ROOT / "EXERCISES.md").read_text()
    for e in exercises.EXERCISES.values():
        for node in e.tests:
            path, name = node.split("::")
            assert f"def {name}(" in (ROOT / path).read_text(), f"{e.name}: no grading test {node}"
        section = guide.split(f"## {e.name}\n")
        assert len(section) == 2, f"EXERCISES.md has no '## {e.name}' section"
        body = section[1].split("\n## ")[0]
        assert f"python exercises.py check {e.name}" in body and e.paper in body and e.file in body, e.name
    missing = [e.name for e in exercises.EXERCISES.values() if e not in READY]
    assert set(missing) <= {"rvq_encode"}, f"markers missing for {missing}"  # rvq: encodec_lite.py, added by hand


@meta
def test_stub_keeps_signature_and_indentation():
    e = exercises.EXERCISES["top_k"]  # a region nested inside an if/elif branch
    text = exercises.stub_text((ROOT / e.file).read_text(), e)
    compile(text, e.file, "exec")
    line = next(l for l in text.splitlines() if "raise NotImplementedError('exercise top_k" in l)
    assert line.startswith(" " * 8 + "raise")
    assert "def sample_tokens(logits, temperature=1.0, top_k=250" in text and "kth = logits.topk" not in text
    with pytest.raises(exercises.ExerciseError, match="no region"):
        exercises.stub_text("x = 1\n", e)
    with pytest.raises(exercises.ExerciseError, match="end exercise"):
        exercises.stub_text("# --- exercise: top_k ---\nx = 1\n", e)


@meta
def test_original_passes_every_grader():
    result = run([sys.executable, "exercises.py", "check", *[e.name for e in READY]], ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASS") == len(READY)


def test_check_without_pytest_says_what_to_install(monkeypatch):
    """A missing grading package is named with the command that installs it, not blamed on the student's code."""
    real = exercises.importlib.util.find_spec
    monkeypatch.setattr(exercises.importlib.util, "find_spec", lambda name: None if name == "pytest" else real(name))
    with pytest.raises(SystemExit) as exit_info:
        exercises.main(["check", "delay_pattern"])
    message = str(exit_info.value.code)
    assert message.startswith("error: grading needs pytest") and "pip install -r requirements-dev.txt" in message
    assert "\n" not in message


def test_skipped_graders_are_reported_as_skipped():
    sinusoids = exercises.EXERCISES["sinusoids"]
    skip = ("skipped", "could not import 'transformers': No module named 'transformers'")
    passed, lines = exercises.grade(sinusoids, {t: skip for t in sinusoids.tests})
    assert not passed and lines[0].startswith("SKIPPED  sinusoids  (2 of 2 tests skipped: could not import")
    assert "pip install -r requirements-dev.txt" in lines[1]
    failed = {sinusoids.tests[0]: ("failure", "AssertionError"), sinusoids.tests[1]: skip}  # a failure wins
    assert exercises.grade(sinusoids, failed)[1][0].startswith("FAIL  sinusoids")


@meta
def test_check_without_transformers_says_skipped(tmp_path, monkeypatch, capsys):
    """End to end: a Python where `import transformers` fails (a stand-in module first on the path)."""
    (tmp_path / "transformers.py").write_text("raise ImportError('No module named transformers (test stand-in)')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert not exercises.check(["sinusoids"])
    assert capsys.readouterr().out.startswith("SKIPPED  sinusoids  (2 of 2 tests skipped")


# One process imports torch and transformers once, then forks a child per student copy to run its grader there
# (a fresh interpreter per copy costs several seconds of imports each).
FORKING_RUNNER = """
import json, os, sys
import pytest, torch, transformers.models.musicgen.modeling_musicgen, transformers.models.t5.modeling_t5
for copy, nodes, report in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        os.chdir(copy)
        sys.path.insert(0, copy)
        os._exit(int(pytest.main(["-q", "-p", "no:cacheprovider", "--junitxml=" + report, *nodes])))
    os.waitpid(pid, 0)
"""


@pytest.fixture(scope="module")
def stub_reports(tmp_path_factory):
    """For every exercise: a copy with only it stubbed, its grading tests run there -> {name: results}."""
    root = tmp_path_factory.mktemp("stubs")
    jobs = {}
    for e in READY:
        exercises.make(root / e.name, [e.name], ROOT)
        jobs[e.name] = [str(root / e.name), list(e.tests), str(root / f"{e.name}.xml")]
    result = run([sys.executable, "-c", FORKING_RUNNER, json.dumps(list(jobs.values()))], ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return {name: exercises.read_report(job[2]) for name, job in jobs.items()}


@meta
@pytest.mark.parametrize("name", [e.name for e in READY])
def test_stub_fails_its_grader(name, stub_reports):
    passed, lines = exercises.grade(exercises.EXERCISES[name], stub_reports[name])
    text = "\n".join(lines)
    assert not passed and f"FAIL  {name}" in text, text
    assert f"exercise {name}: not written yet" in text, text  # it fails on its own stub, not on something else
    assert "hint:" in text


@meta
def test_copy_of_every_exercise_still_runs(tmp_path):
    copy = tmp_path / "copy"
    exercises.make(copy, [e.name for e in READY], ROOT)
    assert json.loads((copy / exercises.COPY_NOTE).read_text())["stubbed"] == [e.name for e in READY]
    assert not (copy / "out").exists() and (copy / "tests" / "conftest.py").exists()
    with pytest.raises(exercises.ExerciseError, match="not empty"):
        exercises.make(copy, [], ROOT)
    script = ("import runpy, sys\n"
              "import musicgen, chroma, t5_encoder, encodec_lite, evaluate, data, corpus, exercises, experiments\n"
              "for script in ('sample.py', 'train.py'):  # python sample.py --help; python train.py --help\n"
              "    sys.argv = [script, '--help']\n"
              "    try:\n"
              "        runpy.run_path(script, run_name='__main__')\n"
              "    except SystemExit as e:\n"
              "        assert not e.code, e.code\n")
    result = run([sys.executable, "-c", script], copy)
    assert result.returncode == 0 and "--prompt" in result.stdout and "--config" in result.stdout, result.stderr
    result = run([sys.executable, "exercises.py", "check", "delay_pattern", "valid_target_mask"], copy)  # the CLI
    assert result.returncode == 1 and result.stdout.count("FAIL") == 2, result.stdout + result.stderr
    # the meta-tests skip in the copy: running the suite there never builds a copy of the copy
    result = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_exercises.py",
                  "-k", "stub_fails or original_passes"], copy)
    assert result.returncode == 0 and "skipped" in result.stdout and "passed" not in result.stdout, result.stdout


# ----------------------------------------------------------------------------------------------------------------
# experiments on a tiny setting (experiments.py imports train.py and the rest: imported by these tests alone, so
# the graders above never depend on it)


@pytest.mark.parametrize("kind", ["patterns", "codebooks", "text-encoder"])
def test_experiment_help(kind, capsys):
    import experiments

    with pytest.raises(SystemExit) as done:
        experiments.main([kind, "--help"])
    assert done.value.code == 0 and "--table" in capsys.readouterr().out


def test_experiment_codebooks_reads_the_training_corpus_by_default():
    import corpus
    import experiments

    assert experiments.parse_args(["codebooks"]).clips_per_style == corpus.CLIPS_PER_STYLE


@pytest.fixture(scope="module")
def tiny_patterns(tmp_path_factory):
    """The patterns experiment on the synthetic corpus (no token cache given), a few steps: its table and dir."""
    import experiments

    root = tmp_path_factory.mktemp("experiments")
    table = root / "patterns.md"
    experiments.main(["patterns", "--tokens", str(root / "none.pt"), "--out-dir", str(root),
                      "--cache-dir", str(root / "cache"), "--steps", "2", "--batch", "2", "--frames", "20",
                      "--eval-batches", "1", "--table", str(table)])
    return root, table.read_text()


@meta
def test_experiment_patterns_runs(tiny_patterns):
    _, table = tiny_patterns
    assert "| delay " in table and "| parallel " in table and "Table 4" in table


@meta
def test_experiment_codebooks_runs(tiny_patterns, capsys):
    import experiments

    root, _ = tiny_patterns
    experiments.main(["codebooks", "--model", str(root / "synthetic-tokens" / "codec"), "--data",
                      "synthetic", "--clip-seconds", "3", "--cache-dir", str(root / "cache"), "--clips", "2"])
    rows = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| ") and l[2].isdigit()]
    assert [r.split("|")[1].strip() for r in rows] == ["1", "2", "3", "4"]


@meta
def test_experiment_text_encoder_explains_how_to_get_t5(monkeypatch, capsys):
    import experiments

    monkeypatch.setattr(experiments, "find_in_hf_cache", lambda repo: None)
    experiments.main(["text-encoder"])
    assert "--t5 models/t5-base" in capsys.readouterr().out
