"""sample.py as a user meets it: every bad setting stops at once with one line, outputs are never overwritten,
Ctrl-C keeps a playable WAV, files are readable by others, --download is opt-in. Tiny random models only."""

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import checkpoints
import musicgen as M
import sample

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tiny_musicgen, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-64")
    tiny_musicgen(max_positions=64).save_pretrained(path)  # 60-frame windows: long generations have many
    return path


@pytest.fixture
def no_loading(monkeypatch):
    """A model load would mean a bad setting was noticed too late."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(M.MusicGen, "from_pretrained", refuse)


BAD = [  # (flags, what the one line must name)
    (["--temperature", "-1"], ["--temperature -1.0", "use 0"]),
    (["--top-k", "-5"], ["--top-k -5", "use 0"]),
    (["--top-p", "1.5"], ["--top-p 1.5", "[0, 1]"]),
    (["--duration", "0"], ["--duration 0.0", "positive number of seconds"]),
    (["--duration", "nan"], ["--duration nan", "positive number of seconds"]),
    (["--window", "-2"], ["--window -2.0", "positive"]),
    (["--threads", "0"], ["--threads 0", "pass 1 or more"]),
    (["--melody-cfg", "2"], ["--melody-cfg", "--melody FILE"]),
    (["--device", "gpu"], ["unknown device 'gpu'", "use auto, cpu"]),
    (["--unconditional", "--prompt", "x"], ["--unconditional", "drop"]),
    (["--download", "--model", "./x/y"], ["--download", "./x/y", "owner/name"]),
]


@pytest.mark.parametrize("flags, named", BAD, ids=[" ".join(flags) for flags, _ in BAD])
def test_a_bad_setting_stops_before_any_work_with_one_line(flags, named, tmp_path, no_loading):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        sample.main(flags + ["--out", str(out)])
    message = stop.value.code  # sys.exit(str): printed to stderr, exit status 1
    assert isinstance(message, str) and message.startswith("sample.py: ") and "\n" not in message
    assert all(word in message for word in named), message
    assert not out.exists()  # nothing written, not even the folder


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_cpu_build_is_one_line(tmp_path, no_loading):
    with pytest.raises(SystemExit, match=r"^sample.py: device 'cuda': .*use --device cpu"):
        sample.main(["--device", "cuda", "--out", str(tmp_path / "out")])


def test_out_must_be_a_wav_in_a_writable_folder(tmp_path, no_loading):
    with pytest.raises(SystemExit, match=r"^sample.py: --out .*x.flac: only .wav files .*x.wav"):
        sample.main(["--out", str(tmp_path / "x.flac")])
    assert list(tmp_path.iterdir()) == []  # no folder named x.flac
    with pytest.raises(SystemExit, match="names one .wav file but there are 2 prompts; pass a directory"):
        sample.main(["--prompt", "a", "--prompt", "b", "--out", str(tmp_path / "x.wav")])
    if Path("/proc/self").is_dir():
        with pytest.raises(SystemExit, match=r"^sample.py: cannot write to /proc \(.*\); pass --out"):
            sample.main(["--out", "/proc/x.wav"])


def test_low_guidance_only_warns(capsys):
    prompts, device = sample.check_settings(sample.parse_args(["--cfg", "0.5", "--prompt", "rock", "--device", "cpu"]))
    assert prompts == ["rock"] and device.type == "cpu"
    assert "--cfg 0.5 is below 1" in capsys.readouterr().err


def test_file_names_are_safe():
    assert sample.file_name(0, "baroque", 1234) == "00_baroque_seed1234.wav"
    assert sample.file_name(3, "lo-fi: chill?/beats 🎹 at 90", 7) == "03_lo-fi_chillbeats__at_90_seed7.wav"
    assert sample.file_name(1, "🎹🎻", 7) == "01_prompt_seed7.wav" and sample.file_name(2, "", 7).startswith("02_unc")
    assert len(sample.file_name(0, "word " * 50, 1)) == len("00_") + 40 + len("_seed1.wav")


def test_two_runs_keep_both_outputs_readable_by_others(model_dir, tmp_path):
    old = os.umask(0o022)
    try:
        for _ in range(2):
            sample.main(["--model", str(model_dir), "--prompt", "baroque", "--duration", "0.2", "--seed", "1",
                         "--out", str(tmp_path)])
    finally:
        os.umask(old)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["00_baroque_seed1-2.json", "00_baroque_seed1-2.wav", "00_baroque_seed1.json",
                     "00_baroque_seed1.wav"]  # the second run did not overwrite the first
    for path in tmp_path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044  # group and others may read (not mkstemp's 0600)


def test_no_trained_model_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no out/small/model here
    with pytest.raises(SystemExit, match=r"^sample.py: no trained model in out/small/model; train one with `python "
                                         r"train.py`, or .*--download$"):
        sample.main(["--prompt", "baroque"])


def test_a_hub_id_is_downloaded_only_with_download(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))  # empty: the id is not cached
    with pytest.raises(SystemExit, match=r"hf download someone/tiny-musicgen .*--download"):
        sample.main(["--model", "someone/tiny-musicgen", "--out", str(tmp_path / "out")])
    fetched = []
    monkeypatch.setattr(checkpoints, "download", lambda repo: fetched.append(repo) or model_dir)  # never the network
    sample.main(["--model", "someone/tiny-musicgen", "--download", "--duration", "0.1", "--out", str(tmp_path / "o")])
    assert fetched == ["someone/tiny-musicgen"] and len(list((tmp_path / "o").glob("*.wav"))) == 1


def test_ctrl_c_keeps_a_playable_partial_wav(model_dir, tmp_path):
    soundfile = pytest.importorskip("soundfile")
    out, log = tmp_path / "out", tmp_path / "stderr.txt"
    command = [sys.executable, "sample.py", "--model", str(model_dir), "--prompt", "rock", "--duration", "600",
               "--seed", "0", "--threads", "1", "--out", str(out)]
    with open(log, "w") as stderr:
        # SIGINT back to its default in the child: a shell that starts the tests in the background (`pytest &`)
        # ignores it, the child would inherit that, and Python then installs no KeyboardInterrupt for Ctrl-C
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 120
        while not re.search(r"\| *[1-9]\d*/\d+", log.read_text()):  # tqdm's bar counts its first steps
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        printed = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, log.read_text()
    [wav] = out.glob("*.wav")
    data, rate = soundfile.read(wav)
    assert rate == 8000 and 0 < len(data) < 600 * rate
    settings = json.loads(wav.with_suffix(".json").read_text())
    assert settings["partial"] is True and settings["duration"] == len(data) / rate
    assert "interrupted: keeping" in log.read_text() and f"wrote {wav}" in printed
