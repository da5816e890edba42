"""
bench.py: how fast are we, next to Hugging Face transformers, on the same weights, same machine, same run?

    python bench.py                    # every section
    python bench.py --only t5 generate # some sections

Each section builds a reference model with `transformers` (random weights at the released size: these machines
cannot download the real ones, and speed does not depend on the values), saves it, loads the same files with our
code, times both and prints the ratio. Timings are the median of several runs after a warm-up. The int8 sections
compare our float32 LM with its int8 copy (int8.py) instead, in speed and in predictions. The train section
has no reference: it prints the laptop recipe's codec and LM steps/s, to compare two versions of our code.
Needs the dev requirements (transformers) on top of the runtime ones.
"""

import argparse
import os
import statistics
import tempfile
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def median_time(fn, repeat=5, warmup=1):
    """Median wall time of fn() in seconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def report(name, ours, theirs, unit="s"):
    """One line: our time, the reference's, and how many times faster we are (>1 is better)."""
    print(f"  {name:<38} ours {ours:9.4f} {unit}   transformers {theirs:9.4f} {unit}   speed-up x{theirs / ours:5.2f}")


# --- section: t5 ---
def bench_t5(args):
    """T5-base encoder (what every MusicGen runs first) on 8 prompts of 5..32 tokens, fp32, inference mode."""
    import transformers

    from t5_encoder import T5_PRESETS, T5Encoder

    theirs = transformers.T5EncoderModel(transformers.T5Config.from_dict(T5_PRESETS["t5-base"].to_hf())).eval()
    theirs.save_pretrained(args.tmp)
    ours = T5Encoder.from_pretrained(args.tmp)
    lengths = torch.tensor([5, 9, 12, 16, 20, 24, 28, 32])
    mask = (torch.arange(32)[None, :] < lengths[:, None]).long()  # [8, 32], right padding
    ids = torch.randint(3, 32000, (8, 32)) * mask  # pad id 0

    def timed_pair(fn_ours, fn_theirs, rounds=7):
        """Alternate short runs of both and keep each one's best median, so that load from other work on a shared
        machine falls on both sides alike."""
        pairs = [(median_time(fn_ours, repeat=3), median_time(fn_theirs, repeat=3)) for _ in range(rounds)]
        return min(p[0] for p in pairs), min(p[1] for p in pairs)

    one_ids, one_mask = ids[2:3, :12], mask[2:3, :12]  # a single 12-token prompt, the usual generate() call
    with torch.inference_mode():
        diff = (ours(ids, mask) - theirs(input_ids=ids, attention_mask=mask).last_hidden_state)[mask.bool()]
        print(f"  max |ours - transformers| at real tokens: {diff.abs().max().item():.2e}")
        for name, (i, m) in {"8 prompts x 5..32 tok": (ids, mask), "1 prompt x 12 tok": (one_ids, one_mask)}.items():
            times = timed_pair(lambda: ours(i, m), lambda: theirs(input_ids=i, attention_mask=m))
            report(f"t5-base encode, {name}", *times)
# --- end section: t5 ---


# --- section: encodec ---
def bench_encodec(args, seconds=10.0):
    """Encode + decode 10 s of 32 kHz audio with the encodec_32khz architecture: ours vs transformers, same weights."""
    from transformers import EncodecConfig as HFEncodecConfig
    from transformers import EncodecModel

    from encodec_lite import EncodecConfig, EncodecLite

    hf = EncodecModel(HFEncodecConfig(**EncodecConfig.preset("encodec_32khz").to_hf())).eval()
    with torch.no_grad():  # spread the codebooks so that the nearest-code search is not trivially one code
        for layer in hf.quantizer.layers:
            layer.codebook.embed.normal_(0, 0.01)
    hf.save_pretrained(args.tmp)
    ours = EncodecLite.from_pretrained(args.tmp)
    n = int(seconds * ours.sample_rate)
    t = torch.arange(n) / ours.sample_rate
    wav = (0.3 * torch.sin(2 * torch.pi * 220 * t) * (1 + torch.sin(2 * torch.pi * 3 * t)) / 2)[None, None]

    def theirs_fn():
        with torch.inference_mode():
            codes = hf.encode(wav).audio_codes
            return hf.decode(codes, [None]).audio_values

    def ours_fn():
        with torch.inference_mode():
            return ours.decode(ours.encode(wav))

    assert torch.equal(ours.encode(wav), hf.encode(wav).audio_codes[0]), "codes differ from transformers"
    # interleave the two so that load from other processes hits both alike; keep each one's best median
    t_ours, t_theirs = float("inf"), float("inf")
    for _ in range(3):
        t_theirs = min(t_theirs, median_time(theirs_fn, repeat=3, warmup=1))
        t_ours = min(t_ours, median_time(ours_fn, repeat=3, warmup=1))
    report(f"encode+decode {seconds:g} s @ 32 kHz", t_ours, t_theirs)
    print(f"  real-time factor: ours {seconds / t_ours:.1f}x, transformers {seconds / t_theirs:.1f}x "
          "faster than real time")
# --- end section: encodec ---


# --- section: generate ---
# Autoregressive decoding at batch 1 is memory-bound: every step reads every weight the step uses once (~1.4 GB
# in fp32 for musicgen-small), so the floor is that read time, and anything above it is overhead. Each
# implementation runs in its own fresh process so that its peak memory (VmHWM) is its own.
GEN_FRAMES = 50  # 1 s of audio = 53 steps with the delay pattern
GEN_TOKENS = [[3, 9, 1552, 3, 2, 6432, 1]]  # any T5 ids: the speed does not depend on the prompt


def _rss_gb(field):
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, from /proc/self/status, in GB."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    return kb / 2**20


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        f.write("5")


def _build_reference(model_dir, preset="musicgen-small"):
    """A transformers MusicgenForConditionalGeneration at a released size, random weights, saved."""
    import transformers
    from transformers.initialization import no_init_weights

    import musicgen
    from encodec_lite import EncodecConfig
    from t5_encoder import T5_PRESETS, T5Tokenizer

    config = transformers.MusicgenConfig.from_dict({
        "text_encoder": T5_PRESETS["t5-base"].to_hf(), "audio_encoder": EncodecConfig().to_hf(),
        "decoder": musicgen.PRESETS[preset].to_hf()})
    with no_init_weights(), torch.no_grad():  # speed does not depend on the values: a plain fill is enough
        model = transformers.MusicgenForConditionalGeneration(config)
        model.tie_weights()
        for name, p in model.named_parameters():  # as the parity tests: N(0, 0.02), LayerNorms the identity
            if "norm" in name:  # (int8_quality compares logits, which near-zero norm gains would flatten)
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.normal_(0, 0.02)
    model.save_pretrained(model_dir)
    # from_pretrained needs a tokenizer beside the weights; the sections pass token ids, so any vocabulary will do
    T5Tokenizer.train(["a few words to make a vocabulary of"], os.path.join(model_dir, "spiece.model"), 32)


def _time_generation(kind, model_dir, threads, repeat, frames=GEN_FRAMES):
    """{ms: per step, peak: GB during generation, loaded: GB after loading, load_peak: GB while loading, floor: ms
    per step or None} of `kind` ("ours", "int8": ours with quantize="int8", "hf"), in a fresh process."""
    torch.set_num_threads(threads)
    ids = torch.tensor(GEN_TOKENS)
    mask = torch.ones_like(ids)
    if kind in ("ours", "int8"):
        import musicgen

        mg = musicgen.MusicGen.from_pretrained(model_dir, quantize="int8" if kind == "int8" else None)
        text_encoder, lm = mg.text_encoder, mg.lm

        def run():
            with torch.inference_mode():
                musicgen.generate(lm, text_encoder(ids, mask), mask, frames, cfg_coef=3.0, temperature=0)
    else:
        import types

        import transformers

        hf = transformers.MusicgenForConditionalGeneration.from_pretrained(model_dir).eval()
        hf.audio_encoder.decode = lambda codes, *a, **k: types.SimpleNamespace(audio_values=codes)  # tokens only

        def run():
            with torch.inference_mode():
                hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, guidance_scale=3.0,
                            max_new_tokens=frames + 3)

    loaded, load_peak = _rss_gb("VmRSS"), _rss_gb("VmHWM")
    run()  # warm-up
    _reset_peak()
    seconds = min(median_time(run, repeat=1, warmup=0) for _ in range(repeat))
    peak = _rss_gb("VmHWM")
    floor = _weight_read_floor(lm, repeat) if kind != "hf" else None
    return dict(ms=1000 * seconds / (frames + 3), peak=peak, loaded=loaded, load_peak=load_peak, floor=floor)


def _weight_read_floor(lm, repeat):
    """ms to multiply a batch of 2 (cond + uncond) by every weight matrix one decoding step reads, through the LM's
    own layers (nn.Linear, or int8.Int8Linear): the memory-bandwidth floor of a step. Cross-attention keys/values
    are computed once, so their weights don't count."""
    linears = [lin for layer in lm.layers for lin in (
        layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.out_proj,
        layer.encoder_attn.q_proj, layer.encoder_attn.out_proj, layer.fc1, layer.fc2)]
    linears += list(lm.heads)
    xs = {lin.weight.shape[1]: torch.randn(2, lin.weight.shape[1]) for lin in linears}

    def read_all():
        with torch.inference_mode():
            for lin in linears:
                lin(xs[lin.weight.shape[1]])

    gb = sum(t.numel() * t.element_size() for lin in linears for t in lin.state_dict().values()) / 1e9
    ms = 1000 * min(median_time(read_all, repeat=5) for _ in range(repeat))
    print(f"  {lm.layers[0].fc1.weight.dtype} weights read per step: {gb:.2f} GB; reading them all once takes "
          f"{ms:.1f} ms ({gb / ms * 1000:.0f} GB/s)")
    return ms


def _in_fresh_process(fn, *fn_args):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *fn_args).result()


def bench_generate(args):
    """musicgen-small, batch 1 with guidance (one batch of 2), greedy, fp32, GEN_FRAMES frames: ours vs transformers."""
    model_dir = os.path.join(args.tmp, "musicgen-small")
    _in_fresh_process(_build_reference, model_dir)
    print(f"  musicgen-small (random weights), {GEN_FRAMES} frames = {GEN_FRAMES + 3} steps, batch 1 + guidance, "
          "greedy, fp32; best of 3 runs each")
    ours, hf = (_in_fresh_process(_time_generation, kind, model_dir, args.threads, 3) for kind in ("ours", "hf"))
    report("ms per generation step", ours["ms"], hf["ms"], unit="ms")
    floor = ours["floor"]
    print(f"  steps/s: ours {1000 / ours['ms']:.1f}, transformers {1000 / hf['ms']:.1f}; the weight-read floor is "
          f"{floor:.1f} ms/step ({1000 / floor:.1f} steps/s): ours is at x{ours['ms'] / floor:.2f} of it")
    print(f"  peak RSS while generating (GB): ours {ours['peak']:.2f}, transformers {hf['peak']:.2f}; "
          f"after loading: ours {ours['loaded']:.2f}, transformers {hf['loaded']:.2f}")
# --- end section: generate ---


# --- section: int8 ---
# Weight-only int8 (int8.py) reads a quarter of the bytes per step, so its floor is the time of its own int8
# matmuls; each variant loads and generates in a fresh process, and the pairs alternate so that load from other
# work on a shared machine falls on both.
def compare_int8(args, preset, frames, rounds):
    """Ours in float32 vs quantize="int8" at `preset` size: ms per step, each one's floor, and peak RSS."""
    model_dir = os.path.join(args.tmp, preset)
    _in_fresh_process(_build_reference, model_dir, preset)
    print(f"  {preset} (random weights), {frames} frames = {frames + 3} steps, batch 1 + guidance, greedy; "
          f"best of {rounds} alternating fresh processes each")
    runs = [_in_fresh_process(_time_generation, kind, model_dir, args.threads, 2, frames)
            for _ in range(rounds) for kind in ("ours", "int8")]
    fp32, q = (min(runs[i::2], key=lambda r: r["ms"]) for i in (0, 1))  # each kind's fastest process
    floor, q_floor = (min(r["floor"] for r in runs[i::2]) for i in (0, 1))  # and its fastest floor
    print(f"  ms per step: float32 {fp32['ms']:.1f}, int8 {q['ms']:.1f}: int8 takes x{q['ms'] / fp32['ms']:.2f} of "
          f"float32 (x{fp32['ms'] / q['ms']:.2f} faster)")
    print(f"  floors (ms per step): float32 {floor:.1f}, int8 {q_floor:.1f}; each step is at "
          f"x{fp32['ms'] / floor:.2f} and x{q['ms'] / q_floor:.2f} of its own floor")
    for name, r in (("float32", fp32), ("int8", q)):
        print(f"  {name:>7} RSS (GB): peak while loading {r['load_peak']:.2f}, after loading {r['loaded']:.2f}, "
              f"peak while generating {r['peak']:.2f}")


def bench_int8(args):
    """musicgen-small, batch 1 + guidance: float32 vs int8 weights, with each one's weight-read floor."""
    compare_int8(args, "musicgen-small", GEN_FRAMES, rounds=2)


def bench_int8_medium(args):
    """musicgen-medium (1.5B; ~7 GB of float32 LM weights, ~15 GB while loading): a few steps, float32 vs int8."""
    compare_int8(args, "musicgen-medium", 5, rounds=1)


def bench_int8_quality(args, frames=250):
    """What int8 does to musicgen-small's predictions (random weights as the parity tests, T5 and codec shared):
    both LMs teacher-forced on float32's greedy tokens, guidance 3, then both generating greedily on their own."""
    import musicgen as M

    model_dir = os.path.join(args.tmp, "musicgen-small")
    _in_fresh_process(_build_reference, model_dir)
    fp32, q = (M.MusicGen.from_pretrained(model_dir, quantize=kind) for kind in (None, "int8"))
    ids = torch.tensor(GEN_TOKENS)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        condition = fp32.text_encoder(ids, mask)
        codes = {name: M.generate(mg.lm, condition, mask, frames, cfg_coef=3.0, temperature=0)
                 for name, mg in (("float32", fp32), ("int8", q))}  # [1, K, T] each
        seq = M.delay_pattern(codes["float32"], fp32.lm.special)  # [1, K, T + K]
        generated = seq[:, :, 1:] != fp32.lm.special  # the steps whose token was picked, not a forced special
        both, both_mask, _, _ = M.with_null_condition(condition, mask, 3.0)
        inputs = torch.cat([seq[:, :, :-1]] * 2)  # [cond; uncond] teacher forcing: step s predicts step s + 1
        logits = [mg.lm(inputs, both, both_mask) for mg in (fp32, q)]  # [2, K, T + K - 1, N] each
    print(f"  {frames} frames, greedy, guidance 3; {int(generated.sum())} predicted tokens (K x T)")
    for name, (a, b) in {"conditional": [x[:1] for x in logits],
                         "guided": [M.guided_logits(x, 3.0) for x in logits]}.items():
        a, b = a[generated], b[generated]  # [tokens, N]
        gap = a.topk(2, dim=-1).values.diff(dim=-1).abs().median()  # how close float32's top two are
        diff, agree = (a - b).abs(), (a.argmax(-1) == b.argmax(-1)).float().mean()
        print(f"  {name:>11} logits: |int8 - float32| max {diff.max():.4f}, mean {diff.mean():.5f} (float32 std "
              f"{a.std():.3f}, median top-1 margin {gap:.3f}); same top-1 {agree:.1%}")
    same = (codes["float32"] == codes["int8"]).all(dim=1)[0]  # [T]: all K codes of a frame equal
    first = int(same.long().cumprod(dim=0).sum())
    print(f"  greedy generation: {int(same.sum())} of {frames} frames identical; the first {first} in a row")
# --- end section: int8 ---


# --- section: chroma ---
def bench_chroma(args):
    """Melody chroma of 30 s at 32 kHz: chroma.chromagram vs transformers' MusicgenMelodyFeatureExtractor.

    The reference needs torchaudio (not installable next to this torch) for one object, its Spectrogram; we give it
    a stand-in built from torch.stft with the same semantics (as tests/test_chroma.py does), so both sides run the
    same FFT and the timing compares everything around it."""
    import importlib
    import types

    import chroma

    class StftSpectrogram(torch.nn.Module):  # torchaudio.transforms.Spectrogram(power=2, normalized=True, center)
        def __init__(self, n_fft, win_length, hop_length, **_):
            super().__init__()
            self.n_fft, self.hop_length, self.window = n_fft, hop_length, torch.hann_window(win_length)

        def forward(self, wav):
            spec = torch.stft(wav, self.n_fft, self.hop_length, window=self.window, center=True,
                              pad_mode="reflect", return_complex=True)
            return (spec / self.window.pow(2).sum().sqrt()).abs().pow(2)

    module = importlib.import_module("transformers.models.musicgen_melody.feature_extraction_musicgen_melody")
    module.torchaudio = types.SimpleNamespace(transforms=types.SimpleNamespace(Spectrogram=StftSpectrogram))
    reference = module.MusicgenMelodyFeatureExtractor()

    wav = 0.1 * torch.randn(30 * chroma.SAMPLE_RATE)
    theirs_fn = lambda: reference(wav.numpy(), sampling_rate=chroma.SAMPLE_RATE, return_tensors="pt")  # noqa: E731
    same = torch.equal(chroma.chromagram(wav, chroma.SAMPLE_RATE), theirs_fn()["input_features"])
    ours_fn = lambda: chroma.chromagram(wav, chroma.SAMPLE_RATE)  # noqa: E731
    # A few alternating rounds, best median of each: a busy machine slows whichever happens to run during a burst.
    rounds = [(median_time(ours_fn, repeat=10), median_time(theirs_fn, repeat=10)) for _ in range(3)]
    ours, theirs = min(r[0] for r in rounds), min(r[1] for r in rounds)
    report(f"chromagram, 30 s (identical one-hots: {same})", ours, theirs)
# --- end section: chroma ---


# --- section: train ---
def bench_train(args, codec_steps=40, lm_steps=40):
    """The laptop recipe's training speed: steps/s of train.py's codec and LM steps (`python train.py --config
    small`, its models and batch sizes) on 24 synthetic clips a second longer than its LM windows (6 s), so that no
    corpus needs rendering. Compare two versions by running this section on each, one after the other, on an
    otherwise idle machine."""
    from dataclasses import replace

    import corpus
    import data
    import train
    import training_loop

    config = replace(train.CONFIGS["small"], out_dir=args.tmp, cache_dir=args.tmp)
    clips = corpus.synthetic_corpus(args.tmp, train.CODEC_PRESETS[config.codec].sampling_rate, n=24,
                                     seconds=config.segment_seconds + 1.0)  # a window must fit in a clip
    stop = training_loop.StopRequest()
    stop.requested = False  # never asked to stop: the steps below only read the flag

    def steps_per_s(stage, n):
        """Steps/s of stage.step + stage.update over n steps, after 3 warm-up steps."""
        for step in range(3):
            stage.step(step, stop)
            stage.update()
        t0 = time.perf_counter()
        for step in range(3, 3 + n):
            stage.step(step, stop)
            stage.update()
        return n / (time.perf_counter() - t0)

    codec_stage = train.CodecSteps(config, data.select(clips, "train"), "cpu")
    codec_stage.warmup = 0  # time the quantised steps, which most of a run is
    print(f"  codec step ({config.codec_batch} x {config.codec_crop_seconds:g} s)   {steps_per_s(codec_stage, codec_steps):6.2f} steps/s")
    tokens = data.tokenize(codec_stage.codec.eval(), clips, f"{args.tmp}/tokens.pt")
    lm_stage = train.LMSteps(config, codec_stage.codec, tokens, clips, train.Processes())
    print(f"  LM step ({config.batch_size} x {config.segment_seconds:g} s)       {steps_per_s(lm_stage, lm_steps):6.2f} steps/s")
# --- end section: train ---


SECTIONS = {"t5": bench_t5, "encodec": bench_encodec, "generate": bench_generate, "int8": bench_int8,
            "int8_medium": bench_int8_medium, "int8_quality": bench_int8_quality, "chroma": bench_chroma,
            "train": bench_train}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(f"torch {torch.__version__}, {args.threads} CPU threads")
    for name in args.only:
        print(f"\n[{name}]")
        with tempfile.TemporaryDirectory() as tmp:
            args.tmp = tmp
            SECTIONS[name](args)


if __name__ == "__main__":
    main()
