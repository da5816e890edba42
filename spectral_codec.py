"""
spectral_codec.py: the laptop recipe's codec, an STFT encoder and decoder in place of SEANet.

EncodecConfig.codec_type = "spectral" (the presets "small" and "tiny-spectral") puts these two modules where
encodec_lite.py has SEANet's Encoder and Decoder. Everything else is EnCodec's: the same residual vector quantiser,
the same frame rate, the same EncodecLite API (encode / decode / training forward / save and load), and the same
CodecTrainer. Read encodec_lite.py first: this file is the part of the project that is ours, not the paper's.

Why it exists. SEANet's decoder upsamples with transposed convolutions, so a latent that holds still becomes a
waveform that repeats every hop: only harmonics of the frame rate (50 Hz). The pitch of a held note therefore lives
in how SEANet's latent *changes*: on a held chord its codes change in almost every frame, following the phase of
each partial. The paper's 300M LM, trained on 20k hours, learns to continue such sequences; the laptop's small LM,
trained for minutes on 2 CPU cores, cannot, and its held chords come out flickering. This codec takes the phase out
of the latent, so that its codes sit still while a note is held (RESULTS.md, "Spectral codec: why the laptop codec
is not SEANet"). Per frame it works with an STFT whose hop is the codec's:

    encoder  reads the log magnitudes and the phase *advance* from one frame to the next of each frequency bin.
             Both stay constant while a note is held (the advance is 2 pi f hop / sample_rate for a partial at f),
             so the latent, and the codes, sit still.
    decoder  predicts each bin's magnitude and phase advance (GANSynth's "instantaneous frequency"), adds the
             advances up over frames into phases, gives every bin the phase of the spectral peak it belongs to (the
             phase vocoder's "identity phase locking": without it the bins of one partial, whose phases started
             apart, interfere), and inverts the STFT (as Vocos does).

It is supervised on its own spectrum (SpectralDecoder.losses): the decoder's magnitudes and advances are compared
directly with those of the input, never the waveforms. The phases start wherever the sum of advances starts, so the
decoded waveform is not the input's (SI-SNR means nothing for this codec; mel distance and chroma agreement do), and
EnCodec's mel losses on the waveform reach the advances only through that sum. Which losses keep the notes, and
their weights: RESULTS.md, "Spectral codec: how it came to keep the notes".

The file, top to bottom:
    frame_stft, phase_advance, bin_advance    STFT frames on the codec's hop; each bin's phase advance
    lock_phases                               identity phase locking
    FrameBlock, SpectralEncoder               wav -> latent
    SpectralDecoder                           latent -> magnitudes and advances -> wav; its losses
    the losses                                log magnitude, spectral convergence, pitch classes, phase advance

References:
1) GANSynth (instantaneous frequency): Engel et al. 2019, https://arxiv.org/abs/1902.08710
2) identity phase locking: Laroche & Dolson 1999, "Improved phase vocoder time-scale modification of audio",
   IEEE Transactions on Speech and Audio Processing 7(3)
3) Vocos (a decoder that predicts STFT frames and inverts them): Siuzdak 2023, https://arxiv.org/abs/2306.00814
4) spectral convergence: Arik et al. 2019, "Fast Spectrogram Inversion using Multi-head Convolutional Neural
   Networks", https://arxiv.org/abs/1808.06719
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from chroma import chroma_filter_bank
from encodec_lite import LSTM

# ----------------------------------------------------------------------------- STFT frames and phase advances


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


# ----------------------------------------------------------------------------- encoder and decoder


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
    at a long window (4096 at hop 640: 3.9 Hz bins, for the pitch), and at the decoder's window 4 hop the log
    magnitudes and the phase advance relative to each bin's centre, as (cos, sin) weighted by how loud the bin is
    (the advance of an empty bin is noise). The first layer reads one frame at a time: its thousands of input
    channels make it the costliest layer of the codec, and the dilated blocks after it see the neighbours."""

    def __init__(self, config):
        super().__init__()
        if config.audio_channels != 1:
            raise ValueError("The spectral codec is mono: use audio_channels=1 (stereo input is downmixed anyway).")
        self.hop = config.hop_length
        self.long_fft, self.n_fft = 2 ** math.ceil(math.log2(4 * self.hop)), 4 * self.hop
        width = 4 * config.hidden_size
        self.register_buffer("long_window", torch.hann_window(self.long_fft), persistent=False)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.register_buffer("centre", bin_advance(self.n_fft, self.hop), persistent=False)
        channels = self.long_fft // 2 + 1 + 3 * (self.n_fft // 2 + 1)
        self.inp = nn.Conv1d(channels, width, 1)
        self.blocks = nn.Sequential(*(FrameBlock(width, d) for d in (1, 2, 4, 1)))
        self.lstm = LSTM(width, config.num_lstm_layers)
        self.out = nn.Conv1d(width, config.hidden_size, 3, padding=1)

    def forward(self, wav):
        frames = math.ceil(wav.shape[-1] / self.hop)
        long = frame_stft(wav, self.long_fft, self.hop, self.long_window, frames).abs()
        spec = frame_stft(wav, self.n_fft, self.hop, self.window, frames)  # [B, F, T]
        offset = phase_advance(spec) - self.centre[:, None]  # where in its bin each partial sits
        loudness = (spec.abs() / (spec.abs().amax(dim=1, keepdim=True) + 1e-6)).sqrt()
        x = torch.cat([torch.log(long + 1e-4) / 4, torch.log(spec.abs() + 1e-4) / 4,
                       loudness * torch.cos(offset), loudness * torch.sin(offset)], dim=1)
        x = self.blocks(self.inp(x))
        return self.out(F.elu(self.lstm(x)))


class SpectralDecoder(nn.Module):
    """latent [B, D, T] -> wav [B, 1, T * hop]: per frame, each bin's magnitude and phase advance; phases summed
    over frames and locked to their peaks; inverse STFT (window 4 hop). Trained on its spectrum (`losses`)."""

    def __init__(self, config):
        super().__init__()
        self.hop, self.n_fft = config.hop_length, 4 * config.hop_length
        bins, width = self.n_fft // 2 + 1, 4 * config.hidden_size
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.register_buffer("centre", bin_advance(self.n_fft, self.hop), persistent=False)
        self.register_buffer("chroma", chroma_filter_bank(config.sampling_rate, self.n_fft), persistent=False)
        self.inp = nn.Conv1d(config.hidden_size, width, 3, padding=1)
        self.lstm = LSTM(width, config.num_lstm_layers)
        self.blocks = nn.Sequential(*(FrameBlock(width, d) for d in (1, 2, 4, 1)))
        self.head = nn.Conv1d(width, 4 * width, 1)  # a wide last layer: 2 x 641 outputs with sharp peaks
        self.out = nn.Conv1d(4 * width, 2 * bins, 1)

    def spectrum(self, latent):
        """latent [B, D, T] -> (magnitude, phase advance), each [B, F, T], in float32."""
        x = self.blocks(self.lstm(self.inp(latent)))
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

    def losses(self, latent, wav):
        """Training: {loss name: weighted value} of the decoded spectrum of latent [B, D, T] against the input wav
        [B, 1, N]'s own STFT. No waveform is synthesised: no loss looks at one."""
        magnitude, advance = self.spectrum(latent)
        spec = frame_stft(wav, self.n_fft, self.hop, self.window, magnitude.shape[-1])  # [B, F, T]
        target = spec.abs()
        # The weights: RESULTS.md, "Spectral codec: how it came to keep the notes".
        return {"phase": phase_advance_loss(advance, spec), "magnitude": log_magnitude_loss(magnitude, target),
                "convergence": 10 * spectral_convergence(magnitude, target),
                "chroma": 10 * pitch_class_loss(magnitude, target, self.chroma)}


# ----------------------------------------------------------------------------- the losses
#
# Each compares the decoder's magnitudes [B, F, T] (or advances) with the input's, frame by frame, bin by bin.


def log_magnitude_loss(magnitude, target):
    """L1 between log magnitudes. The floor is ~ -90 dB re a full-scale sine, so the quiet bins between the partials
    count too (a -60 dB floor gave a lower mel loss but kept fewer notes)."""
    return F.l1_loss(torch.log(magnitude + 1e-2), torch.log(target + 1e-2))


def spectral_convergence(magnitude, target):
    """The error's energy relative to the input's: the few loud bins of the partials, which carry the notes, weigh
    most; the log-magnitude loss spends itself on the hundreds of quiet bins between them. Over the whole batch,
    not per crop: a silent crop (a rest) would divide by ~0 and blow the loss up."""
    return torch.linalg.norm(magnitude - target) / (torch.linalg.norm(target) + 1e-6)


def pitch_class_loss(magnitude, target, chroma):
    """How differently the two spectra [B, F, T] share each frame's energy among the 12 pitch classes (`chroma`
    [12, F], chroma.py's filter bank): L1 between the shares, each frame weighted by its part of the input's energy
    (silence counts for nothing). The notes of a chord are what the music is; a small error in how loud each partial
    is can move which pitch class dominates, and this loss says so directly."""
    target_classes = torch.einsum("cf,bft->bct", chroma, target.square())  # [B, 12, T]
    classes = torch.einsum("cf,bft->bct", chroma, magnitude.square())
    share = lambda x: x / (x.sum(dim=1, keepdim=True) + 1e-6)  # noqa: E731
    frame_weight = target_classes.sum(dim=1) / (target_classes.sum(dim=(1, 2))[:, None] + 1e-6)  # [B, T]
    return (frame_weight * (share(classes) - share(target_classes)).abs().sum(dim=1)).sum(dim=-1).mean()


def phase_advance_loss(advance, spec):
    """1 - cos of the phase-advance error, each bin weighted by its share of the frame's energy in the input's STFT
    `spec` [B, F, T] (only the advances of loud bins matter; frame 0 has no advance of its own)."""
    target = spec.abs()
    weight = target / (target.sum(dim=1, keepdim=True) + 1e-6)
    return (weight * (1 - torch.cos(advance - phase_advance(spec))))[..., 1:].sum(dim=1).mean()
