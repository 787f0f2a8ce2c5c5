"""InterTrain's method, free of the Trainer and of the data layer (docs/architecture.md).

Tensor operators (`operators`), split propagation (`split`), a batch's composition and loss (`composition`), timm's
Mixup / CutMix on the singles (`mixing`), the amenability tracker and its thresholds (`tracker`, `thresholds`), the
peer methods' subsets (`selection`), the epoch plan (`sampler`), the records' way to the tracker (`records`) and the
learning-rate schedule over shrinking epochs (`schedule`). These modules import numpy, torch and timm, and nothing
from `hf_intertrain` outside this package but `constants`.
"""
