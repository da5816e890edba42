"""
int8.py: weight-only int8 for the LM, so that generating on a CPU reads a quarter of the bytes.

At batch 1 a decoding step multiplies a batch of 2 rows (the prompt's and guidance's null one) by every weight matrix
of the LM once: a few multiply-adds per weight read, so the step is bound by memory bandwidth, not arithmetic, and
its floor is the time to read the weights (bench.py measures it). Storing each weight as one int8 byte instead of a
4-byte float cuts that read by 4x; the activations, norms, attention and everything else stay in floating point.
That holds while the kernel turns bytes into products faster than memory delivers them: on a CPU with AVX-512 a
musicgen-small step takes ~0.2x the float32 one, near its own floor; on an AVX2-only one the kernel's own int8-to-float
arithmetic, not the read, sets the pace (~0.64x; RESULTS.md, "int8 weight-only generation" and "int8 on AVX-512").

    1. quantize_per_channel   w [out, in] float -> int8 q [out, in] and one scale per output row [out]
    2. Int8Linear             y = (x @ q^T) * scale: the fast CPU kernel, or dequantize-and-matmul elsewhere
    3. quantize_lm            swap the transformer's linear layers (attention, FFN, heads) for Int8Linear

What is lost: each weight is rounded to the nearest of 255 levels spaced max|row| / 127 apart, so its error is at
most half a step, ~0.4 % of the largest weight of its output row (a row with one large weight loses more on the
small ones). The CPU kernel also rounds the activations, the scales and the outputs to bfloat16 (8 significant
bits). RESULTS.md ("int8 weight-only generation") measures what both do to the logits and the greedy tokens.
Embeddings (a lookup reads one row, not the table), norms, the condition projections, T5 and the codec stay as they
are: they are a small share of a step's reads, or run once per clip.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

# torch._weight_int8pack_mm (torch 2.4 and later, CPU) multiplies activations [M, in] by int8 weights [out, in] and
# one scale per output row, reading each weight byte once. It is fast only with bfloat16 activations: with float32
# ones it is slower than a plain float32 matmul (RESULTS.md), so Int8Linear hands it bfloat16.
HAS_CPU_KERNEL = hasattr(torch, "_weight_int8pack_mm")


# ============================================================================ 1. quantizing a weight
def quantize_per_channel(weight):
    """Symmetric int8 per output channel: weight [out, in] float -> (q [out, in] int8, scale [out] float32) with
    weight ~= q * scale[:, None]. Each row gets its own scale, so a row of small weights keeps its resolution."""
    weight = weight.detach().float()
    # the largest |w| of a row maps to 127; -128 is never used, so +w and -w round to +q and -q (no zero point)
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127  # [out]; an all-zero row keeps a tiny scale, q = 0
    q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)  # [out, in]
    return q, scale


def dequantize(q, scale):
    """(q [out, in] int8, scale [out]) -> the float weight [out, in] that Int8Linear multiplies by."""
    return q.float() * scale[:, None].float()


# ============================================================================ 2. the int8 linear layer
def uses_cpu_kernel(x, q):
    """Whether x @ q^T can go to torch._weight_int8pack_mm: a CPU tensor, and an input width that is a multiple of
    64 (every width here is; a width of 100 crashed the kernel when we tried)."""
    return HAS_CPU_KERNEL and x.device.type == "cpu" and q.shape[1] % 64 == 0


class Int8Linear(nn.Module):
    """A bias-free nn.Linear whose weight is stored as int8 + one float32 scale per output channel:
    x [..., in] -> [..., out], in x's dtype (float32 or bfloat16). Inference only: it has no gradient."""

    def __init__(self, linear):
        super().__init__()
        if linear.bias is not None:  # every layer quantize_lm swaps is bias-free, as released
            raise ValueError("Int8Linear takes bias-free linear layers only.")
        q, scale = quantize_per_channel(linear.weight)
        self.register_buffer("weight", q)  # [out, in] int8: a quarter of the float32 bytes
        self.register_buffer("scale", scale)  # [out] float32 (bfloat16 once the LM is cast to it)

    def forward(self, x):
        rows = x.reshape(-1, x.shape[-1])  # [M, in]: M = batch x steps, 2 when decoding with guidance
        if uses_cpu_kernel(rows, self.weight):
            y = torch._weight_int8pack_mm(rows.to(torch.bfloat16), self.weight, self.scale.to(torch.bfloat16))
        else:  # CUDA, MPS, an old torch: a float copy of the weight, then a plain matmul (it saves memory, not time)
            y = F.linear(rows, dequantize(self.weight, self.scale).to(rows.dtype))
        return y.to(x.dtype).view(*x.shape[:-1], -1)  # [..., out]

    def extra_repr(self):
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, int8 per channel"


# ============================================================================ 3. quantizing the LM
def quantize_lm(lm):
    """Swap every nn.Linear inside the LM's layers (self- and cross-attention projections, FFN) and its K output
    heads for an Int8Linear, in place -> lm. The condition projections (run once per clip), embeddings and norms
    stay float."""
    parents = [*lm.layers.modules(), lm.heads]  # listed first: the loop below replaces their children
    swapped = 0
    for parent in parents:
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child))  # the float weight is freed with the old module
                swapped += 1
    if not swapped:
        raise ValueError("This LM has no float linear layers to quantize: it is int8 already.")
    return lm
