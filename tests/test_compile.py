"""`--torch_compile`: the backbone compiled, the rest eager (hf_intertrain/compilation.py, docs/usage.md "Compiling").

The default tests compile with `aot_eager` (seconds); the one inductor test is marked slow. Dynamo's code cache is
shared by every model of a class, so only the recompile test resets it.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy
import logging
import shutil

import pytest
import safetensors.torch
import torch
from accelerate.utils import DynamoBackend, is_compiled_module
from torch._dynamo.utils import counters
from transformers import TrainerCallback

from conftest import TINY_TRAINING, make_dataset, make_device_dataset, make_model, make_split, with_four_way_members
from hf_intertrain import InterTrainArguments, InterTrainTrainer
from hf_intertrain.compilation import compile_features, features_compiled
from test_cli import QUIET, TINY_MODEL, assert_one_line_error, run_cli, write_image_dataset
from test_resume import SaveAtSteps, _assert_same_outcome, _outcome

NUM_SAMPLES = 88  # 5 full batches of 16 and one of 8: the batch size changes every epoch
COMPILED = {"torch_compile": True, "torch_compile_backend": "aot_eager"}
COMPILER_LOGGER = "hf_intertrain.compilation"


@pytest.fixture(scope="module")
def data():
    return make_dataset(NUM_SAMPLES, seed=0, training=True), make_dataset(40, seed=3)


def _trainer(output_dir, data, model_seed=0, callbacks=(), **overrides):
    train, evaluation = data
    settings = dict(TINY_TRAINING, num_train_epochs=3, logging_strategy="epoch", eval_strategy="epoch")
    args = InterTrainArguments(output_dir=str(output_dir), **{**settings, **overrides})
    return InterTrainTrainer(
        model=make_model(output_stride=16, seed=model_seed), args=args, train_dataset=train, eval_dataset=evaluation,
        callbacks=list(callbacks),
    )


def _losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry] + [
        entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry
    ]


def _assert_trains_like(compiled, eager):
    assert compiled.intertrain_history and len(compiled.intertrain_history) == len(eager.intertrain_history)
    for row, eager_row in zip(compiled.intertrain_history, eager.intertrain_history):
        assert row["intertrain/pairs"] == eager_row["intertrain/pairs"]
    assert _losses(compiled) == pytest.approx(_losses(eager), rel=1e-4)
    for p, q in zip(compiled.model.parameters(), eager.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


class GraphCount(TrainerCallback):
    """Dynamo's count of compiled graphs at every epoch's end (after the epoch's evaluation)."""

    def __init__(self):
        self.per_epoch: list[int] = []

    def on_evaluate(self, args, state, control, **kwargs):
        self.per_epoch.append(counters["stats"]["unique_graphs"])


# ----------------------------------------------------------------------------------------------
# Training compiled
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"interpolation": "none"}, id="baseline"),
        pytest.param({"interpolation": "none", "data_selection": "infobatch"}, id="infobatch_peer"),
        pytest.param({"interpolation": "randpatch"}, id="randpatch_pairs"),
        pytest.param({"interpolation": "randpatch", "four_way": "randpatch4"}, id="four_way"),
    ],
)
def test_compiled_run_trains_the_eager_runs_losses_and_weights(tmp_path, data, settings):
    runs = {}
    for name, compiled in (("eager", {}), ("compiled", COMPILED)):
        trainer = _trainer(tmp_path / name, data, **settings, **compiled)
        if "four_way" in settings:
            with_four_way_members(trainer)
        trainer.train()
        runs[name] = trainer
    compiled, eager = runs["compiled"], runs["eager"]
    assert compiled.backbone_compiled and not eager.backbone_compiled
    # accelerate compiled nothing: the model is the plain one, its forward_features the compiled function.
    assert compiled.accelerator.state.dynamo_plugin.backend == DynamoBackend.NO
    assert not is_compiled_module(compiled.model_wrapped)
    if settings["interpolation"] != "none":
        assert compiled.intertrain_history[2]["intertrain/pairs"] > 0
    if "four_way" in settings:
        assert compiled.intertrain_history[0]["intertrain/four_way_composites"] == 8
    _assert_trains_like(compiled, eager)


def test_recompiles_stop_after_the_first_epochs_with_pairs(tmp_path, data):
    torch._dynamo.reset()
    counters.clear()
    graphs = GraphCount()
    trainer = _trainer(tmp_path, data, num_train_epochs=6, callbacks=[graphs], **COMPILED)
    trainer.train()
    pairs = [row["intertrain/pairs"] for row in trainer.intertrain_history]
    assert pairs[:2] == [0, 0] and all(p > 0 for p in pairs[2:])
    # One graph of the full training batch, made at the first step; the evaluation set is smaller than a full
    # evaluation batch and, like every epoch's last batch, runs eager. The epochs with pairs (from 2 on) add none.
    assert graphs.per_epoch == [1] * 6, graphs.per_epoch
    trainer.evaluate()
    assert counters["stats"]["unique_graphs"] == 1


def test_only_full_batches_run_compiled_so_a_partial_batch_never_recompiles(tmp_path):
    torch._dynamo.reset()
    counters.clear()
    model = make_model(output_stride=16)
    assert compile_features(model.timm_model, "aot_eager", full_batches=(8, 20))
    for size in (8, 5, 8, 3, 7, 8):
        model(pixel_values=torch.randn(size, 3, 32, 32)).logits.sum().backward()
    assert counters["stats"]["unique_graphs"] == 1
    model.eval()
    with torch.no_grad():
        for size in (20, 11, 20):
            model(pixel_values=torch.randn(size, 3, 32, 32))
    assert counters["stats"]["unique_graphs"] == 2  # the evaluation batch, without gradients


def test_device_pipeline_trains_compiled(tmp_path_factory, tmp_path):
    cache = tmp_path_factory.mktemp("pixels")
    data = (
        make_device_dataset(make_split(NUM_SAMPLES, seed=0), cache, training=True),
        make_device_dataset(make_split(40, seed=3), cache, split_name="test"),
    )
    runs = [_trainer(tmp_path / name, data, data_pipeline="device", **extra) for name, extra in (("e", {}), ("c", COMPILED))]
    for trainer in runs:
        trainer.train()
    assert runs[1].backbone_compiled
    _assert_trains_like(runs[1], runs[0])


def test_compiled_checkpoint_resumes_to_the_uninterrupted_outcome(tmp_path, data):
    settings = dict(COMPILED, num_train_epochs=4, save_strategy="no")
    reference = _trainer(tmp_path / "reference", data, callbacks=[SaveAtSteps([14])], **settings)
    reference.train()
    assert reference.intertrain_history[2]["intertrain/pairs"] > 0  # step 14 is inside an interpolating epoch
    checkpoint = tmp_path / "checkpoint-14"
    shutil.copytree(tmp_path / "reference" / "checkpoint-14", checkpoint)
    assert not any("_orig_mod" in key for key in safetensors.torch.load_file(str(checkpoint / "model.safetensors")))

    resumed = _trainer(tmp_path / "resumed", data, model_seed=7, **settings)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.backbone_compiled
    _assert_same_outcome(_outcome(resumed), _outcome(reference))


def test_a_copy_of_a_compiled_model_runs_its_own_weights():
    model = make_model(output_stride=16)
    assert compile_features(model.timm_model, "aot_eager", full_batches=(2,))
    assert compile_features(model.timm_model, "aot_eager", full_batches=(2,))  # compiled once: a second trainer keeps it
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    x = torch.randn(2, 3, 32, 32)
    model.eval(), twin.eval()
    with torch.no_grad():
        assert not torch.allclose(model(pixel_values=x).logits, twin(pixel_values=x).logits)
        assert features_compiled(twin.timm_model)
        for rows in (x, x[:1]):  # compiled (a full batch) and eager (a partial one)
            torch.testing.assert_close(
                twin.timm_model.forward_features(rows), type(twin.timm_model).forward_features(twin.timm_model, rows)
            )


def test_an_accelerate_launch_configs_dynamo_backend_is_ignored_with_a_warning(tmp_path, data, caplog, monkeypatch):
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "AOT_EAGER")  # what `accelerate launch --dynamo_backend` sets
    with caplog.at_level(logging.WARNING, logger="hf_intertrain.trainer"):
        trainer = _trainer(tmp_path, data)
    assert any("dynamo_backend aot_eager is ignored: pass --torch_compile true" in r.getMessage() for r in caplog.records)
    assert trainer.accelerator.state.dynamo_plugin.backend == DynamoBackend.NO and not trainer.backbone_compiled


# ----------------------------------------------------------------------------------------------
# Where compile is unavailable
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def onnxrt_unavailable(monkeypatch):
    """onnxrt is a backend name accelerate accepts and torch.compile knows only with onnxruntime installed: removed
    from dynamo's registry here, so the test runs the same whether onnxruntime is installed or not."""
    from torch._dynamo.backends import registry

    registry._lazy_import()
    monkeypatch.delitem(registry._BACKENDS, "onnxrt", raising=False)
    monkeypatch.delitem(registry._COMPILER_FNS, "onnxrt", raising=False)
    assert "onnxrt" not in torch._dynamo.list_backends()


@pytest.fixture
def no_cpp_compiler(monkeypatch):
    """Inductor as on a machine without a C++ compiler: its first compile raises what inductor raises then."""
    import torch._inductor.compile_fx
    from torch._inductor.exc import InvalidCxxCompiler

    def compile_fx(*args, **kwargs):
        raise InvalidCxxCompiler()

    monkeypatch.setattr(torch._inductor.compile_fx, "compile_fx", compile_fx)


def _one_warning(caplog) -> str:
    records = [r for r in caplog.records if r.name == COMPILER_LOGGER]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    assert "\n" not in message
    return message


def test_an_unknown_backend_trains_eager_after_one_warning_line(tmp_path, data, caplog, onnxrt_unavailable):
    with caplog.at_level(logging.WARNING, logger=COMPILER_LOGGER):
        trainer = _trainer(tmp_path, data, num_train_epochs=1, torch_compile_backend="onnxrt")
        trainer.train()
    assert "'onnxrt'" in _one_warning(caplog) and "training eager" in _one_warning(caplog)
    assert not trainer.backbone_compiled and trainer.state.global_step == 6


def test_an_unknown_backend_stops_with_a_one_line_error(tmp_path, data, onnxrt_unavailable):
    with pytest.raises(ValueError) as error:
        _trainer(tmp_path, data, torch_compile_backend="onnxrt", compile_fallback="stop")
    assert "\n" not in str(error.value)
    assert "'onnxrt' cannot compile here (InvalidBackend" in str(error.value)
    assert "--compile_fallback eager" in str(error.value)


def test_a_missing_compiler_falls_back_to_eager_at_the_first_call(tmp_path, data, caplog, no_cpp_compiler):
    eager = _trainer(tmp_path / "eager", data, num_train_epochs=1)
    eager.train()
    with caplog.at_level(logging.WARNING, logger=COMPILER_LOGGER):
        trainer = _trainer(tmp_path / "compiled", data, num_train_epochs=1, torch_compile_backend="inductor")
        assert trainer.backbone_compiled  # until its first call compiles
        trainer.train()
    message = _one_warning(caplog)
    assert "'inductor' cannot compile here (InvalidCxxCompiler: No working C++ compiler" in message
    assert "training eager" in message and "g++" in message
    assert not trainer.backbone_compiled
    _assert_trains_like(trainer, eager)


def test_a_missing_compiler_stops_at_the_first_call_with_a_one_line_error(tmp_path, data, no_cpp_compiler):
    trainer = _trainer(tmp_path, data, num_train_epochs=1, torch_compile_backend="inductor", compile_fallback="stop")
    with pytest.raises(ValueError) as error:
        trainer.train()
    assert "\n" not in str(error.value) and trainer.state.global_step == 0
    assert "InvalidCxxCompiler" in str(error.value) and "aot_eager" in str(error.value)


def test_a_backend_or_mode_that_exists_nowhere_is_refused_when_the_arguments_are_made():
    with pytest.raises(ValueError, match=r"torch_compile_backend='inductr' is not a backend name: use one of .*aot_eager"):
        InterTrainArguments(output_dir="unused", torch_compile_backend="inductr")
    with pytest.raises(ValueError, match="compile_fallback='never' is not supported: use one of eager, stop"):
        InterTrainArguments(output_dir="unused", compile_fallback="never")
    with pytest.raises(ValueError, match=r"torch_compile_mode='max-autotune' is a mode of the inductor backend, not of 'aot_eager'"):
        InterTrainArguments(output_dir="unused", torch_compile_backend="aot_eager", torch_compile_mode="max-autotune")
    with pytest.raises(ValueError, match=r"torch_compile_mode='fastest' is not an inductor mode: use one of .*max-autotune"):
        InterTrainArguments(output_dir="unused", torch_compile_mode="fastest")
    args = InterTrainArguments(output_dir="unused", torch_compile_mode="max-autotune")
    assert args.torch_compile and args.torch_compile_backend == "inductor"  # a mode alone turns compile on


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return write_image_dataset(tmp_path_factory.mktemp("tiny") / "data")


def test_cli_trains_compiled_and_exits_0(capfd, tmp_path, tiny_dataset):
    argv = ["train", "--dataset_name", str(tiny_dataset), *TINY_MODEL, "--num_train_epochs", "3"]
    argv += ["--per_device_train_batch_size", "16", "--output_dir", str(tmp_path), *QUIET]
    code, _, err = run_cli(capfd, [*argv, "--torch_compile", "true", "--torch_compile_backend", "aot_eager"])
    assert code == 0, err
    assert (tmp_path / "model.safetensors").is_file()


def test_cli_stops_with_one_line_where_compile_is_unavailable(capfd, tmp_path, tiny_dataset, onnxrt_unavailable):
    argv = ["train", "--dataset_name", str(tiny_dataset), *TINY_MODEL, "--output_dir", str(tmp_path), *QUIET]
    code, _, err = run_cli(capfd, [*argv, "--torch_compile_backend", "onnxrt", "--compile_fallback", "stop"])
    assert_one_line_error(code, err, "'onnxrt' cannot compile here", "--compile_fallback eager")
    code, _, err = run_cli(capfd, [*argv, "--torch_compile_backend", "inductr"])
    assert_one_line_error(code, err, "'inductr' is not a backend name")


# ----------------------------------------------------------------------------------------------
# Inductor (slow: minutes on a small CPU)
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_inductor_trains_pairs_like_eager_without_recompiling_per_batch(tmp_path, data):
    torch._dynamo.reset()
    counters.clear()
    graphs = GraphCount()
    eager = _trainer(tmp_path / "eager", data, num_train_epochs=4)
    eager.train()
    compiled = _trainer(tmp_path / "compiled", data, num_train_epochs=4, callbacks=[graphs], torch_compile=True)
    compiled.train()
    assert compiled.args.torch_compile_backend == "inductor" and compiled.backbone_compiled
    assert graphs.per_epoch == [1] * 4, graphs.per_epoch  # the full training batch; evaluation is a partial batch
    assert [row["intertrain/pairs"] > 0 for row in compiled.intertrain_history] == [False, False, True, True]
    # Inductor rounds differently; once a sample's loss crosses a threshold the plans differ, so only the epochs
    # before interpolation are compared closely.
    losses, eager_losses = _losses(compiled), _losses(eager)
    assert losses[:2] == pytest.approx(eager_losses[:2], rel=1e-3)
    assert losses == pytest.approx(eager_losses, rel=0.05)
