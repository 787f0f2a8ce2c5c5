import numpy as np
import pytest
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from hf_intertrain.method.mixing import BatchMixing, check_mixing, numpy_seeded, soft_target_cross_entropy

NUM_CLASSES = 5


def _batch(rows, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(rows, 3, 8, 8, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (rows,), generator=generator)
    return pixels, labels


@pytest.mark.parametrize("settings", [dict(mixup_alpha=1.0), dict(cutmix_alpha=1.0), dict(mixup_alpha=0.4, cutmix_alpha=1.0, mode="elem")])
def test_mixed_targets_sum_to_one_per_row_with_label_smoothing(settings):
    mixing = BatchMixing(NUM_CLASSES, label_smoothing=0.1, **settings)
    pixels, labels = _batch(8)
    mixed, targets = mixing(pixels, labels, seed=3)
    assert targets.dtype == torch.float32 and targets.shape == (8, NUM_CLASSES)
    torch.testing.assert_close(targets.sum(-1), torch.ones(8))
    assert not torch.equal(mixed, pixels)


def test_mixing_is_timms_mixup_under_the_step_seed_and_leaves_numpys_global_state_alone():
    pixels, labels = _batch(6)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    mixed, targets = BatchMixing(NUM_CLASSES, cutmix_alpha=1.0, mixup_alpha=1.0, label_smoothing=0.1)(pixels, labels, 42)
    np.testing.assert_array_equal(np.random.get_state()[1], before)

    timm_mixup = Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=NUM_CLASSES)
    with numpy_seeded(42):
        expected, expected_targets = timm_mixup(pixels.clone(), labels)
    torch.testing.assert_close(mixed, expected)
    torch.testing.assert_close(targets, expected_targets)
    again, _ = BatchMixing(NUM_CLASSES, cutmix_alpha=1.0, mixup_alpha=1.0)(pixels, labels, 42)
    torch.testing.assert_close(again, mixed)


def test_an_odd_batch_mixes_its_even_prefix_and_trains_the_last_row_unmixed():
    pixels, labels = _batch(5)
    mixed, targets = BatchMixing(NUM_CLASSES, mixup_alpha=1.0, label_smoothing=0.1)(pixels, labels, seed=1)
    assert not torch.equal(mixed[:4], pixels[:4])
    torch.testing.assert_close(mixed[4], pixels[4])
    expected_last = torch.full((NUM_CLASSES,), 0.1 / NUM_CLASSES)
    expected_last[labels[4]] += 0.9
    torch.testing.assert_close(targets[4], expected_last)
    single, single_target = BatchMixing(NUM_CLASSES, mixup_alpha=1.0)(pixels[:1], labels[:1], seed=1)
    torch.testing.assert_close(single, pixels[:1])
    assert single_target[0, labels[0]] == 1.0


def test_without_mixup_or_cutmix_inputs_pass_unchanged_with_smoothed_one_hot_targets():
    pixels, labels = _batch(4)
    mixing = BatchMixing(NUM_CLASSES, label_smoothing=0.2)
    mixed, targets = mixing(pixels, labels, seed=0)
    assert not mixing.enabled and mixed is pixels
    assert torch.allclose(targets.max(-1).values, torch.full((4,), 0.8 + 0.2 / NUM_CLASSES))
    assert torch.equal(targets.argmax(-1), labels)


def test_soft_target_loss_equals_timms_on_the_same_batch():
    pixels, labels = _batch(8)
    _, targets = BatchMixing(NUM_CLASSES, cutmix_alpha=1.0)(pixels, labels, seed=5)
    logits = torch.randn(8, NUM_CLASSES, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(soft_target_cross_entropy(logits, targets).mean(), SoftTargetCrossEntropy()(logits, targets))


@pytest.mark.parametrize(
    "arguments, message",
    [
        ((-1.0, 0.0, 1.0, 0.5, "batch", 0.0), "mixup_alpha=-1.0 must be 0"),
        ((0.0, float("nan"), 1.0, 0.5, "batch", 0.0), "cutmix_alpha=nan must be 0"),
        ((1.0, 0.0, 1.5, 0.5, "batch", 0.0), "mixup_prob=1.5 must be a probability"),
        ((1.0, 0.0, 1.0, -0.1, "batch", 0.0), "mixup_switch_prob=-0.1 must be a probability"),
        ((1.0, 0.0, 1.0, 0.5, "row", 0.0), "mixup_mode='row' is not supported"),
        ((1.0, 0.0, 1.0, 0.5, "batch", 1.0), r"label_smoothing_factor=1.0 must lie in \[0, 1\)"),
    ],
)
def test_settings_timm_cannot_use_are_refused_in_one_line(arguments, message):
    with pytest.raises(ValueError, match=message):
        check_mixing(*arguments)
