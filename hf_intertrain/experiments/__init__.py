"""Experiment tools on top of the Trainer glue (docs/architecture.md): one run from parsed arguments (`run`), runs side
by side with their variants, verdict and sweep (`compare`, `variants`, `compare_report`, `significance`), and the
benchmarks of the bookkeeping and the input path (`bench`)."""
