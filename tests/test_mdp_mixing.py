"""Cross-dataset mixing: partners, region boxes, ClassMix and Mixup, labels in global ids."""

import pytest
import torch

from training.mdp.mixing import (
    NO_MIX,
    PIXEL_MIX,
    REGION_MIX,
    box_masks,
    class_mix_masks,
    cross_dataset_mix,
    cross_dataset_partners,
    resize_labels,
)


def test_partners_come_from_another_dataset_when_one_exists():
    torch.manual_seed(0)
    dataset_id = torch.tensor([0, 0, 0, 1, 1, 2])
    for _ in range(20):
        partner = cross_dataset_partners(dataset_id)
        assert (dataset_id[partner] != dataset_id).all()
    # Uniform over the candidates: image 0 sees all three foreign images.
    seen = {cross_dataset_partners(dataset_id)[0].item() for _ in range(100)}
    assert seen == {3, 4, 5}


def test_single_dataset_batch_falls_back_to_another_image():
    partner = cross_dataset_partners(torch.zeros(4, dtype=torch.long))
    assert (partner != torch.arange(4)).all()
    assert cross_dataset_partners(torch.zeros(1, dtype=torch.long)).tolist() == [0]


@pytest.mark.parametrize("lam", [0.0, 0.36, 0.75, 0.91])
def test_unclipped_region_box_covers_one_minus_lambda(lam):
    height = width = 100
    mask = box_masks(torch.tensor([lam]), torch.tensor([0.0]), torch.tensor([0.0]), height, width)
    assert mask.float().mean().item() == pytest.approx(1.0 - lam, abs=0.02)
    assert mask[0, 0, 0]  # the box starts at the sampled start point


def test_region_box_is_clipped_at_the_border():
    mask = box_masks(torch.tensor([0.75]), torch.tensor([90.0]), torch.tensor([80.0]), 100, 100)
    # side 50 x 50 from (x=90, y=80): clipped to 10 x 20 pixels
    assert mask.sum().item() == 10 * 20
    assert mask[0, 80:, 90:].all()


def test_class_mix_picks_half_of_the_present_classes_and_never_ignore():
    torch.manual_seed(0)
    labels = torch.tensor([[[0, 1, 2], [3, 4, -1]], [[5, 5, 5], [-1, -1, -1]]])
    mask = class_mix_masks(labels, num_classes=6)
    chosen = [torch.unique(labels[b][mask[b]]).tolist() for b in range(2)]
    assert len(chosen[0]) == 3 and len(chosen[1]) == 1  # ceil(5 / 2), ceil(1 / 2)
    assert not mask[labels == -1].any()
    for b in range(2):  # whole classes: every pixel of a chosen class is in the mask
        for c in chosen[b]:
            assert mask[b][labels[b] == c].all()


def make_batch(batch=6, size=16):
    dataset_id = torch.tensor([0, 1, 2, 0, 1, 2])[:batch]
    offsets = torch.tensor([0, 3, 7])
    labels = offsets[dataset_id][:, None, None] + torch.randint(0, 3, (batch, size, size))
    labels[:, :4, :4] = -1
    images = torch.randn(batch, 3, size, size)
    return images, labels, dataset_id


@pytest.mark.parametrize("pixel_mix", ["mixup", "classmix"])
def test_mixed_images_and_labels_are_consistent_global_and_keep_ignore(pixel_mix):
    torch.manual_seed(1)
    images, labels, dataset_id = make_batch()
    mixed = cross_dataset_mix(images, labels, dataset_id, num_classes=10, p_mix=1.0, pixel_mix=pixel_mix)
    assert (dataset_id[mixed.partner] != dataset_id).all()
    assert (mixed.mode != NO_MIX).all()
    alpha = mixed.partner_weight
    expected_image = (1 - alpha[:, None]) * images + alpha[:, None] * images[mixed.partner]
    torch.testing.assert_close(mixed.image, expected_image)
    assert torch.equal(mixed.labels_a, labels) and torch.equal(mixed.labels_b, labels[mixed.partner])
    hard = mixed.hard_labels()
    own, partner = labels, labels[mixed.partner]
    assert ((hard == own) | (hard == partner)).all()
    assert ((hard >= -1) & (hard < 10)).all()
    hard_pixels = (alpha == 0) | (alpha == 1)
    for b in range(images.shape[0]):
        region_or_classmix = mixed.mode[b] == REGION_MIX or pixel_mix == "classmix"
        if region_or_classmix:
            assert hard_pixels[b].all()
            assert torch.equal(hard[b], torch.where(alpha[b] == 1, partner[b], own[b]))
        else:  # Mixup: one lambda per image, both labels kept
            assert mixed.mode[b] == PIXEL_MIX
            assert torch.unique(alpha[b]).numel() == 1
    # Ignore survives: a corner that is ignored in both images stays ignored.
    assert (hard[:, :4, :4] == -1).all()


def test_p_mix_zero_leaves_the_batch_untouched():
    images, labels, dataset_id = make_batch()
    mixed = cross_dataset_mix(images, labels, dataset_id, num_classes=10, p_mix=0.0)
    assert torch.equal(mixed.image, images) and torch.equal(mixed.hard_labels(), labels)
    assert (mixed.mode == NO_MIX).all()


def test_mixing_probability_and_mode_split():
    torch.manual_seed(2)
    dataset_id = torch.arange(400) % 2
    images, labels = torch.zeros(400, 3, 4, 4), torch.zeros(400, 4, 4, dtype=torch.long)
    mixed = cross_dataset_mix(images, labels, dataset_id, num_classes=1, p_mix=0.5, region_fraction=0.5)
    counts = torch.bincount(mixed.mode, minlength=3).float() / 400
    assert counts[NO_MIX] == pytest.approx(0.5, abs=0.08)
    assert counts[REGION_MIX] == pytest.approx(0.25, abs=0.08)


def test_bad_options_raise():
    images, labels, dataset_id = make_batch()
    with pytest.raises(ValueError, match="pixel_mix"):
        cross_dataset_mix(images, labels, dataset_id, num_classes=10, pixel_mix="cutout")
    with pytest.raises(ValueError, match="p_mix"):
        cross_dataset_mix(images, labels, dataset_id, num_classes=10, p_mix=1.5)


def test_resize_labels_is_nearest_and_exact():
    labels = torch.arange(64).reshape(1, 8, 8) + 300
    small = resize_labels(labels, (2, 2))
    assert small.dtype == torch.long and small.tolist() == [[[300, 304], [332, 336]]]
