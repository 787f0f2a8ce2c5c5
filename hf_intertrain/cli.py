"""`hf-intertrain`: command-line parsing only (the work is in `run.py` and `compare.py`).

    hf-intertrain train         [--config recipe.yaml] [--any_field value ...]
    hf-intertrain compare       [--config recipe.yaml] [--variants baseline,intertrain,budget] [--any_field value ...]
    hf-intertrain bench-sampler [--num_samples 1281167] [--epochs 3] [--seed 0]
    hf-intertrain bench-loader  [--data_pipeline device] [--batch_size 64] [--batches 50] [--with_model resnet18]

Arguments go through `HfArgumentParser` (every `TrainingArguments` field is a flag); `--config` loads a YAML
recipe whose keys are the same field names, and flags on the command line override it. Without `--config`
the packaged default recipe runs: the embedded CIFAR-10 sample on CPU in a few minutes (a `--model_name` other than
its own drops its `model_kwargs`, which suit its model only). `bench-sampler` times
InterTrain's per-epoch bookkeeping at dataset scale and `bench-loader` the input path of either data pipeline
(`bench.py`); each prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from .config import DataArguments, InterTrainArguments, ModelArguments
from .launch import end_processes
from .experiments.variants import variants_help

DEFAULT_RECIPE = Path(__file__).parent / "recipes" / "embedded_default.yaml"
COMMANDS = {
    "train": "train one model (InterTrain, or the baseline with --interpolation none)",
    "compare": "train the baseline, InterTrain and budget (the baseline given InterTrain's steps) with the same seeds and "
    "settings; write comparison.json/.png and print the verdict",
    "bench-sampler": "time the tracker's end-of-epoch decision and the next epoch's plan on simulated losses",
    "bench-loader": "time the input path (plan, fetch, augment, normalise on the device) of --data_pipeline",
}


@dataclass
class CompareArguments:
    """What `hf-intertrain compare` runs."""

    variants: str = field(default="baseline,intertrain,budget", metadata={"help": variants_help()})
    seeds: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated seeds, e.g. 0,1,2: every variant runs with each (into output_dir/NAME/seed-S), "
            "and the table shows top-1 as mean ± std. Default: --seed only (into output_dir/NAME)."
        },
    )
    reference_seeds: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated seeds (among --seeds) for the full-length references (baseline, baseline_cutmix, "
            "baseline_mixup), the most expensive runs: e.g. --seeds 0,1,2 --reference_seeds 0. Default: every seed."
        },
    )
    epochs_sweep: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated schedule lengths in epochs, e.g. 12,36,72: the whole comparison runs at each "
            "(into output_dir/epochs-E), then sweep.json/sweep.png show top-1 against length and training time. "
            "Finished runs with the same settings are reused, so the same command completes an interrupted sweep."
        },
    )


def load_recipe(path: str | os.PathLike) -> dict:
    """A YAML recipe as a dict of field values; a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {path}: no such file; pass the path of a YAML recipe (see recipes/)")
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"--config {path} is not valid YAML ({str(e).splitlines()[0]}): fix the file") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"--config {path} must hold a mapping of field names to values")
    return recipe


def parse_args(command: str, argv: list[str]) -> tuple:
    """(ModelArguments, DataArguments, InterTrainArguments[, CompareArguments]) from a recipe and the flags;
    `(BenchSamplerArguments,)` for bench-sampler and `(BenchLoaderArguments,)` for bench-loader, which take flags
    only."""
    if command in ("bench-sampler", "bench-loader"):
        from .experiments.bench import BenchLoaderArguments, BenchSamplerArguments

        bench_type = BenchSamplerArguments if command == "bench-sampler" else BenchLoaderArguments
        parser = HfArgumentParser(bench_type, prog=f"hf-intertrain {command}", description=COMMANDS[command])
        return tuple(parser.parse_args_into_dataclasses(args=argv))
    types = [ModelArguments, DataArguments, InterTrainArguments] + ([CompareArguments] if command == "compare" else [])
    parser = HfArgumentParser(types, prog=f"hf-intertrain {command}", description=COMMANDS[command])
    parser.add_argument(
        "--config",
        default=None,
        help=f"YAML recipe with field values (flags override it). Default: {DEFAULT_RECIPE.name}, the embedded CIFAR-10 sample.",
    )
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--model_name", "--model-name", default=None)
    known, _ = pre.parse_known_args(argv)
    recipe = load_recipe(known.config or DEFAULT_RECIPE)
    if known.config is None:
        recipe = default_recipe_for(recipe, known.model_name)
    valid = {f.name for t in types for f in fields(t) if f.init}
    unknown = sorted(set(recipe) - valid)
    if unknown:
        raise ValueError(f"--config has unknown field(s) {', '.join(unknown)}: check the names against `hf-intertrain {command} --help`")
    parser.set_defaults(**recipe)
    accept_json_strings(parser)
    outputs = tuple(o for o in parser.parse_args_into_dataclasses(args=argv) if not isinstance(o, argparse.Namespace))
    outputs[0].create_kwargs()  # A malformed --model_kwargs fails here, before any data is loaded.
    return outputs


def default_recipe_for(recipe: dict, model_name: str | None) -> dict:
    """The default recipe without its `model_kwargs` when the command line names another model.

    Its `output_stride` is chosen for its own model (a 2x2 grid for resnet10t at 32x32); carried onto another model
    it would silently train a different network from the one named. A `--config` recipe is taken as written.
    """
    if model_name is None or model_name == recipe.get("model_name"):
        return recipe
    return {key: value for key, value in recipe.items() if key != "model_kwargs"}


def accept_json_strings(parser: argparse.ArgumentParser) -> None:
    """Let dict-typed flags (`--model_kwargs`, `--lr_scheduler_kwargs`, ...) take a JSON string.

    `HfArgumentParser` gives a `str | dict | None` field argparse type `dict`, and `dict('{"a": 1}')` fails, so
    such flags could only be set from YAML. As `str` they reach the dataclass as text, which `create_kwargs` (and
    `TrainingArguments.__post_init__` for its own dict fields) parses as JSON with a one-line error.
    """
    for action in parser._actions:
        if action.type is dict:
            action.type = str


def usage() -> str:
    lines = ["usage: hf-intertrain {" + ",".join(COMMANDS) + "} [--config RECIPE.yaml] [--field value ...]", "", "commands:"]
    lines += [f"  {name:<13} {text}" for name, text in COMMANDS.items()]
    lines += ["", "`hf-intertrain COMMAND --help` lists every field (model, data, InterTrain and TrainingArguments)."]
    return "\n".join(lines)


def first_line(error: BaseException) -> str:
    """An error's message in one line (its type's name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(usage(), file=sys.stderr)
        print(f"\nhf-intertrain: error: unknown command {command!r}: use {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        parsed = parse_args(command, rest)
        if command == "train":
            from .experiments.run import run_training

            run_training(*parsed)
        elif command == "bench-sampler":
            from .experiments.bench import run_bench_sampler

            run_bench_sampler(*parsed)
        elif command == "bench-loader":
            from .experiments.bench import run_bench_loader

            run_bench_loader(*parsed)
        else:
            from .experiments.compare import parse_lengths, parse_seeds, parse_variants, run_comparison, run_sweep

            model_args, data_args, training_args, compare_args = parsed
            variants = parse_variants(compare_args.variants)
            seeds = parse_seeds(compare_args.seeds) if compare_args.seeds is not None else None
            reference_seeds = (
                parse_seeds(compare_args.reference_seeds) if compare_args.reference_seeds is not None else None
            )
            if compare_args.epochs_sweep is not None:
                lengths = parse_lengths(compare_args.epochs_sweep)
                run_sweep(
                    model_args, data_args, training_args, variants, lengths, seeds=seeds, reference_seeds=reference_seeds
                )
            else:
                run_comparison(model_args, data_args, training_args, variants, seeds=seeds, reference_seeds=reference_seeds)
    except (ValueError, OSError) as e:
        if os.environ.get("HF_INTERTRAIN_DEBUG"):
            raise
        print(f"hf-intertrain: error: {first_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # a failure inside training (torch, a backend): one line, the traceback on request
        if os.environ.get("HF_INTERTRAIN_DEBUG"):
            raise
        print(
            f"hf-intertrain: error: {type(e).__name__}: {first_line(e)} (set HF_INTERTRAIN_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        end_processes()
    return 0


if __name__ == "__main__":
    sys.exit(main())
