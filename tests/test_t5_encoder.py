"""T5 encoder and tokenizer against Hugging Face transformers (random weights at the released t5-base size)."""

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import checkpoints
from t5_encoder import T5_PRESETS, T5Config, T5Encoder, T5Tokenizer, relative_position_bucket

transformers = pytest.importorskip("transformers")

T5_BASE = dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12, feed_forward_proj="relu")
GATED = dict(vocab_size=512, d_model=64, d_kv=16, d_ff=96, num_layers=3, num_heads=4, feed_forward_proj="gated-gelu")

PROMPTS = [
    "80s pop track with bassy drums and synth",
    "90s rock song with loud guitars and heavy drums",
    "jazz",
    "A cheerful country song with acoustic guitars, fiddle and a steady 120 BPM beat, perfect for a road trip.",
    "",
]


def saved_hf_model(tmp_path_factory, name, model_cls=None, **config):
    """A randomly initialised transformers T5 model, saved to a tmp dir. -> (model in eval mode, dir)"""
    torch.manual_seed(0)
    model = (model_cls or transformers.T5EncoderModel)(transformers.T5Config(**config)).eval()
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    return model, path


def hf_hidden(model, ids, mask):
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


def assert_same_at_real_positions(ours, theirs, mask, atol=1e-4):
    real = mask.bool()
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours[real], theirs[real], atol=atol, rtol=0)


@pytest.fixture(scope="module")
def tokenizer(spiece_path):
    return T5Tokenizer(spiece_path)


@pytest.fixture(scope="module")
def hf_tokenizer(spiece_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_tok")
    shutil.copy(spiece_path, path / "spiece.model")
    return transformers.T5Tokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def t5_base(tmp_path_factory):
    return saved_hf_model(tmp_path_factory, "t5_base", **T5_BASE)


@pytest.fixture(scope="module")
def batch(tokenizer):
    return tokenizer(PROMPTS)  # five lengths; the empty prompt is [EOS] only


# ----------------------------------------------------------------------------- position buckets


def test_relative_position_buckets_match_table_and_hf():
    # key−query distance -> bucket, 32 buckets, max distance 128, as transformers' `modeling_t5.py` computes them
    table = {-200: 15, -128: 15, -127: 15, -64: 14, -32: 12, -16: 10, -12: 9, -9: 8, -8: 8, -7: 7, -1: 1, 0: 0,
             1: 17, 7: 23, 8: 24, 9: 24, 12: 25, 16: 26, 32: 28, 64: 30, 127: 31, 128: 31, 200: 31}
    rel = torch.tensor(list(table))
    assert relative_position_bucket(rel).tolist() == list(table.values())
    rel = torch.arange(-600, 601)[None, :]
    hf_bucket = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
    for buckets, distance in [(32, 128), (64, 256), (8, 20)]:
        assert torch.equal(relative_position_bucket(rel, buckets, distance), hf_bucket(rel, True, buckets, distance))


# ----------------------------------------------------------------------------- encoder parity


def test_t5_base_parity_on_padded_batch(t5_base, batch):
    hf, path = t5_base
    ids, mask = batch
    assert (mask.sum(1) < mask.shape[1]).sum() >= 3  # really padded, different lengths
    ours = T5Encoder.from_pretrained(path)
    assert ours.config == T5Config(**T5_BASE)
    with torch.inference_mode():
        out = ours(ids, mask)
    assert out.shape == (len(PROMPTS), ids.shape[1], 768)
    assert_same_at_real_positions(out, hf_hidden(hf, ids, mask), mask)


def test_gated_gelu_parity(tmp_path_factory):
    hf, path = saved_hf_model(tmp_path_factory, "gated", **GATED)
    ours = T5Encoder.from_pretrained(path)
    assert ours.config.feed_forward_proj == "gated-gelu"
    torch.manual_seed(1)
    ids = torch.randint(3, 512, (3, 200))  # longer than max_distance: exercises the far buckets
    mask = torch.ones_like(ids)
    mask[1, 150:] = 0
    mask[2, 7:] = 0
    with torch.inference_mode():
        assert_same_at_real_positions(ours(ids, mask), hf_hidden(hf, ids, mask), mask)
    # the same weights saved as shards + index (how big checkpoints such as flan-t5-xl come)
    sharded = tmp_path_factory.mktemp("sharded")
    hf.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").exists()
    again = T5Encoder.from_pretrained(sharded)
    assert all(torch.equal(t, again.hf_state_dict()[k]) for k, t in ours.hf_state_dict().items())


def test_load_full_t5_for_conditional_generation(tmp_path_factory):
    # t5-base on the hub is a full encoder-decoder: decoder.*, lm_head, encoder.embed_tokens must be skipped
    hf, path = saved_hf_model(tmp_path_factory, "full", transformers.T5ForConditionalGeneration, **GATED)
    names = load_file(path / "model.safetensors")
    assert any(k.startswith("decoder.") for k in names)
    ours = T5Encoder.from_pretrained(path)
    ids = torch.randint(3, 512, (2, 11))
    mask = torch.tensor([[1] * 11, [1] * 4 + [0] * 7])
    with torch.inference_mode():
        theirs = hf.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        assert_same_at_real_positions(ours(ids, mask), theirs, mask)


def test_load_from_musicgen_directory(tmp_path):
    # a real (tiny) transformers MusicGen: config with a `text_encoder` sub-dict, tensors prefixed `text_encoder.`
    torch.manual_seed(0)
    config = transformers.MusicgenConfig(
        text_encoder=transformers.T5Config(**{**GATED, "feed_forward_proj": "relu"}).to_dict(),
        audio_encoder=transformers.EncodecConfig(
            codebook_size=64, codebook_dim=16, hidden_size=16, num_filters=4, num_residual_layers=1,
            upsampling_ratios=[8, 5, 4, 4], sampling_rate=32000, target_bandwidths=[2.2],
        ).to_dict(),
        decoder=transformers.MusicgenDecoderConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64, num_codebooks=4,
            pad_token_id=64, bos_token_id=64,
        ).to_dict(),
    )
    musicgen = transformers.MusicgenForConditionalGeneration(config).eval()
    musicgen.save_pretrained(tmp_path)
    assert "text_encoder" in json.loads((tmp_path / "config.json").read_text())
    ours = T5Encoder.from_pretrained(tmp_path)
    ids = torch.randint(3, 512, (2, 9))
    mask = torch.tensor([[1] * 9, [1] * 3 + [0] * 6])
    with torch.inference_mode():
        assert_same_at_real_positions(ours(ids, mask), hf_hidden(musicgen.text_encoder, ids, mask), mask)


@pytest.mark.parametrize("ff", ["relu", "gated-gelu"])
def test_our_save_loads_in_transformers(tmp_path, ff):
    torch.manual_seed(0)
    ours = T5Encoder(T5Config(**{**GATED, "feed_forward_proj": ff})).eval()
    ours.save_pretrained(tmp_path)
    hf = transformers.T5EncoderModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, 512, (2, 30))
    mask = torch.ones_like(ids)
    mask[0, 12:] = 0
    with torch.inference_mode():
        assert_same_at_real_positions(ours(ids, mask), hf_hidden(hf, ids, mask), mask)
    # and our own loader reads it back bit-exact
    again = T5Encoder.from_pretrained(tmp_path)
    for name, tensor in ours.hf_state_dict().items():
        assert torch.equal(tensor, again.hf_state_dict()[name]), name


def test_config_from_hf_dict_and_presets():
    hf = transformers.T5Config(**T5_BASE).to_dict()
    config = T5Config.from_hf(hf)
    assert config == T5_PRESETS["t5-base"]
    # a config.json that leaves fields out gets transformers' defaults (the t5-small sizes), as in transformers
    defaults = {f.name: getattr(transformers.T5Config(), f.name) for f in dataclasses.fields(T5Config)}
    assert T5Config.from_hf({"model_type": "t5"}) == T5Config(**defaults)
    flan = transformers.T5Config(feed_forward_proj="gated-gelu", d_model=768, num_layers=12, num_heads=12, d_ff=2048)
    assert T5Config.from_hf(flan.to_dict()).feed_forward_proj == "gated-gelu"
    assert T5Config.from_hf(config.to_hf()) == config
    with pytest.raises(ValueError, match="gated-silu"):
        T5Config(feed_forward_proj="gated-silu")


# ----------------------------------------------------------------------------- behaviour of our encoder


def test_all_padding_row_gives_no_nan_and_other_rows_are_unaffected():
    torch.manual_seed(0)
    model = T5Encoder(T5_PRESETS["tiny"]).eval()
    ids = torch.randint(3, 1000, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]])  # the second row is the CFG-style "nothing"
    with torch.inference_mode():
        out = model(ids, mask)
        alone = model(ids[:1, :4], mask[:1, :4])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, :4], alone[0], atol=1e-6, rtol=0)  # padding is invisible to real tokens
    assert not out[0, 4:].any() and not out[1].any()  # padded positions are exactly zero


def test_bf16_autocast_is_finite_and_close():
    torch.manual_seed(0)
    model = T5Encoder(T5_PRESETS["tiny"]).eval()
    ids = torch.randint(3, 1000, (2, 8))
    mask = torch.tensor([[1] * 8, [0] * 8])
    with torch.inference_mode():
        ref = model(ids, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(ids, mask)
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low[0].float(), ref[0], atol=0.1, rtol=0.05)


def test_random_init_trains_and_dropout_only_in_train_mode():
    torch.manual_seed(0)
    model = T5Encoder(T5_PRESETS["tiny"])
    ids = torch.randint(3, 1000, (4, 10))
    mask = torch.ones_like(ids)
    model.eval()
    with torch.no_grad():
        first = model(ids, mask)
        assert torch.equal(first, model(ids, mask))
        assert 0.3 < first.std().item() < 3  # unit-scale output from the init
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(ids, mask), model(ids, mask))
    # a few steps of regressing the output onto a fixed target: finite gradients everywhere, loss goes down
    target = torch.randn(4, 10, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = (model(ids, mask) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# ----------------------------------------------------------------------------- tokenizer


def tokenizer_corpus():
    """>200 varied strings: music prompts, punctuation, digits, accents, scripts, emoji, odd whitespace."""
    base = [
        "80s pop track with bassy drums and synth", "90s rock song with loud guitars and heavy drums",
        "a light and cheerly EDM track, with syncopated drums, aery pads, and strong emotions, bpm: 130",
        "lofi slow bpm electro chill with organic samples", "Classical piano sonata in C minor, Op. 13",
        "Epic orchestral soundtrack; strings + brass, 4/4 time @ 96 BPM!", "Drum'n'bass — fast breakbeats (174bpm)",
        "reggae groove w/ offbeat skank & dub delay", "Hip-hop beat: boom-bap, vinyl crackle, 88 BPM.",
        "Ambient drone... slowly evolving textures", "A jazz trio: upright bass, brushed snare, Rhodes piano",
        "Techno 4x4 kick @128bpm, acid 303 line", "folk ballad with fingerpicked guitar & harmonica",
        "Synthwave / retrowave, 1984 vibes", "Bossa nova, nylon guitar, soft vocals (instrumental)",
        "heavy metal: double-kick drums, palm-muted riffs, shredding solo!!!", "K-pop dance track",
        "Gregorian chant in a cathedral", "Afrobeat with horns, percussion and call-and-response",
        "8-bit chiptune for a retro video game", "Sad violin solo, E♭ minor, rubato", "Tempo: 60–70 bpm",
        "Trap beat with 808s & hi-hat rolls (140 BPM)", "A waltz in 3/4 — strings, harp; pp → ff crescendo",
        # punctuation and digits
        "Hello, world!", "What?!", "(parentheses) [brackets] {braces} <angles>", "a-b_c.d,e;f:g", "#1 hit @ 100%",
        "\"quoted\" and 'single' and `backtick`", "~tilde^caret|pipe\\backslash/slash", "$5.99 €10 £3 ¥500",
        "3.14159265358979", "1,000,000", "2024-01-31T12:34:56Z", "0", "007", "1/2 3/4 5/8", "+-*/=<>",
        "...", "!!!", "???", "#", "a.b.c.", "e-mail@example.com", "http://example.com/a?b=c&d=e",
        # accents and Latin extensions
        "Crème brûlée, ça va? Déjà vu!", "naïve café résumé", "Ångström Øresund Æsir", "Dvořák Škoda żółć",
        "Mädchen Größe Straße", "São Paulo, coração", "El niño pequeño", "İstanbul ğüşöç", "Beyoncé",
        "cafe\u0301 (decomposed accent)", "Ñandú", "Þór ðæ", "œuvre", "ﬁnal ﬂute (ligatures)",
        # other scripts
        "日本語のテキスト", "音楽を作る", "中文音乐", "한국 음악", "Привет, мир! Музыка.", "Ελληνική μουσική",
        "موسيقى عربية", "מוזיקה עברית", "हिन्दी संगीत", "ভারতীয় সঙ্গীত", "ดนตรีไทย", "Tiếng Việt nhạc",
        "ქართული მუსიკა", "Հայերեն", "አማርኛ ሙዚቃ", "ᚠᚢᚦᚨᚱᚲ", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３", "ﾊﾝｶｸ ｶﾀｶﾅ",
        # emoji and symbols
        "🎵🎶 music 🎸🥁", "😀", "👩‍🎤 singer", "🇫🇷 French chanson", "♩ ♪ ♫ ♬ ♭ ♮ ♯", "𝄞 treble clef",
        "© 2023 ™ ®", "½ ¼ ¾ ① ② ③ ² ³", "→ ← ↑ ↓ ⇒", "∞ ≈ ≠ ≤ ≥ ∑ √", "☃ ☂ ★ ☆",
        # whitespace
        "", " ", "   ", "\t", "\n", "two  spaces", "many      spaces", " leading", "trailing ", "  both  ",
        "tab\tseparated", "new\nline", "crlf\r\nline", "nbsp\u00a0here", "ideographic\u3000space",
        "zero\u200bwidth", "en\u2002space", "\x00control\x07chars\x1f",
    ]
    variants = [s.upper() for s in base[:30]] + [s.lower() for s in base[30:60]] + [" " + s + "  " for s in base[:40]]
    long_text = ", ".join(base[:24]) + " "
    long_text = (long_text * (2000 // len(long_text) + 1))[:2000]
    return base + variants + [long_text]


def test_tokenizer_matches_transformers(tokenizer, hf_tokenizer):
    texts = tokenizer_corpus()
    assert len(texts) >= 200 and any(len(t) >= 2000 for t in texts)
    for text in texts:
        assert tokenizer.encode(text) == hf_tokenizer(text)["input_ids"], repr(text)
    # a padded batch: ids and attention mask
    ids, mask = tokenizer(texts)
    ref = hf_tokenizer(texts, padding=True, return_tensors="pt")
    assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"])
    assert ids.dtype == mask.dtype == torch.long


def test_tokenizer_basics(tokenizer):
    assert tokenizer.encode("") == [1]  # EOS only, no BOS
    assert tokenizer.vocab_size == 32000
    ids, mask = tokenizer("jazz")  # a lone string is a batch of one
    assert ids.shape == mask.shape == (1, len(tokenizer.encode("jazz")))
    # documented difference from HF: special-token strings in the text are plain text here (SentencePiece's view)
    assert tokenizer.encode("a </s> b") == tokenizer.sp.encode("a </s> b") + [1]


def test_tokenizer_rejects_bad_prompts(tokenizer):
    with pytest.raises(TypeError, match=r"prompt 1 is int"):
        tokenizer(["fine", 42])
    with pytest.raises(TypeError, match=r"prompt 0 is NoneType"):
        tokenizer([None])
    with pytest.raises(TypeError, match="non-empty list"):
        tokenizer([])


def test_tokenizer_from_pretrained_and_save(spiece_path, tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match=r"(?s)No spiece.model in .*hf download"):
        T5Tokenizer.from_pretrained(tmp_path)
    T5Tokenizer(spiece_path).save_pretrained(tmp_path)
    assert T5Tokenizer.from_pretrained(tmp_path).encode("jazz") == T5Tokenizer(spiece_path).encode("jazz")


def test_train_tokenizer_with_t5_special_ids(tmp_path):
    captions = [f"{mood} {genre} track with {inst} at {bpm} bpm"
                for mood in ["happy", "sad", "calm", "epic", "dark"]
                for genre in ["rock", "jazz", "techno", "folk", "ambient", "classical"]
                for inst in ["piano", "guitar", "drums", "strings", "synth pads"]
                for bpm in [80, 100, 120, 140]]
    tok = T5Tokenizer.train(captions, tmp_path / "spiece.model", vocab_size=200)
    assert (tok.sp.pad_id(), tok.sp.eos_id(), tok.sp.unk_id(), tok.sp.bos_id()) == (0, 1, 2, -1)
    assert [tok.sp.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert 3 < tok.vocab_size <= 200
    ids, mask = tok(["happy jazz track with piano", "dark techno"])
    assert ids[0, mask[0].sum() - 1] == 1 and ids[1, -1] == 0 and mask[1, -1] == 0
    assert 2 not in ids[0].tolist()  # every word was seen in training: no <unk>
    # and a tiny T5 sized to that vocabulary runs on it
    model = T5Encoder(dataclasses.replace(T5_PRESETS["tiny"], vocab_size=tok.vocab_size)).eval()
    assert torch.isfinite(model(ids, mask)).all()


# ----------------------------------------------------------------------------- errors


def test_clear_errors_for_incomplete_directories(tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match="no config.json"):
        T5Encoder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(T5_PRESETS["tiny"].to_hf()))
    with pytest.raises(checkpoints.CheckpointError, match="No weights in"):
        T5Encoder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "encodec"}))
    with pytest.raises(checkpoints.CheckpointError, match="not a T5"):
        T5Encoder.from_pretrained(tmp_path)


@pytest.fixture
def tiny_dir(tmp_path):
    T5Encoder(T5_PRESETS["tiny"]).save_pretrained(tmp_path)
    return tmp_path


def test_missing_and_unexpected_tensors_are_listed(tiny_dir):
    tensors = load_file(tiny_dir / "model.safetensors")
    del tensors["encoder.block.1.layer.0.SelfAttention.k.weight"]
    tensors["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"] = torch.zeros(32, 4)
    save_file(tensors, tiny_dir / "model.safetensors")
    with pytest.raises(checkpoints.CheckpointError) as err:
        T5Encoder.from_pretrained(tiny_dir)
    message = str(err.value)
    assert "missing tensors (1): encoder.block.1.layer.0.SelfAttention.k.weight" in message
    assert "unexpected tensors (1): encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in message


def test_shape_mismatch_names_the_tensor(tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    config["d_ff"] = 256  # config and weights disagree
    (tiny_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(checkpoints.CheckpointError, match=r"encoder\.block\.0\.layer\.1\.DenseReluDense\.wi\.weight"):
        T5Encoder.from_pretrained(tiny_dir)


def test_bad_encoder_inputs():
    model = T5Encoder(T5_PRESETS["tiny"])
    with pytest.raises(ValueError, match="outside this encoder's vocabulary"):
        model(torch.tensor([[5, 1000]]))
    with pytest.raises(ValueError, match="token id -1"):
        model(torch.tensor([[5, -1]]))
    with pytest.raises(ValueError, match="LongTensor"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="mask must be"):
        model(torch.tensor([[5, 6]]), torch.ones(1, 3))
