import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math

import pytest
import torch
from transformers import Trainer, TrainingArguments

from conftest import TINY_TRAINING, make_dataset, make_device_dataset, make_model, make_split
from hf_intertrain import InterTrainArguments, InterTrainTrainer
from hf_intertrain.data import InterTrainCollator

COMMON = TINY_TRAINING


def _args(tmp_path, **overrides):
    return InterTrainArguments(output_dir=str(tmp_path), **{**COMMON, "num_train_epochs": 6, **overrides})


def _train_losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_interpolation_none_matches_plain_trainer_loss_curve(tmp_path, tiny_train_dataset):
    settings = {**COMMON, "num_train_epochs": 3, "logging_strategy": "steps", "logging_steps": 1}
    plain = Trainer(
        model=make_model(seed=1),
        args=TrainingArguments(output_dir=str(tmp_path / "plain"), **settings),
        train_dataset=tiny_train_dataset,
        data_collator=InterTrainCollator(),
    )
    plain.train()
    ours = InterTrainTrainer(
        model=make_model(seed=1),
        args=InterTrainArguments(output_dir=str(tmp_path / "ours"), interpolation="none", **settings),
        train_dataset=tiny_train_dataset,
    )
    ours.train()
    plain_losses, our_losses = _train_losses(plain), _train_losses(ours)
    assert len(plain_losses) == len(our_losses) == 3 * math.ceil(96 / 16)
    assert our_losses == pytest.approx(plain_losses, rel=1e-5)
    for p, q in zip(plain.model.parameters(), ours.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "interpolation, split",
    [("randpatch", True), ("randpatch", False), ("linavg", False)],
)
def test_epochs_shrink_and_lr_schedule_ends_at_the_last_step(tmp_path, tiny_train_dataset, interpolation, split):
    model = make_model(output_stride=16)
    initial = [p.detach().clone() for p in model.parameters()]
    trainer = InterTrainTrainer(
        model=model,
        args=_args(tmp_path, interpolation=interpolation, split_propagation=split),
        train_dataset=tiny_train_dataset,
    )
    trainer.train()
    history = trainer.intertrain_history
    assert [row["epoch"] for row in history] == list(range(6))
    for row in history:
        assert row["intertrain/items"] + row["intertrain/pairs"] == 96
        assert row["intertrain/interpolated_fraction"] == pytest.approx(2 * row["intertrain/pairs"] / 96)
    assert history[0]["intertrain/pairs"] == history[1]["intertrain/pairs"] == 0
    assert sum(row["intertrain/pairs"] for row in history[2:]) > 0
    # every planned batch trained once: steps follow the real epoch lengths, and every sample was recorded
    expected_steps = sum(math.ceil(row["intertrain/items"] / 16) for row in history)
    assert trainer.state.global_step == expected_steps < 6 * math.ceil(96 / 16)
    assert trainer.state.epoch == pytest.approx(6.0)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    logged = [e for e in trainer.state.log_history if "intertrain/interpolated_fraction" in e]
    assert len(logged) == 6
    assert all(key in logged[0] for key in ("intertrain/region_1", "intertrain/region_2", "intertrain/region_3", "intertrain/epoch_seconds"))
    assert any(not torch.equal(a, b) for a, b in zip(initial, trainer.model.parameters()))


def test_every_sample_is_recorded_once_per_epoch(tmp_path, tiny_train_dataset):
    trainer = InterTrainTrainer(
        model=make_model(output_stride=16), args=_args(tmp_path, num_train_epochs=4), train_dataset=tiny_train_dataset
    )
    recorded = []
    original_end_epoch = trainer.tracker.end_epoch

    def counting_end_epoch():
        _, _, count = trainer.tracker.epoch_buffers()
        recorded.append(count.copy())
        return original_end_epoch()

    trainer.tracker.end_epoch = counting_end_epoch
    trainer.train()
    assert len(recorded) == 4
    for count in recorded:
        assert (count == 1).all()


def test_token_pooled_vit_is_refused_when_the_trainer_is_built(tmp_path, tiny_train_dataset):
    with pytest.raises(ValueError, match="global_pool"):
        InterTrainTrainer(
            model=make_model("test_vit", img_size=32, patch_size=8), args=_args(tmp_path), train_dataset=tiny_train_dataset
        )


def test_one_cell_feature_grid_is_refused_when_the_trainer_is_built(tmp_path, tiny_train_dataset):
    with pytest.raises(ValueError, match="output.stride"):
        InterTrainTrainer(model=make_model(), args=_args(tmp_path), train_dataset=tiny_train_dataset)


def test_linavg_needs_no_feature_grid(tmp_path, tiny_train_dataset):
    trainer = InterTrainTrainer(
        model=make_model(), args=_args(tmp_path, interpolation="linavg", num_train_epochs=1), train_dataset=tiny_train_dataset
    )
    assert trainer.feature_grid is None


def test_a_model_that_is_not_a_timm_model_is_refused_with_the_fix(tmp_path, tiny_train_dataset):
    with pytest.raises(ValueError, match="Linear is not a timm model .*TimmWrapperForImageClassification"):
        InterTrainTrainer(
            model=torch.nn.Linear(3, 4), args=_args(tmp_path, interpolation="none"), train_dataset=tiny_train_dataset
        )


def _epochs_logged(trainer, key):
    """The epochs (1, 2, ...) at whose end an entry with `key` was logged, in order."""
    return [round(e["epoch"]) for e in trainer.state.log_history if key in e and "train_runtime" not in e]


@pytest.mark.parametrize("logging", [{"logging_strategy": "epoch"}, {"logging_strategy": "steps", "logging_steps": 4}])
def test_every_epoch_logs_the_trainers_loss_and_the_intertrain_statistics(tmp_path, logging):
    trainer = InterTrainTrainer(
        model=make_model(output_stride=16),
        args=_args(tmp_path, num_train_epochs=3, **logging),
        train_dataset=make_dataset(48),
    )
    trainer.train()
    assert _epochs_logged(trainer, "intertrain/items") == [1, 2, 3]  # once per epoch, whatever the strategy
    if logging["logging_strategy"] == "epoch":
        for key in ("loss", "grad_norm", "learning_rate"):
            assert _epochs_logged(trainer, key) == [1, 2, 3], key
    else:
        assert len(_epochs_logged(trainer, "loss")) == trainer.state.global_step // 4


def test_fractional_epochs_are_refused(tmp_path, tiny_train_dataset):
    with pytest.raises(ValueError, match="whole number"):
        InterTrainTrainer(model=make_model(), args=_args(tmp_path, num_train_epochs=2.5, interpolation="linavg"), train_dataset=tiny_train_dataset)


def test_plain_training_arguments_are_refused(tmp_path, tiny_train_dataset):
    with pytest.raises(ValueError, match="InterTrainArguments"):
        InterTrainTrainer(model=make_model(), args=TrainingArguments(output_dir=str(tmp_path)), train_dataset=tiny_train_dataset)


def test_evaluation_reports_top1_through_the_packaged_metric(tmp_path, tiny_train_dataset):
    from hf_intertrain.metrics import build_compute_metrics

    trainer = InterTrainTrainer(
        model=make_model(output_stride=16),
        args=_args(tmp_path, num_train_epochs=2, eval_strategy="epoch"),
        train_dataset=tiny_train_dataset,
        eval_dataset=make_dataset(40, seed=3),
        compute_metrics=build_compute_metrics(),
    )
    trainer.train()
    evals = [e for e in trainer.state.log_history if "eval_top1" in e]
    assert [e["epoch"] for e in evals] == [1.0, 2.0]
    assert all(0.0 <= e["eval_top1"] <= 1.0 for e in evals)


@pytest.mark.parametrize("four_way", ["randpatch4", "mosaic4"])
def test_four_way_composites_train_every_sample_once_in_fewer_items(tmp_path, tiny_train_dataset, four_way):
    trainer = InterTrainTrainer(
        model=make_model(output_stride=16),
        args=_args(tmp_path, four_way=four_way, num_train_epochs=2),
        train_dataset=tiny_train_dataset,
    )
    state = trainer.tracker.state_dict()
    state["reason"][:40] = 1  # S_int: samples 0-39, of which 0-31 marked for 8 composites of 4, 32-39 for 4 pairs.
    state["in_four_way"][:32] = True
    trainer.tracker.load_state_dict(state)
    counts, end_epoch = [], trainer.tracker.end_epoch
    trainer.tracker.end_epoch = lambda: (counts.append(trainer.tracker.epoch_buffers()[2].copy()), end_epoch())[1]

    trainer.train()

    first = trainer.intertrain_history[0]
    assert (first["intertrain/four_way_composites"], first["intertrain/pairs"], first["intertrain/items"]) == (8, 4, 96 - 4 - 24)
    assert first["intertrain/interpolated_fraction"] == pytest.approx(40 / 96)
    assert first["intertrain/constituents_per_item"] == pytest.approx(96 / 68)
    assert [c.tolist() for c in counts] == [[1] * 96, [1] * 96]  # Every constituent recorded once per epoch.
    assert trainer.state.global_step == math.ceil(68 / 16) + math.ceil(96 / 16)
    assert all(math.isfinite(loss) for loss in _train_losses(trainer))


@pytest.mark.parametrize(
    "settings",
    [
        {"interpolation": "linavg"},
        {"split_propagation": False},
        {"selective_interpolation": False},
        {"amenable_action": "skip"},
    ],
)
def test_four_way_refuses_settings_that_cannot_tell_its_constituents_apart(tmp_path, settings):
    with pytest.raises(ValueError, match="needs interpolation randpatch, split_propagation"):
        _args(tmp_path, four_way="randpatch4", **settings)
    with pytest.raises(ValueError, match="four_way='mosaic8' is not supported"):
        _args(tmp_path, four_way="mosaic8")


def _epoch_items(trainer):
    return [int(row["intertrain/items"]) for row in trainer.intertrain_history]


def test_random_subset_trains_the_given_samples_per_epoch(tmp_path, tiny_train_dataset):
    sizes = [96, 60, 40]
    args = _args(tmp_path, interpolation="none", data_selection="random_subset", random_subset_sizes="96,60,40", num_train_epochs=3)
    trainer = InterTrainTrainer(model=make_model(), args=args, train_dataset=tiny_train_dataset)
    trainer.train()
    assert _epoch_items(trainer) == sizes
    assert [int(row["intertrain/skipped"]) for row in trainer.intertrain_history] == [0, 36, 56]
    assert trainer.state.global_step == sum(math.ceil(size / 16) for size in sizes)


def test_random_subset_sizes_must_cover_every_epoch_and_fit_the_dataset(tmp_path, tiny_train_dataset):
    with pytest.raises(ValueError, match="gives 2 epochs but the run has 3"):  # refused with the arguments
        _args(tmp_path, interpolation="none", data_selection="random_subset", random_subset_sizes="96,60", num_train_epochs=3)
    args = _args(tmp_path, interpolation="none", data_selection="random_subset", random_subset_sizes="96,97", num_train_epochs=2)
    with pytest.raises(ValueError, match=r"random_subset_sizes must lie in 1..96 \(the training samples\), got \[96, 97\]"):
        InterTrainTrainer(model=make_model(), args=args, train_dataset=tiny_train_dataset)


def test_infobatch_prunes_after_the_first_losses_and_trains_everything_at_the_end(tmp_path, tiny_train_dataset):
    args = _args(tmp_path, interpolation="none", data_selection="infobatch", num_train_epochs=4,
                 infobatch_full_data_fraction=0.25, dataloader_drop_last=True)  # no batch of one for BatchNorm
    trainer = InterTrainTrainer(model=make_model(), args=args, train_dataset=tiny_train_dataset)
    weights_seen = []
    original = trainer._loss_weight

    def recording(inputs):
        weight = original(inputs)
        weights_seen.append(None if weight is None else sorted(set(weight.tolist())))
        return weight

    trainer._loss_weight = recording
    trainer.train()
    items = _epoch_items(trainer)
    assert items[0] == 96 and items[3] == 96  # no losses known yet; the final 25% of epochs train everything
    assert items[1] < 96 and items[2] < 96
    assert any(weights and 2.0 in weights for weights in weights_seen)  # kept well-learned samples weigh 1 / (1 - 0.5)
    assert all(weights is None or set(weights) <= {1.0, 2.0} for weights in weights_seen)


def test_interpolation_stops_in_the_final_fraction_of_the_epochs(tmp_path, tiny_train_dataset):
    args = _args(tmp_path, num_train_epochs=5, interpolation_off_fraction=0.2)
    trainer = InterTrainTrainer(model=make_model(output_stride=16), args=args, train_dataset=tiny_train_dataset)
    trainer.train()
    history = trainer.intertrain_history
    assert history[3]["intertrain/pairs"] > 0  # 3 < 0.8 * 5
    assert history[4]["intertrain/pairs"] == 0 and _epoch_items(trainer)[4] == 96
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-9)  # the schedule still ends


def test_interpolation_off_fraction_with_max_steps_is_refused_with_the_arguments(tmp_path):
    with pytest.raises(ValueError, match="set num_train_epochs instead of max_steps"):
        _args(tmp_path, max_steps=8, interpolation_off_fraction=0.25)
    assert _args(tmp_path, max_steps=8, interpolation="none", interpolation_off_fraction=0.25).max_steps == 8


def test_budget_run_stopped_mid_epoch_counts_only_the_items_it_trained(tmp_path, tiny_train_dataset):
    args = _args(tmp_path, interpolation="none", max_steps=8)  # 6 steps per epoch: the second epoch stops after 2
    trainer = InterTrainTrainer(model=make_model(), args=args, train_dataset=tiny_train_dataset)
    trainer.train()
    assert trainer.state.global_step == 8
    assert _epoch_items(trainer) == [96, 32]
    assert trainer.intertrain_history[1]["intertrain/skipped"] == 64


def test_composite_loss_weight_reaches_every_pair_of_the_batch_loss(tmp_path, tiny_train_dataset, monkeypatch):
    import hf_intertrain.trainer as trainer_module

    seen = []
    original = trainer_module.constituent_losses

    def recording(logits, inputs, shares, loss_weight=None, *rest):
        pairs = shares[1].shape[0] if len(shares) > 1 else 0
        seen.append((pairs, None if loss_weight is None else loss_weight.tolist()))
        return original(logits, inputs, shares, loss_weight, *rest)

    monkeypatch.setattr(trainer_module, "constituent_losses", recording)
    args = _args(tmp_path, num_train_epochs=4, composite_loss_weight=2.0)
    InterTrainTrainer(model=make_model(output_stride=16), args=args, train_dataset=tiny_train_dataset).train()
    with_pairs = [(pairs, weight) for pairs, weight in seen if pairs]
    assert with_pairs and all(weight is None for pairs, weight in seen if not pairs)
    for pairs, weight in with_pairs:
        assert weight[:pairs] == [2.0] * pairs and weight[pairs:] == [1.0] * (len(weight) - pairs)


@pytest.mark.parametrize("interpolation", ["none", "randpatch"])
def test_mixing_trains_every_single_on_soft_targets_odd_batches_too_and_records_own_label_losses(
    tmp_path, monkeypatch, interpolation
):
    import hf_intertrain.trainer as trainer_module

    seen = []
    original = trainer_module.constituent_losses

    def recording(logits, inputs, shares, loss_weight=None, single_targets=None, label_smoothing=0.0):
        loss, records = original(logits, inputs, shares, loss_weight, single_targets, label_smoothing)
        own_label = torch.nn.functional.cross_entropy(logits[0].float(), inputs["labels"], reduction="none")
        torch.testing.assert_close(records[0][1], own_label)
        singles = logits[0].shape[0] - (shares[1].shape[0] if len(shares) > 1 else 0)
        seen.append((singles, single_targets, label_smoothing))
        return loss, records

    monkeypatch.setattr(trainer_module, "constituent_losses", recording)
    dataset = make_dataset(37, seed=0)  # batches of 16, 16 and 5 items: an odd batch every epoch
    args = _args(tmp_path, interpolation=interpolation, num_train_epochs=4, cutmix_alpha=1.0, mixup_alpha=1.0,
                 label_smoothing_factor=0.1)
    trainer = InterTrainTrainer(model=make_model(output_stride=16), args=args, train_dataset=dataset)
    trainer.train()
    assert all(targets.shape == (singles, 4) and smoothing == 0.1 for singles, targets, smoothing in seen)
    assert any(singles % 2 for singles, _, _ in seen)
    mixed_rows = torch.cat([targets for _, targets, _ in seen]).max(-1).values < 0.9 + 0.1 / 4 - 1e-6
    assert mixed_rows.any()  # mixed, not only smoothed
    for row in trainer.intertrain_history:
        assert row["intertrain/items"] + row["intertrain/pairs"] == 37
    if interpolation == "randpatch":
        assert trainer.intertrain_history[-1]["intertrain/pairs"] > 0


# ----------------------------------------------------------------------------------------------
# The device data pipeline (data/device.py)
# ----------------------------------------------------------------------------------------------


def _device_datasets(cache_root, training):
    """The device counterparts of `tiny_train_dataset` and `make_dataset(40, seed=3)`: the same generated images."""
    train = make_device_dataset(make_split(96, seed=0), cache_root, training=training)
    return train, make_device_dataset(make_split(40, seed=3), cache_root, split_name="test")


def test_device_pipeline_trains_and_evaluates_with_the_plan_of_the_workers_run(tmp_path, tiny_train_dataset):
    from hf_intertrain.metrics import build_compute_metrics

    plans, losses, flos = {}, {}, {}
    for pipeline in ("workers", "device"):
        if pipeline == "device":
            train, evaluation = _device_datasets(tmp_path / "cache", training=False)
        else:
            train, evaluation = tiny_train_dataset, make_dataset(40, seed=3)
        trainer = InterTrainTrainer(
            model=make_model(output_stride=16),
            args=_args(tmp_path / pipeline, num_train_epochs=3, eval_strategy="epoch"),
            train_dataset=train,
            eval_dataset=evaluation,
            compute_metrics=build_compute_metrics(),
        )
        trainer.train()
        assert trainer.data_pipeline == pipeline and trainer.args.data_pipeline == "auto"  # read from the dataset
        plans[pipeline] = [(row["intertrain/items"], row["intertrain/pairs"]) for row in trainer.intertrain_history]
        losses[pipeline] = _train_losses(trainer) + [e["eval_loss"] for e in trainer.state.log_history if "eval_top1" in e]
        flos[pipeline] = trainer.state.total_flos
        assert len([e for e in trainer.state.log_history if "eval_top1" in e]) == 3
    assert plans["device"] == plans["workers"] and sum(pairs for _, pairs in plans["device"]) > 0
    assert losses["device"] == pytest.approx(losses["workers"], rel=1e-5)  # the same pixels reach the model
    assert flos["device"] == flos["workers"] > 0


def test_device_pixels_follow_a_channels_last_model(tmp_path):
    train, _ = _device_datasets(tmp_path / "cache", training=True)
    model = make_model(output_stride=16).to(memory_format=torch.channels_last)
    trainer = InterTrainTrainer(model=model, args=_args(tmp_path, data_pipeline="device"), train_dataset=train)
    batch = next(iter(trainer.get_train_dataloader()))

    prepared = trainer._prepare_inputs(batch)

    assert prepared["pixel_values"].shape == (16, 3, 32, 32)
    assert prepared["pixel_values"].is_contiguous(memory_format=torch.channels_last)
    assert prepared["labels"].dtype == torch.int64 and prepared["sample_index"].tolist() == [
        request.row for request in batch["pixel_values"]
    ]


def test_device_pipeline_with_augmentation_trains_every_sample_once_per_epoch(tmp_path):
    train, _ = _device_datasets(tmp_path / "cache", training=True)
    model = make_model(output_stride=16)
    initial = [p.detach().clone() for p in model.parameters()]
    args = _args(tmp_path, num_train_epochs=3, data_pipeline="device")
    trainer = InterTrainTrainer(model=model, args=args, train_dataset=train)
    counts, end_epoch = [], trainer.tracker.end_epoch
    trainer.tracker.end_epoch = lambda: (counts.append(trainer.tracker.epoch_buffers()[2].copy()), end_epoch())[1]

    trainer.train()

    assert trainer.intertrain_image_size == (32, 32)
    assert [c.tolist() for c in counts] == [[1] * 96] * 3
    assert all(row["intertrain/items"] + row["intertrain/pairs"] == 96 for row in trainer.intertrain_history)
    assert all(math.isfinite(loss) for loss in _train_losses(trainer))
    assert any(not torch.equal(a, b) for a, b in zip(initial, trainer.model.parameters()))


def test_a_data_pipeline_that_contradicts_the_train_dataset_is_refused(tmp_path, tiny_train_dataset):
    model = make_model(output_stride=16)
    with pytest.raises(ValueError, match=r"data_pipeline='device' but the train_dataset \(ImageClassificationDataset\)"):
        InterTrainTrainer(model=model, args=_args(tmp_path, data_pipeline="device"), train_dataset=tiny_train_dataset)
    train, _ = _device_datasets(tmp_path / "cache", training=False)
    with pytest.raises(ValueError, match="data_pipeline='workers' but the train_dataset is a DeviceImageDataset"):
        InterTrainTrainer(model=model, args=_args(tmp_path, data_pipeline="workers"), train_dataset=train)
    with pytest.raises(ValueError, match="data_pipeline='gpu' is not supported"):
        _args(tmp_path, data_pipeline="gpu")


def test_the_trainer_reads_its_input_path_from_the_dataset_and_never_rewrites_the_callers_arguments(tmp_path):
    train, _ = _device_datasets(tmp_path / "cache", training=False)
    args = _args(tmp_path, data_pipeline="auto", num_train_epochs=1)
    trainer = InterTrainTrainer(model=make_model(output_stride=16), args=args, train_dataset=train)
    assert trainer.data_pipeline == "device" and args.data_pipeline == "auto"
    trainer.save_intertrain_state(str(tmp_path / "state"))
    from hf_intertrain.checkpoint import saved_setting

    assert saved_setting(tmp_path / "state", "data_pipeline") == "device"  # checkpoints store the resolved path
