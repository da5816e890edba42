"""bench.py's training section drives train.py's own stages (CodecSteps, LMSteps): a change to their signatures
breaks it silently, as the training_loop.py split once did. Here it runs with one timed step per stage; how fast
those steps are is bench.py's business, never a test's."""

import argparse
import re

import bench


def test_bench_train_runs_both_training_stages(tmp_path, capsys):
    bench.bench_train(argparse.Namespace(tmp=str(tmp_path)), codec_steps=1, lm_steps=1)
    out = capsys.readouterr().out
    rates = {stage: float(re.search(stage + r" step .*?([\d.]+) steps/s", out).group(1)) for stage in ("codec", "LM")}
    assert all(rate > 0 for rate in rates.values()), out
