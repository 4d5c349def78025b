"""Joint augmentation: shared geometry, nearest-neighbour masks, ignore padding, crop ratio, photometric views."""

import numpy as np
import pytest
import torch

from training.data.transforms import (NO_PHOTOMETRIC, JointTrainTransform, Normalize, PhotometricConfig,
                                      crop_ratio_ok)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def labelled_image(height=64, width=80):
    """Image whose red channel encodes the label of 16x16 blocks, so alignment can be checked after resizing."""
    blocks = (np.arange(height)[:, None] // 16 * 7 + np.arange(width)[None, :] // 16) % 5
    mask = blocks.astype(np.uint8)
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    image[0] = torch.from_numpy(mask.astype(np.uint8) * 50)
    return image, mask


def test_geometry_shared_and_masks_nearest():
    torch.manual_seed(0)
    image, mask = labelled_image()
    transform = JointTrainTransform(crop_size=24, mean=MEAN, std=STD, scale_range=(0.5, 2.0),
                                    photometric=NO_PHOTOMETRIC, cat_max_ratio=1.0)
    for _ in range(20):
        crop, crop_mask = transform.geometric(image, mask)
        assert crop.shape[-2:] == crop_mask.shape
        assert set(crop_mask.unique().tolist()) <= {0, 1, 2, 3, 4}  # nearest: no interpolated labels
        # Away from block edges the image's red channel (bilinear) rounds to label * 50: same geometry.
        agree = (crop[0].float() / 50).round() == crop_mask.float()
        assert agree.float().mean() > 0.75  # a flipped or shifted mask scores far lower


def test_two_views_share_geometry_differ_in_photometry():
    torch.manual_seed(1)
    image, mask = labelled_image()
    plain = JointTrainTransform(crop_size=24, mean=MEAN, std=STD, photometric=NO_PHOTOMETRIC)
    crop, _ = plain.geometric(image, mask)
    query, key = plain.views(crop, 2)
    assert torch.equal(query, key)
    jitter = JointTrainTransform(crop_size=24, mean=MEAN, std=STD,
                                 photometric=PhotometricConfig(color_jitter_p=1.0, blur_p=0.0, grayscale_p=0.0))
    query, key = jitter.views(crop, 2)
    assert query.shape == key.shape == (3, 24, 24) and not torch.equal(query, key)


def test_padding_uses_ignore_and_zero():
    image, mask = labelled_image(10, 12)
    transform = JointTrainTransform(crop_size=(16, 20), mean=MEAN, std=STD, scale_range=(1.0, 1.0),
                                    photometric=NO_PHOTOMETRIC)
    crop, crop_mask = transform.geometric(image, mask)
    view, padded = transform.views(crop, 1)[0], transform.pad_mask(crop_mask)
    assert view.shape == (3, 16, 20) and padded.shape == (16, 20)
    assert (padded[10:] == 255).all() and (padded[:, 12:] == 255).all() and (view[:, 10:] == 0).all()
    assert padded[:10, :12].max() < 5


def test_cat_max_ratio_rule_and_retries():
    assert crop_ratio_ok(np.array([0, 0, 1, 1, 255, 255], dtype=np.uint8), 0.75)
    assert not crop_ratio_ok(np.array([0, 0, 0, 0, 1, 255], dtype=np.uint8), 0.75)  # 80 % one class
    assert not crop_ratio_ok(np.array([3, 3, 255], dtype=np.uint8), 0.75)  # a single class never passes
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 48:] = 1  # class 1 only in the right quarter
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)

    def passing_share(ratio):
        torch.manual_seed(0)
        transform = JointTrainTransform(crop_size=16, mean=MEAN, std=STD, scale_range=(1.0, 1.0),
                                        cat_max_ratio=ratio, photometric=NO_PHOTOMETRIC)
        crops = [transform.geometric(image, mask)[1].numpy() for _ in range(40)]
        return np.mean([crop_ratio_ok(c, 0.75) for c in crops])

    assert passing_share(0.75) > 0.6 and passing_share(1.0) < 0.35  # 10 retries vs a single random crop


def test_bad_configuration():
    with pytest.raises(ValueError, match="0-255 values"):
        JointTrainTransform(crop_size=8, mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4))
    with pytest.raises(ValueError, match="crop_size"):
        JointTrainTransform(crop_size=(8, 0), mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="blur_p = 1.5 is not a probability"):
        PhotometricConfig(blur_p=1.5)


def test_normalize_matches_torchvision():
    from torchvision.transforms import v2

    image = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    reference = v2.Normalize(MEAN, STD)(v2.ToDtype(torch.float32, scale=True)(image))
    assert torch.allclose(Normalize(MEAN, STD)(image), reference, atol=1e-5)
