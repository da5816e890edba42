"""The shared helpers: weight-file discovery, strict loading with readable errors, atomic writes, audio prep."""

import json
import os
import stat
import sys

import pytest
import torch

import audio
import checkpoints


def test_missing_weights_names_the_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(checkpoints.CheckpointError, match="model.safetensors"):
        checkpoints.load_state_dict(tmp_path)


def test_missing_config(tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match="config.json"):
        checkpoints.read_config(tmp_path)


def test_unknown_repo_is_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(checkpoints.CheckpointError, match="hf download facebook/musicgen-small .*--download"):
        checkpoints.resolve_model_dir("facebook/musicgen-small")


@pytest.mark.parametrize("path", ["/nope/model", "./x/y", "~/nope/m", "a/b/c"])
def test_a_missing_path_is_not_called_a_hub_id(path, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(checkpoints.CheckpointError, match="it does not exist") as err:
        checkpoints.resolve_model_dir(path)
    assert "download" not in str(err.value) and "\n" not in str(err.value)


def snapshot(cache, name, mtime):
    path = cache / "models--facebook--musicgen-small" / "snapshots" / name
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    os.utime(path, (mtime, mtime))
    return path


def test_hf_cache_follows_refs_main_else_the_newest(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    old, new = snapshot(tmp_path, "abc", 1_000), snapshot(tmp_path, "def", 2_000)
    assert checkpoints.resolve_model_dir("facebook/musicgen-small") == new  # no refs/main: the newest
    (tmp_path / "models--facebook--musicgen-small" / "refs").mkdir()
    (tmp_path / "models--facebook--musicgen-small" / "refs" / "main").write_text("abc")  # no newline, as the hub
    assert checkpoints.resolve_model_dir("facebook/musicgen-small") == old


def test_download_is_opt_in_and_explains_a_missing_package(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):  # never the network
        calls.append(repo_id)
        return str(snapshot(tmp_path, "abc", 1_000))

    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert checkpoints.download("facebook/musicgen-small").name == "abc" and calls == ["facebook/musicgen-small"]
    with pytest.raises(checkpoints.CheckpointError, match="not a hub id"):
        checkpoints.download("/some/dir")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if it were not installed
    with pytest.raises(checkpoints.CheckpointError, match="pip install huggingface_hub"):
        checkpoints.download("facebook/musicgen-small")


def test_sharded_safetensors_and_prefix(tmp_path):
    checkpoints.save_safetensors({"a.x": torch.ones(2)}, tmp_path / "s1.safetensors")
    checkpoints.save_safetensors({"b.y": torch.zeros(3)}, tmp_path / "s2.safetensors")
    index = {"weight_map": {"a.x": "s1.safetensors", "b.y": "s2.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert set(checkpoints.load_state_dict(tmp_path)) == {"a.x", "b.y"}
    assert list(checkpoints.load_state_dict(tmp_path, prefix="b.")) == ["y"]


def test_load_into_lists_problems():
    module = torch.nn.Linear(3, 2)
    bad = {"weight": torch.zeros(2, 4), "extra": torch.zeros(1)}
    with pytest.raises(checkpoints.CheckpointError) as err:
        checkpoints.load_into(module, bad)
    message = str(err.value)
    assert "missing tensors (1): bias" in message
    assert "unexpected tensors (1): extra" in message
    assert "weight: checkpoint (2, 4) vs model (2, 3)" in message


def test_load_into_a_meta_module_takes_the_tensors_themselves_in_its_dtype():
    with torch.device("meta"):
        module = torch.nn.Linear(3, 2)
    weight, bias = torch.randn(2, 3), torch.ones(2, dtype=torch.float16)
    checkpoints.load_into(module, {"weight": weight, "bias": bias})
    assert module.weight.data_ptr() == weight.data_ptr()  # the checkpoint's own tensor: no second copy
    assert module.bias.dtype == torch.float32 and torch.equal(module.bias, bias.float())  # cast as a copy would


def test_atomic_save_leaves_no_temp_on_failure(tmp_path):
    def broken(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        checkpoints.atomic_write(tmp_path / "ckpt.pt", broken)
    assert list(tmp_path.iterdir()) == []


def test_atomically_written_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        checkpoints.atomic_write(tmp_path / "x.json", lambda tmp: open(tmp, "w").write("{}"))
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "x.json").stat().st_mode)
    assert mode == 0o644 and mode & 0o044  # readable by others, as a plain open() would leave it


def test_prepare_downmixes_and_resamples(capsys):
    t = torch.arange(48000) / 48000
    stereo = torch.stack([torch.sin(2 * torch.pi * 440 * t), torch.sin(2 * torch.pi * 440 * t)])
    out = audio.prepare(stereo, 48000, 32000)
    assert out.shape == (1, 1, 32000)
    err = capsys.readouterr().err
    assert "downmixed 2 channels to mono" in err and "resampled from 48000 Hz to 32000 Hz" in err


def test_prepare_rejects_empty_and_nan():
    with pytest.raises(audio.AudioError, match="empty"):
        audio.prepare(torch.zeros(1, 0), 32000, 32000)
    with pytest.raises(audio.AudioError, match="NaN"):
        audio.prepare(torch.tensor([0.0, float("nan")]), 32000, 32000)


def test_write_read_roundtrip(tmp_path):
    wav = 0.5 * torch.sin(torch.linspace(0, 100, 1600))[None]
    audio.write(tmp_path / "x.wav", wav, 16000)
    back, sr = audio.read(tmp_path / "x.wav")
    assert sr == 16000 and back.shape == (1, 1600)
    assert (back - wav).abs().max() < 1e-3
