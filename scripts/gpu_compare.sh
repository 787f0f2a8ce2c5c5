#!/usr/bin/env bash
# Run `hf-intertrain compare` on a GPU machine whose Python already holds torch/transformers/accelerate but may lack
# datasets/evaluate, and copy the small result files (comparison.json/png, each variant's intertrain_card.json and
# model card, the log) into RESULTS_DIR, ready for scripts/make_reference_cards.py.
#
#   bash scripts/gpu_compare.sh RESULTS_DIR --config recipes/cifar10_resnet18_randpatch.yaml \
#       --dataset_name PATH/TO/cifar10 --variants baseline,randpatch --bf16 true
#
# Wheels found in .whl/ (or $INTERTRAIN_WHEELS) (e.g. datasets, evaluate, dill, multiprocess, timm, fetched with `pip download`) are
# installed first, then this project, all into a throw-away --target folder: nothing is downloaded. The installed
# console script runs (not `python3 -m`, which would import the checkout, where model_cards/ is not a subpackage).
set -euo pipefail
results=${1:?usage: gpu_compare.sh RESULTS_DIR [hf-intertrain compare arguments...]}
shift
site=${INTERTRAIN_SITE:-/tmp/intertrain_site}
work=${INTERTRAIN_WORK:-/tmp/intertrain_compare}
mkdir -p "$results"
wheel_dir=${INTERTRAIN_WHEELS:-.whl}
wheels=()
[ -d "$wheel_dir" ] && wheels=("$wheel_dir"/*.whl)
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
    --target "$site" "${wheels[@]}" .
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
python3 - <<'EOF' | tee "$results/versions.txt"
import importlib, torch
print("gpu:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for name in ("torch", "transformers", "accelerate", "timm", "datasets", "evaluate", "pyarrow", "huggingface_hub"):
    print(name, importlib.import_module(name).__version__)
EOF
"$site/bin/hf-intertrain" compare --output_dir "$work" "$@" 2>&1 | tee "$results/compare.log"
cp "$work"/comparison.json "$work"/comparison.png "$results"/
for run in "$work"/*/; do
    name=$(basename "$run")
    mkdir -p "$results/$name"
    for f in intertrain_card.json; do
        [ -f "$run/$f" ] && cp "$run/$f" "$results/$name/"
    done
done
