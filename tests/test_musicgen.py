"""MusicGen LM, delay pattern, generation and checkpoints (musicgen.py).

Parity tests build transformers' MusicgenForConditionalGeneration at the full musicgen-small size, and at
musicgen-stereo-small's (musicgen-small's with the decoder's num_codebooks 8 and audio_channels 2, Paper §4.3), with
random weights (fp32), save it, load the files with our code and compare logits, greedy codes and decoded audio.
Everything else runs on tiny models built from our own presets."""

import shutil

import pytest
import torch

import musicgen as M
from checkpoints import CheckpointError


# ----------------------------------------------------------------------------- fixtures


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["musicgen-small", "musicgen-stereo-small"])
def hf_small(request, hf_small_builder):
    """(transformers model, its saved directory): musicgen-small sizes, mono or stereo, random weights, float32."""
    stereo = request.param == "musicgen-stereo-small"
    return hf_small_builder(**(dict(num_codebooks=8, audio_channels=2) if stereo else {}))


@pytest.fixture(scope="module")
def ours_small(hf_small):
    return M.MusicGen.from_pretrained(hf_small[1])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_musicgen):
    """A tiny MusicGen of our own (T5, EnCodec and LM), saved in the Hugging Face layout."""
    model_dir = tmp_path_factory.mktemp("tiny")
    tiny_musicgen().save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return M.MusicGen.from_pretrained(tiny_dir)


def tiny_lm(**overrides):
    torch.manual_seed(0)
    return M.LM(M.lm_config("tiny", **overrides)).eval()


def text_condition(B=2, L=5, dim=768):
    condition = torch.randn(B, L, dim)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 3:] = 0  # a padded second prompt
    return condition, mask


# ----------------------------------------------------------------------------- parity with transformers (full size)

PROMPTS = ["80s pop track with bassy drums and synth", "baroque"]  # different lengths: the batch is padded


def test_lm_logits_match_transformers(hf_small, ours_small):
    hf, _ = hf_small
    ids, mask = ours_small.tokenizer(PROMPTS)
    B, K, S = 2, ours_small.lm.config.num_codebooks, 12  # K = 4, or 8 streams in stereo
    seq = torch.randint(0, 2049, (B, K, S), generator=torch.Generator().manual_seed(0))
    seq[:, :, 0] = 2048
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=seq.reshape(B * K, S)).logits
        condition, condition_mask = ours_small.encode_text(PROMPTS)
        ours = ours_small.lm(seq, condition, condition_mask)
    assert ours.shape == (B, K, S, 2048)
    torch.testing.assert_close(ours, ref.view(B, K, S, -1), atol=1e-4, rtol=0)


def test_greedy_generation_and_audio_match_transformers(hf_small, ours_small, hf_greedy_generate):
    hf, _ = hf_small
    T = 30
    ids, mask = ours_small.tokenizer(PROMPTS)
    ref_codes, ref_audio = hf_greedy_generate(hf, T, input_ids=ids, attention_mask=mask)  # [B, K, T], [B, C, N]
    codes = ours_small.generate_tokens(PROMPTS, frames=T, cfg_coef=3.0, temperature=0)
    assert codes.shape == ref_codes.shape == (2, ours_small.lm.config.num_codebooks, T)
    assert torch.equal(codes, ref_codes)
    wav = ours_small.decode_audio(codes)  # stereo: each channel's streams through the mono codec
    assert wav.shape == ref_audio.shape == (2, ours_small.audio_channels, T * 640)
    torch.testing.assert_close(wav, ref_audio, atol=1e-4, rtol=1e-3)


# ----------------------------------------------------------------------------- delay pattern


def test_delay_pattern_layout_matches_the_diagram():
    codes = (100 * torch.arange(4)[:, None] + torch.arange(6)[None, :])[None]  # [1, 4, 6], 100 k + t
    S = -1
    expected = torch.tensor([
        [S, 0, 1, 2, 3, 4, 5, S, S, S],
        [S, S, 100, 101, 102, 103, 104, 105, S, S],
        [S, S, S, 200, 201, 202, 203, 204, 205, S],
        [S, S, S, S, 300, 301, 302, 303, 304, 305],
    ])
    assert torch.equal(M.delay_pattern(codes, S)[0], expected)


@pytest.mark.parametrize("K,T", [(1, 1), (4, 1), (4, 7), (3, 20), (8, 5)])
def test_delay_and_parallel_revert_are_identities(K, T):
    codes = torch.randint(0, 2048, (2, K, T))
    assert M.delay_pattern(codes, 2048).shape == (2, K, T + K)
    assert torch.equal(M.revert_delay(M.delay_pattern(codes, 2048)), codes)
    assert torch.equal(M.parallel_pattern(codes, 2048)[:, :, 1:], codes)  # step t + 1 holds frame t


def test_valid_target_mask_matches_the_pattern():
    K, T = 4, 9
    seq = M.delay_pattern(torch.zeros(1, K, T, dtype=torch.long), 1)[0]  # 1 = special
    targets = seq[:, 1 : T + 1]  # what the loss predicts
    assert torch.equal(M.valid_target_mask(K, T), targets == 0)
    assert M.valid_target_mask(K, T).sum(1).tolist() == [T - k for k in range(K)]


# ----------------------------------------------------------------------------- LM, cache, guidance, loss


def test_cached_decoding_equals_full_forward():
    lm = tiny_lm(text_dim=768)
    condition, mask = text_condition()
    seq = torch.randint(0, 65, (2, 4, 10))
    with torch.no_grad():
        full = lm(seq, condition, mask)  # [B, K, S, N]
        cache = lm.new_cache(condition, mask, max_steps=10)
        first = lm.decode(seq[:, :, :3], cache)  # a chunk first (is_causal), ...
        steps = [lm.decode(seq[:, :, s : s + 1], cache) for s in range(3, 7)]  # ... single steps, ...
        last = lm.decode(seq[:, :, 7:], cache)  # ... a chunk after a cached past (explicit mask)
    torch.testing.assert_close(first, full[:, :, 2], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.stack(steps, 2), full[:, :, 3:7], atol=1e-5, rtol=0)
    torch.testing.assert_close(last, full[:, :, 9], atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(top_k=10, temperature=1.2), dict(top_p=0.8)])
def test_reference_and_fast_generation_give_the_same_tokens(sampling):
    lm = tiny_lm(text_dim=768)
    condition, mask = text_condition()
    runs = []
    for loop in (M.generate_reference, M.generate):
        generator = torch.Generator().manual_seed(1234)
        runs.append(loop(lm, condition, mask, 12, cfg_coef=3.0, generator=generator, **sampling))
    assert runs[0].shape == (2, 4, 12)
    assert runs[0].min() >= 0 and runs[0].max() < 64  # no special token survives the revert
    assert torch.equal(runs[0], runs[1])


def test_guidance_one_equals_the_conditional_logits():
    lm = tiny_lm(text_dim=768)
    condition, mask = text_condition()
    seq = torch.randint(0, 65, (2, 4, 6))
    with torch.no_grad():
        cond = lm(seq, condition, mask)
        both = lm(torch.cat([seq, seq]), torch.cat([condition, 0 * condition]), torch.cat([mask, 0 * mask]))
    torch.testing.assert_close(M.guided_logits(both, 1.0), cond, atol=1e-6, rtol=0)
    assert not M.with_null_condition(condition, mask, 1.0)[3]  # and generation skips the null branch


def test_null_condition_gives_no_nan_and_equals_no_cross_attention():
    lm = tiny_lm(text_dim=768)
    seq = torch.randint(0, 65, (2, 4, 6))
    zeros, no_mask = torch.zeros(2, 5, 768), torch.zeros(2, 5, dtype=torch.long)
    with torch.no_grad():
        null = lm(seq, zeros, no_mask)
        x = lm.embed_steps(seq)
        for layer in lm.layers:
            x = layer(x)  # no memory: the cross-attention block is skipped
        no_cross = lm.logits(x)
    assert torch.isfinite(null).all()
    torch.testing.assert_close(null, no_cross, atol=1e-6, rtol=0)


def test_loss_ignores_special_and_invalid_targets():
    lm = tiny_lm(text_dim=768)
    condition, mask = text_condition()
    codes = torch.randint(0, 64, (2, 4, 8))
    loss, per_codebook = lm.compute_loss(codes, condition, mask)
    assert per_codebook.shape == (4,) and torch.isclose(loss, per_codebook.mean())

    # the same loss by hand: target (k, t) is predicted at delayed step t + k, for t <= T-1-k only
    logits = lm(M.delay_pattern(codes, 64)[..., :8], condition, mask)  # [B, K, T, N]
    for k in range(4):
        frames = torch.arange(8 - k)
        picked = logits[:, k, frames + k]  # [B, T-k, N]
        expected = torch.nn.functional.cross_entropy(picked.flatten(0, 1), codes[:, k, frames].flatten())
        torch.testing.assert_close(per_codebook[k], expected)

    changed = codes.clone()
    changed[:, 3, -3:] = (changed[:, 3, -3:] + 1) % 64  # the last 3 frames of codebook 3: never a target
    torch.testing.assert_close(lm.compute_loss(changed, condition, mask)[0], loss, atol=0, rtol=0)
    changed[:, 3, -4] = (changed[:, 3, -4] + 1) % 64  # a valid target: the loss must move
    assert not torch.isclose(lm.compute_loss(changed, condition, mask)[1][3], per_codebook[3])


@pytest.mark.parametrize("pattern", ["delay", "parallel"])
def test_unconditional_loss_of_both_patterns(pattern):
    """condition None is the null condition; the parallel pattern's targets are all real tokens, the delay
    pattern's skip codebook k's first k (special) targets."""
    lm = tiny_lm(text_dim=768)
    B, K, T = 2, 4, 8
    codes = torch.randint(0, 64, (B, K, T))
    loss, per_codebook = lm.compute_loss(codes, pattern=pattern)
    null = torch.zeros(B, 1, 768), torch.zeros(B, 1, dtype=torch.long)
    torch.testing.assert_close(per_codebook, lm.compute_loss(codes, *null, pattern=pattern)[1], atol=0, rtol=0)
    layout = M.delay_pattern if pattern == "delay" else M.parallel_pattern
    seq = layout(codes, 64)
    logits = lm(seq[..., :T], *null)  # [B, K, T, N]: output step s predicts step s + 1
    for k in range(K):
        first = k if pattern == "delay" else 0  # the delay pattern's first k targets of codebook k are special
        targets = seq[:, k, first + 1 : T + 1]  # [B, T - first]
        expected = torch.nn.functional.cross_entropy(logits[:, k, first:].flatten(0, 1), targets.flatten())
        torch.testing.assert_close(per_codebook[k], expected)
    assert torch.isclose(loss, per_codebook.mean())
    with pytest.raises(ValueError, match="pattern"):
        lm.compute_loss(codes, pattern="interleaved")


def test_input_noise_corrupts_inputs_only():
    torch.manual_seed(0)
    seq = M.delay_pattern(torch.randint(0, 64, (8, 4, 200)), 64)  # [B, K, T + K], specials at the edges
    noisy = M.corrupt_codes(seq, 0.1, 64)
    special = seq == 64
    assert torch.equal(noisy[special], seq[special])  # the special token is never replaced
    assert noisy[~special].max() < 64
    changed = (noisy != seq).float()[~special].mean()
    assert 0.08 < changed < 0.11  # 10 % drawn, 1/64 of those redrawn as the same code
    assert torch.equal(M.corrupt_codes(seq, 0.0, 64), seq)

    # in the loss: clean targets, noisy inputs; input_noise=0 is exactly plain teacher forcing
    lm = tiny_lm(text_dim=768)
    condition, mask = text_condition()
    codes = torch.randint(0, 64, (2, 4, 8))
    clean = lm.compute_loss(codes, condition, mask)[0]
    torch.testing.assert_close(lm.compute_loss(codes, condition, mask, input_noise=0.0)[0], clean, atol=0, rtol=0)
    assert not torch.isclose(lm.compute_loss(codes, condition, mask, input_noise=0.5)[0], clean)


def test_loss_trains():
    lm = tiny_lm(text_dim=768).train()
    condition, mask = text_condition()
    codes = torch.randint(0, 64, (2, 4, 8))
    loss, _ = lm.compute_loss(codes, condition, mask)
    loss.backward()
    assert all(p.grad is not None for p in lm.heads.parameters())


# ----------------------------------------------------------------------------- MusicGen wrapper and checkpoints


def test_save_load_round_trip_and_transformers_loads_it(tiny, tiny_dir, tmp_path):
    tiny.save_pretrained(tmp_path)
    again = M.MusicGen.from_pretrained(tmp_path)
    sd, sd2 = tiny.hf_state_dict(), again.hf_state_dict()
    assert sd.keys() == sd2.keys()
    for name in sd:  # (EnCodec's weight norm is re-derived from folded weights: equal up to rounding)
        torch.testing.assert_close(sd2[name], sd[name], atol=1e-6, rtol=1e-6, msg=name)

    tensors = tiny.lm.hf_state_dict()
    tiny.lm.load_hf_state_dict({**tensors, "decoder.model.decoder.embed_positions.weights": torch.zeros(3)})  # ignored
    del tensors["decoder.lm_heads.2.weight"]
    with pytest.raises(CheckpointError, match=r"missing tensors \(1\): heads.2.weight"):
        tiny.lm.load_hf_state_dict(tensors)

    transformers = pytest.importorskip("transformers")
    hf = transformers.MusicgenForConditionalGeneration.from_pretrained(tiny_dir).eval()
    ids, mask = tiny.tokenizer(PROMPTS)
    seq = torch.randint(0, 65, (2, 4, 5))
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=seq.reshape(8, 5)).logits.view(2, 4, 5, -1)
        ours = tiny.lm(seq, *tiny.encode_text(PROMPTS))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_generate_audio_and_empty_prompts(tiny, capsys):
    wav = tiny.generate(["rock", ""], duration=0.2, seed=0)
    assert wav.shape == (2, 1, 10 * tiny.codec.hop_length) and torch.isfinite(wav).all()
    assert "unconditionally" in capsys.readouterr().err
    condition, mask = tiny.encode_text(["", ""])
    assert not condition.any() and not M.with_null_condition(condition, mask, 3.0)[3]  # no wasted null branch
    codes = tiny.generate_tokens(["", ""], frames=5, seed=0)
    assert codes.shape == (2, 4, 5)
    again = tiny.generate_tokens(["", ""], frames=5, seed=0)
    assert torch.equal(codes, again)  # the seed makes sampling reproducible


def test_bad_inputs_give_clear_errors(tiny, tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="positive number of seconds"):
        tiny.generate("rock", duration=0)
    with pytest.raises(ValueError, match="positions"):
        tiny.generate("rock", duration=1, window=60)  # one window must fit the positions
    with pytest.raises(ValueError, match="positive whole number"):
        tiny.generate_tokens("rock", frames=0)
    with pytest.raises(ValueError, match="list of strings"):
        tiny.encode_text([3])
    with pytest.raises(ValueError, match="tokens"):
        tiny.lm(torch.zeros(1, 3, 4, dtype=torch.long), *tiny.encode_text("rock"))

    tiny.codec.save_pretrained(tmp_path / "codec")  # an EnCodec directory is not a MusicGen one
    with pytest.raises(CheckpointError, match="text_encoder, audio_encoder"):
        M.MusicGen.from_pretrained(tmp_path / "codec")
    no_vocab = tmp_path / "no_vocab"
    shutil.copytree(tiny_dir, no_vocab)
    (no_vocab / "spiece.model").unlink()
    with pytest.raises(CheckpointError, match="spiece.model"):
        M.MusicGen.from_pretrained(no_vocab)
    with pytest.raises(CheckpointError, match="No model directory"):
        M.MusicGen.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_from_pretrained_device_and_dtype_give_finite_audio(tiny_dir, dtype):
    mg = M.MusicGen.from_pretrained(tiny_dir, device="cpu", dtype=dtype)
    assert mg.lm.out_norm.weight.dtype == dtype and mg.device == torch.device("cpu")
    wav, codes = mg.generate(["rock", ""], duration=0.2, seed=0, return_tokens=True)
    assert torch.isfinite(wav).all() and codes.shape == (2, 4, 10) and wav.shape[-1] == 10 * mg.codec.hop_length


def test_the_whole_model_in_float16_and_bad_dtype_or_device(tiny_dir):
    mg = M.MusicGen.from_pretrained(tiny_dir, device="auto").to(torch.float16)  # T5 included: padding masks fit
    assert torch.isfinite(mg.generate(["rock", "a longer prompt"], duration=0.1, seed=0)).all()
    with pytest.raises(ValueError, match="torch.float64 is not supported"):
        M.MusicGen.from_pretrained(tiny_dir, dtype=torch.float64)
    with pytest.raises(CheckpointError, match="unknown device 'gpu'"):
        M.MusicGen.from_pretrained(tiny_dir, device="gpu")


def test_progress_counts_every_window_and_ctrl_c_keeps_the_finished_frames(tiny):
    calls = []
    codes = tiny.generate_tokens("rock", 300, seed=0, window=1.0, progress=lambda *step: calls.append(step))
    spans = M.window_spans(300, 50, 30)  # 1 s windows moving on by 0.6 s
    assert len(spans) > 1 and calls == [(i, calls[-1][1]) for i in range(1, calls[-1][1] + 1)]  # 1, 2, ... total
    assert calls[-1][1] == sum(end - start + 3 - known for start, end, known in spans)

    def ctrl_c(step, total):
        if step == 150:  # in the third window
            raise KeyboardInterrupt

    with pytest.raises(M.Interrupted) as stop:
        tiny.generate_tokens("rock", 300, seed=0, window=1.0, progress=ctrl_c)
    done = stop.value.codes.shape[-1]
    assert 60 < done < 300 and torch.equal(stop.value.codes, codes[:, :, :done])  # the same frames, all finished
