"""Train one timm model with InterTrain: the `hf-intertrain train` entry point, for `accelerate launch`.

    # one process (CPU or one GPU)
    python recipes/train.py --config recipes/cifar10_resnet18_randpatch.yaml
    # several processes, e.g. 4 GPUs with bf16
    accelerate launch --config_file recipes/accelerate/multi_gpu_bf16.yaml recipes/train.py --config recipes/cifar10_resnet18_randpatch.yaml
    # the baseline: the same recipe without interpolation
    accelerate launch recipes/train.py --config recipes/cifar10_resnet18_randpatch.yaml --interpolation none

Every field of the recipe can be overridden on the command line (`python recipes/train.py --help`).
"""

import sys

from hf_intertrain.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
