"""
MusicGen: a single transformer language model over K parallel streams of EnCodec tokens (Copet et al. 2023).
Read top to bottom, with the paper open:

    1. codebook interleaving   delay_pattern / revert_delay / valid_target_mask (+ parallel)    Paper §2.2
                               channel_delay_pattern: the stereo partial delay                   Paper §4.3
    2. LMConfig + presets      the released sizes, and ours exactly as train.py trains them      Paper §2.4, §3.1
    3. the transformer LM      embeddings + sinusoids, layers, K heads, loss, the melody prefix  Paper §2.3-2.4
    4. generation              sampling functions, the reference loop and the KV-cache loop      Paper §3.1
    5. MusicGen                T5 + LM + EnCodec: melodies, audio prompts, long generation, loading and saving

Shapes: B batch, K codebooks (4; 8 = 4 levels x 2 channels for stereo), C audio channels (1 or 2), N = card = 2048
codebook size (the special "empty" token has id N), T audio frames (50 per second), S LM steps, L text tokens, D model
width, T_c chroma frames. What the paper leaves out (biases, the sinusoid variant, masking) follows the released
checkpoints as audiocraft (github.com/facebookresearch/audiocraft) and transformers (github.com/huggingface/
transformers, `models/musicgen/`) run them, cited by file; "Paper vs release" marks where the code and the paper text
differ.
"""

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import audio
import checkpoints
import chroma as chroma_lib
import int8


# ============================================================================ 1. codebook interleaving, Paper §2.2
# The *delay* pattern (Paper eq. (6)) shifts codebook k of EnCodec's K streams by k steps: a frame's finer codebooks
# are predicted after its coarser ones, for only K-1 extra steps. Like both public implementations we add an
# all-special step 0 (the paper's empty P_0): T frames take S = T + K steps. K = 4, T = 6, codes 100*k + t, S special:
#
#     step s:  0   1   2   3   4   5   6   7   8   9
#     k=0:     S   0   1   2   3   4   5   S   S   S
#     k=1:     S   S  100 101 102 103 104 105  S   S
#     k=2:     S   S   S  200 201 202 203 204 205  S
#     k=3:     S   S   S   S  300 301 302 303 304 305
#     seq[k, s] = codes[k, s - 1 - k]   where 0 <= s-1-k < T, else special
def delay_pattern(codes, special):
    """codes [B, K, T] -> delayed sequence [B, K, T + K], step 0 all special (diagram above)."""
    # --- exercise: delay_pattern ---
    B, K, T = codes.shape
    seq = codes.new_full((B, K, T + K), special)
    for k in range(K):
        seq[:, k, k + 1 : k + 1 + T] = codes[:, k]
    return seq
    # --- end exercise: delay_pattern ---


def revert_delay(seq):
    """Delayed sequence [B, K, S] -> codes [B, K, S - K]: undo the shift of each codebook."""
    # --- exercise: delay_pattern ---
    B, K, S = seq.shape
    T = S - K
    return torch.stack([seq[:, k, k + 1 : k + 1 + T] for k in range(K)], dim=1)
    # --- end exercise: delay_pattern ---


# The *stereo partial delay* (Paper §4.3, Figure 2a): the same mono EnCodec encodes the left and the right channel,
# giving 2K streams, interleaved level by level as the released stereo models order them: stream 2k is level k of
# the left channel, stream 2k + 1 level k of the right. L and R of a level share delay k, so each channel is laid out
# exactly as the mono pattern above and the two layouts are interleaved. K = 4 levels, T = 6, left codes 100*k + t,
# right codes 100*k + 50 + t:
#
#     step s:    0   1   2   3   4   5   6   7   8   9
#     L k=0:     S   0   1   2   3   4   5   S   S   S      stream 0, delay 0
#     R k=0:     S  50  51  52  53  54  55   S   S   S      stream 1, delay 0
#     L k=1:     S   S  100 101 102 103 104 105  S   S      stream 2, delay 1
#     R k=1:     S   S  150 151 152 153 154 155  S   S      stream 3, delay 1
#     ...                                                    streams 4-5: delay 2
#     R k=3:     S   S   S   S  350 351 352 353 354 355     stream 7, delay 3
#
# It adds no steps: the LM sums the embeddings of all 2K streams of a step into one vector and has one head per stream
# (section 3), so twice the streams make each step wider, not the sequence longer: T frames still take T + K steps.
# (Table 3's other variant, "stereo delay", gives the right channel a delay of its own; the released checkpoints use
# the partial delay, as transformers' build_delay_pattern_mask in `modeling_musicgen.py` lays it out.)
def interleave(channels):
    """A list of C per-channel tensors [B, K, X] -> [B, C*K, X], streams L_0, R_0, L_1, R_1, ... (diagram above)."""
    return torch.stack(channels, dim=2).flatten(1, 2)


def split_channels(streams, channels):
    """The inverse of interleave: [B, C*K, X] -> a list of C tensors [B, K, X], one per channel."""
    return [streams[:, c::channels] for c in range(channels)]


def channel_delay_pattern(codes, special, channels=1):
    """codes [B, C*K, T] interleaved by channel -> [B, C*K, T + K]: the mono delay pattern within each channel (the
    stereo partial delay for channels=2; delay_pattern itself for channels=1)."""
    return interleave([delay_pattern(codes, special) for codes in split_channels(codes, channels)])


def revert_channel_delay(seq, channels=1):
    """The inverse: delayed [B, C*K, S] -> codes [B, C*K, S - K]."""
    return interleave([revert_delay(seq) for seq in split_channels(seq, channels)])


def parallel_pattern(codes, special):
    """The *parallel* pattern (Paper eq. (5)), no delay: codes [B, K, T] -> [B, K, T + 1], one special step,
    then all K codebooks of frame t at step t + 1."""
    return torch.cat([codes.new_full(codes[:, :, :1].shape, special), codes], dim=-1)


def valid_target_mask(K, T, device=None):
    """Which targets the training loss uses, [K, T] bool (keep_only_valid_steps, `audiocraft/models/lm.py`): of
    steps 1..T, codebook k is special at its first k (the lower-left "S" of the diagram); its last k frames come
    only in steps T+1..T+k, beyond a T-frame training crop."""
    # --- exercise: valid_target_mask ---
    return torch.arange(T, device=device)[None, :] >= torch.arange(K, device=device)[:, None]
    # --- end exercise: valid_target_mask ---


def corrupt_codes(seq, p, card):
    """Replace each code (not the special token, id >= card) of the LM's inputs by a random one with probability p:
    sampling feeds the LM its own mistakes, which teacher forcing never shows it, and a small corpus is harder to
    memorise. Not in the paper; its effect on the laptop model is in RESULTS.md."""
    hit = (torch.rand(seq.shape, device=seq.device) < p) & (seq < card)
    return torch.where(hit, torch.randint_like(seq, card), seq)


# ============================================================================ 2. configuration, Paper §2.4, §3.1
@dataclass
class LMConfig:
    num_codebooks: int = 4  # K
    card: int = 2048  # N, entries per codebook (HF calls it vocab_size); the special token is id N
    dim: int = 1024  # D
    num_layers: int = 24
    num_heads: int = 16  # head size D / heads = 64 in every released model
    ffn_dim: int = 4096  # 4 D
    max_positions: int = 2048  # longest sequence (HF's table size); the released models trained on 1503 steps
    activation: str = "gelu"  # Paper vs release: the paper says ReLU, the checkpoints use exact GELU
    dropout: float = 0.0  # after positions, each attention block and the FFN (training only)
    cross_attention: bool = True  # text models: yes; the melody model prepends its conditions instead (LM below)
    text_dim: int = 768  # width of the T5 output that condition_proj maps to D
    num_chroma: int = 12  # melody models: pitch classes per chroma frame
    chroma_length: int = chroma_lib.CHROMA_LENGTH  # melody models: prefix frames, 235 = 30 s as released (HF's name)
    chroma_hop: int = chroma_lib.HOP_LENGTH  # melody models: 32 kHz samples between chroma frames (4096 as released)
    text_length: int = 0  # melody models: text prefix padded to this many pieces (0: to the batch's longest, released)
    audio_channels: int = 1  # 2: stereo (Paper §4.3), the K streams are K/2 levels of left and right, interleaved

    @property
    def melody(self):  # melody models read [chroma ; text] as a prefix instead of cross-attending to text
        return not self.cross_attention

    @property
    def levels(self):  # codebook levels per channel = the delay pattern's extra steps: K mono, K/2 stereo
        return self.num_codebooks // self.audio_channels

    def __post_init__(self):
        if self.audio_channels not in (1, 2) or self.num_codebooks % self.audio_channels:
            raise ValueError(f"audio_channels must be 1 (mono) or 2 (stereo) and divide num_codebooks "
                             f"{self.num_codebooks}; got {self.audio_channels}.")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation '{self.activation}' is not one of {', '.join(ACTIVATIONS)}.")

    @classmethod
    def from_hf(cls, config):  # from a whole Hugging Face MusicGen config.json (checkpoints.py maps the names)
        return cls(**checkpoints.lm_config_from_hf(config))

    def to_hf(self):  # the `decoder` block of a Hugging Face config.json
        return checkpoints.lm_config_to_hf(asdict(self))


ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}  # F.gelu is the exact erf form, as released
PRESETS = {
    # The released models (Paper §3.1; audiocraft `config/model/lm/model_scale/{small,medium,large}.yaml`), "300M,
    # 1.5B and 3.3B" in the paper; with cross-attention the LMs hold 420M, 1.84B and 3.26B parameters.
    "musicgen-small": LMConfig(dim=1024, num_layers=24, num_heads=16, ffn_dim=4096),
    "musicgen-medium": LMConfig(dim=1536, num_layers=48, num_heads=24, ffn_dim=6144),
    "musicgen-large": LMConfig(dim=2048, num_layers=48, num_heads=32, ffn_dim=8192),
    "musicgen-melody": LMConfig(dim=1536, num_layers=48, num_heads=24, ffn_dim=6144, cross_attention=False),
    # The stereo models (musicgen-stereo-*) are these sizes with num_codebooks=8, audio_channels=2.
    # Ours, as train.py trains them (it sets card, text_dim and dropout) for encodec_lite's "small" codec (N = 256),
    # head size 64 as released. train.py sizes a melody model's prefix for its training windows instead of the
    # released 30 s: one chroma frame per codec frame (126 for 2.5 s) and the text padded to the longest caption.
    "small": LMConfig(dim=192, num_layers=4, num_heads=3, ffn_dim=768, card=256),  # `train.py --config small`, 2.8M
    "small-melody": LMConfig(dim=192, num_layers=4, num_heads=3, ffn_dim=768, card=256, cross_attention=False),
    "base": LMConfig(dim=512, num_layers=8, num_heads=8, ffn_dim=2048, card=256),  # `train.py --config gpu`, 35M
    "tiny": LMConfig(dim=64, num_layers=2, num_heads=4, ffn_dim=256, card=64),  # tests, the "tiny" codec (N = 64)
    "tiny-melody": LMConfig(dim=64, num_layers=2, num_heads=4, ffn_dim=256, card=64, cross_attention=False,
                            chroma_length=16),  # dim != text_dim: HF writes enc_to_dec_proj only then
}


def lm_config(name, **overrides):
    """A preset by name, optionally changed, e.g. lm_config("small", dropout=0.1)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown LM preset '{name}'. Choose one of: {', '.join(PRESETS)}.")
    return replace(PRESETS[name], **overrides)


# ============================================================================ 3. the transformer LM, Paper §2.4
def sinusoids(positions, dim):
    """Integer positions [S] -> [S, dim] = [cos(p * f_i) | sin(p * f_i)], f_i = 10000^(-i / (dim/2 - 1)): the
    divisor dim/2 - 1 and the halves (not interleaved) are what the released models were trained with
    (`audiocraft/modules/transformer.py`), in transformers' exp/log form, which gives exactly its table."""
    # --- exercise: sinusoids ---
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=positions.device).float() * -(math.log(10000) / (half - 1)))
    phase = positions.float()[:, None] * freqs[None, :]  # [S, D/2]
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=1)
    # --- end exercise: sinusoids ---


class Attention(nn.Module):
    """Multi-head attention without biases (Paper vs release: the checkpoints have none, audiocraft's bias_attn
    false): causal self-attention, and cross-attention to the conditioning."""

    def __init__(self, config):
        super().__init__()
        D = config.dim
        self.num_heads = config.num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(D, D, bias=False) for _ in range(4))

    def split_heads(self, x):  # [B, S, D] -> [B, H, S, D/H]
        B, S, D = x.shape
        return x.view(B, S, self.num_heads, D // self.num_heads).transpose(1, 2)

    def keys_values(self, x):  # [B, S, D] -> two [B, H, S, D/H]
        return self.split_heads(self.k_proj(x)), self.split_heads(self.v_proj(x))

    def attend(self, x, keys, values, mask=None, is_causal=False):  # x [B, S, D], keys/values [B, H, S_kv, D/H]
        q = self.split_heads(self.q_proj(x))
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=is_causal)  # [B, H, S, D/H]
        return self.out_proj(y.transpose(1, 2).flatten(2))


def causal_args(n, offset, device):
    """Mask arguments for n new queries at positions offset..offset+n-1 attending to keys 0..offset+n-1."""
    # --- exercise: causal_kv_cache ---
    if offset == 0:
        return {"is_causal": n > 1}  # the plain causal triangle (lets CUDA use flash attention)
    if n == 1:
        return {}  # one query at the end sees every key
    return {"mask": torch.ones(n, offset + n, dtype=torch.bool, device=device).tril(offset)}  # chunk after a past
    # --- end exercise: causal_kv_cache ---


class Layer(nn.Module):
    """One pre-norm decoder layer (Paper §2.4): x + SelfAttn(LN(x)), + CrossAttn(LN(x), C), + FFN(LN(x))."""

    def __init__(self, config):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(config.dim)  # names as in HF's checkpoints; eps 1e-5, with bias
        self.self_attn = Attention(config)
        if config.cross_attention:
            self.encoder_attn_layer_norm = nn.LayerNorm(config.dim)
            self.encoder_attn = Attention(config)
        self.final_layer_norm = nn.LayerNorm(config.dim)
        self.fc1 = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.fc2 = nn.Linear(config.ffn_dim, config.dim, bias=False)
        self.activation = ACTIVATIONS[config.activation]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, memory=None, memory_mask=None, cache=None, offset=0):
        """x [B, S, D] at positions offset..offset+S-1; memory: cross-attention (keys, values); cache: a LayerCache."""
        h = self.self_attn_layer_norm(x)
        keys, values = self.self_attn.keys_values(h)  # [B, H, S, D/H]
        if cache is not None:
            keys, values = cache.update(keys, values, offset)  # + every earlier step: [B, H, offset+S, D/H]
        x = x + self.dropout(self.self_attn.attend(h, keys, values, **causal_args(h.shape[1], offset, h.device)))
        if memory is not None:
            h = self.encoder_attn_layer_norm(x)
            x = x + self.dropout(self.encoder_attn.attend(h, *memory, mask=memory_mask))
        h = self.final_layer_norm(x)
        return x + self.dropout(self.fc2(self.activation(self.fc1(h))))


class LayerCache:
    """One layer's self-attention keys/values, preallocated [B, H, S_max, D/H], and its cross-attention ones."""

    def __init__(self, memory, max_steps):
        self.keys = self.values = None
        self.memory = memory  # (keys, values) [B, H, L, D/H] of the conditioning, or None
        self.max_steps = max_steps

    def update(self, keys, values, offset):
        # --- exercise: causal_kv_cache ---
        if self.keys is None:  # allocate on first use, in the dtype the layer actually produces
            B, H, _, Dh = keys.shape
            self.keys = keys.new_empty(B, H, self.max_steps, Dh)
            self.values = values.new_empty(B, H, self.max_steps, Dh)
        end = offset + keys.shape[2]
        self.keys[:, :, offset:end] = keys  # written in place: no allocation per step
        self.values[:, :, offset:end] = values
        return self.keys[:, :, :end], self.values[:, :, :end]
        # --- end exercise: causal_kv_cache ---


class KVCache:
    """Everything fast decoding remembers between steps: one LayerCache per layer and how many steps are in."""

    def __init__(self, memories, memory_mask, max_steps, prefix=None):
        self.layers = [LayerCache(m, max_steps) for m in memories]
        self.memory_mask = memory_mask
        self.prefix = prefix  # a melody model's [chroma ; text] vectors [B, P, D], until the first decode call
        self.length = 0  # steps (including any prefix) already in the cache = position of the next step


class LM(nn.Module):
    """The MusicGen transformer (Paper §2.4):

        lm(sequence [B, K, S], condition [B, L, text_dim], condition_mask [B, L]) -> logits [B, K, S, N]
        lm(sequence, condition, condition_mask, chroma [B, T_c, 12])   (melody models, config.melody)

    Text models cross-attend to the text (Paper §2.4). Paper vs release: the melody model has no cross-attention;
    it reads [chroma ; text] as a prefix before the audio steps (audiocraft `config/conditioner/chroma2music.yaml`:
    prepend both, cross-attend to none):

        input:     [ chroma_0 .. chroma_234 | text_0 .. text_{L-1} | step_0 .. step_{S-1} ]
        positions:   0 ..................................... P-1 |  P ........ P+S-1        (P = 235 + L)
        logits:                                                    only for the S steps

    The released model finds the chroma frame of each step itself: 7.8 chroma frames per second against 50 steps,
    and a prefix P that changes with the prompt's length L. train.py's melody models make that a fixed offset: one
    chroma frame per codec frame (config.chroma_hop) and the text padded to config.text_length, so step t is always
    P positions after chroma frame t (RESULTS.md, "The laptop melody model, aligned")."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        K, N, D = config.num_codebooks, config.card, config.dim
        self.special = N  # Paper §2.4: the special "empty" token, the extra row of every embedding table
        self.condition_proj = nn.Linear(config.text_dim, D)  # HF's enc_to_dec_proj: the LM reads raw T5 outputs
        if config.melody:
            self.chroma_proj = nn.Linear(config.num_chroma, D)  # one-hot pitch class -> a learnt vector (+ bias)
        self.embed = nn.ModuleList(nn.Embedding(N + 1, D) for _ in range(K))
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_layers))
        self.out_norm = nn.LayerNorm(D)  # Paper vs release: not in the paper; audiocraft's LMModel.out_norm
        self.heads = nn.ModuleList(nn.Linear(D, N, bias=False) for _ in range(K))  # Paper §2.4 "Logits prediction"
        self.init_weights()

    def project_condition(self, condition, condition_mask):
        """T5 output [B, L, text_dim] (+ mask [B, L], 1 = real token) -> (memory [B, L, D], key mask or None)."""
        memory = self.condition_proj(condition.to(self.condition_proj.weight.dtype))
        if condition_mask is None:
            return memory, None
        mask = condition_mask.to(device=memory.device, dtype=torch.bool)  # [B, L]
        memory = memory * mask[..., None]  # padding exactly 0, as after audiocraft's output_proj and HF's projection
        # padded keys are hidden from the softmax (as HF), but a row with none (the null condition of guidance) would
        # give NaN: it sees its zero keys, which add exactly 0 since the k/v projections have no bias
        mask = mask | ~mask.any(dim=-1, keepdim=True)
        return memory, mask[:, None, None, :]  # [B, 1, 1, L], broadcast over heads and queries

    def melody_prefix(self, condition, condition_mask, chroma=None):
        """Melody model: chroma one-hot [B, T_c, 12] (None: the null melody), T5 output [B, L, text_dim] -> prefix
        [B, chroma_length + L, D] (`modeling_musicgen_melody.py`; audiocraft `audiocraft/modules/conditioners.py`)."""
        if chroma is None:
            chroma = chroma_lib.null_melody(condition.shape[0], 1, condition.device)  # tiled to length below
        if chroma.dim() != 3 or chroma.shape[-1] != self.config.num_chroma or chroma.shape[0] != condition.shape[0]:
            raise ValueError(f"Expected chroma [B={condition.shape[0]}, T_c, {self.config.num_chroma}]; got shape "
                             f"{tuple(chroma.shape)}. Compute it with chroma.melody_chroma(wav, sample_rate).")
        dtype = self.chroma_proj.weight.dtype
        melody = self.chroma_proj(chroma_lib.fit_length(chroma.to(dtype), self.config.chroma_length))  # [B, 235, D]
        text, _ = self.project_condition(condition, condition_mask)  # [B, L, D], padded positions exactly 0
        padding = self.prefix_length(text.shape[1]) - melody.shape[1] - text.shape[1]  # > 0: to config.text_length
        text = F.pad(text, (0, 0, 0, padding))  # [B, max(L, text_length), D]
        return torch.cat([melody, text], dim=1)  # nothing masked: every step sees the padding (both references)

    def prefix_length(self, text_length):
        """Positions taken by a melody model's prefix for a prompt of text_length pieces (0 for a text model). A
        prompt longer than a fixed config.text_length is refused: its steps would not sit where training put them."""
        if not self.config.melody:
            return 0
        if self.config.text_length and text_length > self.config.text_length:
            raise ValueError(f"The prompt has {text_length} pieces; this melody model reads at most "
                             f"{self.config.text_length}: shorten it.")
        return self.config.chroma_length + max(text_length, self.config.text_length)

    def embed_steps(self, sequence, offset=0, prefix=None):
        """Paper §2.4: sum of the K codebook embeddings + sinusoid of the step -> [B, (P +) S, D]."""
        x = sum(emb(sequence[:, k]) for k, emb in enumerate(self.embed))  # [B, S, D]
        if prefix is not None:  # a melody model's conditions [B, P, D]: positions count from their first vector
            x = torch.cat([prefix.to(x.dtype), x], dim=1)
        end = offset + x.shape[1]
        if end > self.config.max_positions:
            raise ValueError(f"{end} steps exceed the model's {self.config.max_positions} positions: generate fewer.")
        positions = torch.arange(offset, end, device=x.device)
        return self.drop(x + sinusoids(positions, x.shape[-1]).to(x.dtype))

    def logits(self, x):  # final norm + one head per codebook: [B, S, D] -> [B, K, S, N]
        x = self.out_norm(x)
        return torch.stack([head(x) for head in self.heads], dim=1)

    def forward(self, sequence, condition=None, condition_mask=None, chroma=None):
        """sequence [B, K, S] -> logits [B, K, S, N]; output step s predicts step s + 1 (Paper §2.4)."""
        if sequence.dim() != 3 or sequence.shape[1] != self.config.num_codebooks:
            raise ValueError(f"Expected tokens [B, {self.config.num_codebooks}, S]; got shape {tuple(sequence.shape)}.")
        memory, mask, prefix = self.conditioning(condition, condition_mask, chroma)
        x = self.embed_steps(sequence, 0, prefix)
        for layer, kv in zip(self.layers, self.cross_keys_values(memory)):
            x = layer(x, kv, mask)
        return self.logits(x[:, -sequence.shape[-1] :])  # drop the prefix positions, if any

    def conditioning(self, condition, condition_mask, chroma):
        """-> (memory [B, L, D], its key mask, None) for a text model, (None, None, prefix [B, P, D]) for melody."""
        if condition is None:
            raise ValueError("The LM reads text: pass condition [B, L, text_dim] (zeros with mask 0 for none).")
        if self.config.melody:
            return None, None, self.melody_prefix(condition, condition_mask, chroma)
        if chroma is not None:
            raise ValueError("This model has no melody conditioning (it cross-attends to text only): use a melody "
                             "model such as facebook/musicgen-melody (or the 'small-melody' preset), or no melody.")
        return *self.project_condition(condition, condition_mask), None

    def cross_keys_values(self, memory):  # each layer's cross-attention (keys, values), or None (melody model)
        return [None if memory is None else layer.encoder_attn.keys_values(memory) for layer in self.layers]

    def compute_loss(self, codes, condition=None, condition_mask=None, chroma=None, input_noise=0.0, pattern="delay"):
        """Training loss for clean codes [B, K, T] -> (loss, per-codebook loss [K]): the codes laid out in `pattern`
        (Paper eq. (6) "delay" or eq. (5) "parallel"), each codebook's cross-entropy over its real targets
        (compute_predictions and _compute_cross_entropy, `audiocraft/models/lm.py`)."""
        B, K, T = codes.shape
        C, levels = self.config.audio_channels, self.config.levels
        if T < levels:
            raise ValueError(f"Training needs at least {levels} frames per item (one per codebook level); got {T}.")
        # no check that codes lie in 0..N-1 here: it would make the host wait for the GPU at every training step;
        # the codes come from the codec (the LM's N is its codebook size), and cross_entropy refuses targets >= N
        if pattern not in ("delay", "parallel"):
            raise ValueError(f"pattern must be 'delay' or 'parallel'; got {pattern!r}.")
        if condition is None:  # unconditional: the null condition of guidance
            condition = torch.zeros(B, 1, self.config.text_dim, device=codes.device)
            condition_mask = torch.zeros(B, 1, dtype=torch.long, device=codes.device)
        if pattern == "delay":  # every target but codebook level k's first k specials, in each channel
            seq = channel_delay_pattern(codes, self.special, C)  # [B, K, T + K/C]
            valid = valid_target_mask(levels, T, codes.device).repeat_interleave(C, dim=0)  # [K, T]: L and R alike
        else:  # every target is real
            seq, valid = parallel_pattern(codes, self.special), torch.ones(K, T, dtype=torch.bool, device=codes.device)
        inputs, targets = seq[..., :T], seq[..., 1 : T + 1]  # [B, K, T] each: steps 0..T-1 predict steps 1..T
        if input_noise > 0:  # the share of input codes made random; 0: plain teacher forcing
            inputs = corrupt_codes(inputs, input_noise, self.config.card)
        logits = self(inputs, condition, condition_mask, chroma)  # [B, K, T, N]
        targets = targets.masked_fill(~valid, -100)  # -100: cross_entropy's "ignore" (covers every special target)
        ce = F.cross_entropy(logits.flatten(0, 2).float(), targets.flatten(), reduction="none").view(B, K, T)
        per_codebook = ce.sum(dim=(0, 2)) / (B * valid.sum(dim=1))  # mean over each codebook's valid targets [K]
        return per_codebook.mean(), per_codebook

    # ---------------------------------------------------------------- fast decoding with a KV cache
    def new_cache(self, condition, condition_mask, max_steps, chroma=None):  # cross-attention k/v computed once
        memory, mask, prefix = self.conditioning(condition, condition_mask, chroma)
        if mask is not None and bool(mask.all()):  # nothing hidden (one prompt, or prompts of one length): with no
            mask = None  # mask SDPA may pick its flash kernel on a GPU. Checked once per generation, not per step
        max_steps += 0 if prefix is None else prefix.shape[1]  # a melody prefix waits for the first decode call
        return KVCache(self.cross_keys_values(memory), mask, max_steps, prefix)

    def decode(self, sequence, cache):  # new steps [B, K, n] after the cache -> logits of the last step [B, K, N]
        prefix, cache.prefix = cache.prefix, None  # the melody prefix goes in with the first call only
        x = self.embed_steps(sequence, cache.length, prefix)
        for layer, layer_cache in zip(self.layers, cache.layers):
            x = layer(x, layer_cache.memory, cache.memory_mask, layer_cache, cache.length)
        cache.length += x.shape[1]
        return self.logits(x[:, -1:])[:, :, 0]  # norm and heads for the last position only

    # ---------------------------------------------------------------- init and checkpoints
    @torch.no_grad()
    def init_weights(self):
        """audiocraft's training init (`config/model/lm/musicgen_lm.yaml`); a checkpoint overwrites all of it."""
        def normal(w, std):  # truncated at ±3σ
            nn.init.trunc_normal_(w, std=std, a=-3 * std, b=3 * std)

        D, K = self.config.dim, self.config.num_codebooks
        # Embeddings σ = 1/sqrt(K), not audiocraft's 1/sqrt(D): summed over K, tokens then match their sinusoid's
        # scale; with 1/sqrt(D) they are faint under it (norm ~2 vs ~10 at D = 192): training starts slowly (RESULTS.md)
        for emb in self.embed:
            normal(emb.weight, 1 / math.sqrt(K))
        for head in self.heads:
            normal(head.weight, 1 / math.sqrt(D))
        for proj in [self.condition_proj] + ([self.chroma_proj] if self.config.melody else []):
            normal(proj.weight, 1 / math.sqrt(proj.in_features))  # σ = 1/sqrt(fan_in), biases 0
            nn.init.zeros_(proj.bias)
        for i, layer in enumerate(self.layers):
            for m in layer.modules():
                if isinstance(m, nn.Linear):  # LayerNorms keep 1 and 0
                    normal(m.weight, 1 / math.sqrt(m.in_features) / math.sqrt(2 * (i + 1)))  # deeper starts smaller

    def hf_state_dict(self):  # our tensors under their names in a Hugging Face MusicGen checkpoint
        if any(isinstance(m, int8.Int8Linear) for m in self.modules()):  # rounded weights, no file format for them
            raise ValueError("An int8 LM cannot be saved: save the float model and quantize it when loading.")
        return checkpoints.lm_state_dict_to_hf(self.state_dict())

    def load_hf_state_dict(self, state_dict, source="checkpoint"):  # tensors named as in HF's files, strictly
        return checkpoints.load_into(self, checkpoints.lm_state_dict_from_hf(state_dict), source=source)


# ============================================================================ 4. generation, Paper §3.1
# One step: last step's logits -> guidance -> temperature -> top-k (or top-p) -> sample, each a small pure function.
def guided_logits(logits, cfg_coef, melody_coef=None):
    """Classifier-free guidance (Paper §3.1), [cond; uncond] logits [2B, ...] -> [B, ...], on the raw logits before
    temperature and top-k as in transformers' `generation/logits_process.py` and `audiocraft/models/lm.py`.

    With melody_coef (a melody model given a melody and a caption), [cond; uncond; melody alone] [3B, ...]: each
    condition gets its own scale, uncond + melody_coef (melody - uncond) + cfg_coef (cond - melody), as
    InstructPix2Pix guides by image and text (Brooks et al. 2023, eq. 3). Plain guidance scales the melody and the
    text together: a scale high enough for the caption to set the style follows the melody too literally.
    Equal scales give plain guidance."""
    if melody_coef is not None:
        cond, uncond, melody = logits.chunk(3)
        return uncond + melody_coef * (melody - uncond) + cfg_coef * (cond - melody)
    # --- exercise: guidance ---
    cond, uncond = logits.chunk(2)
    return uncond + cfg_coef * (cond - uncond)
    # --- end exercise: guidance ---


def top_p_filter(logits, top_p):
    """Nucleus sampling, logits [..., N] -> [..., N]: the tokens past the top_p most likely mass become -inf."""
    probs, order = logits.softmax(dim=-1).sort(dim=-1, descending=True)
    keep = probs.cumsum(dim=-1) - probs <= top_p  # the mass before a token is still short of top_p
    keep = torch.zeros_like(keep).scatter(-1, order, keep)  # back to token order
    return logits.masked_fill(~keep, float("-inf"))


def sample_tokens(logits, temperature=1.0, top_k=250, top_p=0.0, generator=None):
    """Pick one token per codebook from logits [B, K, N] -> [B, K]: sample softmax(logits / temperature) within
    the top_p nucleus, else the top_k tokens (audiocraft's precedence; the paper samples top-k 250, §3.1)."""
    if temperature == 0:  # greedy decoding
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_p > 0:
        logits = top_p_filter(logits, top_p)
    elif top_k > 0:
        # --- exercise: top_k ---
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
        # --- end exercise: top_k ---
    probs = logits.softmax(dim=-1)
    picks = torch.multinomial(probs.flatten(0, -2), 1, generator=generator)  # seeded by the caller: reproducible
    return picks.view(probs.shape[:-1])


UNKNOWN = -1  # marks a position that generation still has to fill in


def start_sequence(lm, batch, frames, device, prompt=None):
    """(the delayed layout [B, K, T + K/C]: specials, a prompt's codes, UNKNOWN where due; its first step to
    generate)."""
    codes = torch.full((batch, lm.config.num_codebooks, frames), UNKNOWN, dtype=torch.long, device=device)
    if prompt is not None:
        codes[:, :, : prompt.shape[-1]] = prompt
    seq = channel_delay_pattern(codes, lm.special, lm.config.audio_channels)
    return seq, 1 + (0 if prompt is None else prompt.shape[-1])  # 1, or just after a prompt


def with_null_condition(condition, condition_mask, cfg_coef, chroma=None, melody_coef=None):
    """(condition, mask, chroma, guidance): the conditions of guidance's branches, [cond; uncond] (or [cond; uncond;
    melody alone], see guided_logits) stacked along the batch, and guided_logits' scales ({}: one branch, no
    guidance). The null condition is built as in transformers' MusicgenForConditionalGeneration.generate and
    audiocraft's ClassifierFreeGuidanceDropout (conditioners.py). melody_coef None: the melody's scale is cfg_coef."""
    no_text = not bool(condition_mask.any())
    null_melody = None if chroma is None else chroma_lib.null_melody(*chroma.shape[:2], chroma.device).to(chroma.dtype)
    no_melody = chroma is None or torch.equal(chroma, null_melody)
    melody_coef = cfg_coef if melody_coef is None or no_melody else melody_coef
    cfg_coef = melody_coef if no_text else cfg_coef  # a melody alone: guided by its own scale
    if cfg_coef == melody_coef == 1 or (no_text and no_melody):  # no guidance, or nothing to guide by
        return condition, condition_mask, chroma, {}
    apart = melody_coef != cfg_coef  # a third branch, melody alone: zero text, the melody
    nulls = 2 if apart else 1
    condition = torch.cat([condition] + [torch.zeros_like(condition)] * nulls)  # the null text: zeros, mask 0
    condition_mask = torch.cat([condition_mask] + [torch.zeros_like(condition_mask)] * nulls)
    if chroma is not None:
        chroma = torch.cat([chroma, null_melody] + [chroma] * apart)  # the null melody: one-hot C in every frame
    return condition, condition_mask, chroma, dict(cfg_coef=cfg_coef, melody_coef=melody_coef if apart else None)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during generation, carrying the frames finished so far, codes [B, K, T_done] (a prompt's included):
    the caller can still decode and keep them. A KeyboardInterrupt, so code that ignores it stops as on Ctrl-C."""

    def __init__(self, codes):
        super().__init__(f"interrupted after {codes.shape[-1]} frames")
        self.codes = codes


def finished_frames(seq, channels):  # delayed sequence [B, K, S] -> codes [B, K, T_done]: frames with all K codes in
    codes = revert_channel_delay(seq, channels)
    done = (codes != UNKNOWN).all(dim=1).all(dim=0).long().cumprod(dim=0)  # 1 up to the first unfinished frame
    return codes[:, :, : int(done.sum())]


def next_tokens(logits, due, guidance, sampling):  # last step's logits [B per branch, K, N] -> tokens [B, K]
    logits = logits.float()  # guidance and sampling in fp32 even when the LM runs in bf16
    if guidance:
        logits = guided_logits(logits, **guidance)
    picked = sample_tokens(logits, **sampling)
    return torch.where(due == UNKNOWN, picked, due)  # known tokens (specials, a prompt's) stay


# The two loops, side by side: the same steps, the same tokens (tests/test_musicgen.py checks it). Without a prompt,
# T frames take T + K - 1 forward passes (steps 1..T + K - 1 of the diagram in section 1; K levels for stereo).
@torch.inference_mode()
def generate_reference(lm, condition, condition_mask, frames, cfg_coef=3.0, generator=None, chroma=None,
                       prompt=None, melody_coef=None, **sampling):
    """The plain loop: the whole growing sequence goes through the LM at every step (quadratic, but obviously
    right) -> codes [B, K, frames], starting with a prompt's [B, K, T_p]. sampling: see sample_tokens."""
    seq, start = start_sequence(lm, condition.shape[0], frames, condition.device, prompt)  # [B, K, T + K]
    condition, condition_mask, chroma, guidance = with_null_condition(condition, condition_mask, cfg_coef, chroma,
                                                                      melody_coef)
    branches = condition.shape[0] // seq.shape[0]  # 1, 2 or 3 (see guided_logits)
    for s in range(start, seq.shape[-1]):
        x = seq[:, :, :s].repeat(branches, 1, 1)  # every branch continues the same sequence
        logits = lm(x, condition, condition_mask, chroma)[:, :, -1]  # [branches * B, K, N]
        seq[:, :, s] = next_tokens(logits, seq[:, :, s], guidance, dict(sampling, generator=generator))
    return revert_channel_delay(seq, lm.config.audio_channels)


@torch.inference_mode()
def generate(lm, condition, condition_mask, frames, cfg_coef=3.0, generator=None, on_step=None, chroma=None,
             prompt=None, melody_coef=None, **sampling):
    """The fast loop: one new step per forward pass with a KV cache, guidance's branches as one batch [cond; uncond]
    (or [cond; uncond; melody alone]). Same tokens as generate_reference. -> codes [B, K, frames]; on_step() after
    each step; Ctrl-C raises Interrupted with the frames finished so far."""
    seq, start = start_sequence(lm, condition.shape[0], frames, condition.device, prompt)
    condition, condition_mask, chroma, guidance = with_null_condition(condition, condition_mask, cfg_coef, chroma,
                                                                      melody_coef)
    branches = condition.shape[0] // seq.shape[0]  # 1, 2 or 3 (see guided_logits)
    try:
        cache = lm.new_cache(condition, condition_mask, max_steps=seq.shape[-1], chroma=chroma)
        x = seq[:, :, :start]  # every known step (step 0 or the prompt's, plus a melody prefix) goes in first
        for s in range(start, seq.shape[-1]):
            logits = lm.decode(x.repeat(branches, 1, 1), cache)  # [branches * B, K, N]
            seq[:, :, s] = next_tokens(logits, seq[:, :, s], guidance, dict(sampling, generator=generator))
            x = seq[:, :, s : s + 1]  # then only the newest step
            if on_step is not None:
                on_step()
    except KeyboardInterrupt:  # Ctrl-C, on whichever line: seq holds every step written so far, a prompt's included
        raise Interrupted(finished_frames(seq, lm.config.audio_channels)) from None
    return revert_channel_delay(seq, lm.config.audio_channels)


# ============================================================================ 5. MusicGen: text -> tokens -> audio
def default_top_k(card):
    """Paper §3.1's top-k 250 of N = 2048 as a share: 31 of 256 (250 would keep a small LM's noisy tail)."""
    return max(1, round(250 * card / 2048))


class Progress:
    """Counts the steps of every window of a generation: one tqdm bar over all of them (progress=True), or
    progress(step, total) after each step (a callable), or nothing (False)."""

    def __init__(self, progress, total, windows):
        self.progress, self.step, self.total = progress, 0, total
        self.bar = tqdm(total=total, unit="step", desc=f"generating ({windows} window{'s' * (windows > 1)})",
                        leave=True, disable=progress is not True)  # the bar stays: steps, windows, time

    def __call__(self):  # one step done
        self.step += 1  # counted over all windows: one bar from 0 to total, not one per window
        self.bar.update()
        if callable(self.progress):
            self.progress(self.step, self.total)


EXTEND_STRIDE = 0.6  # stride / window of long generation, audiocraft's 18 s of 30 s (MusicGen.window_frames)
TRAINED_SECONDS = 30.0  # the released models' training crops: the default window when a model does not say


def window_spans(frames, window, stride, known=0):
    """The windows of a long generation (diagram in MusicGen), as (first frame, end frame, frames already known
    at its start: a prompt's or the previous window's context) for `frames` frames, `known` of them given."""
    spans, start = [], 0
    while known < frames:
        end = min(start + window, frames)
        spans.append((start, end, known - start))
        start, known = start + stride, end  # the next window keeps this one's last window - stride frames
    return spans


class MusicGen(nn.Module):
    """Text prompts (+ a melody, + an audio prompt) -> T5 -> LM (delay pattern, guidance) -> EnCodec -> waveform.
    Build it from parts (a fresh LM for training) or with from_pretrained; its generation defaults travel with it."""

    def __init__(self, tokenizer, text_encoder, codec, lm, context_frames=None, top_k=None, guidance=None,
                 melody_guidance=None, temperature=None):
        super().__init__()
        self.tokenizer, self.text_encoder, self.codec, self.lm = tokenizer, text_encoder, codec, lm
        self.context_frames = context_frames  # the window: the longest stretch the LM trained on (None: 30 s)
        self.top_k = default_top_k(codec.codebook_size) if top_k is None else top_k
        self.guidance = 3.0 if guidance is None else guidance  # Paper §3.1: 3.0 for the released models
        self.melody_guidance = melody_guidance  # a melody's own scale (guided_logits); None: guidance, as released
        self.temperature = 1.0 if temperature is None else temperature  # Paper §3.1: 1 (plain sampling)
        self.sample_rate, self.frame_rate = codec.sample_rate, codec.frame_rate  # 32000 and 50 for the released
        self.audio_channels = lm.config.audio_channels  # 2 for a stereo model: the mono codec runs on each channel
        if codec.num_codebooks != lm.config.levels or codec.codebook_size != lm.config.card:
            raise ValueError(f"The codec has {codec.num_codebooks} codebooks of {codec.codebook_size}, the LM "
                             f"expects {lm.config.levels} of {lm.config.card} per channel.")

    @property
    def device(self):  # where the LM's weights are
        return self.lm.out_norm.weight.device

    # ---------------------------------------------------------------- loading and saving (Hugging Face layout)
    @classmethod
    def from_pretrained(cls, name_or_path, device=None, dtype=None, quantize=None):
        """A Hugging Face-format MusicGen(-melody) directory or cached hub id; each part reads its block and weights.
        device: None (the CPU) or as checkpoints.pick_device ('auto', 'cuda', ...); dtype: the LM's (float32,
        bfloat16 or float16), where almost all the generation time goes; quantize="int8": the LM's linear layers
        as int8 weights (int8.py): a quarter of the bytes read per step, for inference only."""
        from encodec_lite import EncodecConfig, EncodecLite
        from t5_encoder import T5Config, T5Encoder, T5Tokenizer
        if dtype not in (None, torch.float32, torch.bfloat16, torch.float16):  # checked before the slow loading
            raise ValueError(f"dtype {dtype} is not supported: use torch.float32, torch.bfloat16 or torch.float16")
        if quantize not in (None, "int8"):
            raise ValueError(f"quantize={quantize!r} is not supported: use 'int8' or None")
        device = torch.device("cpu") if device is None else checkpoints.pick_device(device)  # a missing GPU: now
        model_dir = checkpoints.resolve_model_dir(name_or_path)
        config = checkpoints.read_musicgen_config(model_dir)
        tokenizer = T5Tokenizer.from_pretrained(model_dir)  # spiece.model beside the weights, clear error if not
        tensors = checkpoints.load_state_dict(model_dir)  # read the weight files once, hand each part its share
        text_encoder = checkpoints.uninitialised(T5Encoder, T5Config.from_hf(config["text_encoder"]))
        text_encoder.load_hf_state_dict(checkpoints.take(tensors, "text_encoder."), f"{model_dir} (text_encoder)")
        codec = EncodecLite(EncodecConfig.from_hf(config["audio_encoder"]))  # small: ~1 s of init on a CPU
        codec.load_hf_state_dict(checkpoints.take(tensors, "audio_encoder."), f"{model_dir} (audio_encoder)")
        codec.fold_weight_norm()  # inference form of the convolutions
        lm = checkpoints.uninitialised(LM, LMConfig.from_hf(config))
        lm.load_hf_state_dict(tensors, f"{model_dir} (decoder)")  # what is left: the LM's tensors
        tensors.clear()  # the LM holds them now: quantizing below frees each float weight as it replaces it
        if quantize == "int8":  # from the float32 weights as saved, before any cast to dtype
            int8.quantize_lm(lm)
        generation = checkpoints.generation_from_hf(model_dir, lm.config.levels)  # window, sampling defaults
        # T5 and the codec stay in float32: T5's activations overflow float16, and both run once per clip
        return cls(tokenizer, text_encoder, codec, lm.to(dtype), **generation).eval().to(device)

    def hf_config(self):  # config.json: one block per part
        return checkpoints.musicgen_config(self.text_encoder.config, self.codec.config, self.lm.config)

    def hf_state_dict(self):  # every tensor under its name in model.safetensors: one prefix per part
        return checkpoints.musicgen_state_dict(self.text_encoder, self.codec, self.lm)

    def save_pretrained(self, model_dir):
        """config.json, generation_config.json, model.safetensors, spiece.model: read back by from_pretrained and
        transformers (MusicgenForConditionalGeneration, MusicgenMelodyFor... for a melody model)."""
        generation = checkpoints.generation_to_hf(self.lm.special, self.lm.config.levels, self.context_frames,
                                                  self.top_k, self.guidance, self.melody_guidance, self.temperature)
        checkpoints.save_musicgen(model_dir, self.hf_config(), generation, self.hf_state_dict())
        self.tokenizer.save_pretrained(model_dir)

    # ---------------------------------------------------------------- conditions
    @torch.no_grad()  # not inference_mode: training feeds these to the trainable condition_proj
    def encode_text(self, prompts):
        """Prompts -> T5 condition [B, L, text_dim], mask [B, L]; "" is unconditional (zeros, mask 0). The melody
        model reads padding as zero vectors (as both references): its music can depend a little on the batch."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a string or a non-empty list of strings (use \"\" for none).")
        empty = [not p.strip() for p in prompts]
        if any(empty):
            audio.notice(f"{sum(empty)} empty prompt(s): generating those unconditionally (zero condition).")
        ids, mask = self.tokenizer(prompts)  # built on the CPU
        ids, mask = ids.to(self.device), mask.to(self.device)
        mask[torch.tensor(empty, device=self.device)] = 0
        return self.text_encoder(ids, mask) * mask[..., None], mask  # [B, L, text_dim], padding zeroed

    def prepare_melody(self, melody, sample_rate, batch, seconds):
        """melody ([N], [C, N] or [B, C, N]: one for all prompts or one per prompt; or a list of clips) -> a list
        of `batch` mono waveforms [1, 1, N_b] at chroma.py's 32 kHz (resampled with a notice), or None. A melody
        shorter than the `seconds` generated loops, a longer one is cut (melody_window): a notice says which."""
        if melody is None:
            return None
        if sample_rate is None:
            raise ValueError("Pass melody_sample_rate with the melody (the sample rate of its waveform).")
        clips = list(melody) if isinstance(melody, (list, tuple)) else [melody]
        changes = []  # what audio.prepare did to the clips, said once for all of them below
        wavs = [w for clip in clips
                for w in audio.prepare(clip, sample_rate, chroma_lib.SAMPLE_RATE, 1, "melody", changes.append)]
        for change in dict.fromkeys(changes):  # in order, without repeats
            audio.notice(change)
        if len(wavs) not in (1, batch):
            raise ValueError(f"Got {len(wavs)} melodies for {batch} prompts: pass one for all, or one per prompt.")
        for have in sorted({round(w.shape[-1] / chroma_lib.SAMPLE_RATE, 1) for w in wavs}):
            if have != round(seconds, 1):
                audio.notice(f"melody: {have:g} s for {seconds:.1f} s of music: " + (
                    "looped to fill it." if have < seconds else f"only its first {seconds:.1f} s are followed."))
        return [w[None] for w in wavs] * (batch if len(wavs) == 1 else 1)

    def melody_window(self, melodies, start_frame):
        """Chroma [B, chroma_length, 12] of each melody as heard from frame `start_frame` on (frame 0: as given, as
        in HF; later windows re-slice it as audiocraft's MusicGen does, `audiocraft/models/musicgen.py`)."""
        if melodies is None:
            return None
        shift = round(start_frame / self.frame_rate * chroma_lib.SAMPLE_RATE)
        length = self.lm.config.chroma_length
        rotated = [w.roll(-(shift % w.shape[-1]), dims=-1) for w in melodies]  # a short melody loops
        hop = self.lm.config.chroma_hop  # 4096 as released; one chroma frame per codec frame in train.py's models
        chromas = [chroma_lib.melody_chroma(w, chroma_lib.SAMPLE_RATE, length, hop) for w in rotated]
        return torch.cat(chromas).to(self.device)

    # ---------------------------------------------------------------- the codec, once per channel (Paper §4.3)
    def encode_audio(self, wav):
        """wav [B, C, N] at the codec's rate, C = audio_channels -> codes [B, K, T]: each channel through the mono
        codec, a stereo model's streams interleaved L_0, R_0, L_1, ... (section 1)."""
        return interleave([self.codec.encode(wav[:, c : c + 1]) for c in range(self.audio_channels)])

    def decode_audio(self, codes):
        """codes [B, K, T] -> wav [B, C, T * hop]: each channel's streams through the mono decoder, stacked."""
        return torch.cat([self.codec.decode(codes) for codes in split_channels(codes, self.audio_channels)], dim=1)

    def encode_prompt(self, prompt_audio, sample_rate, batch):
        """An audio prompt ([N], [C, N] or [B, C, N]; one, or one per prompt) -> its codes [B, K, T_p] (T_p = 0 for
        none: then the first window starts from step 0 alone). A mono clip given to a stereo model plays in both
        channels, a stereo clip given to a mono model is downmixed (each with a notice)."""
        if prompt_audio is None:
            return torch.zeros(batch, self.lm.config.num_codebooks, 0, dtype=torch.long, device=self.device)
        if sample_rate is None:
            raise ValueError("Pass prompt_sample_rate with prompt_audio (the sample rate of its waveform).")
        wav = audio.prepare(prompt_audio, sample_rate, self.sample_rate, self.audio_channels, "audio prompt")
        codes = self.encode_audio(wav)
        if codes.shape[0] not in (1, batch):
            raise ValueError(f"Got {codes.shape[0]} audio prompts for {batch} prompts: pass one, or one per prompt.")
        return codes.expand(batch, -1, -1).to(self.device)

    # ---------------------------------------------------------------- generation, window after window
    # The LM was trained on crops of at most W frames (30 s as released): past position W + K (+ a melody prefix) it
    # meets sinusoids it never learnt to read and produces junk. So a long piece is made of windows of at most W
    # frames, each a fresh generation whose *prompt* is the last W - stride frames:
    #     frames:  0         stride      2 stride     W        stride+W     ...
    #     window 1 [==========================================]                       generate W frames
    #     window 2            [ctx ctx ctx ctx ctx ctx ctx ctx ctx|=================]  keep W - stride, add stride
    #     window 3                         [ctx ctx ctx ctx ctx ctx ctx ctx ctx ctx ctx|=====...
    # Each window starts again at position 0; its context carries tempo, key and timbre across the joins. The stride
    # is audiocraft's ratio for its 30 s models (extend_stride 18 s); a melody keeps advancing with the music.
    def window_frames(self, condition, window=None, extend_stride=None):
        """(W, stride) in frames for the diagram above, from `window` and `extend_stride` in seconds (defaults: the
        model's context_frames, else 30 s, within the positions; 0.6 W)."""
        prefix = self.lm.prefix_length(condition.shape[1])  # a melody model's [chroma ; text], before any step
        limit = self.lm.config.max_positions - self.lm.config.levels - prefix  # T + K (+ prefix) steps fit
        frames = min(self.context_frames or round(TRAINED_SECONDS * self.frame_rate), limit)
        frames = frames if window is None else audio.duration_to_frames(window, self.frame_rate)
        if not 0 < frames <= limit:
            raise ValueError(f"A window of {frames / self.frame_rate:.2f} s does not fit the model's positions (at "
                             f"most {limit / self.frame_rate:.2f} s with any melody prefix): ask for a shorter one.")
        stride = round(EXTEND_STRIDE * frames)
        stride = stride if extend_stride is None else audio.duration_to_frames(extend_stride, self.frame_rate)
        if not 0 < stride < frames:
            raise ValueError(f"extend_stride must be shorter than the window ({frames / self.frame_rate:.2f} s) "
                             f"and positive; got {stride / self.frame_rate:.2f} s.")
        return frames, stride

    def generate_tokens(self, prompts, frames, *,
                        cfg_coef=None, melody_coef=None, top_k=None,  # guidance(s), sampling cut-off; None: model's
                        top_p=0.0, temperature=None,  # nucleus mass (> 0 replaces top-k); 0 = greedy; None: model's
                        seed=None, progress=False,  # reproducible sampling; True, or progress(step, total): Progress
                        melody=None, melody_sample_rate=None,  # a tune to follow (melody models; none: the null one)
                        prompt_audio=None, prompt_sample_rate=None,  # a clip to continue: the output starts with it
                        window=None, extend_stride=None):  # seconds, for music longer than the context (diagram)
        """Prompts (a string or a list; "" = unconditional) -> codes [B, K, frames], window after window. Ctrl-C
        raises Interrupted, its .codes the frames finished so far."""
        if not isinstance(frames, int) or frames <= 0:
            raise ValueError(f"frames must be a positive whole number; got {frames!r}.")
        condition, mask = self.encode_text(prompts)  # [B, L, text_dim], [B, L]
        melodies = self.prepare_melody(melody, melody_sample_rate, len(condition), frames / self.frame_rate)
        codes = self.encode_prompt(prompt_audio, prompt_sample_rate, len(condition))  # [B, K, T_p], T_p maybe 0
        window, stride = self.window_frames(condition, window, extend_stride)
        if codes.shape[-1] >= min(frames, window):
            raise ValueError(f"The audio prompt is {codes.shape[-1] / self.frame_rate:.2f} s long: ask for a longer "
                             f"duration, and use a prompt shorter than the {window / self.frame_rate:.2f} s window.")
        generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        cfg_coef = self.guidance if cfg_coef is None else cfg_coef
        melody_coef = self.melody_guidance if melody_coef is None else melody_coef
        sampling = dict(temperature=self.temperature if temperature is None else temperature,
                        top_k=self.top_k if top_k is None else top_k, top_p=top_p)
        spans = window_spans(frames, window, stride, codes.shape[-1])
        K = self.lm.config.levels  # a window of T frames, T_p of them known, takes T + K - 1 - T_p steps
        counter = Progress(progress, sum(end - start + K - 1 - known for start, end, known in spans), len(spans))
        try:
            for start, end, known in spans:  # each window's prompt: the audio prompt, then the last window - stride
                new = generate(self.lm, condition, mask, end - start, cfg_coef, generator, counter,
                               chroma=self.melody_window(melodies, start), prompt=codes[:, :, start:],
                               melody_coef=melody_coef, **sampling)
                codes = torch.cat([codes[:, :, :start], new], dim=-1)  # new repeats the prompt it was given
        except Interrupted as stop:  # Ctrl-C: the earlier windows' frames + this one's finished ones
            raise Interrupted(torch.cat([codes[:, :, :start], stop.codes], dim=-1)) from None
        finally:
            counter.bar.close()
        return codes

    @torch.inference_mode()
    def generate(self, prompts, duration=10.0, return_tokens=False, **options):
        """Prompts -> waveform [B, C, duration * sample_rate] (C = 1, or 2 for a stereo model): generate_tokens for
        `duration` seconds (an audio prompt included), then the codec's decoder; options as generate_tokens, e.g.
        mg.generate(["80s pop"], 8, seed=0). return_tokens: (waveform, codes [B, K, T]), the tokens too."""
        if not isinstance(duration, (int, float)) or not math.isfinite(duration) or duration <= 0:
            raise ValueError(f"duration must be a positive number of seconds; got {duration!r}.")
        codes = self.generate_tokens(prompts, audio.duration_to_frames(duration, self.frame_rate), **options)
        wav = self.decode_audio(codes)  # [B, C, T * hop_length]
        return (wav, codes) if return_tokens else wav  # the tokens: to decode again, continue, or study
