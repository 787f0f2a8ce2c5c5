"""Distributed InterTrain on generated data, for `tests/test_distributed.py` (and the 1-vs-2 process timing).

    accelerate launch --config_file recipes/accelerate/cpu_multi_process.yaml --num_processes 2 \
        tests/distributed/train_tiny.py --output_dir OUT [--resume_check] [--bf16] [--four_way randpatch4] \
        [--data_pipeline device] [--cutmix_alpha 1.0] [--torch_compile_backend aot_eager]

(`accelerate launch --cpu --num_processes 2` starts one process unless an MPI hostfile is configured: the
config above launches the CPU processes through torchrun instead.)

Each process writes what the test compares, per run ("full", and with --resume_check "resumed"):
`OUT/{run}_rank{r}.safetensors` (its tracker state) and `OUT/{run}_rank{r}.json` (history, logged statistics,
epoch lengths, per-epoch record counts of this rank and of all ranks, final eval loss, and a digest of every
training batch's pixels as they reach the model, with its epoch and rows).
With --resume_check the script also trains a run that dies right after a mid-epoch checkpoint in epoch 2 (the
first interpolating epoch), adds a half-written newer checkpoint beside it, and resumes from the one
`--resume_from_checkpoint last` resolves on each process (the report names it and its files) in fresh trainers,
then a run whose processes are given different InterTrain settings (`OUT/diverging_rank{r}.json`: how it ended).
With --four_way the "full" run starts with the first 32 samples marked for 4-way composites and the next 8 paired.
With --data_pipeline device the same images are served by `DeviceImageDataset`s (one decoded cache in OUT/pixels,
built by the main process while the other waits) and augmented in `_prepare_inputs`.
With --cutmix_alpha each process mixes the singles of its own batches with timm's CutMix.
With --torch_compile_backend each process trains with the backbone compiled by that backend (inside DDP).
"""

import argparse
import json
import os
import shutil
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import safetensors.numpy
from torch._dynamo.utils import counters
from transformers import TrainerCallback

from conftest import TINY_TRAINING, make_dataset, make_device_dataset, make_model, make_split, pixel_digest
from hf_intertrain import InterTrainArguments, InterTrainTrainer
from hf_intertrain.checkpoint import TRAINER_STATE_NAME
from hf_intertrain.launch import end_processes
from hf_intertrain.experiments.run import resolve_last_checkpoint


class Preempted(Exception):
    """Raised to kill a run right after a checkpoint, as a preemption would."""


class DieAfterSave(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Preempted(f"preempted after checkpoint-{self.step}")


class RecordingTrainer(InterTrainTrainer):
    """Keeps each epoch's record counts of this rank (before the reduction) and of all ranks (after), and each
    training batch's `pixel_digest` with its epoch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.local_counts: list[list[int]] = []
        self.global_counts: list[list[int]] = []
        self.batch_digests: list[list] = []
        close_epoch, end_epoch = self.recorder.close_epoch, self.tracker.end_epoch

        def recording_close_epoch(accelerator):
            self.recorder.flush()
            self.local_counts.append(self.tracker.epoch_buffers()[2].tolist())
            return close_epoch(accelerator)

        def recording_end_epoch():
            self.global_counts.append(self.tracker.epoch_buffers()[2].tolist())
            return end_epoch()

        self.recorder.close_epoch, self.tracker.end_epoch = recording_close_epoch, recording_end_epoch

    def _prepare_inputs(self, inputs):
        prepared = super()._prepare_inputs(inputs)
        if self.model.training:
            self.batch_digests.append([self.intertrain_sampler.epoch, *pixel_digest(prepared)])
        return prepared


def build_trainer(cli, output_dir, train, evaluation, model_seed=0, callbacks=(), **overrides):
    settings = dict(
        TINY_TRAINING,
        num_train_epochs=cli.epochs,
        per_device_train_batch_size=cli.batch_size,
        per_device_eval_batch_size=64,
        logging_strategy="epoch",
        use_cpu=True,
        bf16=cli.bf16,
        four_way=cli.four_way,
        data_pipeline=cli.data_pipeline,
        cutmix_alpha=cli.cutmix_alpha,
        torch_compile_backend=cli.torch_compile_backend,
        ddp_find_unused_parameters=False,
    )
    args = InterTrainArguments(output_dir=output_dir, **{**settings, **overrides})
    model = make_model(output_stride=16, seed=model_seed)
    return RecordingTrainer(
        model=model, args=args, train_dataset=train, eval_dataset=evaluation, callbacks=list(callbacks)
    )


def dump(trainer, output_dir, run, **extra):
    rank = trainer.args.process_index
    safetensors.numpy.save_file(
        {k: np.ascontiguousarray(v) for k, v in trainer.tracker.state_dict().items()},
        os.path.join(output_dir, f"{run}_rank{rank}.safetensors"),
    )
    logged = [
        {k: v for k, v in entry.items() if k.startswith("intertrain/") and k != "intertrain/epoch_seconds"}
        for entry in trainer.state.log_history
        if "intertrain/items" in entry
    ]
    report = {
        "num_processes": trainer.accelerator.num_processes,
        "history": trainer.intertrain_history,
        "logged": logged,
        "epoch_update_steps": trainer.epoch_update_steps,
        "global_step": trainer.state.global_step,
        "local_counts": trainer.local_counts,
        "global_counts": trainer.global_counts,
        "batch_digests": trainer.batch_digests,
        "eval_loss": trainer.evaluate()["eval_loss"],
        "train_runtime": trainer.train_runtime,
        "backbone_compiled": trainer.backbone_compiled,
        "compiled_graphs": counters["stats"]["unique_graphs"],
        **extra,
    }
    with open(os.path.join(output_dir, f"{run}_rank{rank}.json"), "w") as f:
        json.dump(report, f)


def datasets_of(cli):
    """The train (augmented) and eval datasets of `cli.data_pipeline`: the same generated images either way."""
    if cli.data_pipeline == "device":
        cache = os.path.join(cli.output_dir, "pixels")
        train = make_device_dataset(make_split(cli.num_samples, seed=0), cache, training=True)
        return train, make_device_dataset(make_split(40, seed=3), cache, split_name="test")
    return make_dataset(cli.num_samples, seed=0, training=True), make_dataset(40, seed=3)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_samples", type=int, default=70)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--resume_check", action="store_true")
    parser.add_argument("--four_way", default="none")
    parser.add_argument("--data_pipeline", default="workers", choices=["workers", "device"])
    parser.add_argument("--cutmix_alpha", type=float, default=0.0)
    parser.add_argument("--torch_compile_backend", default=None)
    cli = parser.parse_args()
    os.makedirs(cli.output_dir, exist_ok=True)
    train, evaluation = datasets_of(cli)

    full = build_trainer(cli, os.path.join(cli.output_dir, "full"), train, evaluation)
    if cli.four_way != "none":
        state = full.tracker.state_dict()
        state["reason"][:40] = 1
        state["in_four_way"][:32] = True
        full.tracker.load_state_dict(state)
    started = time.perf_counter()
    full.train()
    full.train_runtime = time.perf_counter() - started
    dump(full, cli.output_dir, "full")
    if not cli.resume_check:
        return

    # Die one step into epoch 2 (the first interpolating epoch), then resume in fresh trainers from that checkpoint.
    step = sum(full.epoch_update_steps[:2]) + 1
    interrupted_dir = os.path.join(cli.output_dir, "interrupted")
    interrupted = build_trainer(cli, interrupted_dir, train, evaluation, callbacks=[DieAfterSave(step)])
    try:
        interrupted.train()
        raise RuntimeError(f"the run was not preempted at step {step}")
    except Preempted:
        interrupted.accelerator.wait_for_everyone()  # relaunched once every process is gone and rank 0 has saved
    rank = interrupted.args.process_index
    if rank == 0:  # what a kill while saving the next step left before checkpoints were atomic
        incomplete = os.path.join(interrupted_dir, f"checkpoint-{step + 1}")
        shutil.copytree(os.path.join(interrupted_dir, f"checkpoint-{step}"), incomplete)
        os.remove(os.path.join(incomplete, TRAINER_STATE_NAME))
    interrupted.accelerator.wait_for_everyone()
    last = resolve_last_checkpoint(interrupted_dir, announce=rank == 0)  # what --resume_from_checkpoint last takes
    resumed = build_trainer(cli, interrupted_dir, train, evaluation, model_seed=1)
    started = time.perf_counter()
    resumed.train(resume_from_checkpoint=last)
    resumed.train_runtime = time.perf_counter() - started
    last_files = {"resumed_from": os.path.basename(last), "checkpoint_files": sorted(os.listdir(last))}
    dump(resumed, cli.output_dir, "resumed", **last_files, output_dir_files=sorted(os.listdir(interrupted_dir)))

    # A misconfigured launch: the second process admits Region 1 only, so the trackers' decisions differ after
    # epoch 1 although their records are summed; the cross-process checksum must stop the run on every process.
    rank = resumed.args.process_index
    regions = "1,3" if rank == 0 else "1"
    diverging_dir = os.path.join(cli.output_dir, "diverging")
    diverging = build_trainer(cli, diverging_dir, train, evaluation, amenability_regions=regions)
    try:
        diverging.train()
        outcome = "trained"
    except RuntimeError as e:
        outcome = str(e)
    with open(os.path.join(cli.output_dir, f"diverging_rank{rank}.json"), "w") as f:
        json.dump({"outcome": outcome, "epochs_closed": len(diverging.intertrain_history)}, f)


if __name__ == "__main__":
    try:
        main()
    finally:
        end_processes()
