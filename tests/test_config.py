"""InterTrainArguments: validation of the peer-method settings (the rest is exercised through the CLI tests)."""

import pytest

from hf_intertrain.config import InterTrainArguments


def arguments(tmp_path, **overrides) -> InterTrainArguments:
    return InterTrainArguments(output_dir=str(tmp_path), report_to="none", **overrides)


def test_random_subset_sizes_are_parsed(tmp_path):
    args = arguments(tmp_path, interpolation="none", data_selection="random_subset", random_subset_sizes="50, 40,30")
    assert args.subset_sizes == (50, 40, 30)
    assert arguments(tmp_path).subset_sizes == ()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"data_selection": "infobatch"}, "--interpolation none"),
        ({"interpolation": "none", "data_selection": "coreset"}, "data_selection='coreset' is not supported"),
        ({"interpolation": "none", "data_selection": "random_subset"}, "needs random_subset_sizes"),
        ({"interpolation": "none", "data_selection": "random_subset", "random_subset_sizes": "10,x"}, "whole numbers"),
        ({"interpolation": "none", "data_selection": "infobatch", "infobatch_prune_probability": 0.0}, "strictly between"),
        ({"interpolation": "none", "data_selection": "infobatch", "infobatch_full_data_fraction": -0.1}, r"in \[0, 1\]"),
        ({"composite_loss_weight": 0.0}, "composite_loss_weight=0.0 must be a positive number"),
        ({"composite_loss_weight": float("nan")}, "composite_loss_weight=nan must be a positive number"),
        ({"interpolation_off_fraction": 1.0}, r"interpolation_off_fraction=1.0 must lie in \[0, 1\)"),
        ({"interpolation_off_fraction": float("nan")}, r"interpolation_off_fraction=nan must lie in \[0, 1\)"),
    ],
)
def test_bad_peer_settings_fail_with_one_line(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match) as error:
        arguments(tmp_path, **overrides)
    assert "\n" not in str(error.value)


def test_every_setting_is_declared_once_and_its_roles_derive_the_lists_that_need_it():
    from dataclasses import fields

    from transformers import HfArgumentParser

    from hf_intertrain.checkpoint import MID_EPOCH_SETTINGS, PLAN_LAYOUT, RESUME_SETTINGS
    from hf_intertrain.config import FINGERPRINT, RESUME, TRAINING_ARGUMENT_ROLES, settings_with
    from hf_intertrain.experiments.compare import FINGERPRINT_ARGUMENTS

    own = [f.name for f in fields(InterTrainArguments) if f.name in InterTrainArguments.__annotations__]
    assert RESUME_SETTINGS == settings_with(RESUME)
    assert {"mixup_alpha", "cutmix_alpha", "data_pipeline", "label_smoothing_factor"} <= set(RESUME_SETTINGS)
    assert set(RESUME_SETTINGS) - {"label_smoothing_factor"} <= set(own)
    assert MID_EPOCH_SETTINGS == ("data_pipeline",)
    assert PLAN_LAYOUT == ("per_device_train_batch_size", "seed", "data_seed", "gradient_accumulation_steps", "dataloader_drop_last")
    assert set(FINGERPRINT_ARGUMENTS) == set(RESUME_SETTINGS) | set(settings_with(FINGERPRINT))
    assert {"seed", "max_steps", "learning_rate", "per_device_train_batch_size"} <= set(settings_with(FINGERPRINT))
    assert not set(TRAINING_ARGUMENT_ROLES) & set(InterTrainArguments.__annotations__)  # one declaration each
    # The roles live in the type: HfArgumentParser still sees plain types and choices.
    (args,) = HfArgumentParser(InterTrainArguments).parse_args_into_dataclasses(
        ["--output_dir", "x", "--mixup_alpha", "0.4", "--split_propagation", "false", "--data_pipeline", "workers"]
    )
    assert (args.mixup_alpha, args.split_propagation, args.data_pipeline) == (0.4, False, "workers")
    with pytest.raises(SystemExit):
        HfArgumentParser(InterTrainArguments).parse_args_into_dataclasses(["--output_dir", "x", "--mixup_mode", "row"])


def test_tracker_rules_come_from_the_flags_and_the_rule_choices_from_the_tracker_tables(tmp_path):
    from dataclasses import fields

    from hf_intertrain.method.tracker import TrackerRules
    from hf_intertrain.method.tracker.decision import REGION1_RULES, REGION3_RULES

    args = arguments(tmp_path, selective_interpolation=True, amenability_regions="1", region1_rule="avg_loss", threshold_average="ema")
    assert args.tracker_rules() == TrackerRules(regions=(1,), region1_rule="avg_loss", threshold_average="ema")
    assert arguments(tmp_path, four_way="randpatch4").tracker_rules().max_group_size == 4
    flags = {f.name: f.metadata for f in fields(InterTrainArguments)}
    for name, table in (("region1_rule", REGION1_RULES), ("region3_rule", REGION3_RULES)):
        assert flags[name]["choices"] == list(table)
        assert all(f"'{choice}' ({rule.description})" in flags[name]["help"] for choice, rule in table.items())
