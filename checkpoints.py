"""
Finding, reading and writing weight files.

Every model in this project (T5 encoder, EnCodec, the MusicGen LM) loads the public Hugging Face
checkpoints and saves its own in the same layout, so one small set of helpers serves them all:

    resolve_model_dir(name_or_path)   a local directory, or a model already in the HF cache (never downloads)
    read_config(dir)                  config.json as a dict, with a clear error if it is missing
    load_state_dict(dir, prefix)      every tensor of model.safetensors / a sharded index / pytorch_model.bin
    load_into(module, state_dict)     copy tensors into a module; missing, unexpected or misshapen tensors are
                                      listed by name instead of failing deep inside torch
    save_safetensors / atomic_torch_save   write files so that a crash never leaves half a file behind
"""

import json
import os
import tempfile
from pathlib import Path

import torch

HF_HUB_HINT = (
    "Download it once on a machine with network access, e.g.\n"
    "    huggingface-cli download {repo} --local-dir {dir}\n"
    "and pass that directory."
)


class CheckpointError(ValueError):
    """A checkpoint directory or file does not match what the code expects."""


# ----------------------------------------------------------------------------- locating a model


def hf_cache_dir():
    """The Hugging Face hub cache, honouring the same environment variables as huggingface_hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    hf_home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
    return Path(hf_home) / "hub"


def find_in_hf_cache(repo_id):
    """The newest snapshot directory of `repo_id` (e.g. 'facebook/musicgen-small') in the HF cache, or None."""
    snapshots = hf_cache_dir() / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    if not snapshots.is_dir():
        return None
    candidates = [p for p in snapshots.iterdir() if (p / "config.json").exists()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def resolve_model_dir(name_or_path):
    """A directory on disk for `name_or_path`: the path itself, or the cached snapshot of a hub repo id.

    Nothing is ever downloaded: a repo id that is not in the cache raises with instructions."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{name_or_path} is a file; expected a model directory holding config.json.")
    cached = find_in_hf_cache(str(name_or_path)) if "/" in str(name_or_path) else None
    if cached is not None:
        return cached
    raise CheckpointError(
        f"No model directory '{name_or_path}' on disk and no copy in the Hugging Face cache ({hf_cache_dir()}).\n"
        + HF_HUB_HINT.format(repo=name_or_path, dir="models/" + Path(str(name_or_path)).name)
    )


def read_config(model_dir):
    """config.json of a model directory as a dict."""
    path = Path(model_dir) / "config.json"
    if not path.exists():
        raise CheckpointError(
            f"{model_dir} has no config.json, so it is not a Hugging Face-format model directory.\n"
            + HF_HUB_HINT.format(repo="<repo id>", dir=model_dir)
        )
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- reading weights

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def weight_files(model_dir):
    """The weight files of a model directory: one file, or every shard named by an index."""
    model_dir = Path(model_dir)
    for name in WEIGHT_FILES:
        path = model_dir / name
        if not path.exists():
            continue
        if name.endswith(".index.json"):
            with open(path) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            missing = [s for s in shards if not (model_dir / s).exists()]
            if missing:
                raise CheckpointError(f"{path} names shards that are not on disk: {', '.join(missing)}")
            return [model_dir / s for s in shards]
        return [path]
    raise CheckpointError(
        f"No weights in {model_dir}: expected one of {', '.join(WEIGHT_FILES)}.\n"
        + HF_HUB_HINT.format(repo="<repo id>", dir=model_dir)
    )


def read_weight_file(path):
    """All tensors of one .safetensors or .bin file, on the CPU."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_state_dict(model_dir, prefix=""):
    """Tensors of a model directory whose name starts with `prefix`, with the prefix removed.

    prefix='' returns everything; prefix='text_encoder.' picks the T5 part of a MusicGen checkpoint."""
    tensors = {}
    for path in weight_files(model_dir):
        for name, tensor in read_weight_file(path).items():
            if name.startswith(prefix):
                tensors[name[len(prefix):]] = tensor
    if prefix and not tensors:
        raise CheckpointError(f"No tensor in {model_dir} starts with '{prefix}'.")
    return tensors


def _listing(names, limit=20):
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_into(module, state_dict, source="checkpoint", ignore=()):
    """Copy `state_dict` into `module` strictly, with readable errors.

    ignore: names present in checkpoints that we do not need (e.g. a tied duplicate or a cached table)."""
    expected = module.state_dict()
    given = {k: v for k, v in state_dict.items() if k not in set(ignore)}
    missing = set(expected) - set(given)
    unexpected = set(given) - set(expected)
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}): {_listing(unexpected)}")
    shapes = [
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(given) & set(expected))
        if given[k].shape != expected[k].shape
    ]
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): " + "; ".join(shapes[:20]))
    if problems:
        raise CheckpointError(
            f"{source} does not match {type(module).__name__}'s config:\n  " + "\n  ".join(problems)
            + "\nCheck that config.json belongs to these weights."
        )
    module.load_state_dict(given, strict=True)
    return module


# ----------------------------------------------------------------------------- writing


def atomic_write(path, write_fn):
    """Write a file through `write_fn(tmp_path)` then rename it into place: readers (and a resumed run after a
    kill) see either the old complete file or the new complete file, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_torch_save(obj, path):
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_safetensors(state_dict, path):
    """Save tensors as safetensors (contiguous copies; tied tensors are stored once per name)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))


def save_config(config_dict, path):
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(config_dict, indent=2) + "\n"))
