"""
MusicGen: a single transformer language model over K parallel streams of EnCodec tokens (Copet et al. 2023).

Read top to bottom, with the paper open:

    1. codebook interleaving     delay_pattern / revert_delay / valid_target_mask (+ parallel)   Paper §2.2
    2. LMConfig + presets        the sizes of Table 5 (+ the melody model) and small ones         Paper §2.4
    3. the transformer LM        summed codebook embeddings + sinusoids, pre-norm layers (causal self-attn,
                                 cross-attn to the text, FFN), final norm, K heads; its training loss
                                 (optionally with noise in its inputs: corrupt_codes, end of section 1);
                                 the melody model's [chroma ; text] prefix instead of cross-attn  Paper §2.3-2.4
    4. generation                sampling, classifier-free guidance, a short reference loop and the fast
                                 loop with a preallocated KV cache; audio prompts (continuation)  Paper §3.1
    5. MusicGen                  tokenizer + T5 + EnCodec + LM, loading and saving the Hugging Face layout;
                                 melodies (chroma.py), long generation with a sliding window

Shapes: B batch, K codebooks (4), N = card = 2048 codebook size, T audio frames (50 per second), S LM steps,
L text tokens, D model width, T_c chroma frames. The special "empty" token of the paper has id N (= 2048), so
every embedding table has N + 1 rows while the heads only ever predict 0..N-1.
Facts that the paper leaves out (biases, the sinusoid variant, masking) follow the released checkpoints; the
places where our code and the paper text differ are marked "Paper vs release".
"""

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import audio
import chroma as chroma_lib
from checkpoints import CheckpointError, load_into, load_state_dict, read_config, resolve_model_dir

UNKNOWN = -1  # marks a position that generation still has to fill in


# ============================================================================ 1. codebook interleaving, Paper §2.2
#
# EnCodec gives K token streams per frame. The *delay* pattern (Paper §2.2, eq. (6)) shifts codebook k by k steps,
# so that at step s the model predicts codebook 0 of frame s-1, codebook 1 of frame s-2, ... : the finer codebooks
# of a frame are predicted *after* the coarser ones of the same frame, at the cost of only K-1 extra steps.
# Like both reference implementations we add an all-special step 0 (the paper's empty P_0), so T frames take
# S = T + K steps. K = 4, T = 6, codes written as 100*k + t, "S" = special token (id N):
#
#     step s:  0   1   2   3   4   5   6   7   8   9
#     k=0:     S   0   1   2   3   4   5   S   S   S
#     k=1:     S   S  100 101 102 103 104 105  S   S
#     k=2:     S   S   S  200 201 202 203 204 205  S
#     k=3:     S   S   S   S  300 301 302 303 304 305
#
#     seq[k, s] = codes[k, s - 1 - k]   where 0 <= s-1-k < T, else special
#
# The *parallel* pattern (eq. (5)) predicts all K codebooks of a frame at once: S = T + 1 steps, no delay.


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


def parallel_pattern(codes, special):
    """codes [B, K, T] -> [B, K, T + 1]: one special step, then every codebook of frame t at step t + 1."""
    return torch.cat([codes.new_full(codes[:, :, :1].shape, special), codes], dim=-1)


def revert_parallel(seq):
    return seq[:, :, 1:]


def valid_target_mask(K, T, device=None):
    """Which targets the training loss uses, [K, T] bool (facts §2.3, audiocraft's keep_only_valid_steps).

    Training feeds steps 0..T-1 of the delayed sequence and predicts steps 1..T (target j is step j + 1).
    Codebook k is special at its first k of those steps (the "S" in the lower-left of the diagram), so only its
    last T - k targets are real tokens: k=0 uses all T frames, k=3 drops frames T-3..T-1, which appear only in the
    steps T+1..T+3 that a T-frame training crop never reaches."""
    # --- exercise: valid_target_mask ---
    return torch.arange(T, device=device)[None, :] >= torch.arange(K, device=device)[:, None]
    # --- end exercise: valid_target_mask ---


def corrupt_codes(seq, p, card):
    """Replace each code of seq (never the special token, id >= card) by a uniformly random code with probability
    p. Training only, on the LM's *inputs* (its targets stay clean): at sampling time the LM reads its own samples,
    wrong codes included, while teacher forcing only ever shows it clean ones. With a little noise in its context it
    learns to predict the right next step anyway, and a small corpus is harder to memorise. Not in the paper (20k
    hours of music do not need it); on our laptop corpus it lowers the validation loss (README)."""
    hit = (torch.rand(seq.shape, device=seq.device) < p) & (seq < card)
    return torch.where(hit, torch.randint_like(seq, card), seq)


# ============================================================================ 2. configuration, Paper §2.4 / Table 5


@dataclass
class LMConfig:
    num_codebooks: int = 4  # K
    card: int = 2048  # N, entries per codebook; the special token is id N
    dim: int = 1024  # D
    num_layers: int = 24
    num_heads: int = 16  # head size D / heads = 64 in every released model
    ffn_dim: int = 4096  # 4 D
    max_positions: int = 2048  # longest sequence (HF's table size); the released models trained on 1503 steps
    activation: str = "gelu"  # Paper vs release: the paper says ReLU, the checkpoints use exact GELU
    dropout: float = 0.0  # after positions, each attention block and the FFN (training only)
    cross_attention: bool = True  # text models: yes; the melody model prepends its conditions instead (facts §1.7)
    text_dim: int = 768  # width of the T5 output that enc_to_dec_proj maps to D
    # melody models only (cross_attention False): the chroma prefix, always fit to chroma_length frames (facts §6.4)
    num_chroma: int = 12
    chroma_length: int = chroma_lib.CHROMA_LENGTH  # 235 frames = 30 s at 7.8 frames/s, the released model's

    @property
    def melody(self):
        """Melody models read [chroma ; text] as a prefix of their input instead of cross-attending to text."""
        return not self.cross_attention

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation '{self.activation}' is not one of {', '.join(ACTIVATIONS)}.")

    @classmethod
    def from_hf(cls, decoder, text_dim=768, num_chroma=12, chroma_length=chroma_lib.CHROMA_LENGTH):
        """From the `decoder` block of a Hugging Face MusicGen config.json (+ the T5 width; + the top-level
        num_chroma and chroma_length of a musicgen-melody config)."""
        if decoder.get("audio_channels", 1) != 1:
            raise CheckpointError("Only mono MusicGen checkpoints are supported (decoder.audio_channels = 1).")
        return cls(
            num_codebooks=decoder["num_codebooks"],
            card=decoder["vocab_size"],
            dim=decoder["hidden_size"],
            num_layers=decoder["num_hidden_layers"],
            num_heads=decoder["num_attention_heads"],
            ffn_dim=decoder["ffn_dim"],
            max_positions=decoder.get("max_position_embeddings", 2048),
            activation=decoder.get("activation_function", "gelu"),
            dropout=decoder.get("dropout", 0.0),
            cross_attention=decoder.get("model_type", "musicgen_decoder") != "musicgen_melody_decoder",
            text_dim=text_dim,
            num_chroma=num_chroma,
            chroma_length=chroma_length,
        )

    def to_hf(self):
        """The `decoder` block of a Hugging Face config.json (text_dim goes into the text_encoder block)."""
        return {
            "model_type": "musicgen_decoder" if self.cross_attention else "musicgen_melody_decoder",
            "num_codebooks": self.num_codebooks,
            "vocab_size": self.card,
            "hidden_size": self.dim,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "ffn_dim": self.ffn_dim,
            "max_position_embeddings": self.max_positions,
            "activation_function": self.activation,
            "dropout": self.dropout,
            "attention_dropout": 0.0,
            "activation_dropout": 0.0,
            "layerdrop": 0.0,
            "scale_embedding": False,
            "audio_channels": 1,
            "pad_token_id": self.card,
            "bos_token_id": self.card,
        }


ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}  # F.gelu is the exact erf form, as released

PRESETS = {
    # Paper Table 5 (facts §1.5); "musicgen-small" is the 300M model
    "musicgen-small": LMConfig(dim=1024, num_layers=24, num_heads=16, ffn_dim=4096),
    "musicgen-medium": LMConfig(dim=1536, num_layers=48, num_heads=24, ffn_dim=6144),
    "musicgen-large": LMConfig(dim=2048, num_layers=48, num_heads=32, ffn_dim=8192),
    "musicgen-melody": LMConfig(dim=1536, num_layers=48, num_heads=24, ffn_dim=6144, cross_attention=False),
    # ours, trainable on a laptop CPU (~15M parameters), for the codes of encodec_lite's "small" codec (N = 256) ...
    "small": LMConfig(dim=384, num_layers=6, num_heads=6, ffn_dim=1536, card=256, dropout=0.1),
    # ... the same with melody conditioning; its chroma prefix covers 10 s (1 + 10 s * 32000 / 4096 frames): a
    # model trained on short clips needs no 30 s prefix. Set chroma_length to your training clip length.
    "small-melody": LMConfig(dim=384, num_layers=6, num_heads=6, ffn_dim=1536, card=256, dropout=0.1,
                             cross_attention=False, chroma_length=79),
    # ... and a toy for unit tests, for encodec_lite's "tiny" codec (N = 64).
    # HF's layout has enc_to_dec_proj only when D differs from the text width: keep dim != text_dim.
    "tiny": LMConfig(dim=64, num_layers=2, num_heads=4, ffn_dim=256, card=64),
    "tiny-melody": LMConfig(dim=64, num_layers=2, num_heads=4, ffn_dim=256, card=64, cross_attention=False,
                            chroma_length=16),
}


def lm_config(name, **overrides):
    """A preset by name, optionally changed, e.g. lm_config("small", dropout=0.0)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown LM preset '{name}'. Choose one of: {', '.join(PRESETS)}.")
    return replace(PRESETS[name], **overrides)


# ============================================================================ 3. the transformer LM, Paper §2.4


def sinusoids(positions, dim):
    """Integer positions [S] -> [S, dim] = [cos(p * f_i) | sin(p * f_i)], f_i = 10000^(-i / (dim/2 - 1)).

    Note the divisor dim/2 - 1 (not dim/2) and the first half cosines, second half sines (not interleaved):
    that is what the released models were trained with (facts §1.2). Computed in the exp/log form in float32,
    which gives exactly the Hugging Face table. Cheap enough to compute per forward (no stored table)."""
    # --- exercise: sinusoids ---
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=positions.device).float() * -(math.log(10000) / (half - 1)))
    phase = positions.float()[:, None] * freqs[None, :]  # [S, D/2]
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=1)
    # --- end exercise: sinusoids ---


class Attention(nn.Module):
    """Multi-head attention without biases (facts §1.3), used both as causal self-attention and as cross-attention
    to the conditioning. Scores are scaled by 1/sqrt(64); F.scaled_dot_product_attention picks flash attention on
    CUDA when it can."""

    def __init__(self, config):
        super().__init__()
        D = config.dim
        self.num_heads = config.num_heads
        self.q_proj = nn.Linear(D, D, bias=False)
        self.k_proj = nn.Linear(D, D, bias=False)
        self.v_proj = nn.Linear(D, D, bias=False)
        self.out_proj = nn.Linear(D, D, bias=False)

    def split_heads(self, x):  # [B, S, D] -> [B, H, S, D/H]
        B, S, D = x.shape
        return x.view(B, S, self.num_heads, D // self.num_heads).transpose(1, 2)

    def keys_values(self, x):  # [B, S, D] -> two [B, H, S, D/H]
        return self.split_heads(self.k_proj(x)), self.split_heads(self.v_proj(x))

    def attend(self, x, keys, values, mask=None, is_causal=False):
        """x [B, S, D] queries against keys/values [B, H, S_kv, D/H] -> [B, S, D]."""
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
    """One pre-norm decoder layer (Paper §2.4): x + SelfAttn(LN(x)), + CrossAttn(LN(x), C), + FFN(LN(x)).

    Parameter names are the Hugging Face ones, so checkpoints map onto these modules name for name."""

    def __init__(self, config):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(config.dim)  # LayerNorm eps 1e-5, with bias
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
        """x [B, S, D] at positions offset..offset+S-1; memory = this layer's cross-attention (keys, values);
        cache: this layer's LayerCache while decoding (None for a full forward)."""
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
    """Keys and values of one self-attention layer, preallocated for the whole generation ([B, H, S_max, D/H]),
    plus that layer's cross-attention keys/values, computed once from the conditioning."""

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

    def __init__(self, memories, memory_mask, max_steps):
        self.layers = [LayerCache(m, max_steps) for m in memories]
        self.memory_mask = memory_mask
        self.prefix = None  # a melody model's [chroma ; text] vectors [B, P, D], until the first decode call
        self.length = 0  # steps (including any prefix) already in the cache = position of the next step


class LM(nn.Module):
    """The MusicGen transformer (Paper §2.4).

    lm(sequence [B, K, S], condition [B, L, text_dim], condition_mask [B, L]) -> logits [B, K, S, N]
    lm(sequence, condition, condition_mask, chroma [B, T_c, 12])   (melody models, config.melody)

    The text projection (HF `enc_to_dec_proj`) lives here, so the LM takes raw T5 outputs as its condition; so
    does the melody model's chroma projection. Text models cross-attend to the text (Paper §2.4); the melody model
    has no cross-attention and reads [chroma ; text] as a prefix before the audio steps instead (facts §1.7):

        input:     [ chroma_0 .. chroma_234 | text_0 .. text_{L-1} | step_0 .. step_{S-1} ]
        positions:   0 ..................................... P-1 |  P ........ P+S-1        (P = 235 + L)
        logits:                                                    only for the S steps

    Module names -> Hugging Face tensor names (everything else inside a layer is named exactly as in HF):
        condition_proj.*   enc_to_dec_proj.*
        chroma_proj.*      audio_enc_to_dec_proj.*     (melody models)
        embed.{k}.*        decoder.model.decoder.embed_tokens.{k}.*
        layers.{i}.*       decoder.model.decoder.layers.{i}.*
        out_norm.*         decoder.model.decoder.layer_norm.*
        heads.{k}.*        decoder.lm_heads.{k}.*
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        K, N, D = config.num_codebooks, config.card, config.dim
        self.special = N  # Paper §2.4: the special "empty" token, the extra row of every embedding table
        self.condition_proj = nn.Linear(config.text_dim, D)  # with bias (facts §1.6)
        if config.melody:
            self.chroma_proj = nn.Linear(config.num_chroma, D)  # one-hot pitch class -> a learnt vector (+ bias)
        self.embed = nn.ModuleList(nn.Embedding(N + 1, D) for _ in range(K))
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_layers))
        self.out_norm = nn.LayerNorm(D)  # not in the paper; the release has it (facts §1.4)
        self.heads = nn.ModuleList(nn.Linear(D, N, bias=False) for _ in range(K))  # Paper §2.4 "Logits prediction"
        self.init_weights()

    # ---------------------------------------------------------------- pieces of the forward pass

    def project_condition(self, condition, condition_mask):
        """T5 output [B, L, text_dim] (+ mask [B, L], 1 = real token) -> (memory [B, L, D], key mask or None).

        Padded positions become exactly 0 (audiocraft and HF both multiply by the mask after the projection).
        The null condition of classifier-free guidance is all zeros with an all-zero mask: since the k/v
        projections have no bias, attending to it adds exactly 0 (facts §1.6). Like HF we also hide padded keys
        from the softmax. A row whose keys are *all* hidden would give NaN in softmax, so such rows (the null
        condition, an empty prompt) simply see all their keys: they are zero vectors, the result is the same 0."""
        memory = self.condition_proj(condition.to(self.condition_proj.weight.dtype))
        if condition_mask is None:
            return memory, None
        mask = condition_mask.to(device=memory.device, dtype=torch.bool)  # [B, L]
        memory = memory * mask[..., None]
        mask = mask | ~mask.any(dim=-1, keepdim=True)
        return memory, mask[:, None, None, :]  # [B, 1, 1, L], broadcast over heads and queries

    def melody_prefix(self, condition, condition_mask, chroma=None):
        """Melody model (facts §1.7): chroma one-hot [B, T_c, 12] (None: the null melody) and T5 output
        [B, L, text_dim] -> the prefix [B, chroma_length + L, D] = [projected chroma, fit to chroma_length frames ;
        projected text, padding zeroed]. Nothing is masked: padded text positions are zero vectors (+ position)
        that every step attends to, as in both references."""
        if chroma is None:
            chroma = chroma_lib.null_melody(condition.shape[0], 1, condition.device)  # tiled to length below
        if chroma.dim() != 3 or chroma.shape[-1] != self.config.num_chroma or chroma.shape[0] != condition.shape[0]:
            raise ValueError(f"Expected chroma [B={condition.shape[0]}, T_c, {self.config.num_chroma}]; got shape "
                             f"{tuple(chroma.shape)}. Compute it with chroma.melody_chroma(wav, sample_rate).")
        dtype = self.chroma_proj.weight.dtype
        melody = self.chroma_proj(chroma_lib.fit_length(chroma.to(dtype), self.config.chroma_length))  # [B, 235, D]
        text, _ = self.project_condition(condition, condition_mask)  # [B, L, D], padded positions exactly 0
        return torch.cat([melody, text], dim=1)

    def embed_steps(self, sequence, offset=0, prefix=None):
        """Paper §2.4: sum of the K codebook embeddings + sinusoid of the step -> [B, (P +) S, D].

        prefix [B, P, D]: conditioning vectors placed before the tokens (melody model, facts §1.7); positions
        count from the first prefix vector."""
        x = sum(emb(sequence[:, k]) for k, emb in enumerate(self.embed))  # [B, S, D]
        if prefix is not None:
            x = torch.cat([prefix.to(x.dtype), x], dim=1)
        end = offset + x.shape[1]
        if end > self.config.max_positions:
            raise ValueError(
                f"{end} steps do not fit the model's {self.config.max_positions} positions; generate fewer frames."
            )
        positions = torch.arange(offset, end, device=x.device)
        return self.drop(x + sinusoids(positions, x.shape[-1]).to(x.dtype))

    def logits(self, x):
        """Final norm + one head per codebook: [B, S, D] -> [B, K, S, N]."""
        x = self.out_norm(x)
        return torch.stack([head(x) for head in self.heads], dim=1)

    def check_sequence(self, sequence):
        K, N = self.config.num_codebooks, self.config.card
        if sequence.dim() != 3 or sequence.shape[1] != K:
            raise ValueError(f"Expected tokens [B, {K}, S]; got shape {tuple(sequence.shape)}.")
        if sequence.numel() and (sequence.min() < 0 or sequence.max() > N):
            raise ValueError(f"Token ids must lie in 0..{N} ({N} = special); got {sequence.min()}..{sequence.max()}.")

    # ---------------------------------------------------------------- full forward (training, reference loop)

    def forward(self, sequence, condition=None, condition_mask=None, chroma=None):
        """sequence [B, K, S] -> logits [B, K, S, N]; output step s predicts step s + 1 (Paper §2.4).
        chroma [B, T_c, 12]: the melody of a melody model (None: the null melody)."""
        self.check_sequence(sequence)
        memory, mask = self.memory(condition, condition_mask)
        x = self.embed_steps(sequence, 0, self.prefix(condition, condition_mask, chroma))
        for layer in self.layers:
            kv = layer.encoder_attn.keys_values(memory) if memory is not None else None
            x = layer(x, kv, mask)
        return self.logits(x[:, -sequence.shape[-1] :])  # drop the prefix positions, if any

    def memory(self, condition, condition_mask):
        """What cross-attention reads: (memory [B, L, D], key mask), or (None, None) for the melody model."""
        if not self.config.cross_attention:
            return None, None
        if condition is None:
            raise ValueError("This LM cross-attends to text: pass condition [B, L, text_dim] (zeros for none).")
        return self.project_condition(condition, condition_mask)

    def prefix(self, condition, condition_mask, chroma):
        """What goes before the steps: the melody model's [chroma ; text] prefix, or None for text models."""
        if not self.config.melody:
            if chroma is not None:
                raise ValueError("This model has no melody conditioning (it cross-attends to text only): "
                                 "use a melody model such as facebook/musicgen-melody, or pass no melody.")
            return None
        if condition is None:
            raise ValueError("The melody model reads text too: pass condition [B, L, text_dim] (zeros for none).")
        return self.melody_prefix(condition, condition_mask, chroma)

    def compute_loss(self, codes, condition=None, condition_mask=None, chroma=None, input_noise=0.0):
        """Training loss for clean codes [B, K, T] -> (loss, per-codebook loss [K]). chroma: melody models only.

        Builds the delay pattern, predicts steps 1..T from steps 0..T-1, ignores the special targets
        (valid_target_mask), and averages the per-codebook cross-entropies (audiocraft; facts §2.3).
        input_noise: the share of input codes replaced by random ones (corrupt_codes; 0 = plain teacher forcing)."""
        B, K, T = codes.shape
        if T < K:
            raise ValueError(f"Training needs at least K = {K} frames per item; got {T}.")
        if codes.min() < 0 or codes.max() >= self.config.card:
            raise ValueError(f"Codes must lie in 0..{self.config.card - 1}; got {codes.min()}..{codes.max()}.")
        seq = delay_pattern(codes, self.special)  # [B, K, T + K]
        inputs, targets = seq[..., :T], seq[..., 1 : T + 1]  # [B, K, T] each
        if input_noise > 0:
            inputs = corrupt_codes(inputs, input_noise, self.config.card)
        logits = self(inputs, condition, condition_mask, chroma)  # [B, K, T, N]
        valid = valid_target_mask(K, T, codes.device)  # [K, T]
        targets = targets.masked_fill(~valid, -100)  # -100: cross_entropy's "ignore" (covers every special target)
        ce = F.cross_entropy(logits.flatten(0, 2).float(), targets.flatten(), reduction="none").view(B, K, T)
        per_codebook = ce.sum(dim=(0, 2)) / (B * valid.sum(dim=1))  # mean over each codebook's valid targets [K]
        return per_codebook.mean(), per_codebook

    # ---------------------------------------------------------------- fast decoding with a KV cache

    def new_cache(self, condition=None, condition_mask=None, max_steps=None, chroma=None):
        """A KVCache for generating up to max_steps steps; the cross-attention keys/values of every layer are
        computed here once instead of at every step. A melody model's prefix waits in the cache until the first
        decode call, which feeds it together with the first steps (and never again: its keys/values stay cached)."""
        memory, mask = self.memory(condition, condition_mask)
        memories = [
            layer.encoder_attn.keys_values(memory) if memory is not None else None for layer in self.layers
        ]
        prefix = self.prefix(condition, condition_mask, chroma)
        if max_steps is not None and prefix is not None:
            max_steps += prefix.shape[1]
        cache = KVCache(memories, mask, max_steps or self.config.max_positions)
        cache.prefix = prefix
        return cache

    def decode(self, sequence, cache):
        """New steps [B, K, n] (n = 1 while generating) after the cache -> logits of the last step [B, K, N]."""
        prefix, cache.prefix = cache.prefix, None  # the melody prefix goes in with the first call only
        x = self.embed_steps(sequence, cache.length, prefix)
        for layer, layer_cache in zip(self.layers, cache.layers):
            x = layer(x, layer_cache.memory, cache.memory_mask, layer_cache, cache.length)
        cache.length += x.shape[1]
        return self.logits(x[:, -1:])[:, :, 0]  # norm and heads for the last position only

    # ---------------------------------------------------------------- init and checkpoints

    @torch.no_grad()
    def init_weights(self):
        """Training init of audiocraft (facts §1.8): truncated normal (±3σ), σ = 1/sqrt(fan_in), divided by
        sqrt(2 (i + 1)) inside layer i (deeper layers start smaller); heads σ = 1/sqrt(D); biases 0, LayerNorms
        1/0. (audiocraft's fused q/k/v kept PyTorch's default init; we init them like the rest.)

        One change: embeddings σ = 1/sqrt(K), not audiocraft's 1/sqrt(D). The input of step s is the sum of K
        embeddings plus the sinusoid of s (0.71 rms per channel). With σ = 1/sqrt(D) the tokens are a faint signal
        under the positions (a vector of norm ~2 against ~10 at D = 192), and a short run spends its first few
        hundred steps on a plateau near the unigram loss until the layers pick them out. With σ = 1/sqrt(K) the
        summed embedding has unit variance per channel, the scale of the positions: in the laptop run the plateau
        is gone and the same 1000 steps end with a better model (README, "I only have a laptop"). Loading a
        checkpoint overwrites all of this."""

        def normal(w, std):
            nn.init.trunc_normal_(w, std=std, a=-3 * std, b=3 * std)

        D, K = self.config.dim, self.config.num_codebooks
        for emb in self.embed:
            normal(emb.weight, 1 / math.sqrt(K))
        for head in self.heads:
            normal(head.weight, 1 / math.sqrt(D))
        normal(self.condition_proj.weight, 1 / math.sqrt(self.config.text_dim))
        nn.init.zeros_(self.condition_proj.bias)
        if self.config.melody:
            normal(self.chroma_proj.weight, 1 / math.sqrt(self.config.num_chroma))
            nn.init.zeros_(self.chroma_proj.bias)
        for i, layer in enumerate(self.layers):
            for m in layer.modules():
                if isinstance(m, nn.Linear):
                    normal(m.weight, 1 / math.sqrt(m.in_features) / math.sqrt(2 * (i + 1)))

    HF_NAMES = {  # our module prefix -> HF tensor-name prefix (see the class docstring)
        "condition_proj.": "enc_to_dec_proj.",
        "chroma_proj.": "audio_enc_to_dec_proj.",
        "embed.": "decoder.model.decoder.embed_tokens.",
        "layers.": "decoder.model.decoder.layers.",
        "out_norm.": "decoder.model.decoder.layer_norm.",
        "heads.": "decoder.lm_heads.",
    }
    HF_IGNORED = ("decoder.model.decoder.embed_positions.weights",)  # a cached copy of the sinusoids (older files)

    def hf_state_dict(self):
        """Our tensors under their names in a Hugging Face MusicGen checkpoint."""
        return {_rename(name, self.HF_NAMES): t for name, t in self.state_dict().items()}

    def load_hf_state_dict(self, state_dict, source="checkpoint"):
        """Load tensors named as in a HF MusicGen checkpoint (decoder.*, enc_to_dec_proj.* and, for the melody
        model, audio_enc_to_dec_proj.*), strictly."""
        back = {hf: ours for ours, hf in self.HF_NAMES.items()}
        ours = {_rename(n, back): t for n, t in state_dict.items() if n not in self.HF_IGNORED}
        return load_into(self, ours, source=source)

    @classmethod
    def from_pretrained(cls, name_or_path):
        """Only the LM of a HF-layout MusicGen directory (MusicGen.from_pretrained loads everything)."""
        model_dir = resolve_model_dir(name_or_path)
        config = musicgen_config(model_dir)
        lm = uninitialised(cls, lm_config_from_hf(config))
        parts = ("decoder.", "enc_to_dec_proj.", "audio_enc_to_dec_proj.")
        tensors = {n: t for n, t in load_state_dict(model_dir).items() if n.startswith(parts)}
        return lm.load_hf_state_dict(tensors, source=str(model_dir)).eval()


def _rename(name, prefixes):
    for old, new in prefixes.items():
        if name.startswith(old):
            return new + name[len(old) :]
    return name


# ============================================================================ 4. generation (Paper §2.2, §3.1)


def guided_logits(logits, cfg_coef):
    """Classifier-free guidance on a [cond; uncond] batch [2B, ...] -> [B, ...]: uncond + cfg (cond - uncond)
    (facts §3.2; the paper applies CFG to the logits, §3.1). Applied before temperature and top-k."""
    # --- exercise: guidance ---
    cond, uncond = logits.chunk(2)
    return uncond + cfg_coef * (cond - uncond)
    # --- end exercise: guidance ---


def sample_tokens(logits, temperature=1.0, top_k=250, top_p=0.0, greedy=False, generator=None):
    """Pick one token per codebook from logits [B, K, N] -> [B, K].

    greedy (or temperature 0): argmax. Otherwise softmax(logits / temperature) restricted to the top_p nucleus
    when top_p > 0, else to the top_k tokens when top_k > 0 (audiocraft's precedence); top-k 250 is the paper's
    setting (§3.1). `generator` makes sampling reproducible (seeded by the caller)."""
    if greedy or temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_p > 0:
        probs, order = logits.softmax(dim=-1).sort(dim=-1, descending=True)
        keep = probs.cumsum(dim=-1) - probs <= top_p  # the most likely tokens until their mass reaches top_p
        keep = torch.zeros_like(keep).scatter(-1, order, keep)  # back to token order
        logits = logits.masked_fill(~keep, float("-inf"))
    elif top_k > 0:
        # --- exercise: top_k ---
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
        # --- end exercise: top_k ---
    probs = logits.softmax(dim=-1)
    picks = torch.multinomial(probs.flatten(0, -2), 1, generator=generator)
    return picks.view(probs.shape[:-1])


def start_sequence(batch, K, frames, special, device, prompt=None):
    """The delayed layout to fill in [B, K, T + K]: special tokens where the pattern says so, the prompt's codes
    [B, K, T_p] (continuation) in their delayed places, UNKNOWN where a token is still due."""
    codes = torch.full((batch, K, frames), UNKNOWN, dtype=torch.long, device=device)
    if prompt is not None:
        codes[:, :, : prompt.shape[-1]] = prompt
    return delay_pattern(codes, special)


def first_free_step(seq):
    """The first step that still has a token to generate: 1 without a prompt, T_p + 1 after a T_p-frame prompt
    (facts §2.2). Every step before it is known, so the first forward pass covers them all at once."""
    free = (seq == UNKNOWN).any(dim=1).any(dim=0).nonzero()
    if not len(free):
        raise ValueError("Nothing to generate: the prompt already covers every requested frame.")
    return int(free[0])


def with_null_condition(condition, condition_mask, cfg_coef, chroma=None):
    """(condition, mask, guided, chroma): append the null condition for guidance (zero text with mask 0, and for
    a melody model the null melody, one-hot C; facts §3.1), unless guidance cannot change anything: cfg_coef 1,
    or every prompt is already unconditional (no text, and no melody or a null one)."""
    no_text = condition_mask is not None and not bool(condition_mask.any())
    null_melody = None if chroma is None else chroma_lib.null_melody(*chroma.shape[:2], chroma.device).to(chroma.dtype)
    no_melody = chroma is None or torch.equal(chroma, null_melody)  # one-hot C everywhere (facts §1.7)
    if condition is None or cfg_coef == 1 or (no_text and no_melody):
        return condition, condition_mask, False, chroma
    if condition_mask is None:
        condition_mask = torch.ones(condition.shape[:2], dtype=torch.long, device=condition.device)
    condition = torch.cat([condition, torch.zeros_like(condition)])
    condition_mask = torch.cat([condition_mask, torch.zeros_like(condition_mask)])
    if chroma is not None:
        chroma = torch.cat([chroma, null_melody])
    return condition, condition_mask, True, chroma


def next_tokens(logits, due, guided, cfg_coef, sampling):
    """Logits of the last step ([2B or B, K, N]) -> the step's tokens [B, K]; forced specials and prompt tokens
    (anything already known in `due`) stay as they are."""
    logits = logits.float()  # guidance and sampling in fp32 even when the LM runs in bf16
    if guided:
        logits = guided_logits(logits, cfg_coef)
    picked = sample_tokens(logits, **sampling)
    return torch.where(due == UNKNOWN, picked, due)


@torch.inference_mode()
def generate_reference(lm, condition, condition_mask, frames, cfg_coef=3.0, generator=None, chroma=None,
                       prompt=None, **sampling):
    """The plain loop: run the whole growing sequence through the LM at every step (quadratic, but obviously
    right). -> codes [B, K, frames], the first T_p of them the prompt's [B, K, T_p] if one is given.
    chroma: a melody model's melody [B, T_c, 12]. sampling: temperature, top_k, top_p, greedy (see sample_tokens)."""
    B, K = condition.shape[0], lm.config.num_codebooks
    seq = start_sequence(B, K, frames, lm.special, condition.device, prompt)  # [B, K, T + K]
    condition, condition_mask, guided, chroma = with_null_condition(condition, condition_mask, cfg_coef, chroma)
    for s in range(first_free_step(seq), seq.shape[-1]):  # T + K - 1 forward passes without a prompt (facts §2.2)
        x = seq[:, :, :s]
        logits = lm(torch.cat([x, x]) if guided else x, condition, condition_mask, chroma)[:, :, -1]  # [2B, K, N]
        seq[:, :, s] = next_tokens(logits, seq[:, :, s], guided, cfg_coef, dict(sampling, generator=generator))
    return revert_delay(seq)


@torch.inference_mode()
def generate(lm, condition, condition_mask, frames, cfg_coef=3.0, generator=None, progress=False, chroma=None,
             prompt=None, **sampling):
    """The fast loop: one new step per forward pass with a KV cache; conditional and unconditional branches run
    as one batch [cond; uncond]. Same tokens as generate_reference. -> codes [B, K, frames].

    The first forward pass covers every known step (step 0, or the prompt's steps, plus a melody model's prefix);
    after it, one step at a time."""
    B, K = condition.shape[0], lm.config.num_codebooks
    seq = start_sequence(B, K, frames, lm.special, condition.device, prompt)
    condition, condition_mask, guided, chroma = with_null_condition(condition, condition_mask, cfg_coef, chroma)
    cache = lm.new_cache(condition, condition_mask, max_steps=seq.shape[-1], chroma=chroma)
    start = first_free_step(seq)
    steps = range(start, seq.shape[-1])
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, unit="step", desc="generating", leave=False)
    x = seq[:, :, :start]  # everything known goes in first
    for s in steps:
        logits = lm.decode(torch.cat([x, x]) if guided else x, cache)  # [2B, K, N]
        seq[:, :, s] = next_tokens(logits, seq[:, :, s], guided, cfg_coef, dict(sampling, generator=generator))
        x = seq[:, :, s : s + 1]  # then only the newest step
    return revert_delay(seq)


# ---------------------------------------------------------------------------- long generation: a sliding window
#
# Why there is a limit at all. The LM was trained on crops of at most W frames (30 s for the released models), so
# it has only ever seen positions 0..W+K-1 (plus a melody prefix): the sinusoid of a later position is a vector it
# never learnt to read, and its attention was never asked to span more than W frames. Past that point it produces
# junk (and the position table of the checkpoint ends at max_positions anyway). So a long piece is made of windows
# of at most W frames, each one a fresh generation whose *prompt* is the last W - stride frames of what exists:
#
#     frames:  0         stride      2 stride     W        stride+W     ...
#     window 1 [==========================================]                       generate W frames
#     window 2            [ctx ctx ctx ctx ctx ctx ctx ctx ctx|=================]  keep W - stride, add stride
#     window 3                         [ctx ctx ctx ctx ctx ctx ctx ctx ctx ctx ctx|=====...
#
# Each window starts again at position 0, so every position stays inside what the model was trained on, and the
# W - stride frames of context keep the music going across the joins (tempo, key, timbre). audiocraft's default
# for its 30 s models is stride 18 s (12 s of context); we use the same ratio, 0.6 W. A melody is re-sliced for
# each window so that it keeps advancing with the music (facts §6.4): window w hears the melody from its own start.

EXTEND_STRIDE = 0.6  # stride / window, audiocraft's 18 s of 30 s
TRAINED_SECONDS = 30.0  # the released models' training crops: the default window when a model does not say


# ============================================================================ 5. MusicGen: text -> tokens -> audio


def musicgen_config(model_dir):
    """config.json of a MusicGen directory, checked for the three blocks we need."""
    config = read_config(model_dir)
    missing = [k for k in ("text_encoder", "audio_encoder", "decoder") if k not in config]
    if missing:
        raise CheckpointError(
            f"{model_dir} is not a MusicGen checkpoint: its config.json lacks {', '.join(missing)}. Expected a "
            "Hugging Face MusicGen directory (config.json with text_encoder, audio_encoder and decoder blocks, "
            "model.safetensors, spiece.model), e.g. facebook/musicgen-small, or one written by train.py."
        )
    return config


def lm_config_from_hf(config):
    """LMConfig of a whole MusicGen config.json (text or melody: the melody fields sit at the top level)."""
    return LMConfig.from_hf(config["decoder"], config["text_encoder"]["d_model"], config.get("num_chroma", 12),
                            config.get("chroma_length", chroma_lib.CHROMA_LENGTH))


def generation_defaults(model_dir, num_codebooks):
    """What a checkpoint's generation_config.json asks for: (window in frames, from max_length = T + K steps: 1500
    for the released models, i.e. their 30 s training crops; top_k; guidance_scale). None where the file does not
    say."""
    path = Path(model_dir) / "generation_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    max_length = config.get("max_length")
    return (max_length - num_codebooks if max_length else None), config.get("top_k"), config.get("guidance_scale")


def default_top_k(card):
    """Paper §3.1 samples among the 250 most likely of N = 2048 codes (12 %); a codec with a smaller codebook keeps
    the same share (31 of 256): with top-k 250 of 256 nothing would be cut, and a small LM's unlikely tail is noise."""
    return max(1, round(250 * card / 2048))


class MusicGen(nn.Module):
    """Text prompts (+ a melody, + an audio prompt) -> T5 -> LM (delay pattern, guidance) -> EnCodec -> waveform.

    Build from parts (e.g. a fresh LM for training), or load with MusicGen.from_pretrained(dir_or_repo_id).
    `context_frames` is the longest stretch the LM was trained on, the default generation window (None: 30 s, as
    released); `top_k` the default sampling cut-off (None: default_top_k of the codebook size); `guidance` the
    default classifier-free guidance coefficient (None: the paper's 3.0). save_pretrained stores all three in
    generation_config.json (max_length, top_k, guidance_scale), so a model carries the settings it was measured
    with."""

    def __init__(self, tokenizer, text_encoder, codec, lm, context_frames=None, top_k=None, guidance=None):
        super().__init__()
        self.tokenizer, self.text_encoder, self.codec, self.lm = tokenizer, text_encoder, codec, lm
        self.context_frames = context_frames
        self.top_k = default_top_k(codec.codebook_size) if top_k is None else top_k
        self.guidance = 3.0 if guidance is None else guidance  # Paper §3.1 / facts §3.2: 3.0 for the released models
        if codec.num_codebooks != lm.config.num_codebooks or codec.codebook_size != lm.config.card:
            raise ValueError(
                f"The codec has {codec.num_codebooks} codebooks of {codec.codebook_size}, the LM expects "
                f"{lm.config.num_codebooks} of {lm.config.card}."
            )

    @property
    def device(self):
        return self.lm.out_norm.weight.device

    @property
    def sample_rate(self):
        return self.codec.sample_rate

    @property
    def frame_rate(self):
        return self.codec.frame_rate

    @property
    def max_frames(self):
        """The most frames one window can hold: T + K steps (+ a melody prefix, without its text) must fit the
        positions."""
        prefix = self.lm.config.chroma_length if self.lm.config.melody else 0
        return self.lm.config.max_positions - self.lm.config.num_codebooks - prefix

    # ---------------------------------------------------------------- loading and saving (Hugging Face layout)

    @classmethod
    def from_pretrained(cls, name_or_path):
        """A Hugging Face-format MusicGen or MusicGen-melody directory (ours or a downloaded one) or a hub id
        already in the cache."""
        from encodec_lite import EncodecConfig, EncodecLite
        from t5_encoder import T5Config, T5Encoder, T5Tokenizer

        model_dir = resolve_model_dir(name_or_path)
        config = musicgen_config(model_dir)
        tokenizer = T5Tokenizer.from_pretrained(model_dir)  # spiece.model beside the weights, clear error if not
        tensors = load_state_dict(model_dir)  # read the weight files once, hand each part its share
        text_encoder = uninitialised(T5Encoder, T5Config.from_hf(config["text_encoder"]))
        text_encoder.load_hf_state_dict(_take(tensors, "text_encoder."), source=f"{model_dir} (text_encoder)")
        codec = uninitialised(EncodecLite, EncodecConfig.from_hf(config["audio_encoder"]))
        codec.load_hf_state_dict(_take(tensors, "audio_encoder."), source=f"{model_dir} (audio_encoder)")
        codec.fold_weight_norm()  # inference form of the convolutions
        lm = uninitialised(LM, lm_config_from_hf(config))
        lm.load_hf_state_dict(tensors, source=f"{model_dir} (decoder)")
        context, top_k, guidance = generation_defaults(model_dir, lm.config.num_codebooks)
        return cls(tokenizer, text_encoder, codec, lm, context, top_k, guidance).eval()

    def hf_config(self):
        config = {
            "architectures": ["MusicgenForConditionalGeneration"],
            "model_type": "musicgen",
            "is_encoder_decoder": True,
            "text_encoder": self.text_encoder.config.to_hf(),
            "audio_encoder": self.codec.config.to_hf(),
            "decoder": self.lm.config.to_hf(),
        }
        if self.lm.config.melody:  # what transformers' MusicgenMelodyForConditionalGeneration reads
            config.update(architectures=["MusicgenMelodyForConditionalGeneration"], model_type="musicgen_melody",
                          num_chroma=self.lm.config.num_chroma, chroma_length=self.lm.config.chroma_length)
        return config

    def hf_state_dict(self):
        tensors = {"text_encoder." + n: t for n, t in self.text_encoder.hf_state_dict().items()}
        tensors.update({"audio_encoder." + n: t for n, t in self.codec.hf_state_dict().items()})
        tensors.update(self.lm.hf_state_dict())
        return tensors

    def save_pretrained(self, model_dir):
        """Write config.json, generation_config.json, model.safetensors and spiece.model: the layout that
        from_pretrained (and transformers' MusicgenForConditionalGeneration, or MusicgenMelodyFor... for a melody
        model) reads."""
        from checkpoints import save_config, save_safetensors

        model_dir = Path(model_dir)
        save_config(self.hf_config(), model_dir / "config.json")
        special, K = self.lm.special, self.lm.config.num_codebooks
        save_config(
            {"decoder_start_token_id": special, "pad_token_id": special, "bos_token_id": special,
             "do_sample": True, "guidance_scale": self.guidance, "top_k": self.top_k,
             "max_length": self.context_frames + K if self.context_frames else 1500},
            model_dir / "generation_config.json",
        )
        save_safetensors(self.hf_state_dict(), model_dir / "model.safetensors")
        self.tokenizer.save_pretrained(model_dir)

    # ---------------------------------------------------------------- conditions

    @torch.no_grad()  # not inference_mode: training feeds these to the trainable condition_proj
    def encode_text(self, prompts):
        """Prompts -> T5 condition [B, L, text_dim] and mask [B, L]. An empty prompt "" is unconditional: its
        condition is all zeros with mask 0 (the null condition of guidance, facts §3.1). Prompts of different
        lengths are padded to the longest (mask 0): text models hide the padding from cross-attention (as HF);
        the melody model reads it as zero vectors (as both references), so there a prompt's music can depend
        slightly on the longest prompt of its batch."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a string or a non-empty list of strings (use \"\" for none).")
        empty = torch.tensor([not p.strip() for p in prompts])
        if empty.any():
            audio.notice(f"{int(empty.sum())} empty prompt(s): generating those unconditionally (zero condition).")
        if empty.all():  # no text at all: skip T5
            zeros = torch.zeros(len(prompts), 1, self.lm.config.text_dim, device=self.device)
            return zeros, torch.zeros(len(prompts), 1, dtype=torch.long, device=self.device)
        ids, mask = self.tokenizer(prompts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        mask[empty.to(self.device)] = 0
        return self.text_encoder(ids, mask), mask

    def prepare_melody(self, melody, sample_rate, batch):
        """The melody argument -> a list of `batch` mono 32 kHz waveforms [1, 1, N_b], or None.

        melody: [N], [C, N] or [B, C, N] (one for every prompt, or one per prompt), or a list of such clips of
        different lengths (one per prompt). Resampled / downmixed with a notice (chroma.py works at 32 kHz)."""
        if melody is None:
            return None
        if not self.lm.config.melody:
            raise ValueError("This model has no melody conditioning: load a melody model (e.g. "
                             "facebook/musicgen-melody, or one trained from the 'small-melody' preset).")
        if sample_rate is None:
            raise ValueError("Pass melody_sample_rate with the melody (the sample rate of its waveform).")
        clips = list(melody) if isinstance(melody, (list, tuple)) else [melody]
        wavs = [w for clip in clips for w in audio.prepare(clip, sample_rate, chroma_lib.SAMPLE_RATE, 1, "melody")]
        if len(wavs) not in (1, batch):
            raise ValueError(f"Got {len(wavs)} melodies for {batch} prompts: pass one for all, or one per prompt.")
        return [w[None] for w in wavs] * (batch if len(wavs) == 1 else 1)

    def melody_window(self, melodies, start_frame):
        """Chroma [B, chroma_length, 12] of each melody as heard from frame `start_frame` of the music on: the
        waveform is rotated to start there (wrapping round, so a short melody loops), then chroma'd and fit to
        the prefix (facts §6.4). At frame 0 it is exactly the chroma of the melody as given, as in HF."""
        if melodies is None:
            return None
        shift = round(start_frame / self.frame_rate * chroma_lib.SAMPLE_RATE)
        length = self.lm.config.chroma_length
        rotated = [w.roll(-(shift % w.shape[-1]), dims=-1) for w in melodies]
        return torch.cat([chroma_lib.melody_chroma(w, chroma_lib.SAMPLE_RATE, length) for w in rotated]).to(self.device)

    def encode_prompt(self, prompt_audio, sample_rate, batch):
        """An audio prompt to continue ([N], [C, N] or [B, C, N]; one for all prompts or one per prompt) ->
        its codes [B, K, T_p], or None."""
        if prompt_audio is None:
            return None
        if sample_rate is None:
            raise ValueError("Pass prompt_sample_rate with prompt_audio (the sample rate of its waveform).")
        codes = self.codec.encode(audio.prepare(prompt_audio, sample_rate, self.sample_rate, 1, "audio prompt"))
        if codes.shape[0] not in (1, batch):
            raise ValueError(f"Got {codes.shape[0]} audio prompts for {batch} prompts: pass one, or one per prompt.")
        return codes.expand(batch, -1, -1).to(self.device)

    # ---------------------------------------------------------------- generation

    def check_frames(self, frames):
        if not isinstance(frames, int) or frames <= 0:
            raise ValueError(f"frames must be a positive whole number; got {frames!r}.")

    def window_frames(self, condition, window=None, extend_stride=None):
        """(window, stride) in frames for the sliding window (diagram under "long generation", section 4).

        window: seconds (default: the model's context_frames, else 30 s, at most what the positions allow);
        extend_stride: seconds the window moves each time (default 0.6 window)."""
        prefix = self.lm.config.chroma_length + condition.shape[1] if self.lm.config.melody else 0
        limit = self.lm.config.max_positions - self.lm.config.num_codebooks - prefix
        if window is None:
            frames = min(self.context_frames or round(TRAINED_SECONDS * self.frame_rate), limit)
        else:
            frames = audio.duration_to_frames(window, self.frame_rate)
        if not 0 < frames <= limit:
            raise ValueError(
                f"A window of {frames} frames ({frames / self.frame_rate:.2f} s) does not fit this model's "
                f"{self.lm.config.max_positions} positions (T + K steps{' + melody prefix' if prefix else ''} must "
                f"fit; at most {limit / self.frame_rate:.2f} s). Ask for a shorter window."
            )
        stride = round(EXTEND_STRIDE * frames) if extend_stride is None else audio.duration_to_frames(
            extend_stride, self.frame_rate)
        if not 0 < stride < frames:
            raise ValueError(f"extend_stride must be shorter than the window ({frames / self.frame_rate:.2f} s) "
                             f"and positive; got {stride / self.frame_rate:.2f} s.")
        return frames, stride

    def generate_tokens(self, prompts, frames, cfg_coef=None, top_k=None, top_p=0.0, temperature=1.0, seed=None,
                        greedy=False, progress=False, *, melody=None, melody_sample_rate=None, prompt_audio=None,
                        prompt_sample_rate=None, window=None, extend_stride=None):
        """Prompts -> codes [B, K, frames] (the fast cached loop), window after window when frames is longer than
        the window (the sliding-window diagram in section 4). With prompt_audio, the first T_p frames are the
        prompt's own codes. cfg_coef / top_k None: the model's defaults (self.guidance / self.top_k)."""
        self.check_frames(frames)
        condition, mask = self.encode_text(prompts)
        B = condition.shape[0]
        melodies = self.prepare_melody(melody, melody_sample_rate, B)
        codes = self.encode_prompt(prompt_audio, prompt_sample_rate, B)  # [B, K, T_p] or None
        window, stride = self.window_frames(condition, window, extend_stride)
        if codes is not None and codes.shape[-1] >= min(frames, window):
            raise ValueError(
                f"The audio prompt is {codes.shape[-1] / self.frame_rate:.2f} s long: ask for a longer duration, "
                f"and use a prompt shorter than the {window / self.frame_rate:.2f} s window."
            )
        generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        cfg_coef = self.guidance if cfg_coef is None else cfg_coef
        sampling = dict(temperature=temperature, top_k=self.top_k if top_k is None else top_k, top_p=top_p,
                        greedy=greedy)
        start = 0  # first frame of the current window
        while codes is None or codes.shape[-1] < frames:
            end = min(start + window, frames)
            context = None if codes is None else codes[:, :, start:]  # the prompt, then the last window - stride
            new = generate(self.lm, condition, mask, end - start, cfg_coef, generator, progress,
                           chroma=self.melody_window(melodies, start), prompt=context, **sampling)
            codes = new if codes is None else torch.cat([codes[:, :, :start], new], dim=-1)
            start += stride
        return codes

    @torch.inference_mode()
    def generate(self, prompts, duration=10.0, cfg_coef=None, top_k=None, top_p=0.0, temperature=1.0, seed=None,
                 greedy=False, progress=False, *, melody=None, melody_sample_rate=None, prompt_audio=None,
                 prompt_sample_rate=None, window=None, extend_stride=None):
        """Prompts -> waveform [B, 1, duration * sample_rate] at self.sample_rate (32 kHz).

            melody, melody_sample_rate        a tune to follow (melody models; none = the null melody)
            prompt_audio, prompt_sample_rate  a clip to continue; `duration` counts it (the output starts with it)
            window, extend_stride             seconds, for music longer than the model's context"""
        if not isinstance(duration, (int, float)) or not math.isfinite(duration) or duration <= 0:
            raise ValueError(f"duration must be a positive number of seconds; got {duration!r}.")
        frames = audio.duration_to_frames(duration, self.frame_rate)
        codes = self.generate_tokens(
            prompts, frames, cfg_coef, top_k, top_p, temperature, seed, greedy, progress, melody=melody,
            melody_sample_rate=melody_sample_rate, prompt_audio=prompt_audio, prompt_sample_rate=prompt_sample_rate,
            window=window, extend_stride=extend_stride)
        return self.codec.decode(codes)


def uninitialised(cls, config):
    """cls(config) with its tensors allocated but not initialised, to load a checkpoint into: random init of the
    ~0.6 B numbers of musicgen-small takes most of a minute on a CPU, and load_into overwrites (and checks) every
    one of them. Buffers that are not saved (persistent=False) would stay garbage, so such classes are built
    normally."""
    with torch.device("meta"):
        module = cls(config)
    if any(m._non_persistent_buffers_set for m in module.modules()):
        return cls(config)
    return module.to_empty(device="cpu")


def _take(tensors, prefix):
    """Remove and return the tensors under `prefix`, prefix stripped (so each part's memory is freed early)."""
    names = [n for n in tensors if n.startswith(prefix)]
    return {n[len(prefix) :]: tensors.pop(n) for n in names}
