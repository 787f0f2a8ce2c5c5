"""Write the CIFAR-10 sample bundled in the package (hf_intertrain/sample_data/cifar10).

It holds the first 5000 train rows and the first 1000 test rows of a local copy of CIFAR-10 in
the Hub layout (parquet under plain_text/ with `img`: Image, `label`: ClassLabel). The source rows
are stored shuffled, so these prefixes are class-balanced. Image bytes are copied as they are
(no re-encoding), and the parquet schema keeps the `datasets` feature metadata, so
`datasets.load_dataset(<sample folder>)` gives the same features as the full dataset. The README's
`dataset_info` (split sizes) also keeps the sample's `datasets` cache apart from that of a full
copy in a folder of the same name, which would otherwise share it.

Usage (the default source is ../shared/data/cifar10, next to the repository):
    python scripts/make_cifar10_sample.py [--source PATH/TO/cifar10]
"""

import argparse
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "cifar10"
DEFAULT_OUTPUT = REPO / "hf_intertrain" / "sample_data" / "cifar10"
SPLIT_ROWS = {"train": 5000, "test": 1000}
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

README = """---
pretty_name: CIFAR-10 sample (JPEG)
task_categories: [image-classification]
size_categories: [1K<n<10K]
configs:
- config_name: plain_text
  data_files:
  - split: train
    path: plain_text/train-00000-of-00001.parquet
  - split: test
    path: plain_text/test-00000-of-00001.parquet
dataset_info:
  config_name: plain_text
  features:
  - name: img
    dtype: image
  - name: label
    dtype:
      class_label:
        names:
{class_names}
  splits:
  - name: train
    num_bytes: {train_bytes}
    num_examples: {train}
  - name: test
    num_bytes: {test_bytes}
    num_examples: {test}
---
# CIFAR-10 sample, JPEG-encoded

The first {train} train rows and the first {test} test rows of a JPEG-encoded, shuffled
(seed 0) copy of CIFAR-10 (Krizhevsky, 2009): 32x32 colour images in 10 classes. Columns as on
the Hub (`img`: `datasets.Image`, `label`: `ClassLabel` with the names airplane, automobile,
bird, cat, deer, dog, frog, horse, ship, truck). The rows were shuffled once before the prefixes
were taken, so both splits are class-balanced to within a few percent.

Bundled with hf_intertrain for tests and offline smoke runs: `datasets.load_dataset(<this
folder>)`. Written by `scripts/make_cifar10_sample.py`, which copies the image bytes unchanged.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=DEFAULT_SOURCE,
        help="CIFAR-10 folder in the Hub parquet layout (default: ../shared/data/cifar10 next to the repository).",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Folder to write the sample to.")
    args = parser.parse_args()
    if not (args.source / "plain_text").is_dir():
        parser.error(f"--source {args.source}: no plain_text/ folder of CIFAR-10 parquet files there; pass the path of one")

    num_bytes = {}
    for split, rows in SPLIT_ROWS.items():
        name = f"plain_text/{split}-00000-of-00001.parquet"
        table = pq.read_table(args.source / name)
        if table.num_rows < rows:
            raise ValueError(
                f"{args.source / name} has {table.num_rows} rows, fewer than the {rows} wanted; pass a full CIFAR-10 "
                "copy as --source"
            )
        sample = table.slice(0, rows)
        target = args.output / name
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(sample, target)
        num_bytes[f"{split}_bytes"] = sample.nbytes
        counts = Counter(sample.column("label").to_pylist())
        size_mb = target.stat().st_size / 1e6
        print(f"{split}: {rows} rows -> {target} ({size_mb:.2f} MB), per-class counts {dict(sorted(counts.items()))}")
    class_names = "\n".join(f"          '{index}': {name}" for index, name in enumerate(CLASS_NAMES))
    (args.output / "README.md").write_text(README.format(class_names=class_names, **SPLIT_ROWS, **num_bytes))


if __name__ == "__main__":
    main()
