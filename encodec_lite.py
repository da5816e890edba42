"""
encodec_lite.py: EnCodec, the neural audio codec that turns music into MusicGen's K parallel token streams.

Paper §2.1: a convolutional auto-encoder (SEANet) squeezes a waveform sampled at f_s into a latent sequence at a
frame rate f_r << f_s; residual vector quantisation (RVQ) turns each latent frame into K integers, one per codebook
of size N. MusicGen never sees audio, only these codes [B, K, T], and turns its generated codes back into sound with
the decoder.

    wav [B, 1, N] --encoder--> latent [B, D, T] --RVQ, K codebooks--> codes [B, K, T]      T = ceil(N / hop)
    codes --sum of K codebook vectors--> latent [B, D, T] --decoder--> wav [B, 1, T * hop]

For facebook/encodec_32khz (the codec of every released MusicGen): 32 kHz, hop 640 = 8*5*4*4, so 50 frames per
second, K = 4 codebooks of N = 2048 entries, latent D = 128. The codec is mono: a stereo MusicGen runs it on the left
and the right channel apart (Paper §4.3; musicgen.MusicGen.encode_audio / decode_audio).

The file, top to bottom:
    EncodecConfig, PRESETS       hyper-parameters with Hugging Face field names, and named sizes
    Conv1d / ConvTranspose1d     weight-normed convolutions with EnCodec's padding rules
    ResnetBlock, LSTM            the SEANet building blocks; Encoder / Decoder stack them
    Codebook / VectorQuantizer / ResidualVectorQuantizer     RVQ, trained with EMA k-means updates
    EncodecLite                  encode / decode / forward, load and save in the Hugging Face layout
    training                     mel filter bank, CodecLoss, CodecTrainer (one optimisation step)

Module and tensor names are exactly Hugging Face's (`encoder.layers.3.conv...`, `quantizer.layers.0.codebook.embed`),
so checkpoints map one to one; that is also why the layer lists contain the ELUs: they take up list indices.
A config with codec_type "spectral" swaps SEANet for the laptop's spectral encoder and decoder (spectral_codec.py,
which says why it exists); the RVQ, the wrapper and the trainer are the same for both.

References:
1) the EnCodec paper: Défossez et al. 2022, "High Fidelity Neural Audio Compression", https://arxiv.org/abs/2210.13438
2) the implementation this file matches number for number, transformers' EnCodec:
   https://github.com/huggingface/transformers/blob/main/src/transformers/models/encodec/modeling_encodec.py
3) the one MusicGen was trained with, audiocraft's SEANet and quantiser (the training side: EMA, k-means, dead codes):
   https://github.com/facebookresearch/audiocraft, `audiocraft/modules/seanet.py`, `audiocraft/quantization/core_vq.py`
"""

import contextlib
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

import audio
import checkpoints


# ----------------------------------------------------------------------------- config
@dataclass
class EncodecConfig:
    """The codec's hyper-parameters under the field names of transformers' EncodecConfig, so that a config.json maps
    one to one. The defaults are facebook/encodec_32khz's."""

    sampling_rate: int = 32000
    audio_channels: int = 1
    num_filters: int = 64                      # channels after the first conv; doubled at every downsampling
    upsampling_ratios: tuple = (8, 5, 4, 4)     # decoder strides; the encoder uses them reversed (4, 4, 5, 8)
    hidden_size: int = 128                     # latent dimension D
    codebook_size: int = 2048                  # N (a power of two: 11 bits per code)
    codebook_dim: int = 128                    # = hidden_size: the codebooks live in the latent space directly
    target_bandwidths: tuple = (2.2,)          # kbps; K = bandwidth / (frame_rate * log2 N), see num_codebooks
    num_lstm_layers: int = 2
    num_residual_layers: int = 1
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    kernel_size: int = 7                       # first conv
    last_kernel_size: int = 7                  # last conv of encoder and decoder
    compress: int = 2                          # a residual block's hidden width is dim // compress
    pad_mode: str = "reflect"
    codec_type: str = "seanet"                 # or "spectral": the laptop's codec, spectral_codec.py (not HF's)

    @property
    def hop_length(self):
        return math.prod(self.upsampling_ratios)

    @property
    def frame_rate(self):
        return self.sampling_rate / self.hop_length

    def _quantizers_for(self, bandwidth):
        # HF's arithmetic: bits per second of one codebook = log2(N) * frame rate (rounded up to an integer)
        bits_per_codebook = math.ceil(math.log2(self.codebook_size)) * math.ceil(self.frame_rate)
        return max(1, int(1000 * bandwidth // bits_per_codebook))

    @property
    def num_quantizers(self):
        """Codebooks stored in the checkpoint (enough for the highest bandwidth)."""
        return self._quantizers_for(self.target_bandwidths[-1])

    @property
    def num_codebooks(self):
        """K, the codebooks `encode` uses: the first (lowest) bandwidth, as HF's default. 4 for encodec_32khz."""
        return self._quantizers_for(self.target_bandwidths[0])

    @classmethod
    def preset(cls, name, **overrides):
        if name not in PRESETS:
            raise ValueError(f"Unknown EnCodec preset '{name}'. Choose one of: {', '.join(PRESETS)}.")
        return replace(PRESETS[name], **overrides)

    # --- Hugging Face config.json <-> dataclass
    @classmethod
    def from_hf(cls, hf_config):
        """From an HF EncodecConfig dict (a facebook/encodec_32khz config.json, or MusicGen's `audio_encoder`)."""
        # Only the non-causal, weight-normed, un-normalised variant is implemented: the one MusicGen uses. Missing
        # keys take HF's defaults, which for these flags are the *other* variant (encodec_24khz), hence the checks.
        unsupported = {
            "use_causal_conv": (True, False), "use_conv_shortcut": (True, False), "normalize": (False, False),
            "norm_type": ("weight_norm", "weight_norm"), "chunk_length_s": (None, None),
        }
        for key, (hf_default, ours) in unsupported.items():
            if hf_config.get(key, hf_default) != ours:
                raise checkpoints.CheckpointError(
                    f"This EnCodec config has {key}={hf_config.get(key, hf_default)!r}; encodec_lite implements only "
                    f"{key}={ours!r} (the non-causal 32 kHz codec of MusicGen, e.g. facebook/encodec_32khz).")
        kwargs = {f.name: hf_config[f.name] for f in fields(cls) if hf_config.get(f.name) is not None}
        for key in ("upsampling_ratios", "target_bandwidths"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        kwargs.setdefault("codebook_dim", kwargs.get("hidden_size", cls.hidden_size))
        return cls(**kwargs)

    def to_hf(self):
        hf_config = asdict(self)
        if self.codec_type == "seanet":  # HF's own codec: keep its config.json free of our key
            del hf_config["codec_type"]
        hf_config.update(upsampling_ratios=list(self.upsampling_ratios),
                         target_bandwidths=list(self.target_bandwidths))
        # the flags that pin HF to the variant we implement (their HF defaults differ, see from_hf)
        hf_config.update(model_type="encodec", architectures=["EncodecModel"], use_causal_conv=False,
                         use_conv_shortcut=False, normalize=False, norm_type="weight_norm", trim_right_ratio=1.0,
                         chunk_length_s=None, overlap=None)
        return hf_config


def _bandwidth(num_codebooks, codebook_size, frame_rate):
    """The kbps that gives exactly `num_codebooks` codebooks (HF stores K only through the bandwidth)."""
    return num_codebooks * math.log2(codebook_size) * frame_rate / 1000


PRESETS = {
    # The released codec of MusicGen: facebook/encodec_32khz's config.json, also the `audio_encoder` of every
    # facebook/musicgen-* checkpoint (transformers `convert_encodec_checkpoint_to_pytorch.py` sets the same values).
    "encodec_32khz": EncodecConfig(),
    # For unit tests: seconds to build and run. 8 kHz, hop 160 -> 50 frames/s, K = 4 codebooks of 64.
    "tiny": EncodecConfig(
        sampling_rate=8000, num_filters=4, upsampling_ratios=(8, 5, 4), hidden_size=16, codebook_size=64,
        codebook_dim=16, target_bandwidths=(_bandwidth(4, 64, 50),), num_lstm_layers=1),
    # The same with the spectral codec: the tiny config of train.py (the laptop recipe's codec, in seconds).
    "tiny-spectral": EncodecConfig(
        sampling_rate=8000, num_filters=4, upsampling_ratios=(8, 5, 4), hidden_size=16, codebook_size=64,
        codebook_dim=16, target_bandwidths=(_bandwidth(4, 64, 50),), num_lstm_layers=1, codec_type="spectral"),
    # The laptop run: 16 kHz (the synthesized corpus has little above 4 kHz); hop 640 = 25 frames/s, half the
    # released rate, so that a note spans half the LM's steps and its 5 s windows hold two bars or more (RESULTS.md,
    # "The laptop model v2"); K = 4, the released delay pattern; N = 256 entries learn faster from little data. The
    # spectral encoder / decoder (spectral_codec.py, which says why) replaces SEANet; the ratios only set the hop.
    "small": EncodecConfig(
        sampling_rate=16000, num_filters=16, upsampling_ratios=(8, 5, 4, 4), hidden_size=64, codebook_size=256,
        codebook_dim=64, target_bandwidths=(_bandwidth(4, 256, 25),), num_lstm_layers=1, codec_type="spectral"),
    # The paper's SEANet at the laptop's size, to compare with "small" (RESULTS.md, "Spectral codec: why the laptop
    # codec is not SEANet"). 16 filters (vs 64) and a 64-dim latent keep the convs ~16x cheaper than encodec_32khz.
    "small-seanet": EncodecConfig(
        sampling_rate=16000, num_filters=16, upsampling_ratios=(8, 5, 4, 2), hidden_size=64, codebook_size=256,
        codebook_dim=64, target_bandwidths=(_bandwidth(4, 256, 50),), num_lstm_layers=1),
}


# ----------------------------------------------------------------------------- convolutions
#
# Padding and weight norm exactly as transformers `modeling_encodec.py` (`EncodecConv1d`, `EncodecConvTranspose1d`,
# `_pad1d`) and audiocraft `audiocraft/modules/conv.py`, the non-causal variant with reflect padding.
def pad1d(x, left, right, mode):
    """F.pad that also works for reflect padding wider than the signal (a very short clip): reflect needs
    length > pad, so zeros are appended first and cut off again after padding (what HF and audiocraft do)."""
    length = x.shape[-1]
    if mode != "reflect" or length > max(left, right):
        return F.pad(x, (left, right), mode)
    extra = max(left, right) - length + 1
    x = F.pad(x, (0, extra))
    return F.pad(x, (left, right), mode)[..., : length + left + right]


@torch.no_grad()
def unit_gain_init(conv):
    """Start every weight-normed filter with norm g = 1 (a checkpoint overwrites it; this matters for training only).

    PyTorch's default init gives each filter a norm of ~1/sqrt(3): after the encoder's ~15 convs a random codec's
    latent barely varies over time, the decoder learns to ignore it (producing the average spectrum) and VQ collapses
    onto one code. With g = 1 a conv roughly keeps the size of its input, and the latent varies with the music."""
    conv.parametrizations.weight.original0.fill_(1.0)


class Conv1d(nn.Module):
    """A weight-normed Conv1d that keeps the length: `ceil(L / stride)` output frames for L input samples.

    The total padding `(kernel - 1) * dilation + 1 - stride` is split between both ends (non-causal, one more on
    the left if odd), plus extra right padding so that the last window is complete: the input length becomes a
    multiple of the stride and no sample at the end is dropped."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, dilation=1, pad_mode="reflect"):
        super().__init__()
        # Weight norm (w = g * v / ||v||, one g per output channel) decouples a filter's scale from its direction,
        # which makes the conv stack easier to optimise; at inference it is folded back into a plain weight.
        self.conv = weight_norm(nn.Conv1d(in_channels, out_channels, kernel_size, stride, dilation=dilation))
        unit_gain_init(self.conv)
        self.stride, self.pad_mode = stride, pad_mode
        self.padding_total = (kernel_size - 1) * dilation + 1 - stride

    def forward(self, x):  # [B, C_in, L] -> [B, C_out, ceil(L / stride)]
        extra = -x.shape[-1] % self.stride
        right = self.padding_total // 2
        left = self.padding_total - right
        if left + right + extra:
            x = pad1d(x, left, right + extra, self.pad_mode)
        return self.conv(x)


class ConvTranspose1d(nn.Module):
    """A weight-normed ConvTranspose1d that upsamples exactly L -> L * stride (kernel = 2 * stride here)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride):
        super().__init__()
        # weight [C_in, C_out, k]: weight norm's g is per *input* channel here (dim 0)
        self.conv = weight_norm(nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride))
        unit_gain_init(self.conv)
        self.stride, self.padding_total = stride, kernel_size - stride

    def forward(self, x):  # [B, C_in, L] -> [B, C_out, L * stride]
        y = self.conv(x)  # (L - 1) * stride + kernel samples
        right = self.padding_total // 2  # trim the overhang from both ends
        left = self.padding_total - right
        return y[..., left: y.shape[-1] - right]


# ----------------------------------------------------------------------------- SEANet blocks
#
# Layer by layer as transformers `EncodecEncoder` / `EncodecDecoder` / `EncodecResnetBlock` / `EncodecLSTM`
# (`modeling_encodec.py`), the conversion of audiocraft `audiocraft/modules/seanet.py` (EnCodec paper §3.1).
class ResnetBlock(nn.Module):
    """x + Conv1x1(ELU(Conv_k(ELU(x)))): a bottleneck (dim -> dim / compress -> dim) with an identity skip.
    The j-th block of a stage dilates its first conv by dilation_growth_rate ** j."""

    def __init__(self, config, dim, j):
        super().__init__()
        hidden, dilation = dim // config.compress, config.dilation_growth_rate ** j
        # The first ELU must leave x alone (the skip needs it); the second may overwrite the conv output it gets.
        self.block = nn.Sequential(
            nn.ELU(),
            Conv1d(dim, hidden, config.residual_kernel_size, dilation=dilation, pad_mode=config.pad_mode),
            nn.ELU(inplace=True),
            Conv1d(hidden, dim, 1, pad_mode=config.pad_mode),
        )

    def forward(self, x):
        return self.block(x).add_(x)  # a fresh conv output: adding in place saves a copy of the signal


class LSTM(nn.Module):
    """A unidirectional LSTM over the frames, added to its input: convs see a few hundred ms, the LSTM the whole
    clip, which helps the latent model long notes and sequences."""

    def __init__(self, dim, num_layers):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers)

    def forward(self, x):  # [B, C, T]
        x = x.permute(2, 0, 1)  # [T, B, C], the LSTM's default layout
        return (self.lstm(x)[0] + x).permute(1, 2, 0)


class Encoder(nn.Module):
    """wav [B, 1, N] -> latent [B, D, ceil(N / hop)]. Channels double at every downsampling step."""

    def __init__(self, config):
        super().__init__()
        layers = [Conv1d(config.audio_channels, config.num_filters, config.kernel_size, pad_mode=config.pad_mode)]
        dim = config.num_filters
        for ratio in reversed(config.upsampling_ratios):
            layers += [ResnetBlock(config, dim, j) for j in range(config.num_residual_layers)]
            layers += [nn.ELU(inplace=True), Conv1d(dim, 2 * dim, 2 * ratio, stride=ratio, pad_mode=config.pad_mode)]
            dim *= 2
        layers += [LSTM(dim, config.num_lstm_layers), nn.ELU(inplace=True),
                   Conv1d(dim, config.hidden_size, config.last_kernel_size, pad_mode=config.pad_mode)]
        self.layers = nn.Sequential(*layers)  # named layers.0, layers.1, ... as in HF

    def forward(self, x):
        return self.layers(x)


class Decoder(nn.Module):
    """latent [B, D, T] -> wav [B, 1, T * hop]: the encoder mirrored, transposed convs upsample. No final tanh.

    It carries the losses it is trained with (`losses`), as the spectral decoder does, so that the wrapper and the
    trainer treat both decoders alike (the loss module's filter banks are not saved)."""

    def __init__(self, config):
        super().__init__()
        dim = config.num_filters * 2 ** len(config.upsampling_ratios)
        layers = [Conv1d(config.hidden_size, dim, config.kernel_size, pad_mode=config.pad_mode),
                  LSTM(dim, config.num_lstm_layers)]
        for ratio in config.upsampling_ratios:
            layers += [nn.ELU(inplace=True), ConvTranspose1d(dim, dim // 2, 2 * ratio, stride=ratio)]
            dim //= 2
            layers += [ResnetBlock(config, dim, j) for j in range(config.num_residual_layers)]
        layers += [nn.ELU(inplace=True),
                   Conv1d(dim, config.audio_channels, config.last_kernel_size, pad_mode=config.pad_mode)]
        self.layers = nn.Sequential(*layers)  # named layers.0, layers.1, ... as in HF
        self.loss = CodecLoss(config.sampling_rate)

    def forward(self, x):
        return self.layers(x)

    def losses(self, latent, wav):
        """Training: {loss name: weighted value} of the decoded latent [B, D, T] against the input wav [B, C, N]."""
        return self.loss(wav, self(latent)[..., : wav.shape[-1]])


# ----------------------------------------------------------------------------- residual vector quantisation
#
# Paper §2.1 and the EnCodec paper §3.2; training as audiocraft `audiocraft/quantization/core_vq.py`.
#
# Why RVQ: 44 bits per frame would need one codebook of 2^44 entries; instead K = 4 codebooks of 2^11 each quantise
# what the previous ones left over (the residual). Codebook 1 captures the coarse shape and matters most (paper §2.1).
#
# The codebooks learn as an online k-means, not by gradient descent: each code vector moves towards the mean of the
# latent vectors assigned to it, smoothed by an exponential moving average (EMA, VectorQuantizer.decay), which is
# stable and needs no learning rate. The encoder is pulled towards its codes by the commitment loss and gets the
# decoder's gradient through the straight-through trick. A code no vector chooses gets no updates and would stay
# useless ("dead"): codes whose EMA usage has decayed are re-seeded with vectors of the current batch.
@contextlib.contextmanager
def full_fp32_matmuls():
    """Matmuls in full float32 inside (no TF32), whatever the caller's torch.set_float32_matmul_precision: the nearest
    code is an argmax over distances that differ by little, and TF32's 10-bit mantissa would flip codes on an
    Ampere+ GPU, away from the CPU and the reference. The setting is restored on the way out."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


class Codebook(nn.Module):
    """The state of one codebook, with Hugging Face's buffer names. Only `embed` is needed for inference."""

    def __init__(self, codebook_size, dim):
        super().__init__()
        self.register_buffer("inited", torch.zeros(1))                 # 1 once k-means has initialised `embed`
        self.register_buffer("cluster_size", torch.zeros(codebook_size))  # EMA of how many vectors chose each code
        self.register_buffer("embed", torch.randn(codebook_size, dim))   # [N, D] the code vectors
        self.register_buffer("embed_avg", torch.zeros(codebook_size, dim))  # EMA of the sum of vectors per code


class VectorQuantizer(nn.Module):
    """One RVQ stage: nearest code vector, plus its EMA k-means training."""

    decay = 0.95          # EMA decay of the codebook statistics (EnCodec: 0.99; a short run needs codes that keep
                          # up with an encoder that still moves, else they are left behind and one code wins)
    epsilon = 1e-5        # Laplace smoothing of the counts, so that an unused code does not divide by zero
    dead_fraction = 0.1   # a code is dead when its EMA usage is below 10% of a fair share (batch vectors / N)
    kmeans_iters = 10

    def __init__(self, codebook_size, dim):
        super().__init__()
        self.codebook = Codebook(codebook_size, dim)  # the extra level only mirrors HF's names

    def nearest(self, x):  # x [M, D] -> code indices [M]
        # argmax of -||x - e||^2 written as -(|x|^2 - 2 x.e + |e|^2), in exactly the reference's form: a different
        # (mathematically equal) formula rounds differently and flips a code now and then
        embed_t = self.codebook.embed.t()  # [D, N]
        dist = -(x.pow(2).sum(1, keepdim=True) - 2 * x @ embed_t + embed_t.pow(2).sum(0, keepdim=True))
        return dist.max(dim=-1).indices

    def lookup(self, codes):  # [...] -> [..., D]
        return F.embedding(codes, self.codebook.embed)

    @torch.no_grad()
    def kmeans_init(self, x):
        """Start from k-means on the first batch instead of random vectors: every code starts where data is."""
        n = self.codebook.embed.shape[0]
        centroids = x[torch.randint(len(x), (n,), device=x.device)]
        for _ in range(self.kmeans_iters):
            dist = torch.cdist(x, centroids)                 # plain distances are fine here, nothing to match
            onehot = F.one_hot(dist.argmin(1), n).type_as(x)  # [M, N]
            counts = onehot.sum(0)
            means = (onehot.t() @ x) / counts.clamp(min=1)[:, None]
            centroids = torch.where(counts[:, None] > 0, means, centroids)
        # usage starts at the dead-code threshold, not at the k-means counts: the encoder is still training and its
        # output will move, so a code must earn its place by being used from now on
        usage = torch.full_like(counts, self.dead_threshold(len(x)))
        self.codebook.embed.copy_(centroids)
        self.codebook.cluster_size.copy_(usage)
        self.codebook.embed_avg.copy_(centroids * usage[:, None])
        self.codebook.inited.fill_(1)

    @torch.no_grad()
    def ema_update(self, x, codes):
        """Move every code towards the (EMA) mean of the vectors that chose it."""
        cb, n = self.codebook, self.codebook.embed.shape[0]
        onehot = F.one_hot(codes, n).type_as(x)                                 # [M, N]
        cb.cluster_size.lerp_(onehot.sum(0), 1 - self.decay)                    # EMA of counts  [N]
        cb.embed_avg.lerp_(onehot.t() @ x, 1 - self.decay)                      # EMA of sums    [N, D]
        total = cb.cluster_size.sum()
        counts = (cb.cluster_size + self.epsilon) / (total + n * self.epsilon) * total
        cb.embed.copy_(cb.embed_avg / counts[:, None])                          # EMA mean

    @torch.no_grad()
    def replace_dead_codes(self, x):
        """Re-seed codes whose recent usage is below the threshold with random vectors of this batch `x`.
        Done before quantising, so the new codes can be chosen at once, even if the encoder output has moved."""
        cb, threshold = self.codebook, self.dead_threshold(len(x))
        dead = cb.cluster_size < threshold
        if dead.any():
            picks = x[torch.randint(len(x), (int(dead.sum()),), device=x.device)]
            cb.embed[dead] = picks
            cb.cluster_size[dead] = threshold  # on probation: if unused again, it is re-seeded again
            cb.embed_avg[dead] = picks * threshold

    def dead_threshold(self, num_vectors):
        """EMA usage below which a code counts as dead: 10% of a fair share of the batch's vectors."""
        return self.dead_fraction * num_vectors / self.codebook.embed.shape[0]


class ResidualVectorQuantizer(nn.Module):
    """K stages; stage q quantises what stages 0..q-1 left over."""

    def __init__(self, config):
        super().__init__()
        self.num_codebooks = config.num_codebooks
        self.layers = nn.ModuleList(
            VectorQuantizer(config.codebook_size, config.codebook_dim) for _ in range(config.num_quantizers))

    @full_fp32_matmuls()  # the nearest-code search
    def encode(self, latent):  # [B, D, T] -> codes [B, K, T]
        B, D, T = latent.shape
        residual = latent.transpose(1, 2).reshape(B * T, D)  # one row per frame
        # --- exercise: rvq_encode ---
        codes = []
        for layer in self.layers[: self.num_codebooks]:
            idx = layer.nearest(residual)
            residual = residual - layer.lookup(idx)
            codes.append(idx)
        # --- end exercise: rvq_encode ---
        return torch.stack(codes, 1).view(B, T, -1).transpose(1, 2)

    def decode(self, codes):  # [B, K, T] -> latent [B, D, T]
        latent = 0.0
        for q in range(codes.shape[1]):
            latent = latent + self.layers[q].lookup(codes[:, q])  # [B, T, D]
        return latent.transpose(1, 2)

    @full_fp32_matmuls()  # the nearest-code search, k-means and the EMA sums
    def forward(self, latent):
        """Training: (quantized latent with straight-through gradient [B, D, T], codes [B, K, T], commitment loss).

        Also updates the codebooks by EMA when the module is in training mode."""
        B, D, T = latent.shape
        x = latent.transpose(1, 2).reshape(B * T, D)
        residual, quantized, codes, commit = x, 0.0, [], 0.0
        for layer in self.layers[: self.num_codebooks]:
            if self.training:
                if not layer.codebook.inited:
                    layer.kmeans_init(residual.detach())
                layer.replace_dead_codes(residual.detach())
            idx = layer.nearest(residual.detach())
            q = layer.lookup(idx)
            # commitment: pull the encoder output towards the code it was given (the codes themselves move by EMA)
            commit = commit + F.mse_loss(residual, q.detach())
            if self.training:
                layer.ema_update(residual.detach(), idx)
            residual = residual - q.detach()
            quantized = quantized + q.detach()
            codes.append(idx)
        # straight-through: the forward pass uses the codes, the backward pass pretends quantisation was identity,
        # so the reconstruction loss reaches the encoder
        quantized = x + (quantized - x).detach()
        codes = torch.stack(codes, 1).view(B, T, -1).transpose(1, 2)
        return quantized.view(B, T, D).transpose(1, 2), codes, commit / self.num_codebooks


# ----------------------------------------------------------------------------- the codec
class EncodecLite(nn.Module):
    """The codec: encoder, RVQ and decoder (paper §2.1), with encode / decode for inference and a training forward."""

    def __init__(self, config):
        super().__init__()
        if config.codebook_dim != config.hidden_size:
            raise ValueError(f"codebook_dim ({config.codebook_dim}) must equal hidden_size ({config.hidden_size}): "
                             "the codebooks quantise the latent directly, without projections.")
        self.config = config
        if config.codec_type == "seanet":
            self.encoder, self.decoder = Encoder(config), Decoder(config)
        elif config.codec_type == "spectral":
            # spectral_codec builds on this file (its LSTM), so it is imported here rather than at the top
            from spectral_codec import SpectralDecoder, SpectralEncoder
            self.encoder, self.decoder = SpectralEncoder(config), SpectralDecoder(config)
        else:
            raise ValueError(f"codec_type must be 'seanet' or 'spectral'; got {config.codec_type!r}.")
        self.quantizer = ResidualVectorQuantizer(config)
        # the sizes its users need: samples per second and per frame, frames per second, K, N
        self.sample_rate, self.hop_length, self.frame_rate = config.sampling_rate, config.hop_length, config.frame_rate
        self.num_codebooks, self.codebook_size = config.num_codebooks, config.codebook_size

    @property
    def device(self):
        return self.quantizer.layers[0].codebook.embed.device

    # --- inference
    @torch.no_grad()
    def encode(self, wav, sample_rate=None):
        """wav [B, C, N] or [C, N] float -> codes LongTensor [B, K, ceil(N / hop)].

        Audio at another sample rate (pass `sample_rate`) is resampled and stereo is downmixed, with a notice."""
        wav = audio.prepare(wav, sample_rate, self.sample_rate, self.config.audio_channels, what="audio to encode")
        return self.quantizer.encode(self.encoder(wav.to(self.device, self.quantizer.layers[0].codebook.embed.dtype)))

    @torch.no_grad()
    def decode(self, codes):
        """codes [B, K, T] (or [K, T]) integers in [0, N) -> wav [B, 1, T * hop]."""
        codes = self.check_codes(codes)
        return self.decoder(self.quantizer.decode(codes.to(self.device)))

    def check_codes(self, codes):
        codes = torch.as_tensor(codes, device=codes.device if torch.is_tensor(codes) else "cpu")  # lists: the CPU
        if codes.dim() == 2:
            codes = codes[None]
        K, N = self.num_codebooks, self.codebook_size
        if codes.dim() != 3 or codes.shape[1] != K:
            raise ValueError(f"Codes must be [B, K={K}, T] (or [K, T]); got shape {tuple(codes.shape)}.")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"Codes must be integers (torch.long); got {codes.dtype}.")
        if codes.shape[-1] == 0:
            raise ValueError("Codes are empty (T = 0 frames): nothing to decode.")
        if codes.min() < 0 or codes.max() >= N:
            raise ValueError(f"Codes must lie in [0, {N - 1}] for a codebook of {N} entries; got values from "
                             f"{int(codes.min())} to {int(codes.max())}. (An LM's special/pad token {N} must be "
                             "removed before decoding.)")
        return codes.long()

    # --- training
    def forward(self, wav, quantize=True):
        """Training pass: wav [B, C, N] -> (codes [B, K, T] or None, {loss name: weighted value}): the commitment loss
        and the decoder's own reconstruction losses (Decoder.losses), whose sum is what training minimises.

        In training mode this also updates the codebooks (EMA). The input must already be at `sample_rate`.
        quantize=False skips the RVQ (a plain auto-encoder): the warm-up before the codebooks are k-means-initialised
        from the trained encoder's latents, since VQ on a random encoder collapses onto one code."""
        latent = self.encoder(wav)
        codes, commit = None, latent.new_zeros(())
        if quantize:
            latent, codes, commit = self.quantizer(latent)
        return codes, {"commit": commit, **self.decoder.losses(latent, wav)}

    # --- weight norm: trainable form vs. folded inference form
    def fold_weight_norm(self):
        """Replace every g * v / ||v|| by the plain weight it computes: same outputs, no per-call norm.
        Done by from_pretrained; after it, training still works but without the weight-norm parametrisation."""
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) and parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight")
        return self

    # --- Hugging Face layout
    def hf_state_dict(self):
        """Tensors with HF EncodecModel names (weight norm as parametrizations.weight.original0 = g / original1 = v)."""
        sd = dict(self.state_dict())
        for name in [k for k in sd if k.endswith("conv.weight")]:  # folded: any (g, v) with g*v/|v| = w will do
            w = sd.pop(name)
            prefix = name[: -len("weight")] + "parametrizations.weight."
            sd[prefix + "original0"] = torch.linalg.vector_norm(w, dim=(1, 2), keepdim=True)
            sd[prefix + "original1"] = w
        return sd

    def load_hf_state_dict(self, state_dict, source="checkpoint"):
        """Load HF-named tensors (either weight-norm spelling) into this (unfolded) model, strictly."""
        old_style = {".weight_g": ".parametrizations.weight.original0",  # the 2023 hub files' spelling
                     ".weight_v": ".parametrizations.weight.original1"}
        renamed = {}
        for name, tensor in state_dict.items():
            for old, new in old_style.items():
                if name.endswith(old):
                    name = name[: -len(old)] + new
            renamed[name] = tensor
        first = renamed.get("encoder.inp.weight")  # the spectral encoder's first layer: [width, channels, kernel]
        if self.config.codec_type == "spectral" and first is not None and first.shape[-1] != 1:
            raise checkpoints.CheckpointError(
                f"{source} is a laptop codec from before 2026-12-07, whose encoder reads three frames at once; this "
                "version reads one. Train a new model: python train.py --config small --out_dir out/small-v2")
        checkpoints.load_into(self, renamed, source=source)
        return self

    @classmethod
    def from_pretrained(cls, path, train=False):
        """Load facebook/encodec_32khz (or our own save) from a directory or the HF cache; a MusicGen directory
        works too (its `audio_encoder` part). Ready for inference (eval, weight norm folded) unless train=True."""
        model_dir = checkpoints.resolve_model_dir(path)
        config = checkpoints.read_config(model_dir)
        prefix = ""
        if "audio_encoder" in config:  # a MusicGen checkpoint: sub-config + prefixed tensors
            config, prefix = config["audio_encoder"], "audio_encoder."
        model = cls(EncodecConfig.from_hf(config))
        model.load_hf_state_dict(checkpoints.load_state_dict(model_dir, prefix), source=str(model_dir))
        return model.train() if train else model.fold_weight_norm().eval()

    def save_pretrained(self, path):
        """config.json + model.safetensors, loadable by this class and (SEANet codecs only: the spectral codec is
        ours) by transformers.EncodecModel."""
        path = Path(path)
        checkpoints.save_config(self.config.to_hf(), path / "config.json")
        checkpoints.save_safetensors(self.hf_state_dict(), path / "model.safetensors")


# ----------------------------------------------------------------------------- training: losses
#
# EnCodec (Défossez et al. 2022, §3.4) trains with: an L1 loss on the waveform, L1+L2 losses on mel spectrograms
# at several resolutions, the commitment loss, and an adversarial loss with a multi-scale STFT discriminator plus
# feature matching. This file keeps the reconstruction and commitment losses and leaves the adversarial part out.
# Short windows see timing, long windows see pitch: several scales are needed.
def hz_to_mel(f):
    return 2595.0 * torch.log10(1.0 + f / 700.0)  # the HTK mel scale


def mel_filterbank(sample_rate, n_fft, n_mels):
    """[n_mels, n_fft // 2 + 1] triangular filters, equally spaced on the mel scale from 0 Hz to Nyquist."""
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)                   # FFT bin centres
    edges_mel = torch.linspace(0, float(hz_to_mel(torch.tensor(sample_rate / 2))), n_mels + 2)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)                           # back to Hz
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]   # [n_mels, 1] each
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


class MelSpectrogram(nn.Module):
    """Mel magnitudes in amplitude units: the STFT is divided by the window's sum, so a full-scale sine reads ~0.5
    whatever the window size, and one floor / one weight suits every scale."""

    def __init__(self, sample_rate, n_fft, n_mels):
        super().__init__()
        self.n_fft = n_fft
        window = torch.hann_window(n_fft)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("filters", mel_filterbank(sample_rate, n_fft, n_mels) / window.sum(), persistent=False)

    def forward(self, wav):  # [B, C, N] -> [B * C, n_mels, frames]
        spec = torch.stft(wav.reshape(-1, wav.shape[-1]), self.n_fft, hop_length=self.n_fft // 4,
                          window=self.window, return_complex=True)
        # One GEMM over every frame of the batch, [B * frames, F] @ [F, n_mels]. (filters @ spec would broadcast
        # into B thin products of a few frames each: 3x slower at n_fft 4096.)
        return (spec.abs().transpose(1, 2) @ self.filters.T).transpose(1, 2)


class CodecLoss(nn.Module):
    """SEANet's reconstruction losses, each as it enters the total: "l1", time_weight (0.1) * L1(waveform), and
    "mel", the mean over window sizes of [L1(mel) + L1(log mel)].

    EnCodec uses L1 + L2 on mel magnitudes (windows 2^5 .. 2^11), which weigh the loud parts; the log-mel term (as in
    HiFi-GAN and DAC) weighs the quiet partials that carry the harmony like loud ones, floored at -60 dB so that no
    effort goes into silent bands. Windows 2^6 .. 2^12 with n_fft / 8 mel bands each: the long windows get bands
    narrow enough to tell neighbouring semitones apart (at 16 kHz, ~9 Hz around 200 Hz, where a semitone is 12 Hz)."""

    time_weight = 0.1

    def __init__(self, sample_rate, scales=range(6, 13), floor=1e-3):
        super().__init__()
        self.floor = floor
        self.mels = nn.ModuleList(MelSpectrogram(sample_rate, 2 ** i, 2 ** i // 8) for i in scales)

    def forward(self, x, y):  # x target, y reconstruction, both [B, C, N] -> dict of scalar losses
        mel = 0.0
        for m in self.mels:
            mx, my = m(x), m(y)
            mel = mel + F.l1_loss(my, mx) + F.l1_loss(my.clamp(min=self.floor).log(), mx.clamp(min=self.floor).log())
        return {"l1": self.time_weight * F.l1_loss(y, x), "mel": mel / len(self.mels)}


def codebook_stats(codes, codebook_size):
    """Per codebook: fraction of entries used in this batch, and perplexity exp(entropy of code frequencies) —
    N if all codes are used equally, 1 if the codebook collapsed onto one code. codes [B, K, T] -> 0-dim tensors."""
    stats = {}
    for q in range(codes.shape[1]):
        counts = torch.bincount(codes[:, q].reshape(-1), minlength=codebook_size).float()
        p = counts / counts.sum()
        stats[f"usage{q}"] = (counts > 0).float().mean()
        stats[f"ppl{q}"] = torch.exp(-(p * p.clamp(min=1e-12).log()).sum())
    return stats


# ----------------------------------------------------------------------------- training: one step
class CodecTrainer:
    """The optimiser of an EncodecLite; `step(wav)` does one update and returns a stats dict (train.py runs the loop).

    Adam with betas (0.5, 0.9) and lr 3e-4 as in EnCodec. The codebooks are buffers updated by EMA inside the
    forward pass, so the optimiser only sees the convolution / LSTM weights.

    Beside Adam's weights it keeps an average of the decoder's: the plain mean of the steps so far, from step 500 on
    an exponential moving average (`decay` 0.998: about the last 500 steps); `use_average()` puts it in the decoder
    once training ends. A short run stops while the weights still follow the last batches; the averaged decoder
    keeps more of the notes of music the codec has not heard. The encoder stays as trained, so the codes are
    those the codebooks were fitted to (RESULTS.md, "The decoder's weights averaged"). EnCodec averages nothing; it
    trains 300k steps, the laptop 3000."""

    def __init__(self, codec, lr=3e-4, decay=0.998):
        self.codec = codec.train()
        fused = codec.device.type in ("cpu", "cuda")  # one kernel for the whole update: 1.1x faster steps on a CPU
        self.opt = torch.optim.Adam(codec.parameters(), lr=lr, betas=(0.5, 0.9), fused=fused)
        self.decay, self.updates = decay, 0  # updates: steps averaged so far
        self.average = [p.detach().clone() for p in codec.decoder.parameters()]

    def step(self, wav, quantize=True):
        """One update on wav [B, C, N] at codec.sample_rate (RVQ off while quantize=False, see EncodecLite.forward).
        Returns 0-dim tensors: "loss" (the sum minimised), "grad_norm", each loss term, and per codebook q of a
        quantised step its usage and perplexity ("usage{q}", "ppl{q}")."""
        codes, losses = self.codec(wav.to(self.codec.device), quantize)
        total = sum(losses.values())
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.codec.parameters(), 100.0)  # only guards against spikes
        self.opt.step()
        self.average_weights()
        # 0-dim tensors, not floats: reading them would make the host wait for the GPU at every step
        stats = {"loss": total.detach(), "grad_norm": grad_norm}
        stats.update({name: value.detach() for name, value in losses.items()})
        if codes is not None:
            stats.update(codebook_stats(codes, self.codec.codebook_size))
        return stats

    @torch.no_grad()
    def average_weights(self):
        """Fold the weights just updated into the average: the plain mean while fewer than 1 / (1 - decay) steps are
        done (a short run's average is not mostly its random start), the exponential moving average after."""
        self.updates += 1
        weight = max(1 - self.decay, 1 / self.updates)  # 1 at the first step: the average starts at its weights
        for average, p in zip(self.average, self.codec.decoder.parameters()):
            average.lerp_(p, weight)  # average += weight * (p - average)

    @torch.no_grad()
    def use_average(self):
        """Training is over: the decoder takes the averaged weights (the encoder and codebooks stay as they are)."""
        for average, p in zip(self.average, self.codec.decoder.parameters()):
            p.copy_(average)

    def state_dict(self):
        """Everything needed to resume exactly (the codec's own weights and codebooks included)."""
        return {"codec": self.codec.state_dict(), "opt": self.opt.state_dict(), "average": self.average,
                "updates": self.updates}

    @torch.no_grad()
    def load_state_dict(self, state):
        self.codec.load_state_dict(state["codec"])
        self.opt.load_state_dict(state["opt"])
        for average, saved in zip(self.average, state["average"]):
            average.copy_(saved)
        self.updates = state["updates"]
