"""
training_loop.py: the loop both learning stages of train.py share (the codec and the LM), and the processes it runs
on: one, or several under torchrun.

    train_steps(stage, config, proc)   resume from the stage's checkpoint, then for every step: reseed torch, take
                                       the step, stop on a non-finite loss before it is saved, log, validate,
                                       checkpoint; Ctrl-C finishes the steps up to the next logged one, saves, exits
    resume(stage, config, proc)        the step to start from, and a notice when settings changed since the checkpoint
    setup_processes(device)            rank, world size and device of this process (DistributedDataParallel)

What a stage is (its batch, its loss, its optimiser step, what a checkpoint holds) is train.py's CodecSteps and
LMSteps; the interface they implement is described above train_steps. Reading order: Processes, then train_steps.
"""

import contextlib
import os
import signal
import time
from dataclasses import asdict, dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from checkpoints import keep_log_until, load_checkpoint, log, read_step, save_checkpoint


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, bad settings); the message says why and what to do."""


# -------------------- processes: one, or several under torchrun (DistributedDataParallel, DDP)
# Every process runs train.py; they differ only by their rank. Each builds the same models from the same seed,
# computes the gradient of its slice of the global batch, and DDP averages the gradients during backward(), so every
# process takes the same optimiser step and the models stay identical without ever being sent around.


@dataclass
class Processes:
    rank: int = 0  # this process's number, 0 .. world - 1
    world: int = 1  # how many processes train together
    device: str = "cpu"
    main: bool = True  # rank 0, the only one that prints, logs, checkpoints, trains the codec and exports the model

    def barrier(self):
        """Wait until every process gets here (e.g. until the first one has written a file the others read)."""
        if self.world > 1:
            dist.barrier()


def setup_processes(device):
    """device: as checkpoints.pick_device resolved it ('cuda', 'cpu', 'mps', ...). torchrun sets RANK / WORLD_SIZE /
    LOCAL_RANK; without them this is a single process. gloo on CPU, nccl on CUDA. The long timeout lets the other
    processes wait while rank 0 trains the codec."""
    if "RANK" not in os.environ:  # plain `python train.py`
        return Processes(0, 1, device, True)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])  # set by torchrun for each process
    if device.startswith("cuda"):
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"  # one GPU per process
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # the process group: how the processes reach each other (gloo over sockets, nccl between GPUs)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=timedelta(hours=3))
    return Processes(rank, world, device, rank == 0)


def say(proc, message):
    """Print from the first process only (the others would repeat it)."""
    if proc.main:
        tqdm.write(message)  # tqdm.write: the message goes above the progress bar instead of through it


def loss_and_stop(per_codebook, stop_requested):
    """[K] losses + this process's stop flag -> [K + 1], on the device of the losses: NCCL reduces only CUDA tensors,
    and a tensor that stays on the GPU costs no copy to the host."""
    flag = torch.tensor([float(stop_requested)], device=per_codebook.device)
    return torch.cat([per_codebook.detach().float(), flag])


def all_mean(x, proc):
    """Average a tensor over processes (the per-process means are over equal-sized slices)."""
    if proc.world > 1:  # x is a temporary of the caller's: it is overwritten
        dist.all_reduce(x)  # a sum over processes, written into x on every process
        x /= proc.world
    return x


# -------------------- the training loop, shared by the codec and the LM stage
# A stage object (CodecSteps, LMSteps) says what one step is; train_steps does everything around it. The stage has:
#   name, steps, ckpt_path, log_path   for the progress bar, messages and files; train until step `steps`
#   seed_stream                        which torch seed stream the stage's steps draw from (see step_seed)
#   architecture                       what the models are: a checkpoint of other models is refused
#   step(step, stop)                   compute one update -> its log row: "loss", "grad_norm", ..., and "stop" (were
#                                      we asked to stop?), as tensors that stay on the device until they are logged
#   update()                           apply it
#   evaluate(done, row, rate)          every eval_every steps: validation (the LM) or nothing (the codec)
#   parts                              {name: what has a state_dict()}: one checkpoint entry each
#   postfix(row), remedy               the numbers the progress bar shows; what to change if the loss diverges


def step_seed(seed, step, stream):
    """A 63-bit seed made from (seed, step, stream): the randomness of a step, recomputable after a resume.
    Streams: 0 the codec's steps, 1 the LM's condition dropout (lm_batch), 2 + rank the LM's steps on each process."""
    return int(np.random.default_rng([seed, step, stream]).integers(2**63))


class StopRequest:
    """Ctrl-C (or SIGTERM from a scheduler) asks to stop: the steps up to the next logged one finish (train_steps
    reads the flag there), a checkpoint is written, the run exits. A second Ctrl-C interrupts at once."""

    def __enter__(self):
        self.requested, self.previous = False, {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # only the main thread may set handlers; elsewhere, no Ctrl-C
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("\nStopping at the next logged step and saving a checkpoint (Ctrl-C again: abort, no saving).")

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():  # give Ctrl-C back its usual meaning
            signal.signal(sig, handler)


def train_steps(stage, config, proc):
    """Train `stage` from its checkpoint (or from scratch) up to step stage.steps."""
    start = resume(stage, config, proc)  # 0 on a fresh run
    if start >= stage.steps:
        say(proc, f"[{stage.name}] already trained to step {start} (of {stage.steps})")
        return
    if proc.main:
        keep_log_until(stage.log_path, start)  # rows after the checkpoint are about to be written again

    def save(step):  # one file holds all the state a resume needs; the first process writes it for all
        if proc.main:
            save_checkpoint(stage.ckpt_path, step, stage.parts, stage.architecture, asdict(config))

    bar = tqdm(total=stage.steps, initial=start, desc=stage.name, dynamic_ncols=True, disable=not proc.main)
    t_last, s_last = time.time(), start  # time and step of the last log row: the log's steps/s
    finite = True  # every loss since the last check was finite (a tensor on the device after the first step)
    with StopRequest() as stop:  # from here on, Ctrl-C only sets stop.requested
        for step in range(start, stage.steps):  # `step` counts the steps done before this one
            # Reset torch's generator from (seed, step): dropout masks, input noise, k-means draws are then the same
            # in a resumed run as in an uninterrupted one.
            torch.manual_seed(step_seed(config.seed, step, stage.seed_stream))
            row = stage.step(step, stop)  # the loss and gradients of this step (DDP: of every process)
            finite = finite & torch.isfinite(row["loss"]) & torch.isfinite(row["grad_norm"])  # no wait for the GPU
            done = step + 1  # steps done so far: the step number in logs and checkpoints
            # The host reads the device's numbers (and so waits for the GPU) only on the steps that log, validate or
            # checkpoint: in between, the GPU runs ahead of Python. A Ctrl-C is acted on at the next such step.
            read = done == stage.steps or any(done % every == 0 for every in (config.log_every, config.eval_every,
                                                                              config.ckpt_every))
            if read:
                row = {name: value.tolist() if torch.is_tensor(value) else value for name, value in row.items()}
                if not bool(finite):
                    # A NaN or inf spreads to every weight in one update: stop now, before any checkpoint holds it.
                    bar.close()
                    last = (f"the last good checkpoint is {stage.ckpt_path} (step {read_step(stage.ckpt_path)})"
                            if stage.ckpt_path.exists() else "no checkpoint was saved yet")
                    raise TrainingError(f"[{stage.name}] loss is {row['loss']} (grad norm {row['grad_norm']}) at "
                                        f"step {step} (checked every {config.log_every} steps): training diverged "
                                        f"and was stopped; {last}, left untouched. {stage.remedy}, then rerun to "
                                        "resume from it.")
            stage.update()  # the optimiser step: the weights change only here
            bar.update()
            if not read:
                continue
            stop_now = row.pop("stop") > 0  # every process asked (DDP: all stop at the same step)
            bar.set_postfix(stage.postfix(row))
            if proc.main and (done % config.log_every == 0 or done == stage.steps):  # the last step is always logged
                now = time.time()
                log(stage.log_path, step=done, **row, steps_per_s=(done - s_last) / max(now - t_last, 1e-9))
                t_last, s_last = now, done
            if done % config.eval_every == 0 or done == stage.steps:  # every process: validation all-reduces too
                stage.evaluate(done, row, bar.format_dict["rate"] or 0)  # rate: tqdm's smoothed steps/s
            if stop_now:  # Ctrl-C / SIGTERM: save what this step did, then leave through main()
                save(done)
                bar.close()
                raise KeyboardInterrupt
            if done % config.ckpt_every == 0 or done == stage.steps:  # a kill loses at most ckpt_every steps
                save(done)
    bar.close()


# Settings that change nothing the model learns: a resume may change them without a notice.
BOOKKEEPING = {"out_dir", "cache_dir", "device", "threads", "log_every", "eval_every", "eval_batches", "ckpt_every",
               "samples", "sample_seconds", "guidance"}


def resume(stage, config, proc):
    """Load the stage's checkpoint if there is one; -> the step to start from (0 without one)."""
    if not stage.ckpt_path.exists():
        return 0
    checkpoint = load_checkpoint(stage.ckpt_path, stage.architecture, stage.parts)  # refuses other models
    changed = [f"{k} {v!r} -> {getattr(config, k)!r}" for k, v in checkpoint.get("config", {}).items()
               if k not in BOOKKEEPING and hasattr(config, k) and getattr(config, k) != v]
    if changed:  # allowed (e.g. more steps), but the user should know
        say(proc, "Resuming with changed settings (no longer an exact continuation): " + ", ".join(changed))
    say(proc, f"[{stage.name}] resuming from {stage.ckpt_path} at step {checkpoint['step']}")
    return checkpoint["step"]
