"""train.py: bad settings refused at once, the tiny config end to end (the export's layout), exact resume, clear
checkpoint errors, DDP = one process, NaN stop.

The data -> codec -> tokens stages run once for the file (tiny config, synthetic corpus); every test copies that
directory and runs the LM stage in its copy."""

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

import data
import musicgen
import train
from checkpoints import CheckpointError, load_state_dict, read_step

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared machine run much faster on one thread than fighting for two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    config = replace(train.CONFIGS["tiny"], out_dir=str(root / "base"), cache_dir=str(root / "cache"), samples=0)
    train.run(config, stage="tokens")
    return config


def fresh_copy(prepared, tmp_path, name="run", **changes):
    """A copy of the prepared directory (corpus, codec, tokens; no LM yet) with some settings changed."""
    out = tmp_path / name
    shutil.copytree(prepared.out_dir, out)
    return replace(prepared, out_dir=str(out), **changes)


def train_losses(config):
    rows = [json.loads(line) for line in (Path(config.out_dir) / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_config_cli_and_schedule(capsys):
    config, stage = train.parse_args(["--config", "tiny", "--max_steps=7", "--init-from", "somewhere", "--stage",
                                      "codec"])
    assert (config.max_steps, config.init_from, config.lm, stage) == (7, "somewhere", "tiny", "codec")
    assert train.parse_args(["--config", "gpu"])[0].out_dir == "out/gpu"
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert all(name in help_text for name in train.CONFIGS) and "--cond_dropout" in help_text
    # Paper §3.1: linear warm-up to lr, cosine down to min_lr
    config = replace(train.CONFIGS["small"], max_steps=1000, warmup_steps=100, lr=1e-3, min_lr=1e-4)
    lrs = [train.learning_rate(s, config) for s in range(1000)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[99] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[99:], lrs[100:])) and lrs[-1] == pytest.approx(1e-4, rel=1e-3)


BAD_SETTINGS = [  # (command-line arguments, what the one-line error must say)
    (["--lm", "huge"], "--lm huge: not an LM preset; use one of musicgen-small"),
    (["--max_steps=-5"], "--max_steps=-5: must be greater than 0"),
    (["--device", "gpu"], "unknown device 'gpu': use auto, cpu, cuda"),
    (["--lr=0"], "--lr=0.0: must be greater than 0"),
    (["--cond_dropout", "1.5"], "--cond_dropout=1.5: must be a fraction between 0 and 1"),
    (["--t5_preset", "big"], "--t5_preset big: not a T5 preset; use one of"),
    (["--codec", "no-such-codec"], "--codec no-such-codec: No model directory"),
    (["--data", "no/such/folder"], "--data no/such/folder: not builtin, synthetic or an existing folder"),
    (["--segment_seconds", "30"], "--segment_seconds=30.0 is longer than the clips"),
]


@pytest.mark.parametrize("args, message", BAD_SETTINGS, ids=[" ".join(a) for a, _ in BAD_SETTINGS])
def test_bad_settings_fail_at_once_with_one_line(args, message, tmp_path, capsys, monkeypatch):
    """Every key is checked before the first stage: one line naming the value and the fix, exit 1, nothing written
    (a bad --lm used to fail only after the corpus, codec and tokens stages; --max_steps=-5 exported an untrained
    model)."""
    monkeypatch.setattr(train, "stage_data", lambda *a: pytest.fail("a stage started"))
    out, cache = tmp_path / "out", tmp_path / "cache"
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--out_dir", str(out), "--cache_dir", str(cache), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not cache.exists()


def test_bad_setting_from_the_shell_is_one_line():
    result = subprocess.run([sys.executable, "train.py", "--lm", "huge", "--out_dir", "out/never-written"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.startswith("error: --lm huge: not an LM preset")
    assert len(result.stderr.strip().splitlines()) == 1 and not (ROOT / "out" / "never-written").exists()


def test_configs_train_the_lm_presets_they_name():
    """The LM a config trains is the musicgen preset it names, exactly: nothing resizes it on the way."""
    assert all(config.lm in musicgen.PRESETS for config in train.CONFIGS.values())
    assert (train.CONFIGS["small"].lm, train.CONFIGS["gpu"].lm, train.CONFIGS["tiny"].lm) == ("small", "base", "tiny")
    sizes = {name: (p.dim, p.num_layers, p.num_heads, p.ffn_dim) for name, p in musicgen.PRESETS.items()}
    assert sizes["small"] == (192, 4, 3, 768) and sizes["base"] == (512, 8, 8, 2048)


@pytest.mark.parametrize("avx512_bf16, amx", [(False, False), (True, False), (False, True)])
def test_bf16_autocast_on_a_cpu_only_where_it_multiplies_bf16(avx512_bf16, amx, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    with train.autocast("cpu"):  # emulated bf16 (AVX2 and older) is slower than fp32: plain fp32 there
        y = torch.nn.Linear(64, 64)(torch.randn(2, 64))
    assert y.dtype == (torch.bfloat16 if avx512_bf16 or amx else torch.float32)


def test_tiny_trains_and_samples_end_to_end(prepared, tmp_path):
    config = fresh_copy(prepared, tmp_path, samples=1)
    lm = train.run(config)
    out, model = Path(config.out_dir), Path(config.out_dir) / "model"
    losses = train_losses(config)
    assert sorted(losses) == list(range(1, config.max_steps + 1))
    assert losses[config.max_steps] < losses[1]  # it learns something even in 6 steps
    # the export: model/ holds the Hugging Face files, the config as run and a model card; training state is beside it
    assert {"config.json", "model.safetensors", "generation_config.json", "training_config.json",
            "README.md"} <= {p.name for p in model.iterdir()}
    assert not {"ckpt.pt", "tokens.pt", "log.jsonl", "samples", "codec"} & {p.name for p in model.iterdir()}
    assert all((out / name).exists() for name in ("ckpt.pt", "tokens.pt", "log.jsonl", "samples", "codec"))
    assert json.loads((model / "training_config.json").read_text()) == asdict(config)
    card = (model / "README.md").read_text()
    assert "synthetic" in card and f"python sample.py --model {model}" in card and "cross-entropy" in card
    # the export is a MusicGen directory that loads and generates; the LM in it is the one trained
    mg = musicgen.MusicGen.from_pretrained(model)
    assert mg.guidance == config.guidance  # the export generates with the config's guidance by default
    for name, tensor in lm.state_dict().items():
        torch.testing.assert_close(mg.lm.state_dict()[name], tensor.cpu())
    wav = mg.generate(["flute melody"], duration=0.5, seed=0)
    assert wav.shape == (1, 1, int(0.5 * mg.sample_rate)) and torch.isfinite(wav).all()
    sample, rate = data.audio.read(out / "samples" / "00.wav")
    assert rate == mg.sample_rate and sample.shape[-1] == int(config.sample_seconds * rate)
    assert (out / "samples" / "prompts.txt").read_text().startswith("00.wav\t")
    # the user's path: sample.py finds the exported model
    if (ROOT / "sample.py").exists():
        wav_path = tmp_path / "s.wav"
        result = subprocess.run([sys.executable, "sample.py", "--model", str(model), "--prompt", "organ chords",
                                 "--duration", "0.5", "--out", str(wav_path)], cwd=ROOT, capture_output=True,
                                text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
        assert result.returncode == 0, result.stderr
        assert any(p.suffix == ".wav" for p in tmp_path.rglob("*.wav"))


def interrupt_at(monkeypatch, step, how):
    """Make the start of LM step `step` (its learning rate; its batch is prefetched during the step before) trigger
    an interruption: a Ctrl-C (SIGINT to ourselves, which the trainer turns into "finish the step, save, exit"), or a
    crash (as if the process were killed)."""
    real = train.learning_rate

    def learning_rate(s, config):
        if s == step:
            if how == "ctrl-c":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise RuntimeError("simulated kill")
        return real(s, config)

    monkeypatch.setattr(train, "learning_rate", learning_rate)


def test_resume_after_interruption_is_exact(prepared, tmp_path, monkeypatch):
    straight = fresh_copy(prepared, tmp_path, "straight")
    train.run(straight)

    resumed = fresh_copy(prepared, tmp_path, "resumed")
    interrupt_at(monkeypatch, 1, "ctrl-c")  # Ctrl-C during step 1: it finishes, saves at 2, exits
    with pytest.raises(KeyboardInterrupt):
        train.run(resumed)
    assert read_step(Path(resumed.out_dir) / "ckpt.pt") == 2
    interrupt_at(monkeypatch, 4, "kill")  # dies in step 4: the periodic checkpoint at step 3 survives
    with pytest.raises(RuntimeError, match="simulated kill"):
        train.run(resumed)
    assert read_step(Path(resumed.out_dir) / "ckpt.pt") == 3
    monkeypatch.undo()
    train.run(resumed)

    assert train_losses(resumed) == train_losses(straight)  # the log reads as one run, with the same numbers
    a, b = load_state_dict(Path(straight.out_dir, "model")), load_state_dict(Path(resumed.out_dir, "model"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_codec_stage_resumes_exactly(prepared, tmp_path, monkeypatch):
    """The codec stage runs in the same loop as the LM: Ctrl-C, rerun, and the codec is the uninterrupted one."""
    straight = replace(prepared, out_dir=str(tmp_path / "straight"), codec_steps=8)
    train.run(straight, stage="codec")

    resumed = replace(straight, out_dir=str(tmp_path / "resumed"))
    real = data.audio_batch

    def batch(clips, step, *args, **kwargs):
        if step == 4:  # Ctrl-C during step 4 (after the quantizer warm-up): it finishes, saves at 5, exits
            os.kill(os.getpid(), signal.SIGINT)
        return real(clips, step, *args, **kwargs)

    monkeypatch.setattr(data, "audio_batch", batch)
    with pytest.raises(KeyboardInterrupt):
        train.run(resumed, stage="codec")
    assert read_step(Path(resumed.out_dir) / "codec_ckpt.pt") == 5
    assert not (Path(resumed.out_dir) / "codec").exists()
    monkeypatch.undo()
    train.run(resumed, stage="codec")

    def rows(config):  # the codec log without its timing column
        lines = (Path(config.out_dir) / "codec_log.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "steps_per_s"} for line in lines]

    assert rows(resumed) == rows(straight) and [r["step"] for r in rows(straight)] == list(range(1, 9))
    a, b = load_state_dict(Path(straight.out_dir) / "codec"), load_state_dict(Path(resumed.out_dir) / "codec")
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_corrupt_or_mismatched_checkpoint_gives_clear_error(prepared, tmp_path, capsys):
    config = fresh_copy(prepared, tmp_path, max_steps=1)
    train.run(config)
    ckpt = Path(config.out_dir) / "ckpt.pt"
    good = ckpt.read_bytes()

    # a model of another size: the differing sizes are named
    with pytest.raises(CheckpointError, match=r"different model(.|\n)*lm\.num_layers: checkpoint 2 vs now 3"):
        run_with_lm_layers(config, 3)

    # truncated (a copy interrupted half-way, e.g. by hand) and garbage
    for content in (good[: len(good) // 2], b"not a checkpoint at all"):
        ckpt.write_bytes(content)
        with pytest.raises(CheckpointError, match="corrupt"):
            train.run(replace(config, max_steps=2))

    # from the command line: one line of error, exit code 1, no traceback
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", "tiny", "--out_dir", config.out_dir, "--cache_dir", config.cache_dir,
                    "--max_steps", "2"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "error:" in err and "corrupt" in err and "Traceback" not in err


def run_with_lm_layers(config, layers):
    """The tiny LM preset with another depth (as if the user had changed --lm)."""
    original = musicgen.PRESETS["tiny"]
    musicgen.PRESETS["tiny"] = replace(original, num_layers=layers)
    try:
        train.run(replace(config, max_steps=2))
    finally:
        musicgen.PRESETS["tiny"] = original


def test_ddp_two_processes_match_one_process(prepared, tmp_path):
    steps = 3
    # no input noise: each process draws its own (like dropout), so only a noiseless run can match exactly
    single = fresh_copy(prepared, tmp_path, "single", max_steps=steps, input_noise=0.0)
    train.run(single)

    ddp = fresh_copy(prepared, tmp_path, "ddp", max_steps=steps)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
               "--config", "tiny", "--out_dir", ddp.out_dir, "--cache_dir", ddp.cache_dir,
               "--max_steps", str(steps), "--samples", "0", "--input_noise", "0"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es)" in result.stdout + result.stderr

    one, two = train_losses(single), train_losses(ddp)
    assert sorted(two) == list(range(1, steps + 1))
    with train.autocast("cpu"):  # bf16 matmuls round a batch of 2 rows and one of 4 a little differently
        rel = 1e-3 if torch.is_autocast_enabled("cpu") else 1e-5
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=rel, abs=1e-6), step


def test_nan_loss_stops_and_keeps_last_good_checkpoint(prepared, tmp_path, monkeypatch):
    config = fresh_copy(prepared, tmp_path)  # checkpoints every 3 steps
    real = musicgen.LM.compute_loss
    calls = {"train": 0}

    def poisoned(self, codes, condition=None, condition_mask=None, **kwargs):
        loss, per_codebook = real(self, codes, condition, condition_mask, **kwargs)
        if self.training:
            calls["train"] += 1
            if calls["train"] == 5:  # the 5th training step goes wrong
                return loss * float("nan"), per_codebook * float("nan")
        return loss, per_codebook

    monkeypatch.setattr(musicgen.LM, "compute_loss", poisoned)
    with pytest.raises(train.TrainingError, match=r"(?s)nan.*step 4.*ckpt.pt \(step 3\)"):
        train.run(config)
    ckpt = torch.load(Path(config.out_dir) / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 3
    assert all(torch.isfinite(t).all() for t in ckpt["lm"].values())
    assert not (Path(config.out_dir) / "model").exists()  # nothing exported from a diverged run


def test_host_reads_the_device_only_on_logged_steps(prepared, tmp_path, monkeypatch):
    """On a GPU every read of a device tensor (.item(), float(), bool(), .tolist()) makes Python wait for the GPU. A
    training step reads none (losses, grad norm and the stop flag stay tensors, the next batch is prefetched); the
    loop reads them every log_every steps, with the same numbers and weights as a run that logs every step."""
    every_step = fresh_copy(prepared, tmp_path, "every_step", max_steps=6)
    train.run(every_step)

    reads = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, real=real, name=name: (reads.append(name),
                                                                                         real(self, *a))[1])
    step = train.LMSteps.step
    reads_in_steps = []
    monkeypatch.setattr(train.LMSteps, "step", lambda *args: (reads.clear(), step(*args), reads_in_steps.extend(
        reads))[1])
    every_third = fresh_copy(prepared, tmp_path, "every_third", max_steps=6, log_every=3, eval_every=3, ckpt_every=3)
    train.run(every_third)
    monkeypatch.undo()

    assert reads_in_steps == []
    logged = train_losses(every_third)
    assert logged == {s: loss for s, loss in train_losses(every_step).items() if s in (3, 6)}
    a, b = load_state_dict(Path(every_step.out_dir, "model")), load_state_dict(Path(every_third.out_dir, "model"))
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_codes_beyond_the_lm_card_are_refused_before_training(prepared, tmp_path):
    """A token cache the LM cannot read (a code >= N) fails once, before the first step, naming the fix."""
    config = fresh_copy(prepared, tmp_path)
    path = Path(config.out_dir, "tokens.pt")
    saved = torch.load(path, weights_only=True)
    saved["codes"][0][0, 0] = musicgen.PRESETS[config.lm].card  # one past the last code
    torch.save(saved, path)
    with pytest.raises(train.TrainingError, match=r"holds code 64, the LM has 64 per codebook: delete .*tokens.pt"):
        train.run(config)
    assert not Path(config.out_dir, "ckpt.pt").exists()
