"""Render the reference model cards in model_cards/ from finished runs (never write them by hand).

A run of `hf-intertrain train` leaves `intertrain_card.json` (what it measured) beside its model; this script
renders it through the packaged template into model_cards/NAME.md, with the plot of the interpolated fraction
per epoch as model_cards/NAME.png. Given the output_dir of `hf-intertrain compare` (it holds comparison.json),
it renders one card per InterTrain variant, NAME_VARIANT.md, with the speed-up measured against the baseline.

Usage:
    python scripts/make_reference_cards.py OUTPUT_DIR --name cifar10_resnet18_randpatch
    python scripts/make_reference_cards.py COMPARE_OUTPUT_DIR --name cifar10_resnet18
    python scripts/make_reference_cards.py OUTPUT_DIR --name embedded_sample_resnet10t \
        --note "Smoke-scale run: ..." --repo_id your-username/embedded_sample_resnet10t
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hf_intertrain.experiments.compare import COMPARISON_JSON
from hf_intertrain.model_card import comparison_facts, load_facts, write_model_card

MODEL_CARDS = Path(__file__).resolve().parent.parent / "model_cards"


def render(run_dir: Path, name: str, dest: Path, note: str | None, repo_id: str | None, comparison: dict | None) -> Path:
    facts = load_facts(run_dir)
    facts["model_name"] = name
    facts["repo_id"] = repo_id or f"{facts['repo_id'].split('/')[0]}/{name}"
    if comparison:
        facts["comparison"] = comparison
    return write_model_card(facts, dest, card_name=f"{name}.md", plot_name=f"{name}.png", facts_name=None, note=note)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="output_dir of hf-intertrain train, or of hf-intertrain compare")
    parser.add_argument("--name", required=True, help="card name: model_cards/NAME.md (NAME_VARIANT.md for a comparison)")
    parser.add_argument("--note", default=None, help="a line shown at the top of the card, e.g. that the run is a smoke test")
    parser.add_argument("--repo_id", default=None, help="Hub repo id for the loading snippets (default: NAME under the run's namespace)")
    parser.add_argument("--dest", type=Path, default=MODEL_CARDS, help="folder to write into (default: model_cards/)")
    args = parser.parse_args(argv)

    comparison_path = args.output_dir / COMPARISON_JSON
    if comparison_path.is_file():
        comparison = json.loads(comparison_path.read_text())
        variants = [name for name in comparison["runs"] if name != comparison.get("reference", "baseline")]
        for variant in variants:
            path = render(
                args.output_dir / variant,
                f"{args.name}_{variant}",
                args.dest,
                args.note,
                args.repo_id and f"{args.repo_id}_{variant}",
                comparison_facts(comparison, variant),
            )
            print(path)
    else:
        print(render(args.output_dir, args.name, args.dest, args.note, args.repo_id, None))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as e:
        print(f"make_reference_cards: error: {e}", file=sys.stderr)
        sys.exit(2)
