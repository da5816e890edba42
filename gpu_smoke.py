"""
gpu_smoke.py: a few minutes on a GPU that check what the CPU tests cannot see. Each check takes under a minute:

    python gpu_smoke.py                  # auto: a CUDA GPU if there is one, else the checks a CPU can run
    python gpu_smoke.py --device cpu     # what the test suite runs (tests/test_gpu_smoke.py)

    kernels     which SDPA kernel (flash, efficient, cudnn, math) each attention call of the LM and T5 gets, in
                float32 and bfloat16                                                                   (CUDA only)
    reduce      train.py's loss reduction through a one-process group: NCCL on CUDA, gloo on the CPU
    greedy      the tiny LM's greedy codes on the CPU and on the GPU: the same                         (CUDA only)
    bf16        the tiny LM in bfloat16 continuing a prompt: the prompt kept, codes valid, and how many greedy codes
                agree with float32
    train       train.py --config tiny (a few steps) end to end on the device, then a resume from its checkpoint
    speed       ms per decoding step of the musicgen-small LM (random weights), float32 vs bfloat16    (CUDA only)

Random weights everywhere: nothing is downloaded. Exit status 1 if any check fails.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import musicgen as M
import t5_encoder
import train
from checkpoints import pick_device


class Skipped(Exception):
    """A check this device cannot run (the CUDA-only ones on a CPU)."""


def cuda_only(device):
    if device.type != "cuda":
        raise Skipped("needs a CUDA GPU")


def tiny_lm(device, dtype=torch.float32):
    """The tiny LM preset with random weights (seeded: the same on every device), and a random condition."""
    torch.manual_seed(0)
    lm = M.LM(M.lm_config("tiny", text_dim=32)).eval()
    condition, mask = torch.randn(1, 5, 32), torch.ones(1, 5, dtype=torch.long)  # [B, L, text_dim], [B, L]
    return lm.to(device, dtype), condition.to(device), mask.to(device)


def check_kernels(device):
    """Record every SDPA call of a cached LM generation and of T5, then ask which backend runs each of them: SDPA
    takes the first that accepts its inputs, in the order below."""
    cuda_only(device)
    calls, real = [], F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        calls.append((q, k, v, attn_mask, kw))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    order = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    lines = []
    for dtype in (torch.float32, torch.bfloat16):
        calls.clear()
        lm, condition, mask = tiny_lm(device, dtype)
        t5 = t5_encoder.T5Encoder(t5_encoder.T5_PRESETS["tiny"]).to(device, dtype).eval()
        F.scaled_dot_product_attention = spy  # musicgen and t5_encoder call it through F
        try:
            with torch.no_grad():
                M.generate(lm, condition, mask, 8, cfg_coef=3.0, temperature=0)
                t5(torch.tensor([[5, 6, 7, 1], [5, 6, 1, 0]], device=device), torch.tensor([[1] * 4, [1, 1, 1, 0]],
                                                                                            device=device))
        finally:
            F.scaled_dot_product_attention = real
        counts = {}
        for q, k, v, attn_mask, kw in calls:
            for backend in order:
                try:
                    with sdpa_kernel(backend), torch.no_grad():
                        real(q, k, v, attn_mask=attn_mask, **kw)
                except RuntimeError:  # this backend refuses these inputs: the next one would run
                    continue
                counts[backend.name] = counts.get(backend.name, 0) + 1
                break
        lines.append(f"{str(dtype).removeprefix('torch.')}: {counts} of {len(calls)} calls")
    return "; ".join(lines)


def check_reduce(device):
    """loss_and_stop + all_mean as LMSteps.step runs them, through a real process group of one."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    store = dist.HashStore()
    dist.init_process_group(backend, store=store, rank=0, world_size=1)
    try:
        per_codebook = torch.tensor([1.0, 2.0, 3.0, 4.0], device=device)  # [K] on the training device
        stats = train.loss_and_stop(per_codebook, False)
        dist.all_reduce(stats)  # what all_mean does with 2+ processes
        assert stats.device == per_codebook.device and stats.tolist() == [1.0, 2.0, 3.0, 4.0, 0.0], stats
    finally:
        dist.destroy_process_group()
    return f"{backend} all-reduce of a {device.type} tensor: ok"


def greedy_codes(lm, condition, mask, frames=30, prompt=None):
    with torch.no_grad():
        return M.generate(lm, condition, mask, frames, cfg_coef=3.0, temperature=0, prompt=prompt).cpu()


def check_greedy(device):
    cuda_only(device)
    cpu = greedy_codes(*tiny_lm(torch.device("cpu")))
    gpu = greedy_codes(*tiny_lm(device))
    agree = (cpu == gpu).float().mean().item()
    # one flipped near-tie changes every frame after it, so a few differences are no failure; a wrong kernel is
    assert agree > 0.5, f"only {agree:.0%} of the greedy codes agree"
    return f"{agree:.1%} of 30 frames x 4 codebooks agree between the CPU and {device}"


def check_bf16(device):
    """Continuation in bfloat16: the first 10 frames are given, 20 are generated."""
    prompt = greedy_codes(*tiny_lm(device), frames=10).to(device)  # [1, K, 10]
    fp32 = greedy_codes(*tiny_lm(device), prompt=prompt)
    bf16 = greedy_codes(*tiny_lm(device, torch.bfloat16), prompt=prompt)
    assert torch.equal(bf16[:, :, :10], prompt.cpu()) and 0 <= bf16.min() and bf16.max() < 64, bf16
    return f"prompt kept; {(bf16 == fp32).float().mean().item():.1%} of the greedy codes agree with float32"


def check_train(device):
    """A few steps of the tiny pipeline on the device, then two more resumed from its checkpoint."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "train.py", "--config", "tiny", "--device", str(device), "--out_dir", out,
                   "--cache_dir", out, "--codec_steps", "4", "--samples", "0", "--threads", "1"]
        for steps in (2, 4):  # the second run resumes from the first one's checkpoint
            result = subprocess.run(command + ["--max_steps", str(steps), "--ckpt_every", "2"], capture_output=True,
                                    text=True, cwd=Path(__file__).parent, env=dict(os.environ, OMP_NUM_THREADS="1"))
            assert result.returncode == 0, result.stderr[-2000:]
        assert "resuming from" in result.stderr + result.stdout, "the second run did not resume"
    return "trained 2 steps, resumed to 4"


def check_speed(device):
    """ms per KV-cached decoding step (batch 2: a prompt and guidance's null one) of the 300M LM."""
    cuda_only(device)
    lines = []
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        with device:  # built on the GPU: its init takes seconds there, not half a minute on the CPU
            lm = M.LM(M.lm_config("musicgen-small")).to(dtype).eval()
        condition, mask = torch.randn(1, 12, 768, device=device), torch.ones(1, 12, dtype=torch.long, device=device)
        greedy_codes(lm, condition, mask, frames=10)  # warm-up: kernels chosen and compiled
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        greedy_codes(lm, condition, mask, frames=100)  # .cpu() at the end waits for the GPU
        lines.append(f"{str(dtype).removeprefix('torch.')} {(time.perf_counter() - t0) / 103 * 1000:.1f} ms/step")
        del lm
    return ", ".join(lines)


CHECKS = {"kernels": check_kernels, "reduce": check_reduce, "greedy": check_greedy, "bf16": check_bf16,
          "train": check_train, "speed": check_speed}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--device", default="auto", help="auto (CUDA if there, else the CPU), cuda, cuda:1, cpu")
    device = pick_device(parser.parse_args(argv).device)
    print(f"gpu_smoke on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'no GPU'})")
    failed = 0
    for name, check in CHECKS.items():
        t0 = time.perf_counter()
        try:
            result = f"ok    {check(device)}"
        except Skipped as why:
            result = f"skip  {why}"
        except Exception as e:  # noqa: BLE001 - a failed check is reported, and the others still run
            result, failed = f"FAIL  {type(e).__name__}: {e}", failed + 1
        print(f"{name:8s} {result}  ({time.perf_counter() - t0:.1f} s)", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
