"""Learning-dynamics measures and the fixed-batch probe."""

import math

import pytest
import torch
import torch.nn.functional as F

from training.data.label_space import LabelSpace
from training.mdp import build_method, dynamics
from training.mdp.probe import LearningProbe, batchnorm_stats_preserved


def two_class_maps(separation: float, noise: float = 0.05, seed: int = 0):
    """[4, 8, 4, 4] maps whose left half is class 0 and right half class 1, class means ``separation`` apart."""
    generator = torch.Generator().manual_seed(seed)
    maps = noise * torch.randn(4, 8, 4, 4, generator=generator)
    maps[:, 0] += 1.0
    maps[:, 1, :, :2] += separation
    maps[:, 1, :, 2:] -= separation
    labels = torch.zeros(4, 4, 4, dtype=torch.long)
    labels[:, :, 2:] = 1
    labels[:, 0, 0] = -1
    return maps, labels


def test_separable_classes_score_perfectly_and_inseparable_ones_do_not():
    maps, labels = two_class_maps(separation=1.0)
    pixels, pixel_labels = dynamics.pixels_and_labels(maps, labels)
    fit, test = slice(0, None, 2), slice(1, None, 2)
    assert dynamics.nearest_centroid_accuracy(pixels[fit], pixel_labels[fit], pixels[test], pixel_labels[test]) == 1.0
    assert dynamics.ridge_probe_accuracy(pixels[fit], pixel_labels[fit], pixels[test], pixel_labels[test]) == 1.0
    # Labels that do not follow the features: both scores fall to about chance.
    shuffled = pixel_labels[torch.randperm(pixel_labels.shape[0], generator=torch.Generator().manual_seed(1))]
    assert dynamics.nearest_centroid_accuracy(pixels[fit], shuffled[fit], pixels[test], shuffled[test]) < 0.8


def test_test_pixels_of_classes_the_fit_pixels_lack_are_not_scored():
    fit = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    test = torch.tensor([[1.0, 0.1], [0.3, 1.0], [1.0, 1.0]])
    accuracy = dynamics.nearest_centroid_accuracy(fit, torch.tensor([0, 1]), test, torch.tensor([0, 1, 7]))
    assert accuracy == 1.0
    assert math.isnan(dynamics.nearest_centroid_accuracy(fit, torch.tensor([0, 1]), test[:1], torch.tensor([5])))


def test_prototype_cosine_and_drift_count_seen_classes_only():
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.0]])
    seen = torch.tensor([True, True, False, True])
    mean, maximum = dynamics.off_diagonal_cosine(prototypes, seen)
    assert math.isclose(mean, (0.0 + -1.0 + 0.0) / 3, abs_tol=1e-6) and math.isclose(maximum, 0.0, abs_tol=1e-6)
    rotated = prototypes.clone()
    rotated[0] = torch.tensor([0.0, 1.0])  # one of three seen prototypes turns by 90 degrees over 2 steps
    assert math.isclose(dynamics.prototype_drift(prototypes, rotated, seen, steps=2), 1 / 3 / 2, rel_tol=1e-5)


def test_alignment_uniformity_rank_and_image_share_on_known_geometries():
    axes = torch.eye(4).repeat(8, 1)  # 32 unit vectors, 8 on each axis
    labels = torch.arange(4).repeat(8)
    alignment, uniformity = dynamics.alignment_uniformity(axes, labels)
    assert math.isclose(alignment, 0.0, abs_tol=1e-6)  # every class sits on one point
    collapsed_alignment, collapsed_uniformity = dynamics.alignment_uniformity(torch.ones(32, 4) / 2, labels)
    # spread points are more uniform than one point, where every distance is 0
    assert math.isclose(collapsed_uniformity, 0.0, abs_tol=1e-5) and uniformity < -1.0
    assert 2.9 < dynamics.effective_rank(axes) < 3.1  # 4 centred axes span 3 dimensions equally
    assert dynamics.effective_rank(torch.ones(32, 4)) < 1.5
    one_vector_per_image = torch.randn(2, 8, 1, 1).expand(2, 8, 3, 3)
    assert math.isclose(dynamics.image_level_share(one_vector_per_image, torch.zeros(2, 3, 3)), 1.0, rel_tol=1e-5)
    maps, map_labels = two_class_maps(separation=3.0)
    assert dynamics.image_level_share(maps, map_labels) < 0.6


def tiny_mdp():
    label_space = LabelSpace([("a", ["x", "y", "z"]), ("b", ["u", "v"])])
    torch.manual_seed(0)
    return build_method(
        "mdp",
        label_space=label_space,
        arch="resnet18",
        output_stride=16,
        embed_dim=16,
        head_hidden_dim=32,
        sparse_coding=None,
    )


def test_probe_reports_every_measure_and_leaves_batchnorm_statistics_alone():
    method = tiny_mdp()
    images = torch.randn(6, 3, 64, 64)
    labels = torch.randint(-1, 5, (6, 64, 64))
    before = {k: v.clone() for k, v in method.state_dict().items()}
    probe = LearningProbe(method, images, labels, chunk=3)
    first = probe(0)
    method.memory.update(F.normalize(torch.randn(2, 16, 4, 4), dim=1), torch.randint(0, 5, (2, 4, 4)))
    second = probe(10)
    for name, value in before.items():
        assert torch.equal(method.state_dict()[name], value) or name.startswith("memory."), name
    expected = {
        "val_backbone_ncc",
        "val_backbone_probe",
        "val_embed_ncc",
        "val_embed_probe",
        "val_embed_alignment",
        "val_embed_uniformity",
        "val_embed_rank",
        "val_embed_image_share",
        "prototype_cos_mean",
        "prototype_cos_max",
        "val_prototype_accuracy",
    }
    assert expected <= set(first) and expected | {"prototype_drift"} <= set(second)
    assert math.isnan(first["prototype_cos_mean"]) and not math.isnan(second["prototype_cos_mean"])
    assert second["prototype_drift"] > 0
    assert method.training


def test_batchnorm_context_restores_running_statistics_and_mode():
    norm = torch.nn.BatchNorm2d(3)
    norm.eval()
    with batchnorm_stats_preserved(norm):
        assert norm.training
        norm(torch.randn(4, 3, 2, 2) + 5.0)
    assert not norm.training
    assert torch.equal(norm.running_mean, torch.zeros(3)) and int(norm.num_batches_tracked) == 0


def test_prototype_regime_reports_anchor_shares_and_within_dataset_collapse():
    anchors = torch.eye(4)
    collapsed = torch.tensor([[1.0, 0.1, 0, 0], [1.0, -0.1, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    share = torch.tensor([0.01, 0.02, 0.9, 0.5])
    seen = torch.tensor([True, True, True, False])
    blocks = {"a": torch.tensor([0, 1]), "b": torch.tensor([2, 3])}
    metrics = dynamics.prototype_regime(collapsed, anchors, share, seen, blocks)
    assert metrics["anchor_share_median_a"] == pytest.approx(0.01)  # torch's median: the lower of two
    assert metrics["anchor_share_max_a"] == pytest.approx(0.02)
    assert metrics["anchor_share_median_b"] == pytest.approx(0.9)  # the unseen class 3 does not count
    assert metrics["prototype_cos_within_a"] == pytest.approx(0.98, abs=0.01)
    assert math.isnan(metrics["prototype_cos_within_b"])  # one seen class: nothing to compare
    # Classes 0 and 1 have left their anchors (share < e^-3): the larger cosine to the own anchor is class 0's.
    assert metrics["prototype_cos_to_anchor_max_faded"] == pytest.approx(1 / math.sqrt(1.01))
