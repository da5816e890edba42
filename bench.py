"""
bench.py: how fast are we, next to Hugging Face transformers, on the same weights, same machine, same run?

    python bench.py                    # every section
    python bench.py --only t5 generate # some sections

Each section builds a reference model with `transformers` (random weights at the released size: these machines
cannot download the real ones, and speed does not depend on the values), saves it, loads the same files with our
code, times both and prints the ratio. Timings are the median of several runs after a warm-up.
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
    raise NotImplementedError("filled in by the T5 work")
# --- end section: t5 ---


# --- section: encodec ---
def bench_encodec(args):
    raise NotImplementedError("filled in by the EnCodec work")
# --- end section: encodec ---


# --- section: generate ---
def bench_generate(args):
    raise NotImplementedError("filled in by the MusicGen work")
# --- end section: generate ---


# --- section: chroma ---
def bench_chroma(args):
    raise NotImplementedError("filled in by the chroma work")
# --- end section: chroma ---


SECTIONS = {"t5": bench_t5, "encodec": bench_encodec, "generate": bench_generate, "chroma": bench_chroma}


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
