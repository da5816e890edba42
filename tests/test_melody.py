"""Melody conditioning in musicgen.py: parity with transformers' MusicgenMelodyForConditionalGeneration.

The reference is a *reduced* musicgen-melody: the released decoder width (D 1536, 24 heads, FFN 6144, K 4, N 2048,
235-frame chroma prefix) but 2 layers instead of 48, a 1-layer T5 of t5-base width (768, so enc_to_dec_proj is
768 -> 1536 as released) and a tiny EnCodec; random weights, float32. The full 1.5 B model would take minutes and
~12 GB here, and depth adds nothing the prefix path could get wrong. musicgen-stereo-melody is reduced the same way,
with its 8 streams (4 levels x 2 channels, Paper §4.3). The chroma is computed with our chroma.py and handed to HF as
`input_features` (its feature extractor needs torchaudio)."""

import math

import pytest
import torch

import chroma
import musicgen as M

T5_768 = dict(vocab_size=32128, d_model=768, d_kv=64, num_heads=12, d_ff=256, num_layers=1)
PROMPTS = ["80s pop track with bassy drums and synth", "baroque"]  # different lengths: the batch is padded
SR = chroma.SAMPLE_RATE


pytestmark = pytest.mark.usefixtures("one_thread")


def tune(notes, seconds_each=0.5, sr=SR):
    """A sine melody: one MIDI note per segment -> [N]."""
    t = torch.arange(int(seconds_each * sr)) / sr
    return torch.cat([0.5 * torch.sin(2 * math.pi * 440 * 2 ** ((n - 69) / 12) * t) for n in notes])


@pytest.fixture(scope="module")
def melodies():
    """Two different 3 s tunes, [2, 1, N] at 32 kHz (short: the chroma is looped to 235 frames)."""
    return torch.stack([tune([60, 64, 67, 72, 67, 64]), tune([69, 71, 72, 74, 76, 77])])[:, None]


def reduced_hf_melody(model_dir, spiece_path, **decoder):
    """transformers' melody model, reduced as described at the top (`decoder` fields overridden), saved in
    model_dir with spiece.model."""
    import shutil

    transformers = pytest.importorskip("transformers")
    from encodec_lite import EncodecConfig
    from t5_encoder import T5Config

    codec = EncodecConfig.preset("tiny", codebook_size=2048, codebook_dim=16,
                                 target_bandwidths=(4 * 11 * 50 / 1000,))  # K = 4 codebooks of 2048
    decoder = M.lm_config("musicgen-melody", num_layers=2, **decoder).to_hf()
    config = {"model_type": "musicgen_melody", "num_chroma": 12, "chroma_length": 235, "decoder": decoder,
              "text_encoder": T5Config(**T5_768).to_hf(), "audio_encoder": codec.to_hf()}
    torch.manual_seed(0)
    model = transformers.MusicgenMelodyForConditionalGeneration(
        transformers.MusicgenMelodyConfig.from_dict(config)).eval()
    with torch.no_grad():  # a visible melody: HF's init gives the 12 -> D projection N(0, 0.02)
        model.audio_enc_to_dec_proj.weight.normal_(0, 1.0)
    model.save_pretrained(model_dir)
    shutil.copy(spiece_path, model_dir / "spiece.model")
    return model


@pytest.fixture(scope="module")
def hf_melody(tmp_path_factory, spiece_path):
    """(transformers melody model, its saved directory), reduced as described at the top."""
    model_dir = tmp_path_factory.mktemp("musicgen-melody-reduced")
    return reduced_hf_melody(model_dir, spiece_path), model_dir


@pytest.fixture(scope="module")
def ours(hf_melody):
    return M.MusicGen.from_pretrained(hf_melody[1])


def test_loads_as_a_melody_model(ours):
    config = ours.lm.config
    assert config.melody and not config.cross_attention and config.chroma_length == 235 and config.dim == 1536
    assert not any("encoder_attn" in name for name in ours.lm.state_dict())


def test_logits_match_transformers(hf_melody, ours, melodies):
    hf, _ = hf_melody
    ids, mask = ours.tokenizer(PROMPTS)
    features = chroma.melody_chroma(melodies, SR)  # [2, 235, 12] one-hot
    B, K, S = 2, 4, 10
    seq = torch.randint(0, 2049, (B, K, S), generator=torch.Generator().manual_seed(0))
    seq[:, :, 0] = 2048
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, input_features=features,
                 decoder_input_ids=seq.reshape(B * K, S)).logits  # [B*K, P + S, N]: the prefix positions too
        logits = ours.lm(seq, *ours.encode_text(PROMPTS), chroma=features)
    torch.testing.assert_close(logits, ref[:, -S:].reshape(B, K, S, -1), atol=1e-4, rtol=0)


def test_greedy_generation_with_guidance_matches_transformers(hf_melody, ours, melodies, hf_greedy_generate):
    hf, _ = hf_melody
    T = 12
    ids, mask = ours.tokenizer(PROMPTS)
    ref_codes, _ = hf_greedy_generate(hf, T, input_ids=ids, attention_mask=mask,
                                      input_features=chroma.melody_chroma(melodies, SR))
    codes = ours.generate_tokens(PROMPTS, T, cfg_coef=3.0, temperature=0, melody=melodies, melody_sample_rate=SR)
    assert codes.shape == (2, 4, T)
    assert torch.equal(codes, ref_codes)


def test_no_melody_is_the_null_melody_as_in_transformers(hf_melody, ours):
    hf, _ = hf_melody
    ids, mask = ours.tokenizer(PROMPTS)
    seq = torch.full((8, 3), 2048)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=seq).logits[:, -3:]  # HF's own default
        logits = ours.lm(seq.view(2, 4, 3), *ours.encode_text(PROMPTS))
        silent = ours.lm(seq.view(2, 4, 3), *ours.encode_text(PROMPTS),
                         chroma=chroma.melody_chroma(torch.zeros(2, 1, SR), SR))  # silence = one-hot C too
    torch.testing.assert_close(logits, ref.reshape(2, 4, 3, -1), atol=1e-4, rtol=0)
    torch.testing.assert_close(silent, logits, atol=0, rtol=0)


def test_stereo_melody_logits_and_greedy_codes_match_transformers(tmp_path, spiece_path, melodies,
                                                                  hf_greedy_generate):
    hf = reduced_hf_melody(tmp_path, spiece_path, num_codebooks=8, audio_channels=2)  # musicgen-stereo-melody
    ours = M.MusicGen.from_pretrained(tmp_path)
    assert ours.audio_channels == 2 and ours.lm.config.melody and ours.lm.config.dim == 1536
    ids, mask = ours.tokenizer(PROMPTS)
    features = chroma.melody_chroma(melodies, SR)
    B, K, S = 2, 8, 10
    seq = torch.randint(0, 2049, (B, K, S), generator=torch.Generator().manual_seed(0))
    seq[:, :, 0] = 2048
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, input_features=features,
                 decoder_input_ids=seq.reshape(B * K, S)).logits
        logits = ours.lm(seq, *ours.encode_text(PROMPTS), chroma=features)
    torch.testing.assert_close(logits, ref[:, -S:].reshape(B, K, S, -1), atol=1e-4, rtol=0)
    T = 12
    ref_codes, ref_audio = hf_greedy_generate(hf, T, input_ids=ids, attention_mask=mask, input_features=features)
    codes = ours.generate_tokens(PROMPTS, T, cfg_coef=3.0, temperature=0, melody=melodies, melody_sample_rate=SR)
    assert codes.shape == (2, 8, T) and torch.equal(codes, ref_codes)
    torch.testing.assert_close(ours.decode_audio(codes), ref_audio, atol=1e-4, rtol=1e-3)  # [B, 2, N]


# ----------------------------------------------------------------------------- tiny melody models of our own


@pytest.fixture(scope="module")
def tiny_melody(tmp_path_factory, tiny_musicgen):
    """A tiny melody MusicGen of our own, saved in the HF layout and loaded back."""
    model_dir = tmp_path_factory.mktemp("tiny-melody")
    tiny_musicgen("tiny-melody").save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def tiny_mg(tiny_melody):
    return M.MusicGen.from_pretrained(tiny_melody)


def test_our_melody_checkpoint_loads_in_transformers(tiny_melody, melodies):
    transformers = pytest.importorskip("transformers")
    mg = M.MusicGen.from_pretrained(tiny_melody)
    assert mg.hf_config()["model_type"] == "musicgen_melody" and mg.lm.config.chroma_length == 16
    hf = transformers.MusicgenMelodyForConditionalGeneration.from_pretrained(tiny_melody).eval()
    ids, mask = mg.tokenizer(PROMPTS)
    features = chroma.melody_chroma(melodies, SR, length=16)
    seq = torch.randint(0, 65, (2, 4, 5))
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, input_features=features,
                 decoder_input_ids=seq.reshape(8, 5)).logits[:, -5:].reshape(2, 4, 5, -1)
        logits = mg.lm(seq, *mg.encode_text(PROMPTS), chroma=features)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)


def test_the_melody_changes_the_logits_and_nothing_is_nan(tiny_mg, melodies):
    mg = tiny_mg
    condition, mask = mg.encode_text(["piano", "piano"])
    seq = torch.randint(0, 65, (2, 4, 6))
    sine = tune([69], seconds_each=2.0)  # one steady note: every frame is A
    cases = {"tunes": melodies, "silence": torch.zeros(2, 1, SR), "sine": sine.expand(2, 1, -1)}
    with torch.no_grad():
        out = {name: mg.lm(seq, condition, mask, chroma.melody_chroma(wav, SR, 16)) for name, wav in cases.items()}
    for logits in out.values():
        assert torch.isfinite(logits).all()
    assert (out["tunes"][0] - out["tunes"][1]).abs().max() > 1e-3  # same text and tokens, different tunes
    assert (out["sine"] - out["silence"]).abs().max() > 1e-3
    # and generation: different tunes give different music, silence and a sine run cleanly
    for wav in cases.values():
        codes = mg.generate_tokens(["piano"] * 2, 8, temperature=0, melody=wav, melody_sample_rate=SR)
        assert codes.min() >= 0 and codes.max() < 64
    tunes = mg.generate_tokens(["piano"] * 2, 8, temperature=0, melody=melodies, melody_sample_rate=SR)
    assert not torch.equal(tunes[0], tunes[1])


def melody_inputs():  # a tiny melody LM, two captions and two tunes
    torch.manual_seed(0)
    lm = M.LM(M.lm_config("tiny-melody", text_dim=32)).eval()
    condition, mask = torch.randn(2, 5, 32), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    melody = chroma.melody_chroma(torch.stack([tune([60, 62]), tune([70, 65])])[:, None], SR)
    return lm, condition, mask, melody


@pytest.mark.parametrize("melody_coef", [None, 1.5])  # [cond; uncond], or [cond; uncond; melody alone]
def test_cached_and_reference_loops_agree_with_a_prefix(melody_coef):
    lm, condition, mask, melody = melody_inputs()
    prompt = torch.randint(0, 64, (2, 4, 3))
    runs = [loop(lm, condition, mask, 10, cfg_coef=3.0, temperature=0, chroma=melody, prompt=prompt,
                 melody_coef=melody_coef) for loop in (M.generate_reference, M.generate)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0][:, :, :3], prompt)


def test_melody_and_text_guided_apart():
    """[cond; uncond; melody alone] -> uncond + 3 (melody - uncond) + 6 (cond - melody); equal scales are plain
    guidance, built with two branches; a melody without text is guided by the melody's scale."""
    lm, condition, mask, melody = melody_inputs()
    null = chroma.null_melody(2, melody.shape[1])
    conditions, masks, melodies, guidance = M.with_null_condition(condition, mask, 6.0, melody, melody_coef=3.0)
    assert guidance == {"cfg_coef": 6.0, "melody_coef": 3.0} and len(conditions) == 6
    assert torch.equal(conditions[:2], condition) and not conditions[2:].any() and not masks[2:].any()
    assert torch.equal(melodies[:2], melody) and torch.equal(melodies[2:4], null) and torch.equal(melodies[4:], melody)
    seq = torch.randint(0, 64, (2, 4, 6))
    with torch.no_grad():
        three = lm(seq.repeat(3, 1, 1), conditions, masks, melodies)
    cond, uncond, alone = three.chunk(3)
    assert not torch.allclose(alone, uncond) and not torch.allclose(alone, cond)  # three different branches
    torch.testing.assert_close(M.guided_logits(three, **guidance), uncond + 3 * (alone - uncond) + 6 * (cond - alone))
    torch.testing.assert_close(M.guided_logits(three, 3.0, 3.0), M.guided_logits(torch.cat([cond, uncond]), 3.0))
    assert len(M.with_null_condition(condition, mask, 3.0, melody, melody_coef=3.0)[0]) == 4
    no_text = M.with_null_condition(condition * 0, mask * 0, 6.0, melody, melody_coef=3.0)
    assert len(no_text[0]) == 4 and no_text[3] == {"cfg_coef": 3.0, "melody_coef": None}
    assert M.with_null_condition(condition * 0, mask * 0, 6.0, melody, melody_coef=1.0)[3] == {}  # nothing to do


def test_melody_guidance_travels_with_the_checkpoint(tiny_mg, melodies, tmp_path):
    mg = tiny_mg
    assert mg.melody_guidance is None  # released models: one scale for both
    mg.melody_guidance = 1.5
    apart = mg.generate_tokens(PROMPTS, 6, temperature=0, melody=melodies, melody_sample_rate=SR)
    assert torch.equal(apart, mg.generate_tokens(PROMPTS, 6, temperature=0, melody=melodies, melody_sample_rate=SR,
                                                 melody_coef=1.5))
    assert not torch.equal(apart, mg.generate_tokens(PROMPTS, 6, temperature=0, melody=melodies,
                                                     melody_sample_rate=SR, melody_coef=mg.guidance))
    mg.save_pretrained(tmp_path)
    mg.melody_guidance = None
    assert M.MusicGen.from_pretrained(tmp_path).melody_guidance == 1.5


def test_melody_inputs_are_checked(tiny_mg, melodies):
    mg = tiny_mg
    with pytest.raises(ValueError, match="melody_sample_rate"):
        mg.generate_tokens("rock", 4, melody=melodies)
    with pytest.raises(ValueError, match="2 melodies for 3 prompts"):
        mg.generate_tokens(["a", "b", "c"], 4, melody=melodies, melody_sample_rate=SR)
    with pytest.raises(ValueError, match="chroma"):
        mg.lm(torch.zeros(1, 4, 2, dtype=torch.long), *mg.encode_text("rock"), chroma=torch.zeros(1, 5, 7))


def test_stereo_44k_melody_is_prepared_with_a_notice(tiny_mg, capsys):
    mg = tiny_mg
    stereo = tune([60, 67], sr=44100).expand(2, -1)  # [C, N] at 44.1 kHz
    codes = mg.generate_tokens(["a", "b"], 4, temperature=0, melody=stereo, melody_sample_rate=44100)
    assert codes.shape == (2, 4, 4)
    err = capsys.readouterr().err
    assert "downmixed" in err and "resampled" in err


def test_a_list_of_melodies_is_noticed_once_not_once_per_clip(tiny_mg, capsys):
    melodies = [tune([60 + i], sr=44100) for i in range(3)]  # three clips at one rate, as train.py's samples give
    tiny_mg.generate_tokens(["a", "b", "c"], 4, temperature=0, melody=melodies, melody_sample_rate=44100)
    assert capsys.readouterr().err.count("melody: resampled from 44100 Hz to 32000 Hz.") == 1


def test_text_models_refuse_a_melody(tiny_musicgen):
    mg = tiny_musicgen("tiny")
    with pytest.raises(ValueError, match="no melody conditioning"):
        mg.generate_tokens("rock", 4, melody=torch.zeros(SR), melody_sample_rate=SR)
