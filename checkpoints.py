"""
Finding, reading and writing weight files.

Every model in this project (T5 encoder, EnCodec, the MusicGen LM) loads the public Hugging Face
checkpoints and saves its own in the same layout, so one small set of helpers serves them all:

    resolve_model_dir(name_or_path)   a local directory, or a model already in the HF cache (never downloads)
    download(repo_id)                 the one opt-in exception: fetch a hub repo into the HF cache
    read_config(dir)                  config.json as a dict, with a clear error if it is missing
    load_state_dict(dir, prefix)      every tensor of model.safetensors / a sharded index / pytorch_model.bin
    load_into(module, state_dict)     load tensors into a module; missing, unexpected or misshapen tensors are
                                      listed by name instead of failing deep inside torch
    save_safetensors / atomic_torch_save   write files so that a crash never leaves half a file behind
    uninitialised(cls, config)             a module to load into, without a random init or a second copy

The Hugging Face MusicGen layout: one directory, as transformers' MusicgenForConditionalGeneration reads it
(musicgen.py holds the models and calls these helpers; this file holds the names):

    config.json              one block per part: text_encoder (T5), audio_encoder (EnCodec), decoder (the LM)
                             musicgen_config, read_musicgen_config, lm_config_from_hf / lm_config_to_hf
    model.safetensors        one name prefix per part: text_encoder.*, audio_encoder.*, the LM's decoder.* ...
                             musicgen_state_dict, take, lm_state_dict_from_hf / lm_state_dict_to_hf
    generation_config.json   the sampling defaults: the window (max_length), top_k, guidance_scale
                             generation_from_hf / generation_to_hf
    spiece.model             the T5 tokenizer's vocabulary (t5_encoder.T5Tokenizer)
                             save_musicgen writes the first three

Training checkpoints:

    save_checkpoint / load_checkpoint      train.py's resume files: the state of every part of a training stage
    log / keep_log_until                   ... and its log, one JSON line per logged step
"""

import json
import os
import re
import tempfile
from pathlib import Path

import torch

# Appended to a "model not found" error for a hub id: nothing downloads unasked, so it says how to.
HF_HUB_HINT = ("Download it once with `hf download {repo} --local-dir {dir}` and pass that directory, or let "
               "checkpoints.download fetch it into the cache (sample.py --download).")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # owner/name, e.g. facebook/musicgen-small


class CheckpointError(ValueError):
    """A checkpoint directory or file does not match what the code expects."""


# ----------------------------------------------------------------------------- locating a model


def hf_cache_dir():
    """The Hugging Face hub cache, honouring the same environment variables as huggingface_hub."""
    if os.environ.get("HF_HUB_CACHE"):  # the hub cache itself
        return Path(os.environ["HF_HUB_CACHE"])
    hf_home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
    return Path(hf_home) / "hub"  # HF_HOME (default ~/.cache/huggingface) holds the hub cache in hub/


def is_hub_id(name):
    """Whether `name` reads as a hub repo id 'owner/name' (not a path such as /x/y, ./x or ~/x)."""
    return HUB_ID.fullmatch(str(name)) is not None


def find_in_hf_cache(repo_id):
    """The snapshot directory of `repo_id` (e.g. 'facebook/musicgen-small') in the HF cache, or None: the one
    refs/main names, else the newest complete one."""
    # the hub's layout: models--<org>--<name>/snapshots/<commit hash>/ holds the files of each downloaded revision,
    # and refs/main holds the hash of the revision the last download of the main branch fetched
    repo = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    main = repo / "refs" / "main"
    if main.is_file() and (repo / "snapshots" / main.read_text().strip() / "config.json").exists():
        return repo / "snapshots" / main.read_text().strip()
    if not (repo / "snapshots").is_dir():
        return None
    candidates = [p for p in (repo / "snapshots").iterdir() if (p / "config.json").exists()]  # complete ones only
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None  # the newest


def resolve_model_dir(name_or_path):
    """A directory on disk for `name_or_path`: the path itself, or the cached snapshot of a hub repo id.

    Nothing is ever downloaded: a repo id that is not in the cache raises with instructions."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():  # a path on disk wins over a hub id of the same name
        return path
    if path.exists():
        raise CheckpointError(f"{name_or_path} is a file; expected a model directory holding config.json.")
    if not is_hub_id(name_or_path):
        raise CheckpointError(f"No model directory '{name_or_path}': it does not exist.")
    cached = find_in_hf_cache(str(name_or_path))
    if cached is not None:
        return cached
    raise CheckpointError(
        f"No model directory '{name_or_path}' on disk and no copy in the Hugging Face cache ({hf_cache_dir()}). "
        + HF_HUB_HINT.format(repo=name_or_path, dir="models/" + Path(str(name_or_path)).name)
    )


def download(repo_id):
    """Fetch hub repo `repo_id` into the Hugging Face cache -> its snapshot directory. The only network access in
    the project, and only when asked for (sample.py --download): the config, the safetensors weights, the tokenizer."""
    if not is_hub_id(repo_id):
        raise CheckpointError(f"'{repo_id}' is not a hub id: downloads need owner/name, e.g. facebook/musicgen-small")
    try:
        from huggingface_hub import snapshot_download  # optional: only downloading needs it
    except ImportError:
        raise CheckpointError("downloading needs huggingface_hub: pip install huggingface_hub") from None
    try:  # *.json: config + generation config (+ a shard index); *.model: spiece.model; not the duplicate .bin files
        path = snapshot_download(repo_id, cache_dir=hf_cache_dir(), allow_patterns=["*.json", "*.safetensors",
                                                                                    "*.model"])
    except Exception as e:  # no network, no such repo, a gated one...: the reason in one line
        raise CheckpointError(f"could not download {repo_id} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                              "check the id, the network and that HF_HUB_OFFLINE is not set") from None
    return Path(path)


def read_config(model_dir):
    """config.json of a model directory as a dict."""
    path = Path(model_dir) / "config.json"
    if not path.exists():
        raise CheckpointError(
            f"{model_dir} has no config.json, so it is not a Hugging Face-format model directory. "
            + HF_HUB_HINT.format(repo="<owner/name>", dir=model_dir)
        )
    with open(path) as f:
        return json.load(f)  # the model's sizes, in the Hugging Face names


# ----------------------------------------------------------------------------- reading weights

# the names a Hugging Face model directory may hold its weights under, in order of preference
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def weight_files(model_dir):
    """The weight files of a model directory: one file, or every shard named by an index."""
    model_dir = Path(model_dir)
    for name in WEIGHT_FILES:
        path = model_dir / name
        if not path.exists():
            continue
        if name.endswith(".index.json"):  # large models: an index maps each tensor name to its shard file
            with open(path) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))  # each shard once
            missing = [s for s in shards if not (model_dir / s).exists()]
            if missing:
                raise CheckpointError(f"{path} names shards that are not on disk: {', '.join(missing)}")
            return [model_dir / s for s in shards]
        return [path]  # the first name found: safetensors before the older pickled .bin
    raise CheckpointError(
        f"No weights in {model_dir}: expected one of {', '.join(WEIGHT_FILES)}. "
        + HF_HUB_HINT.format(repo="<owner/name>", dir=model_dir)
    )


def read_weight_file(path):
    """All tensors of one .safetensors or .bin file, on the CPU."""
    path = str(path)
    if path.endswith(".safetensors"):  # a flat table of tensors: safe to read, no code in it
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)  # a pickle: weights_only refuses code in it


def load_state_dict(model_dir, prefix=""):
    """Tensors of a model directory whose name starts with `prefix`, with the prefix removed.

    prefix='' returns everything; prefix='text_encoder.' picks the T5 part of a MusicGen checkpoint."""
    tensors = {}
    for path in weight_files(model_dir):  # one file, or every shard in turn
        for name, tensor in read_weight_file(path).items():
            if name.startswith(prefix):
                tensors[name[len(prefix):]] = tensor  # e.g. "text_encoder.encoder.block.0..." -> "encoder.block.0..."
    if prefix and not tensors:
        raise CheckpointError(f"No tensor in {model_dir} starts with '{prefix}'.")
    return tensors


def _listing(names, limit=20):
    """'a, b, c, ... (n more)': enough names to see the pattern, not a page of them."""
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_into(module, state_dict, source="checkpoint", ignore=()):
    """Load `state_dict` into `module` strictly, with readable errors.

    ignore: names present in checkpoints that we do not need (e.g. a tied duplicate or a cached table)."""
    expected = module.state_dict()  # the names and shapes the module's config implies
    given = {k: v for k, v in state_dict.items() if k not in set(ignore)}
    missing = set(expected) - set(given)  # usually: the config describes a bigger model than the file
    unexpected = set(given) - set(expected)  # usually: another model's file, or a renamed layer
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
    # everything checked above: this cannot fail half-way. A module on the meta device (uninitialised) takes the
    # checkpoint's tensors themselves, in its own dtype, so each weight is held once while loading, not twice
    on_meta = any(tensor.is_meta for tensor in expected.values())
    if on_meta:
        given = {k: v.to(expected[k].dtype) for k, v in given.items()}  # no copy when the dtypes agree
    module.load_state_dict(given, strict=True, assign=on_meta)
    return module


def uninitialised(cls, config):
    """cls(config) on the meta device, to load a checkpoint into: shapes only, no memory and no random init (that
    of the ~0.5 B numbers of musicgen-small's T5 and LM takes most of a minute on a CPU). load_into then hands it
    the checkpoint's own tensors: loading musicgen-medium holds its 6 GB of weights once, not twice. Only for
    modules whose every tensor is in the checkpoint (no buffer that is not saved) and whose constructor computes
    nothing from its tensors."""
    with torch.device("meta"):
        return cls(config)


# ----------------------------------------------------------------------------- the device


def pick_device(name="auto"):
    """'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps' -> a torch.device, or a one-line
    CheckpointError naming the device and what to do, before any model is loaded."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CheckpointError(f"unknown device '{name}': use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"device '{name}': this PyTorch has no CUDA GPU to use (a CPU build, or no GPU "
                              "found); use --device cpu, or install the CUDA build of PyTorch (see the README)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise CheckpointError(f"device '{name}': only {torch.cuda.device_count()} CUDA GPU(s) here")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CheckpointError(f"device '{name}': MPS (Apple silicon) is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise CheckpointError(f"device '{name}' is not supported: use auto, cpu, cuda, cuda:N or mps")
    return device


# ----------------------------------------------------------------------------- writing


def atomic_write(path, write_fn):
    """Write a file through `write_fn(tmp_path)` then rename it into place: readers (and a resumed run after a
    kill) see either the old complete file or the new complete file, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary file sits beside the target: the same file system, so the rename below is atomic
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    os.close(fd)  # write_fn opens the file by name
    try:
        write_fn(tmp)
        umask = os.umask(0)  # the only way to read the umask is to set it: put it straight back
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private (0600): give it the mode a plain open() would
        os.replace(tmp, path)  # atomic on POSIX and Windows: the old file or the new one, never a mix
    finally:
        if os.path.exists(tmp):  # write_fn failed: leave no temporary behind
            os.remove(tmp)


def atomic_torch_save(obj, path):
    """torch.save through atomic_write: a run killed while saving keeps its previous checkpoint."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_safetensors(state_dict, path):
    """Save tensors as safetensors (contiguous copies; tied tensors are stored once per name)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}  # safetensors refuses shared memory
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))


def save_config(config_dict, path):
    """config.json, indented as the Hugging Face files are."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(config_dict, indent=2) + "\n"))


# ----------------------------------------------------------------------------- the Hugging Face MusicGen layout
# The T5 and EnCodec blocks and tensors are those parts' own (t5_encoder.py, encodec_lite.py); the LM's follow here.

LM_CONFIG_NAMES = {  # LMConfig field -> its name in the `decoder` block of config.json (N is HF's vocab_size)
    "num_codebooks": "num_codebooks", "card": "vocab_size", "dim": "hidden_size", "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads", "ffn_dim": "ffn_dim", "max_positions": "max_position_embeddings",
    "activation": "activation_function", "dropout": "dropout", "audio_channels": "audio_channels",  # 2: stereo
}
MUSICGEN_PARTS = ("text_encoder", "audio_encoder", "decoder")  # the blocks of config.json


def lm_config_from_hf(config):
    """LMConfig's fields (a dict) from a whole MusicGen config.json: its `decoder` block, the T5 width, and a melody
    model's top-level num_chroma and chroma_length (absent: LMConfig's defaults, the released melody model's)."""
    decoder = config["decoder"]
    if decoder.get("audio_channels", 1) not in (1, 2):
        raise CheckpointError(f"decoder.audio_channels is {decoder['audio_channels']}: MusicGen checkpoints are "
                              "mono (1) or stereo (2).")
    fields = {ours: decoder[hf] for ours, hf in LM_CONFIG_NAMES.items() if hf in decoder}
    fields.update({key: config[key] for key in ("num_chroma", "chroma_length", "chroma_hop", "text_length")
                   if key in config})
    # the melody model prepends its conditions instead of cross-attending to them (musicgen.LM)
    melody = decoder.get("model_type") == "musicgen_melody_decoder"
    return dict(fields, cross_attention=not melody, text_dim=config["text_encoder"]["d_model"])


def lm_config_to_hf(fields):
    """The `decoder` block of config.json from LMConfig's fields (text_dim goes into the text_encoder block)."""
    model_type = "musicgen_decoder" if fields["cross_attention"] else "musicgen_melody_decoder"
    decoder = {hf: fields[ours] for ours, hf in LM_CONFIG_NAMES.items()}
    # every other field keeps transformers' default, which is what the released decoders use (no other dropout,
    # unscaled embeddings); the special token N pads and starts every sequence
    return {"model_type": model_type, **decoder, "pad_token_id": fields["card"], "bos_token_id": fields["card"]}


def musicgen_config(text_encoder, audio_encoder, lm):
    """The whole config.json from the three parts' configs (T5Config, EncodecConfig, LMConfig: each has to_hf)."""
    config = {"architectures": ["MusicgenForConditionalGeneration"], "model_type": "musicgen",
              "is_encoder_decoder": True, "text_encoder": text_encoder.to_hf(), "audio_encoder": audio_encoder.to_hf(),
              "decoder": lm.to_hf()}
    if not lm.cross_attention:  # what transformers' MusicgenMelodyForConditionalGeneration reads
        config.update(architectures=["MusicgenMelodyForConditionalGeneration"], model_type="musicgen_melody",
                      num_chroma=lm.num_chroma, chroma_length=lm.chroma_length,
                      chroma_hop=lm.chroma_hop, text_length=lm.text_length)  # the last two: ours (HF ignores them)
    return config


def read_musicgen_config(model_dir):
    """config.json of a MusicGen directory, or a CheckpointError saying what kind of directory is expected."""
    config = read_config(model_dir)
    missing = [part for part in MUSICGEN_PARTS if part not in config]
    if missing:
        raise CheckpointError(f"{model_dir} is not a MusicGen checkpoint: its config.json lacks "
                              f"{', '.join(missing)}. Expected a Hugging Face MusicGen directory (config.json "
                              "with text_encoder, audio_encoder and decoder blocks, model.safetensors, "
                              "spiece.model), e.g. facebook/musicgen-small, or one written by train.py.")
    return config


# our LM module prefix -> its tensor-name prefix in model.safetensors; inside a layer every name is HF's own
LM_TENSOR_NAMES = {
    "condition_proj.": "enc_to_dec_proj.",
    "chroma_proj.": "audio_enc_to_dec_proj.",  # melody models
    "embed.": "decoder.model.decoder.embed_tokens.",
    "layers.": "decoder.model.decoder.layers.",
    "out_norm.": "decoder.model.decoder.layer_norm.",
    "heads.": "decoder.lm_heads.",
}
LM_IGNORED = ("decoder.model.decoder.embed_positions.weights",)  # a cached copy of the sinusoids (older files)


def rename(name, prefixes):
    """`name` with the first matching prefix of {old: new} replaced (unchanged when none matches)."""
    for old, new in prefixes.items():
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def lm_state_dict_to_hf(state_dict):
    """The LM's tensors under their names in a Hugging Face MusicGen checkpoint."""
    return {rename(name, LM_TENSOR_NAMES): tensor for name, tensor in state_dict.items()}


def lm_state_dict_from_hf(state_dict):
    """HF-named LM tensors (decoder.*, enc_to_dec_proj.*, a melody model's audio_enc_to_dec_proj.*) -> our names."""
    back = {hf: ours for ours, hf in LM_TENSOR_NAMES.items()}
    return {rename(name, back): tensor for name, tensor in state_dict.items() if name not in LM_IGNORED}


def musicgen_state_dict(text_encoder, audio_encoder, lm):
    """Every tensor of a MusicGen under its name in model.safetensors: each part's own HF names (its
    hf_state_dict), under the part's prefix; the LM's names carry their own (LM_TENSOR_NAMES)."""
    parts = {"text_encoder.": text_encoder, "audio_encoder.": audio_encoder, "": lm}
    return {prefix + name: tensor for prefix, part in parts.items() for name, tensor in part.hf_state_dict().items()}


def take(tensors, prefix):
    """Remove and return the tensors under `prefix`, prefix stripped (so each part's memory is freed early)."""
    names = [name for name in tensors if name.startswith(prefix)]
    return {name[len(prefix) :]: tensors.pop(name) for name in names}


def generation_from_hf(model_dir, levels):
    """MusicGen's generation defaults from generation_config.json, None where it does not say: context_frames
    (the window, from max_length = T + K steps, K the codebook levels per channel: 1500 for the released models,
    i.e. their 30 s training crops), top_k, temperature, guidance (guidance_scale) and melody_guidance (our own key,
    melody_guidance_scale: a melody's scale when guided apart from the text; transformers ignores it)."""
    path = Path(model_dir) / "generation_config.json"
    generation = json.loads(path.read_text()) if path.exists() else {}
    max_length = generation.get("max_length")
    return {"context_frames": max_length - levels if max_length else None, "top_k": generation.get("top_k"),
            "temperature": generation.get("temperature"), "guidance": generation.get("guidance_scale"),
            "melody_guidance": generation.get("melody_guidance_scale")}


def generation_to_hf(special, levels, context_frames, top_k, guidance, melody_guidance=None, temperature=1.0):
    """generation_config.json: sampling with the model's top_k, temperature and guidance(s), sequences of at most
    the window (T + K steps; 1500 without one, as released), every sequence padded and started with the special
    token."""
    apart = {} if melody_guidance is None else {"melody_guidance_scale": melody_guidance}
    return {"decoder_start_token_id": special, "pad_token_id": special, "bos_token_id": special,
            "do_sample": True, "guidance_scale": guidance, "top_k": top_k, "temperature": temperature,
            "max_length": context_frames + levels if context_frames else 1500, **apart}


def save_musicgen(model_dir, config, generation, tensors):
    """config.json, generation_config.json and model.safetensors of a MusicGen directory (the tokenizer writes its
    own spiece.model beside them)."""
    model_dir = Path(model_dir)
    save_config(config, model_dir / "config.json")
    save_config(generation, model_dir / "generation_config.json")
    save_safetensors(tensors, model_dir / "model.safetensors")


# ----------------------------------------------------------------------------- train.py's checkpoints
# A training checkpoint (ckpt.pt, codec_ckpt.pt) is one torch file: {"step", one state_dict per part (models,
# optimiser), "config": the TrainConfig, "architecture": a plain description of the models}. The description lets a
# resume refuse a checkpoint of other models with a list of what differs, instead of a wall of shape errors.


def save_checkpoint(path, step, parts, architecture, config):
    """Write {"step", part name: its state_dict() (None for a part that is None), "config", "architecture"}, atomically
    (a run killed while saving keeps its previous checkpoint)."""
    states = {name: part.state_dict() if part is not None else None for name, part in parts.items()}
    atomic_torch_save({"step": step, **states, "config": config, "architecture": plain(architecture)}, path)


def load_checkpoint(path, architecture, parts):
    """Read a checkpoint written by save_checkpoint, check it describes `architecture`, load each part that is not
    None (a frozen, pretrained text encoder is not saved) -> the checkpoint dict (its "step", "config"...)."""
    checkpoint = read_checkpoint(path)
    check_architecture(checkpoint, architecture, path)  # before any tensor is copied: all or nothing
    for name, part in parts.items():
        try:
            if part is not None:
                part.load_state_dict(checkpoint[name])  # strict: every tensor, each of the right shape
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{path}: its {name} state does not fit this model ({e}). Delete it to start "
                                  "over.") from None
    return checkpoint


def read_checkpoint(path):
    """A training checkpoint as a dict, or a CheckpointError saying the file is damaged and what to do."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # weights_only: never runs pickled code
    except Exception as e:  # truncated file, not a torch file, pickled junk...
        raise CheckpointError(
            f"Cannot read checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). It is corrupt "
            "or not a checkpoint of train.py. Delete it to start this stage over, or use another --out_dir."
        ) from None


def read_step(path):
    """The step a training checkpoint was saved at."""
    return read_checkpoint(path).get("step")


def plain(description):
    """Tuples -> lists etc., so a description compares equal to itself after a save / load round trip."""
    return json.loads(json.dumps(description))


def check_architecture(checkpoint, architecture, path):
    """The checkpoint must describe the same models as `architecture` ({part: {key: value}}), or nothing is loaded:
    the error lists each differing key. Training settings may change; train.py only notices them."""
    saved = checkpoint.get("architecture") if isinstance(checkpoint, dict) else None  # None: some other torch file
    if saved is None:
        raise CheckpointError(f"{path} is not a checkpoint written by train.py (no 'architecture' entry). Delete it "
                              "or use another --out_dir.")
    # one line per differing key, e.g. "lm.num_layers: checkpoint 4 vs now 6"
    diffs = [f"{part}.{k}: checkpoint {saved.get(part, {}).get(k)!r} vs now {v!r}"
             for part, now in plain(architecture).items() for k, v in now.items() if saved.get(part, {}).get(k) != v]
    if diffs:
        raise CheckpointError(
            f"{path} was written for a different model, so it cannot be resumed:\n  " + "\n  ".join(diffs[:12])
            + "\nUse the settings it was made with, another --out_dir, or delete the checkpoint to start over.")


def log(path, **row):
    """Append one JSON line to a training log (log.jsonl, codec_log.jsonl)."""
    with open(path, "a") as f:  # append: a resumed run goes on writing the same file
        f.write(json.dumps(row) + "\n")


def keep_log_until(path, step):
    """On resume, drop log lines from after the checkpoint (steps that will be redone), so the log reads as one run."""
    if path.exists():
        rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]  # kept
        path.write_text("".join(row + "\n" for row in rows))
