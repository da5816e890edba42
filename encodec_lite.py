"""
encodec_lite.py: EnCodec, the neural audio codec that turns music into MusicGen's K parallel token streams.

Paper §2.1: a convolutional auto-encoder (SEANet) squeezes a waveform sampled at f_s into a latent sequence at a
frame rate f_r << f_s; residual vector quantisation (RVQ) turns each latent frame into K integers, one per codebook
of size N. MusicGen never sees audio, only these codes [B, K, T], and turns its generated codes back into sound with
the decoder.

    wav [B, 1, N] --encoder--> latent [B, D, T] --RVQ, K codebooks--> codes [B, K, T]      T = ceil(N / hop)
    codes --sum of K codebook vectors--> latent [B, D, T] --decoder--> wav [B, 1, T * hop]

For facebook/encodec_32khz (the codec of every released MusicGen): 32 kHz, hop 640 = 8*5*4*4, so 50 frames per
second, K = 4 codebooks of N = 2048 entries, latent D = 128.

The file, top to bottom:
    EncodecConfig, PRESETS       hyper-parameters with Hugging Face field names, and named sizes
    Conv1d / ConvTranspose1d     weight-normed convolutions with EnCodec's padding rules
    ResnetBlock, LSTM            the SEANet building blocks; Encoder / Decoder stack them
    SpectralEncoder / Decoder    our codec for the laptop run: STFT magnitudes and phase advances, steady codes
    Codebook / VectorQuantizer / ResidualVectorQuantizer     RVQ, trained with EMA k-means updates
    EncodecLite                  encode / decode / forward, load and save in the Hugging Face layout
    training                     mel filter bank, CodecLoss, STFT discriminator, CodecTrainer, train_codec

Module and tensor names are exactly Hugging Face's (`encoder.layers.3.conv...`, `quantizer.layers.0.codebook.embed`),
so checkpoints map one to one; that is also why the layer lists contain the ELUs: they take up list indices.
"""

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
from chroma import chroma_filter_bank

# ----------------------------------------------------------------------------- config


@dataclass
class EncodecConfig:
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
    codec_type: str = "seanet"                 # or "spectral": our codec for the laptop run (SpectralEncoder)

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
    def from_hf(cls, d):
        """From an HF EncodecConfig dict (a facebook/encodec_32khz config.json, or MusicGen's `audio_encoder`)."""
        # Only the non-causal, weight-normed, un-normalised variant is implemented: the one MusicGen uses. Missing
        # keys take HF's defaults, which for these flags are the *other* variant (encodec_24khz), hence the checks.
        unsupported = {
            "use_causal_conv": (True, False), "use_conv_shortcut": (True, False), "normalize": (False, False),
            "norm_type": ("weight_norm", "weight_norm"), "chunk_length_s": (None, None),
        }
        for key, (hf_default, ours) in unsupported.items():
            if d.get(key, hf_default) != ours:
                raise checkpoints.CheckpointError(
                    f"This EnCodec config has {key}={d.get(key, hf_default)!r}; encodec_lite implements only "
                    f"{key}={ours!r} (the non-causal 32 kHz codec of MusicGen, e.g. facebook/encodec_32khz).")
        kwargs = {f.name: d[f.name] for f in fields(cls) if d.get(f.name) is not None}
        for key in ("upsampling_ratios", "target_bandwidths"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        kwargs.setdefault("codebook_dim", kwargs.get("hidden_size", cls.hidden_size))
        return cls(**kwargs)

    def to_hf(self):
        d = asdict(self)
        if self.codec_type == "seanet":  # HF's own codec: keep its config.json free of our key
            del d["codec_type"]
        d.update(upsampling_ratios=list(self.upsampling_ratios), target_bandwidths=list(self.target_bandwidths))
        # the flags that pin HF to the variant we implement (their HF defaults differ, see from_hf)
        d.update(model_type="encodec", architectures=["EncodecModel"], use_causal_conv=False, use_conv_shortcut=False,
                 normalize=False, norm_type="weight_norm", trim_right_ratio=1.0, chunk_length_s=None, overlap=None)
        return d


def _bandwidth(num_codebooks, codebook_size, frame_rate):
    """The kbps that gives exactly `num_codebooks` codebooks (HF stores K only through the bandwidth)."""
    return num_codebooks * math.log2(codebook_size) * frame_rate / 1000


PRESETS = {
    # The released codec of MusicGen (facts §4.1).
    "encodec_32khz": EncodecConfig(),
    # For unit tests: seconds to build and run. 8 kHz, hop 160 -> 50 frames/s, K = 4 codebooks of 64.
    "tiny": EncodecConfig(
        sampling_rate=8000, num_filters=4, upsampling_ratios=(8, 5, 4), hidden_size=16, codebook_size=64,
        codebook_dim=16, target_bandwidths=(_bandwidth(4, 64, 50),), num_lstm_layers=1),
    # The same with the spectral codec: the tiny config of train.py (the laptop recipe's codec, in seconds).
    "tiny-spectral": EncodecConfig(
        sampling_rate=8000, num_filters=4, upsampling_ratios=(8, 5, 4), hidden_size=16, codebook_size=64,
        codebook_dim=16, target_bandwidths=(_bandwidth(4, 64, 50),), num_lstm_layers=1, codec_type="spectral"),
    # For the laptop training run. Our synthesized corpus has little energy above 4 kHz, so 16 kHz loses nothing.
    # Hop 320 gives 50 frames/s like the real codec, so an LM trained on these codes sees the same time grid as
    # MusicGen; K = 4 codebooks as in the paper (the delay pattern and its 3-step offset stay the same), but only 256
    # entries each: fewer entries learn faster from little data and give the small LM an easier vocabulary. The
    # spectral encoder / decoder (below) instead of SEANet: its codes sit still while a note is held, which is what
    # lets a small LM follow the prompt (README, "the spectral codec"). The ratios only set the hop here.
    "small": EncodecConfig(
        sampling_rate=16000, num_filters=16, upsampling_ratios=(8, 5, 4, 2), hidden_size=64, codebook_size=256,
        codebook_dim=64, target_bandwidths=(_bandwidth(4, 256, 50),), num_lstm_layers=1, codec_type="spectral"),
    # The SEANet codec of the same size that the laptop run used before (README: what it measured). 16 filters (vs
    # 64) and a 64-dim latent keep the convs ~16x cheaper than encodec_32khz.
    "small-seanet": EncodecConfig(
        sampling_rate=16000, num_filters=16, upsampling_ratios=(8, 5, 4, 2), hidden_size=64, codebook_size=256,
        codebook_dim=64, target_bandwidths=(_bandwidth(4, 256, 50),), num_lstm_layers=1),
}


# ----------------------------------------------------------------------------- convolutions (facts §4.5, §4.6)


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

    PyTorch's default init gives each filter a norm of about 1/sqrt(3), so every conv shrinks its input by ~0.6; after
    the ~15 convs and ELUs of the encoder a random codec's latent barely varies over time (std ~0.006 against a
    constant offset ~0.05). The decoder then learns to ignore it and produces the *average* spectrum of the training
    audio (the mel loss drops, the waveform stays uncorrelated), and VQ on such a latent collapses onto one code.
    With g = 1 a conv roughly keeps the size of its input, and the latent starts out varying with the music."""
    conv.parametrizations.weight.original0.fill_(1.0)


def fast_path(x):
    """Inference on CPU: the convolutions below then use the matrix-product forms (conv1d_by_taps,
    conv_transpose1d_by_phases). Same sums as F.conv1d / F.conv_transpose1d in another order (outputs agree to
    float rounding, tests/test_encodec.py), but on a long signal with few channels the CPU library convolution spends
    most of its time converting memory layouts into fresh temporary buffers, while one matrix product per kernel tap
    streams through the signal: ~2x faster on EnCodec's full-rate layers. Training (autograd) and GPUs keep the
    library convolutions."""
    return x.device.type == "cpu" and not torch.is_grad_enabled()


def conv1d_by_taps(x, weight, bias, dilation=1):
    """Stride-1 convolution as a sum over the kernel taps j of a matrix product with a shifted view of the signal:

        y[:, t] = b + sum_j W[:, :, j] @ x[:, t + j * dilation]      x [B, C_in, L], W [C_out, C_in, k] -> y [B, C_out, L_out]

    The shifted views x[..., j*d : j*d + L_out] are not copied: a matrix product reads them in place."""
    batch, k = x.shape[0], weight.shape[-1]
    length = x.shape[-1] - (k - 1) * dilation
    taps = weight.permute(2, 0, 1).unsqueeze(1).expand(k, batch, *weight.shape[:2])  # [k, B, C_out, C_in]
    y = torch.baddbmm(bias[:, None].expand(batch, -1, length), taps[0], x[..., :length])  # [B, C_out, L_out]
    for j in range(1, k):
        y.baddbmm_(taps[j], x[..., j * dilation : j * dilation + length])
    return y


def conv_transpose1d_by_phases(x, weight, bias, stride):
    """Transposed convolution with kernel 2 * stride, as one matrix product and an interleave.

    Output sample n * s + r (s = stride, phase r < s) is W[:, :, r]^T x[n] + W[:, :, r + s]^T x[n - 1]: every input
    frame feeds 2 s output samples. So multiply every frame by all 2 s taps at once, then add the two halves with a
    one-frame shift and interleave the s phases. x [B, C_in, L], W [C_in, C_out, 2s] -> y [B, C_out, (L + 1) * s]."""
    batch, _, length = x.shape
    c_out = weight.shape[1]
    taps = weight.permute(2, 1, 0).reshape(2 * stride * c_out, -1)  # [2s * C_out, C_in], rows (half, phase, out)
    y = (taps @ x).view(batch, 2, stride, c_out, length)  # [B, 2, s, C_out, L]
    out = torch.empty(batch, c_out, length + 1, stride, dtype=x.dtype)  # [B, C_out, frame, phase]
    torch.add(y[:, 0].permute(0, 2, 3, 1), bias[:, None, None], out=out[:, :, :length])  # taps 0..s-1 on x[n]
    out[:, :, length] = bias[:, None]
    out[:, :, 1:] += y[:, 1].permute(0, 2, 3, 1)  # taps s..2s-1 on x[n - 1]
    return out.view(batch, c_out, (length + 1) * stride)


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
        conv = self.conv
        if fast_path(x) and self.stride == 1 and conv.in_channels > 1:  # (a 1-channel input makes thin products)
            return conv1d_by_taps(x, conv.weight, conv.bias, conv.dilation[0])
        return conv(x)


class ConvTranspose1d(nn.Module):
    """A weight-normed ConvTranspose1d that upsamples exactly L -> L * stride (kernel = 2 * stride here)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride):
        super().__init__()
        # weight [C_in, C_out, k]: weight norm's g is per *input* channel here (dim 0)
        self.conv = weight_norm(nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride))
        unit_gain_init(self.conv)
        self.stride, self.padding_total = stride, kernel_size - stride

    def forward(self, x):  # [B, C_in, L] -> [B, C_out, L * stride]
        conv = self.conv
        if fast_path(x) and conv.kernel_size[0] == 2 * self.stride:
            y = conv_transpose1d_by_phases(x, conv.weight, conv.bias, self.stride)
        else:
            y = conv(x)  # (L - 1) * stride + kernel samples
        right = self.padding_total // 2  # trim the overhang from both ends
        left = self.padding_total - right
        return y[..., left: y.shape[-1] - right]


# ----------------------------------------------------------------------------- SEANet blocks (facts §4.2-§4.4)


class ResnetBlock(nn.Module):
    """x + Conv1x1(ELU(Conv_k(ELU(x)))): a bottleneck (dim -> dim / compress -> dim) with an identity skip."""

    def __init__(self, config, dim, dilation):
        super().__init__()
        hidden = dim // config.compress
        # The first ELU must leave x alone (the skip needs it); the second may overwrite the conv output it gets.
        self.block = nn.ModuleList([
            nn.ELU(),
            Conv1d(dim, hidden, config.residual_kernel_size, dilation=dilation, pad_mode=config.pad_mode),
            nn.ELU(inplace=True),
            Conv1d(hidden, dim, 1, pad_mode=config.pad_mode),
        ])

    def forward(self, x):
        y = x
        for layer in self.block:
            y = layer(y)
        return y.add_(x)  # y is a fresh conv output: adding in place saves a copy of the signal


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

    def __init__(self, c):
        super().__init__()
        layers = [Conv1d(c.audio_channels, c.num_filters, c.kernel_size, pad_mode=c.pad_mode)]
        dim = c.num_filters
        for ratio in reversed(c.upsampling_ratios):
            layers += [ResnetBlock(c, dim, c.dilation_growth_rate ** j) for j in range(c.num_residual_layers)]
            layers += [nn.ELU(inplace=True), Conv1d(dim, 2 * dim, 2 * ratio, stride=ratio, pad_mode=c.pad_mode)]
            dim *= 2
        layers += [LSTM(dim, c.num_lstm_layers), nn.ELU(inplace=True),
                   Conv1d(dim, c.hidden_size, c.last_kernel_size, pad_mode=c.pad_mode)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class Decoder(nn.Module):
    """latent [B, D, T] -> wav [B, 1, T * hop]: the encoder mirrored, transposed convs upsample. No final tanh."""

    def __init__(self, c):
        super().__init__()
        dim = c.num_filters * 2 ** len(c.upsampling_ratios)
        layers = [Conv1d(c.hidden_size, dim, c.kernel_size, pad_mode=c.pad_mode), LSTM(dim, c.num_lstm_layers)]
        for ratio in c.upsampling_ratios:
            layers += [nn.ELU(inplace=True), ConvTranspose1d(dim, dim // 2, 2 * ratio, stride=ratio)]
            dim //= 2
            layers += [ResnetBlock(c, dim, c.dilation_growth_rate ** j) for j in range(c.num_residual_layers)]
        layers += [nn.ELU(inplace=True), Conv1d(dim, c.audio_channels, c.last_kernel_size, pad_mode=c.pad_mode)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


# ----------------------------------------------------------------------------- the spectral codec (laptop run)
#
# Why a second architecture. SEANet's decoder upsamples by transposed convolutions: a latent that holds still
# becomes a waveform that repeats every hop, i.e. only harmonics of the frame rate (50 Hz). So the pitch of a held
# note has to live in how the latent *changes*: on a sustained organ chord the codes of codebook 1 change in ~93 %
# of frames, following the phase of each partial. The paper's 300M LM, trained on 20k hours, learns to continue
# such sequences; a 3M LM trained for 7 minutes cannot, and its held chords come out flickering (README).
#
# The spectral codec takes the phase out of the latent. Per frame it works with an STFT whose hop is the codec's:
#   encoder  reads the log magnitudes and the phase *advance* from one frame to the next of each frequency bin.
#            Both stay constant while a note is held (the advance is 2 pi f hop / sample_rate for a partial at f),
#            so the latent, and the codes, sit still: on the laptop corpus codebook 1 changes in ~15 % of frames
#            instead of 82-85 % (README).
#   decoder  predicts each bin's magnitude and phase advance (GANSynth's "instantaneous frequency", Engel et al.
#            2019), adds the advances up over frames into phases, gives every bin the phase of the spectral peak it
#            belongs to (the phase vocoder's "identity phase locking", Laroche & Dolson 1999: without it the bins of
#            one partial, whose phases started apart, interfere), and inverts the STFT (as Vocos does, Siuzdak 2023).
# Training compares the decoder's magnitudes and advances directly with those of the input
# (SpectralDecoder.supervision): log magnitudes, the loud partials that carry the notes (spectral convergence, pitch
# classes), and the advances of the loud bins. Nothing compares waveforms: the phases start wherever the sum starts,
# so the waveform is not the input's (SI-SNR means nothing for this codec; mel distance and chroma agreement do).
# EnCodec's mel losses on the decoded waveform, tried too, reached the advances only through the phase integration;
# without them the codec keeps as many notes and trains 1.5x faster (README: the spectral codec).


def frame_stft(wav, n_fft, hop, window, frames):
    """wav [B, 1, N] -> complex STFT [B, F, frames], frame t centred on sample t * hop; silence beyond the ends
    (constant padding: reflecting a note back would invent music that is not there)."""
    return torch.stft(wav[:, 0], n_fft, hop, window=window, pad_mode="constant", return_complex=True)[..., :frames]


def phase_advance(spec):
    """Complex STFT [B, F, T] -> phase advance of each bin from the previous frame, in (-pi, pi] [B, F, T].
    Frame 0 has no predecessor and takes frame 1's advance (a single frame: 0)."""
    if spec.shape[-1] < 2:
        return torch.zeros(spec.shape, device=spec.device)
    advance = torch.angle(spec[..., 1:] * spec[..., :-1].conj())
    return torch.cat([advance[..., :1], advance], dim=-1)


def bin_advance(n_fft, hop):
    """The phase advance per hop of a partial exactly at each bin's centre frequency [F]: 2 pi k hop / n_fft."""
    return (2 * math.pi * torch.arange(n_fft // 2 + 1) * hop / n_fft) % (2 * math.pi)


def lock_phases(magnitude, phase, reach=2):
    """Identity phase locking: each bin takes the phase of the loudest bin within `reach` bins (its peak), plus
    pi per bin of distance (a Hann-windowed partial alternates sign from bin to bin). [B, F, T] -> [B, F, T]."""
    B, F_, T = magnitude.shape
    frames = magnitude.detach().transpose(1, 2).reshape(B * T, 1, F_)
    _, peak = F.max_pool1d(frames, 2 * reach + 1, stride=1, padding=reach, return_indices=True)
    peak = peak.view(B, T, F_).transpose(1, 2)  # [B, F, T] index of each bin's peak
    bins = torch.arange(F_, device=magnitude.device)[None, :, None]
    return phase.gather(1, peak) + math.pi * (bins - peak)


class FrameBlock(nn.Module):
    """x + Conv1x1(ELU(Conv3_dilated(ELU(x)))) over frames: the spectral codec's residual block."""

    def __init__(self, dim, dilation):
        super().__init__()
        self.dilated = nn.Conv1d(dim, dim, 3, padding=dilation, dilation=dilation)
        self.mix = nn.Conv1d(dim, dim, 1)

    def forward(self, x):
        return x + self.mix(F.elu(self.dilated(F.elu(x))))


class SpectralEncoder(nn.Module):
    """wav [B, 1, N] -> latent [B, D, ceil(N / hop)], from STFT frames centred on the latent frames: log magnitudes
    at a long window (2048 at hop 320: 7.8 Hz bins, for the pitch), and at the decoder's window 4 hop the log
    magnitudes and the phase advance relative to each bin's centre, as (cos, sin) weighted by how loud the bin is
    (the advance of an empty bin is noise)."""

    def __init__(self, c):
        super().__init__()
        self.hop = c.hop_length
        self.long_fft, self.n_fft = 2 ** math.ceil(math.log2(4 * self.hop)), 4 * self.hop
        width = 4 * c.hidden_size
        self.register_buffer("long_window", torch.hann_window(self.long_fft), persistent=False)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.register_buffer("centre", bin_advance(self.n_fft, self.hop), persistent=False)
        channels = self.long_fft // 2 + 1 + 3 * (self.n_fft // 2 + 1)
        self.inp = nn.Conv1d(channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(FrameBlock(width, d) for d in (1, 2, 4, 1))
        self.lstm = LSTM(width, c.num_lstm_layers)
        self.out = nn.Conv1d(width, c.hidden_size, 3, padding=1)

    def forward(self, wav):
        frames = math.ceil(wav.shape[-1] / self.hop)
        long = frame_stft(wav, self.long_fft, self.hop, self.long_window, frames).abs()
        spec = frame_stft(wav, self.n_fft, self.hop, self.window, frames)  # [B, F, T]
        offset = phase_advance(spec) - self.centre[:, None]  # where in its bin each partial sits
        loudness = (spec.abs() / (spec.abs().amax(dim=1, keepdim=True) + 1e-6)).sqrt()
        x = torch.cat([torch.log(long + 1e-4) / 4, torch.log(spec.abs() + 1e-4) / 4,
                       loudness * torch.cos(offset), loudness * torch.sin(offset)], dim=1)
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.out(F.elu(self.lstm(x)))


class SpectralDecoder(nn.Module):
    """latent [B, D, T] -> wav [B, 1, T * hop]: per frame, each bin's magnitude and phase advance; phases summed
    over frames and locked to their peaks; inverse STFT (window 4 hop)."""

    def __init__(self, c):
        super().__init__()
        self.hop, self.n_fft = c.hop_length, 4 * c.hop_length
        bins, width = self.n_fft // 2 + 1, 4 * c.hidden_size
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.register_buffer("centre", bin_advance(self.n_fft, self.hop), persistent=False)
        self.register_buffer("chroma", chroma_filter_bank(c.sampling_rate, self.n_fft), persistent=False)  # [12, F]
        self.inp = nn.Conv1d(c.hidden_size, width, 3, padding=1)
        self.lstm = LSTM(width, c.num_lstm_layers)
        self.blocks = nn.ModuleList(FrameBlock(width, d) for d in (1, 2, 4, 1))
        self.head = nn.Conv1d(width, 4 * width, 1)  # a wide last layer: 2 x 641 outputs with sharp peaks
        self.out = nn.Conv1d(4 * width, 2 * bins, 1)

    def spectrum(self, latent):
        """latent [B, D, T] -> (magnitude, phase advance), each [B, F, T], in float32."""
        x = self.lstm(self.inp(latent))
        for block in self.blocks:
            x = block(x)
        log_mag, offset = self.out(F.elu(self.head(F.elu(x)))).float().chunk(2, dim=1)
        # A sine of amplitude a peaks at about a * hop in this STFT; exp(...) is that amplitude: it starts near
        # 0.02 (a quiet random codec) and is capped at e^2 (louder than full scale) so that no spike can overflow.
        magnitude = self.hop * torch.exp((log_mag - 4).clamp(max=2))
        advance = self.centre[:, None] + math.pi * torch.tanh(offset)  # within half a turn of the bin's own
        return magnitude, advance

    def synthesize(self, magnitude, advance):  # [B, F, T] each -> wav [B, 1, T * hop]
        phase = lock_phases(magnitude, torch.cumsum(advance, dim=-1))
        wav = torch.istft(torch.polar(magnitude, phase), self.n_fft, self.hop, window=self.window,
                          length=magnitude.shape[-1] * self.hop)
        return wav[:, None]

    def forward(self, latent):
        return self.synthesize(*self.spectrum(latent))

    def supervision(self, wav, magnitude, advance):
        """Direct losses against the input's own STFT: log-magnitude L1, spectral convergence, pitch-class profile,
        and 1 - cos of the phase-advance error weighted by each bin's share of the frame's energy (only the advances
        of loud bins matter)."""
        spec = frame_stft(wav, self.n_fft, self.hop, self.window, magnitude.shape[-1])
        target = spec.abs()  # [B, F, T]
        weight = target / (target.sum(dim=1, keepdim=True) + 1e-6)
        phase = (weight * (1 - torch.cos(advance - phase_advance(spec))))[..., 1:].sum(dim=1).mean()
        # The floor is ~ -90 dB re a full-scale sine: the quiet bins between the partials count too (a -60 dB floor
        # gave a lower mel loss and worse chroma: 47 % against 75 %, one run each).
        log_magnitude = F.l1_loss(torch.log(magnitude + 1e-2), torch.log(target + 1e-2))
        # Spectral convergence (Arik et al. 2019): the error's energy relative to the input's, so the few loud bins
        # of the partials, which carry the notes, weigh most; the log term above spends itself on the hundreds of
        # quiet bins between them. With it the auto-encoder keeps far more of the notes (README: the spectral codec).
        # Over the whole batch, not per crop: a silent crop (a rest) would divide by ~0 and blow the loss up.
        convergence = torch.linalg.norm(magnitude - target) / (torch.linalg.norm(target) + 1e-6)
        # The weights, and what each term bought in held-out chroma: README, "The spectral codec".
        return {"phase": phase, "magnitude": log_magnitude, "convergence": 10 * convergence,
                "chroma": 10 * self.pitch_class_loss(magnitude, target)}

    def pitch_class_loss(self, magnitude, target):
        """How differently the two spectra [B, F, T] share each frame's energy among the 12 pitch classes (chroma.py's
        filter bank): L1 between the shares, each frame weighted by its part of the input's energy (silence counts
        for nothing). The notes of a chord are what the music is; a small error in how loud each partial is can
        move which pitch class dominates, and this loss says so directly."""
        target_classes = torch.einsum("cf,bft->bct", self.chroma, target.square())  # [B, 12, T]
        classes = torch.einsum("cf,bft->bct", self.chroma, magnitude.square())
        share = lambda x: x / (x.sum(dim=1, keepdim=True) + 1e-6)  # noqa: E731
        frame_weight = target_classes.sum(dim=1) / (target_classes.sum(dim=(1, 2))[:, None] + 1e-6)  # [B, T]
        return (frame_weight * (share(classes) - share(target_classes)).abs().sum(dim=1)).sum(dim=-1).mean()


# ----------------------------------------------------------------------------- residual vector quantisation (§4.7)
#
# Why RVQ: one codebook of 2^44 entries would be needed to spend 44 bits per frame; instead K = 4 codebooks of 2^11
# each quantise what the previous ones left over (the residual). Codebook 1 captures the coarse shape, each further
# one refines it, so the first codebook matters most (paper §2.1) and bitrate scales by adding codebooks.
#
# How the codebooks are learned: not by gradient descent but as an online k-means. Every training step each code
# vector moves towards the mean of the latent vectors assigned to it, smoothed by an exponential moving average
# (EMA, decay 0.99). EMA is more stable than a codebook loss and needs no learning rate. The encoder is pulled
# towards its codes by the commitment loss, and receives the decoder's gradient through the straight-through trick.
#
# Dead codes: a code that no latent vector is nearest to gets no updates and stays useless forever (the encoder
# moves away from where the codebook was initialised). We detect codes whose EMA usage has decayed to almost nothing
# and re-seed them with latent vectors from the current batch, where the data actually is.


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
    def __init__(self, config):
        super().__init__()
        if config.codebook_dim != config.hidden_size:
            raise ValueError(f"codebook_dim ({config.codebook_dim}) must equal hidden_size ({config.hidden_size}): "
                             "the codebooks quantise the latent directly, without projections.")
        self.config = config
        if config.codec_type == "seanet":
            self.encoder, self.decoder = Encoder(config), Decoder(config)
        elif config.codec_type == "spectral":
            if config.audio_channels != 1:
                raise ValueError("The spectral codec is mono (audio_channels=1); stereo input is downmixed anyway.")
            self.encoder, self.decoder = SpectralEncoder(config), SpectralDecoder(config)
        else:
            raise ValueError(f"codec_type must be 'seanet' or 'spectral'; got {config.codec_type!r}.")
        self.quantizer = ResidualVectorQuantizer(config)

    # --- sizes
    @property
    def sample_rate(self):
        return self.config.sampling_rate

    @property
    def hop_length(self):
        return self.config.hop_length

    @property
    def frame_rate(self):
        return self.config.frame_rate

    @property
    def num_codebooks(self):
        return self.config.num_codebooks

    @property
    def codebook_size(self):
        return self.config.codebook_size

    @property
    def device(self):
        return self.quantizer.layers[0].codebook.embed.device

    # --- inference

    @torch.no_grad()
    def encode(self, wav, sample_rate=None):
        """wav [B, C, N] or [C, N] float -> codes LongTensor [B, K, ceil(N / hop)].

        Audio at another sample rate (pass `sample_rate`) is resampled and stereo is downmixed, with a notice."""
        wav = audio.prepare(wav, sample_rate, self.sample_rate, self.config.audio_channels, what="audio to encode")
        return self.quantizer.encode(self.encoder(wav.to(self.device)))

    @torch.no_grad()
    def decode(self, codes):
        """codes [B, K, T] (or [K, T]) integers in [0, N) -> wav [B, 1, T * hop]."""
        codes = self.check_codes(codes)
        return self.decoder(self.quantizer.decode(codes.to(self.device)))

    def check_codes(self, codes):
        codes = torch.as_tensor(codes)
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
        """Training pass: wav [B, C, N] -> (reconstruction [B, C, N], codes [B, K, T] or None, extra losses: a dict
        with the commitment loss, and for the spectral codec its direct phase and magnitude losses).

        In training mode this also updates the codebooks (EMA). The input must already be at `sample_rate`.
        quantize=False skips the RVQ (a plain auto-encoder): the warm-up, see train_codec."""
        latent = self.encoder(wav)
        codes, extra = None, {"commit": latent.new_zeros(())}
        if quantize:
            latent, codes, extra["commit"] = self.quantizer(latent)
        if self.config.codec_type == "spectral":
            magnitude, advance = self.decoder.spectrum(latent)
            extra.update(self.decoder.supervision(wav, magnitude, advance))
            recon = self.decoder.synthesize(magnitude, advance)
        else:
            recon = self.decoder(latent)
        return recon[..., : wav.shape[-1]], codes, extra

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
        old_style = {".weight_g": ".parametrizations.weight.original0", ".weight_v": ".parametrizations.weight.original1"}
        renamed = {}
        for name, tensor in state_dict.items():
            for old, new in old_style.items():
                if name.endswith(old):
                    name = name[: -len(old)] + new
            renamed[name] = tensor
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
# at several resolutions, the commitment loss, and optionally an adversarial loss with a multi-scale STFT
# discriminator plus feature matching. Short windows see timing, long windows see pitch: several scales are needed.


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
        # into B thin products of a few frames each: at n_fft 4096 that was 3x slower, 0.1 s per codec step.)
        return (spec.abs().transpose(1, 2) @ self.filters.T).transpose(1, 2)


class CodecLoss(nn.Module):
    """Reconstruction losses: time_weight (0.1) * L1(waveform) + mean over window sizes of [L1(mel) + L1(log mel)].

    EnCodec compares mel spectrograms at windows 2^5 .. 2^11 with L1 + L2 distances of the magnitudes, which weigh
    the loud parts. We keep the L1 term and add a log-mel term (as HiFi-GAN and DAC do), which weighs quiet partials,
    the ones that carry the harmony, like loud ones. The log is floored at -60 dB: below that nothing is audible,
    and without a floor the loss would be spent on pushing empty bands towards -100 dB. Windows 2^6 .. 2^12,
    n_fft / 8 mel bands each (8 .. 512): the long windows get enough bands to tell neighbouring semitones apart
    (at 16 kHz the 2048 window's 256 bands are ~9 Hz wide around 200 Hz, a semitone there is 12 Hz; the 4096
    window's bins are 3.9 Hz apart, enough for the bass lines of chorales and quartets, where a semitone at a low E
    is 5 Hz). With a fixed 64 bands (~35 Hz around 200 Hz) a note one semitone off costs the loss almost nothing,
    yet it is all chroma sees."""

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
        return {"l1": F.l1_loss(y, x), "mel": mel / len(self.mels)}

    def total(self, losses):
        """losses: this module's (l1, mel) and the codec's own (commitment), weight 1 except the waveform L1."""
        return sum(self.time_weight * value if name == "l1" else value for name, value in losses.items())


class STFTDiscriminator(nn.Module):
    """Multi-scale STFT discriminator (EnCodec §3.3), small: for each window size, a 2-D conv net looks at the
    complex spectrogram (real and imaginary parts as 2 channels) and scores every time-frequency patch."""

    def __init__(self, n_ffts=(256, 512, 1024), channels=16):
        super().__init__()
        self.n_ffts = n_ffts

        def net():
            return nn.ModuleList([
                nn.Conv2d(2, channels, (3, 9), padding=(1, 4)),
                nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4)),
                nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(2, 4), dilation=(2, 1)),
                nn.Conv2d(channels, channels, (3, 3), padding=(1, 1)),
                nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)),
            ])
        self.nets = nn.ModuleList(net() for _ in n_ffts)

    def forward(self, wav):
        """wav [B, C, N] -> list over scales of (logits [B*C, 1, F, T], [feature maps])."""
        outputs = []
        for n_fft, layers in zip(self.n_ffts, self.nets):
            window = torch.hann_window(n_fft, device=wav.device)
            spec = torch.stft(wav.reshape(-1, wav.shape[-1]), n_fft, n_fft // 4, window=window, return_complex=True)
            h = torch.view_as_real(spec).permute(0, 3, 1, 2)  # [B*C, 2, freq, frames]
            features = []
            for conv in layers[:-1]:
                h = F.leaky_relu(conv(h), 0.2)
                features.append(h)
            outputs.append((layers[-1](h), features))
        return outputs


def discriminator_loss(disc, real, fake):
    """Hinge loss: push scores of real audio above +1 and of reconstructions below -1."""
    loss = 0.0
    for (real_logits, _), (fake_logits, _) in zip(disc(real), disc(fake.detach())):
        loss = loss + F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    return loss / len(disc.n_ffts)


def generator_adversarial_losses(disc, real, fake):
    """(hinge loss of the codec as generator, feature matching: L1 between the discriminator's inner features of
    real and reconstructed audio, relative to the real features' size)."""
    adv, feat = 0.0, 0.0
    with torch.no_grad():
        real_out = disc(real)
    for (fake_logits, fake_feats), (_, real_feats) in zip(disc(fake), real_out):
        adv = adv + F.relu(1 - fake_logits).mean()
        for fr, rr in zip(fake_feats, real_feats):
            feat = feat + F.l1_loss(fr, rr) / (rr.abs().mean() + 1e-8)
    n = len(disc.n_ffts)
    return adv / n, feat / (n * len(real_out[0][1]))


def codebook_stats(codes, codebook_size):
    """Per codebook: fraction of entries used in this batch, and perplexity exp(entropy of code frequencies) —
    N if all codes are used equally, 1 if the codebook collapsed onto one code. codes [B, K, T]."""
    stats = {}
    for q in range(codes.shape[1]):
        counts = torch.bincount(codes[:, q].reshape(-1), minlength=codebook_size).float()
        p = counts / counts.sum()
        stats[f"usage{q}"] = float((counts > 0).float().mean())
        stats[f"ppl{q}"] = float(torch.exp(-(p * p.clamp(min=1e-12).log()).sum()))
    return stats


# ----------------------------------------------------------------------------- training: the loop


class CodecTrainer:
    """Optimisers and losses for training an EncodecLite; `step(wav)` does one update and returns a stats dict.

    Adam with betas (0.5, 0.9) and lr 3e-4 as in EnCodec. The codebooks are buffers updated by EMA inside the
    forward pass, so the optimiser only sees the convolution / LSTM weights. With adversarial=True a
    STFTDiscriminator is trained alternately (EnCodec weights: 3 for the adversarial and feature losses)."""

    def __init__(self, codec, lr=3e-4, adversarial=False):
        self.codec = codec.train()
        device = codec.device
        # The spectral codec learns from its own spectrum only (SpectralDecoder.supervision): its phases start
        # wherever they start, so its waveform is not the input's, and mel losses on that waveform cost a third of
        # each step and added no chroma (README: the spectral codec).
        self.loss = None if codec.config.codec_type == "spectral" else CodecLoss(codec.sample_rate).to(device)
        self.opt = torch.optim.Adam(codec.parameters(), lr=lr, betas=(0.5, 0.9))
        self.disc = STFTDiscriminator().to(device) if adversarial else None
        self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=lr, betas=(0.5, 0.9)) if adversarial else None

    def step(self, wav, quantize=True):  # wav [B, C, N] at codec.sample_rate
        wav = wav.to(self.codec.device)
        recon, codes, extra = self.codec(wav, quantize)
        losses = dict(extra)  # the codec's own: commitment (+ the spectral codec's supervision)
        if self.loss is not None:
            losses.update(self.loss(wav, recon))
        total = self.loss.total(losses) if self.loss is not None else sum(losses.values())
        stats = {}
        if self.disc is not None:
            adv, feat = generator_adversarial_losses(self.disc, wav, recon)
            total = total + 3 * adv + 3 * feat
            stats.update(adv=adv.item(), feat=feat.item())
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.codec.parameters(), 100.0)  # only guards against spikes
        self.opt.step()
        if self.disc is not None:
            d_loss = discriminator_loss(self.disc, wav, recon)
            self.disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_opt.step()
            stats["disc"] = d_loss.item()
        stats.update(loss=total.item(), grad_norm=grad_norm.item(), **{name: value.item() for name, value in losses.items()})
        if codes is not None:
            stats.update(codebook_stats(codes, self.codec.codebook_size))
        return stats

    def state_dict(self):
        """Everything needed to resume exactly (the codec's own weights and codebooks included)."""
        return {"codec": self.codec.state_dict(), "opt": self.opt.state_dict(),
                "disc": self.disc.state_dict() if self.disc else None,
                "disc_opt": self.disc_opt.state_dict() if self.disc else None}

    def load_state_dict(self, state):
        self.codec.load_state_dict(state["codec"])
        self.opt.load_state_dict(state["opt"])
        if self.disc is not None:
            if state["disc"] is None:
                raise ValueError("This checkpoint was trained without the discriminator; resume with adversarial=False.")
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_opt"])


def train_codec(codec, get_batch, steps, lr=3e-4, adversarial=False, log_every=50, callback=None,
                trainer=None, start_step=0, warmup=0):
    """Train `codec` for steps start_step .. steps-1; returns the list of logged stats dicts.

    The first `warmup` steps train a plain auto-encoder (RVQ off); the first quantised step then k-means-initialises
    the codebooks from the latents of the trained encoder. VQ on a random encoder collapses: its latent barely
    varies, so one code wins every frame and the decoder learns to ignore it.

    get_batch(step) -> wav [B, C, N] at codec.sample_rate (a function of the step, so a resumed run sees the same
    batches). callback(step, stats, trainer) is called every `log_every` steps and after the last one (print,
    checkpoint with trainer.state_dict(), ...). Pass a restored `trainer` and `start_step` to resume."""
    trainer = trainer or CodecTrainer(codec, lr=lr, adversarial=adversarial)
    history = []
    for step in range(start_step, steps):
        stats = trainer.step(get_batch(step), quantize=step >= warmup)
        if not all(math.isfinite(v) for v in stats.values()):
            raise FloatingPointError(f"Codec training diverged at step {step}: {stats}. Lower the learning rate.")
        if (step + 1) % log_every == 0 or step + 1 == steps:
            stats["step"] = step + 1
            history.append(stats)
            if callback is not None:
                callback(step + 1, stats, trainer)
    return history
