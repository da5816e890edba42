"""
The text encoder: T5 (Raffel et al. 2020), used frozen by MusicGen to turn a description into the conditioning C.

Paper §2.3 "Text conditioning": a pretrained text encoder maps the description to C ∈ R^{T_C × D}; the released
MusicGens use the encoder half of t5-base (§3.1, A.2). Only the encoder is needed, so that is all this file builds:

    T5Tokenizer    text -> token ids: SentencePiece pieces, then EOS (id 1); a batch is right-padded with 0
    T5Config       the sizes (one dataclass; T5_PRESETS names t5-base and the two sizes train.py trains from scratch)
    RMSNorm        T5's "layer norm": scale only, no mean subtraction, no bias
    Attention      unscaled multi-head self-attention; block 0 also owns the relative position bias table
    FeedForward    ReLU (t5-base) or gated-GELU (T5 v1.1 / FLAN-T5)
    Block          pre-norm residual: x += Attn(norm(x)); x += FF(norm(x))
    T5Encoder      ids [B, L] + mask [B, L] -> hidden states [B, L, d_model], zero at the padded positions

How T5 (T5 paper §2.1 "Model") differs from the Transformer of "Attention is all you need":
  * no absolute positions: a learned scalar per (head, bucket of key−query distance) is added to the attention
    scores instead, computed once and shared by every layer;
  * attention scores are q·k without the 1/sqrt(d_kv) factor (the init of q absorbs it);
  * RMSNorm instead of LayerNorm, no biases anywhere, the embedding is not scaled.

A padded batch runs as it is, [B, L, D], with the padded keys masked out of attention: the padded positions cost
some compute, but a prompt encoding is a tiny part of generating music (measured in RESULTS.md, "T5 token packing").

Weights use the Hugging Face names (`shared.weight`, `encoder.block.{i}.layer.0.SelfAttention.q.weight`, ...), so the
public t5-base checkpoint, the `text_encoder.` part of a MusicGen checkpoint and our own saves all load the same way;
`layer.0` of a block is its attention sub-layer and `layer.1` its feed-forward sub-layer.

References: the T5 paper, https://arxiv.org/abs/1910.10683; the reference implementation our outputs are tested
against, transformers `src/transformers/models/t5/modeling_t5.py`.
"""

import io
import math
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import checkpoints

# T5's special token ids (fixed by its SentencePiece vocabulary; there is no BOS token).
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2

# -----------------------------------------------------------------------------
# Tokenizer


class T5Tokenizer:
    """Text -> T5 token ids with SentencePiece (the same `spiece.model` file as t5-base).

    ids, mask = tokenizer(["80s pop track with bassy drums", "jazz"])   # LongTensors [B, L]

    Each text becomes its SentencePiece ids followed by EOS (1); shorter rows are padded on the right with PAD (0)
    and mask is 1 on real tokens, 0 on padding. No truncation: MusicGen feeds the whole description.
    The text is used as is (case kept); SentencePiece's own normaliser (NFKC-like, runs of spaces collapsed)
    is inside spiece.model.

    Matches transformers' T5Tokenizer on ordinary text, with two known differences on unusual input:
    the literal strings '</s>', '<pad>', '<unk>', '<extra_id_N>' are spelled out as text here (HF turns them into
    the special ids), and a combining mark placed after a character that normalisation rewrites (e.g. 'ｈ' + U+0592,
    or a decomposed 'ệ') is normalised slightly differently by HF's fast tokenizer. We follow SentencePiece itself,
    as did the (slow, SentencePiece-based) T5Tokenizer of transformers 4 that audiocraft used to train MusicGen.
    """

    def __init__(self, spiece_path):
        import sentencepiece

        self.path = Path(spiece_path)
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(self.path))
        if (self.sp.pad_id(), self.sp.eos_id(), self.sp.unk_id()) != (PAD_ID, EOS_ID, UNK_ID):
            raise ValueError(f"{self.path} is not a T5 vocabulary: it has pad/eos/unk ids "
                             f"{self.sp.pad_id()}/{self.sp.eos_id()}/{self.sp.unk_id()}, T5 needs "
                             f"{PAD_ID}/{EOS_ID}/{UNK_ID}. Train one with T5Tokenizer.train().")

    @classmethod
    def from_pretrained(cls, path):
        """The tokenizer stored beside a model: `spiece.model` in a t5-base, MusicGen or our own model directory."""
        model_dir = checkpoints.resolve_model_dir(path)
        spiece = model_dir / "spiece.model"
        if not spiece.exists():
            raise checkpoints.CheckpointError(
                f"No spiece.model in {model_dir}: the T5 tokenizer is that SentencePiece file.\n"
                "It ships with t5-base and with every MusicGen checkpoint, e.g.\n"
                f"    hf download google-t5/t5-base spiece.model --local-dir {model_dir}\n"
                "or, for a T5 trained from scratch, write one with T5Tokenizer.train(texts, path, vocab_size)."
            )
        return cls(spiece)

    @property
    def vocab_size(self):
        return self.sp.get_piece_size()

    def encode(self, text):
        """One text -> list of ids ending in EOS. "" -> [EOS]."""
        return self.sp.encode(text) + [EOS_ID]

    def __call__(self, texts):
        """A list of texts -> (ids, mask), LongTensors [B, L], right-padded. A lone string counts as a list of one."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or len(texts) == 0:
            raise TypeError(f"expected a non-empty list of strings, got {type(texts).__name__} {texts!r:.80}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"prompt {i} is {type(text).__name__} ({text!r:.80}), expected a string")
        # on the CPU whatever torch's default device (the caller moves them to the model's)
        rows = [torch.tensor(self.encode(text), device="cpu") for text in texts]
        ids = nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=PAD_ID)  # [B, L], L = longest row
        lengths = torch.tensor([len(row) for row in rows], device="cpu")  # [B]
        mask = (torch.arange(ids.shape[1], device="cpu") < lengths[:, None]).long()  # [B, L]: 1 up to its length
        return ids, mask

    def save_pretrained(self, model_dir):
        """Write spiece.model into a model directory, next to config.json / model.safetensors."""
        target = Path(model_dir) / "spiece.model"
        if target.resolve() != self.path.resolve():
            checkpoints.atomic_write(target, lambda tmp: shutil.copyfile(self.path, tmp))

    @staticmethod
    def train(texts, out_path, vocab_size):
        """Train a SentencePiece unigram vocabulary with T5's special ids (pad 0, eos 1, unk 2, no bos) on `texts`,
        write it to `out_path` and return a T5Tokenizer for it.

        For training a small T5 from scratch on the corpus captions when no public weights are at hand.
        vocab_size is an upper bound: a small corpus may yield fewer pieces (see .vocab_size afterwards)."""
        import sentencepiece

        texts = [t for t in texts if isinstance(t, str) and t.strip()]
        if not texts:
            raise ValueError("T5Tokenizer.train needs at least one non-empty text")
        model = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            model_type="unigram",
            vocab_size=vocab_size,
            hard_vocab_limit=False,  # a tiny corpus cannot fill a large vocabulary; take what there is
            character_coverage=1.0,  # keep every character seen (accents in captions), none mapped to <unk>
            pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
            pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
            minloglevel=2,  # quiet
        )
        checkpoints.atomic_write(out_path, lambda tmp: Path(tmp).write_bytes(model.getvalue()))
        return T5Tokenizer(out_path)


# -----------------------------------------------------------------------------
# Config


@dataclass
class T5Config:
    """Sizes of a T5 encoder, under the field names of HF's config.json. The defaults are transformers' own
    (the t5-small sizes), so a config.json that leaves a field out means the same here as there."""

    vocab_size: int = 32128  # rows of the embedding table (t5: 32 000 pieces + 100 sentinels, padded to 32 128)
    d_model: int = 512  # width of the residual stream
    d_kv: int = 64  # width of one attention head
    num_heads: int = 8
    d_ff: int = 2048  # hidden width of the feed-forward
    num_layers: int = 6
    relative_attention_num_buckets: int = 32  # buckets of key−query distance, half for each direction
    relative_attention_max_distance: int = 128  # distances at least this far share the last bucket
    feed_forward_proj: str = "relu"  # "relu" (t5-base) or "gated-gelu" (T5 v1.1, FLAN-T5)
    dropout_rate: float = 0.1  # used only in train mode
    layer_norm_epsilon: float = 1e-6

    def __post_init__(self):
        if self.feed_forward_proj not in ("relu", "gated-gelu"):
            raise ValueError(f"feed_forward_proj={self.feed_forward_proj!r} is not supported; T5 checkpoints use "
                             "'relu' (t5-base) or 'gated-gelu' (T5 v1.1, FLAN-T5).")

    @classmethod
    def from_hf(cls, hf):
        """From a Hugging Face T5 config.json dict (other fields, e.g. the decoder's, are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in hf.items() if k in names})

    def to_hf(self):
        """A config.json dict that transformers.T5EncoderModel loads."""
        return {"architectures": ["T5EncoderModel"], "model_type": "t5", **asdict(self),
                "is_encoder_decoder": False, "pad_token_id": PAD_ID, "eos_token_id": EOS_ID}


T5_PRESETS = {
    # Paper A.2: the text encoder of every released MusicGen
    "t5-base": T5Config(d_model=768, num_heads=12, d_ff=3072, num_layers=12),
    # encoders train.py trains from scratch with our own vocabulary (it sets vocab_size to tokenizer.vocab_size):
    # "tiny" for the laptop run, "small" for the GPU configs
    "small": T5Config(vocab_size=8000, d_model=256, d_kv=64, num_heads=4, d_ff=1024, num_layers=4),
    "tiny": T5Config(vocab_size=1000, d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2),
}


# -----------------------------------------------------------------------------
# Relative position bias


def relative_position_bucket(relative_position, num_buckets=32, max_distance=128):
    """Map key−query distances to bucket ids (bidirectional, as in the encoder). Tensor of ints -> same shape.

    Half the buckets are for keys to the right (distance > 0), half for the left/same position. Within a half,
    small distances get a bucket each and larger ones share logarithmically wider buckets up to max_distance;
    everything further away falls into the last bucket. With 32 buckets and max distance 128:
    0 -> 0, -1 -> 1, -7 -> 7, -8 -> 8, -16 -> 10, -128 -> 15; +1 -> 17, +8 -> 24, +128 -> 31."""
    # --- exercise: relative_position_bucket ---
    half = num_buckets // 2
    bucket = (relative_position > 0).long() * half  # right half starts at bucket `half`
    n = relative_position.abs()
    exact = half // 2  # distances 0..exact-1 get their own bucket
    # log-spaced buckets: exact + floor(log(n/exact) / log(max_distance/exact) * (half - exact)), in float32
    # (clamped below at `exact` only so that small n, which take the other branch, give no log(0))
    scaled = torch.log(n.clamp(min=exact).float() / exact) / math.log(max_distance / exact) * (half - exact)
    far = (exact + scaled.long()).clamp(max=half - 1)
    return bucket + torch.where(n < exact, n, far)
    # --- end exercise: relative_position_bucket ---


# -----------------------------------------------------------------------------
# The encoder


class RMSNorm(nn.Module):
    """T5's layer norm: y = weight * x / sqrt(mean(x²) + eps). No mean subtraction, no bias.
    The mean square is taken in float32 so that bf16 activations do not lose it."""

    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):  # [..., dim]
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps)).to(self.weight.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with T5's two quirks: no 1/sqrt(d_kv) scaling and an additive position bias."""

    def __init__(self, config, has_relative_bias):
        super().__init__()
        inner = config.num_heads * config.d_kv
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        self.config = config
        if has_relative_bias:  # only block 0 owns the table; the bias it gives is reused by every block
            self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_heads)

    def position_bias(self, L):
        """The learned bias added to the scores of query i and key j: one scalar per head and bucket(j − i).
        -> [1, H, L, L]"""
        pos = torch.arange(L, device=self.relative_attention_bias.weight.device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.config.relative_attention_num_buckets,
                                           self.config.relative_attention_max_distance)  # [L, L]
        return self.relative_attention_bias(buckets).permute(2, 0, 1)[None]  # [L, L, H] -> [1, H, L, L]

    def forward(self, x, attn_bias):
        """x [B, L, D], attn_bias [B, H, L, L] (position bias + padding mask) -> [B, L, D]"""
        B, L, _ = x.shape
        H, d_kv, dropout = self.config.num_heads, self.config.d_kv, self.config.dropout_rate
        # each projection [B, L, H * d_kv] split into heads: [B, H, L, d_kv]
        q, k, v = (proj(x).view(B, L, H, d_kv).transpose(1, 2) for proj in (self.q, self.k, self.v))
        # the bias in q's dtype (bf16 or fp16 under autocast), the padding constant first clamped to that dtype's
        # range: float32's most negative number would round to -inf there, and a row of -inf gives NaN
        attn_bias = attn_bias.clamp(min=torch.finfo(q.dtype).min).to(q.dtype)
        y = F.scaled_dot_product_attention(  # softmax(q·kᵀ + attn_bias) v, scale 1 (T5 has no 1/sqrt(d_kv))
            q, k, v, attn_mask=attn_bias, dropout_p=dropout if self.training else 0.0, scale=1.0
        )  # [B, H, L, d_kv]
        return self.o(y.transpose(1, 2).reshape(B, L, -1))  # heads side by side again: [B, L, H * d_kv] -> [B, L, D]


class FeedForward(nn.Module):
    """relu: wo(relu(wi x)).  gated-gelu: wo(gelu(wi_0 x) * wi_1 x), GELU in its tanh approximation."""

    def __init__(self, config):
        super().__init__()
        self.gated = config.feed_forward_proj == "gated-gelu"
        if self.gated:
            self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
            self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        else:
            self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x):  # [B, L, D]
        if self.gated:
            h = F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)
        else:
            h = F.relu(self.wi(x))
        return self.wo(self.dropout(h))  # [B, L, d_ff] -> [B, L, D]


class Block(nn.Module):
    """One pre-norm encoder block: x += Attn(norm(x)); x += FF(norm(x)).

    Its sub-modules carry HF's names, so that checkpoints load as they are: layer[0] holds `layer_norm` and
    `SelfAttention`, layer[1] holds `layer_norm` and `DenseReluDense`."""

    def __init__(self, config, has_relative_bias):
        super().__init__()
        attn, ff = nn.Module(), nn.Module()  # plain containers, there only to give HF's layer.0 and layer.1
        attn.layer_norm, ff.layer_norm = (RMSNorm(config.d_model, config.layer_norm_epsilon) for _ in range(2))
        attn.SelfAttention, ff.DenseReluDense = Attention(config, has_relative_bias), FeedForward(config)
        self.layer = nn.ModuleList([attn, ff])
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x, attn_bias):  # x [B, L, D]
        attn, ff = self.layer
        x = x + self.dropout(attn.SelfAttention(attn.layer_norm(x), attn_bias))
        x = x + self.dropout(ff.DenseReluDense(ff.layer_norm(x)))
        return x


class T5Encoder(nn.Module):
    """ids [B, L] (+ mask [B, L], 1 = real token) -> last hidden state [B, L, d_model]. Paper §2.3."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)  # the token embedding (shared with T5's decoder)
        # HF keeps the stack under `encoder.` (the full T5 also has a `decoder.`); block 0 owns the position bias
        self.encoder = nn.ModuleDict(dict(
            block=nn.ModuleList([Block(config, has_relative_bias=(i == 0)) for i in range(config.num_layers)]),
            final_layer_norm=RMSNorm(config.d_model, config.layer_norm_epsilon),
        ))
        self.dropout = nn.Dropout(config.dropout_rate)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        """Mesh-TF's init (what T5 was trained with): each matrix ~ N(0, 1/fan_in), except q, which also absorbs the
        1/sqrt(d_kv) that T5 leaves out of the attention scores; the embedding ~ N(0, 1) (it is never scaled,
        and the first RMSNorm rescales it anyway)."""
        config = self.config
        if isinstance(module, Attention):
            nn.init.normal_(module.q.weight, std=(config.d_model * config.d_kv) ** -0.5)
            nn.init.normal_(module.k.weight, std=config.d_model ** -0.5)
            nn.init.normal_(module.v.weight, std=config.d_model ** -0.5)
            nn.init.normal_(module.o.weight, std=(config.num_heads * config.d_kv) ** -0.5)
            if hasattr(module, "relative_attention_bias"):
                nn.init.normal_(module.relative_attention_bias.weight, std=config.d_model ** -0.5)
        elif isinstance(module, FeedForward):
            for w in (module.wi_0, module.wi_1) if module.gated else (module.wi,):
                nn.init.normal_(w.weight, std=config.d_model ** -0.5)
            nn.init.normal_(module.wo.weight, std=config.d_ff ** -0.5)
        elif module is self.shared:
            nn.init.normal_(module.weight, std=1.0)

    def attention_bias(self, real):
        """Position bias of block 0 plus the key-padding mask, built once for all blocks. real [B, L] -> [B, H, L, L]"""
        position_bias = self.encoder.block[0].layer[0].SelfAttention.position_bias(real.shape[1])  # [1, H, L, L]
        # padded keys score the dtype's most negative number: finite (not -inf), so a row whose keys are all padding
        # still gets a uniform softmax rather than NaN, and in any dtype exp(it - max) is exactly 0, so real rows are
        # as if the pad keys were absent
        return position_bias.masked_fill(~real[:, None, None, :], torch.finfo(position_bias.dtype).min)

    def forward(self, ids, mask=None):
        """ids [B, L] LongTensor, mask [B, L] (1 real, 0 pad; None = no padding) -> [B, L, d_model],
        zero at padded positions.

        Padded positions run through the blocks like the others: no real token attends to them (their keys are
        masked), and what they compute themselves is set to zero at the end."""
        self._check_inputs(ids, mask)
        real = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()  # [B, L]
        attn_bias = self.attention_bias(real)  # [B, H, L, L]
        x = self.dropout(self.shared(ids))  # [B, L, D]
        for block in self.encoder.block:
            x = block(x, attn_bias)
        x = self.dropout(self.encoder.final_layer_norm(x))  # [B, L, D]
        return x.masked_fill(~real[..., None], 0.0)  # [B, L, D], zero at padding

    def _check_inputs(self, ids, mask):
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(f"ids must be a LongTensor [B, L] (from T5Tokenizer), got {_describe(ids)}")
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.shape != ids.shape):
            raise ValueError(f"mask must be a tensor shaped like ids {tuple(ids.shape)}, got {_describe(mask)}")
        if ids.device.type != "cpu":  # reading ids on a GPU would make the host wait for it at every training step;
            return  # they come from the tokenizer on the CPU, where a tokenizer/encoder mismatch shows first
        bad = ids[(ids < 0) | (ids >= self.config.vocab_size)]
        if bad.numel():
            raise ValueError(f"token id {int(bad[0])} is outside this encoder's vocabulary (vocab_size "
                             f"{self.config.vocab_size}): the tokenizer and the encoder weights do not belong "
                             "together.")

    # ------------------------------------------------------------------ checkpoints (Hugging Face layout)

    def hf_state_dict(self):
        """Our tensors under their Hugging Face names (they are the same names)."""
        return self.state_dict()

    def load_hf_state_dict(self, state_dict, source="checkpoint"):
        """Load tensors with HF names, strictly. Tensors that a full T5 or T5EncoderModel file also holds and the
        encoder does not use are skipped: the decoder and LM head, and `encoder.embed_tokens.weight` (a tied copy of
        `shared.weight`). Anything else missing, unexpected or misshapen raises a CheckpointError naming it."""
        unused = ("decoder.", "lm_head.", "encoder.embed_tokens.")
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(unused)}
        return checkpoints.load_into(self, state_dict, source=source)

    @classmethod
    def from_pretrained(cls, path):
        """Load a T5 encoder (in eval mode) from a directory: t5-base / FLAN-T5 / T5EncoderModel as saved by
        transformers, our own save_pretrained, or a MusicGen checkpoint (its `text_encoder` part)."""
        model_dir = checkpoints.resolve_model_dir(path)
        config, prefix = checkpoints.read_config(model_dir), ""
        if "text_encoder" in config:  # a MusicGen directory: T5 config as a sub-dict, tensors prefixed
            config, prefix = config["text_encoder"], "text_encoder."
        if config.get("model_type", "t5") != "t5":
            raise checkpoints.CheckpointError(f"{model_dir}/config.json describes a '{config['model_type']}' model, "
                                              "not a T5 (model_type 't5').")
        model = cls(T5Config.from_hf(config))
        model.load_hf_state_dict(checkpoints.load_state_dict(model_dir, prefix), source=str(model_dir))
        return model.eval()

    def save_pretrained(self, model_dir):
        """config.json + model.safetensors in the HF layout (transformers.T5EncoderModel loads it).
        Save the tokenizer beside it with tokenizer.save_pretrained(model_dir)."""
        model_dir = Path(model_dir)
        checkpoints.save_config(self.config.to_hf(), model_dir / "config.json")
        checkpoints.save_safetensors(self.hf_state_dict(), model_dir / "model.safetensors")


def _describe(x):
    """What a bad input is, for an error message: its dtype and shape if it is a tensor, else its type."""
    return f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
