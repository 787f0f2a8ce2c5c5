"""`--torch_compile` for InterTrain: the backbone's `forward_features` compiled, everything after it eager.

The Trainer's own `--torch_compile` has accelerate compile the whole model. InterTrain cannot use that graph: split
propagation swaps the timm model's `forward_head` for a fresh closure on every call (`method/split.py`), which a
whole-model graph sees as a changed attribute (a guard failure, so a recompile every batch), and the head and the loss
see a new number of constituent rows every batch. What `forward_features` sees never changes with the plan: one
`[B, 3, H, W]` input per item, singles, pairs and composites alike. So the trainer hands accelerate a dynamo plugin
that compiles nothing and `compile_features` compiles `forward_features` once, in place; the head, split propagation
and the loss run eager (docs/method.md, "Choices where the paper is silent"; docs/usage.md, "Compiling").
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch
from accelerate.utils import DynamoBackend
from torch import Tensor, nn

logger = logging.getLogger(__name__)

BACKEND_NAMES: tuple[str, ...] = tuple(b.value.lower() for b in DynamoBackend if b is not DynamoBackend.NO)
"""The `--torch_compile_backend` names transformers' Trainer can hand on to accelerate (`TorchDynamoPlugin` takes only
these)."""

COMPILE_FIX = (
    "install what the backend needs (inductor: a C++ compiler such as g++ on CPU, Triton on GPU) or pick another "
    "--torch_compile_backend (aot_eager needs neither)"
)


def check_compile_settings(backend: str | None, mode: str | None) -> None:
    """Refuse `--torch_compile_backend` / `--torch_compile_mode` values that are wrong on any machine, when the
    arguments are made.

    transformers' Trainer builds accelerate's `TorchDynamoPlugin` from the backend name before anything else, so a name
    it does not take could not even fall back to eager: it is a typo, and stops the run whatever `compile_fallback`
    says. A mode is inductor's (`torch._inductor.list_mode_options`); another backend would reject it only at its
    first compile, as if it were unavailable. A real backend this machine cannot run (its package or compiler missing)
    is `compile_features`' case.
    """
    if backend is not None and str(backend).lower() not in BACKEND_NAMES:
        raise ValueError(
            f"torch_compile_backend={backend!r} is not a backend name: use one of {', '.join(BACKEND_NAMES)} "
            "(inductor by default), or --torch_compile false"
        )
    if mode is None or mode == "default":
        return
    if backend is not None and str(backend).lower() != "inductor":
        raise ValueError(
            f"torch_compile_mode={mode!r} is a mode of the inductor backend, not of {backend!r}: drop "
            "--torch_compile_mode or use --torch_compile_backend inductor"
        )
    import torch._inductor

    modes = list(torch._inductor.list_mode_options())
    if mode not in modes:
        raise ValueError(f"torch_compile_mode={mode!r} is not an inductor mode: use one of {', '.join(modes)}")


def compile_features(
    timm_model: nn.Module,
    backend: str,
    mode: str | None = None,
    fallback: str = "eager",
    full_batches: tuple[int, ...] = (),
) -> bool:
    """Compile `timm_model.forward_features` in place with `torch.compile(backend=..., mode=..., dynamic=False)`;
    True when it now runs compiled.

    Only the backbone is compiled (see the module docstring), and only for full batches: a `[B, 3, H, W]` input with
    B in `full_batches` (the training and evaluation batch sizes) runs the compiled graph of that size, any other B
    (an epoch's last, partial batch) runs eager. Each graph has a fixed shape, so a run makes one graph per full batch
    size and grad mode (two: training and evaluation), all at its first batches, and never recompiles: automatic
    dynamic shapes would also absorb the partial batches, but inductor's CPU code then guards on batch-size ranges
    and recompiles whenever a later epoch's last batch falls outside them (measured: 6 graphs in 12 epochs). A partial
    batch is one of an epoch's batches, so running it eager costs little. Without `full_batches` every size compiles,
    dynamically. `forward_head`, split propagation and the loss stay eager, outside the compiled region, so the
    per-call head swap of split propagation triggers no recompile. The compiled function is the class's
    `forward_features` bound to the instance, so a copy of the model (`copy.deepcopy`) runs its own weights.

    Where the backend cannot compile here, `fallback` decides: `"eager"` logs one warning line and leaves (or puts
    back) the eager `forward_features`; `"stop"` raises a one-line ValueError naming the fix. An unknown backend fails
    at `torch.compile` (`InvalidBackend`, e.g. onnxrt without onnxruntime); a missing compiler or package fails at the
    first call that compiles (`BackendCompilerFailed`, e.g. inductor without a C++ compiler), which then falls back
    or stops; no training step has run in that call.
    """
    if features_compiled(timm_model):
        return True
    own = timm_model.__dict__.get("forward_features")
    try:
        compiled = torch.compile(
            own if own is not None else type(timm_model).forward_features,
            backend=backend, mode=mode, dynamic=False if full_batches else None,
        )
    except torch._dynamo.exc.InvalidBackend as error:
        _unavailable(backend, error, fallback)
        return False

    def forward_features(module: nn.Module, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        if full_batches and x.shape[0] not in full_batches:
            return own(x, *args, **kwargs) if own is not None else type(module).forward_features(module, x, *args, **kwargs)
        try:
            return compiled(x, *args, **kwargs) if own is not None else compiled(module, x, *args, **kwargs)
        except torch._dynamo.exc.BackendCompilerFailed as error:
            _unavailable(backend, error, fallback)
        if own is None:
            del module.forward_features
        else:
            module.forward_features = own
        return module.forward_features(x, *args, **kwargs)

    forward_features.compiled_by_intertrain = True
    timm_model.forward_features = types.MethodType(forward_features, timm_model)
    return True


def features_compiled(timm_model: nn.Module) -> bool:
    """Whether `compile_features` compiled this model's `forward_features` (and it has not fallen back to eager)."""
    return getattr(timm_model.__dict__.get("forward_features"), "compiled_by_intertrain", False)


def _unavailable(backend: str, error: Exception, fallback: str) -> None:
    """One warning line (`fallback="eager"`) or a one-line ValueError (`"stop"`) saying why compile is unavailable."""
    inner = getattr(error, "inner_exception", None) or error
    lines = str(inner).strip().splitlines()
    reason = f"{type(inner).__name__}: {lines[0] if lines else ''}".strip(": ")
    if fallback == "stop":
        raise ValueError(
            f"torch.compile with backend {backend!r} cannot compile here ({reason}): {COMPILE_FIX}; or train eager "
            "with --compile_fallback eager (or --torch_compile false)"
        ) from None
    logger.warning(
        "hf-intertrain: torch.compile with backend %r cannot compile here (%s): training eager (--compile_fallback "
        "eager); to compile, %s",
        backend,
        reason,
        COMPILE_FIX,
    )
