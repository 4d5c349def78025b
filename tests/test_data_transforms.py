"""Joint augmentation: shared geometry, nearest-neighbour masks, ignore padding, crop ratio, photometric views."""

import numpy as np
import pytest
import torch

from training.data.transforms import NO_PHOTOMETRIC, JointTrainTransform, Normalize, PhotometricConfig, crop_ratio_ok

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
    transform = JointTrainTransform(
        crop_size=24, mean=MEAN, std=STD, scale_range=(0.5, 2.0), photometric=NO_PHOTOMETRIC, cat_max_ratio=1.0
    )
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
    jitter = JointTrainTransform(
        crop_size=24, mean=MEAN, std=STD, photometric=PhotometricConfig(color_jitter_p=1.0, blur_p=0.0, grayscale_p=0.0)
    )
    query, key = jitter.views(crop, 2)
    assert query.shape == key.shape == (3, 24, 24) and not torch.equal(query, key)


def test_padding_uses_ignore_and_zero():
    image, mask = labelled_image(10, 12)
    transform = JointTrainTransform(
        crop_size=(16, 20), mean=MEAN, std=STD, scale_range=(1.0, 1.0), photometric=NO_PHOTOMETRIC
    )
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
        transform = JointTrainTransform(
            crop_size=16, mean=MEAN, std=STD, scale_range=(1.0, 1.0), cat_max_ratio=ratio, photometric=NO_PHOTOMETRIC
        )
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


def smooth_image(height, width):
    """Smooth uint8 image (bilinear resampling of it is well defined away from borders)."""
    y = torch.linspace(0, 3.0, height).view(-1, 1)
    x = torch.linspace(0, 2.0, width).view(1, -1)
    planes = [torch.sin(y + x), torch.cos(2 * y - x), torch.sin(x * y)]
    return ((torch.stack(planes) + 1) * 127.5).round().to(torch.uint8)


@pytest.mark.parametrize("flip", [False, True])
def test_crop_equals_resize_then_crop(flip):
    """Resampling only the box == rescaling the whole image by height/src_h and cropping the same place:
    image within interpolation tolerance (interior), mask exactly."""
    from training.data.transforms import CropBox, crop_image, crop_mask

    image = smooth_image(30, 40)
    mask = ((np.arange(30)[:, None] * 3 + np.arange(40)[None, :] * 7) % 11).astype(np.uint8)
    box = CropBox(top=4, left=6, src_h=10, src_w=12, height=20, width=24, flip=flip)  # x2, offset (8, 12)
    full = torch.nn.functional.interpolate(
        image[None].float(), size=(60, 80), mode="bilinear", align_corners=False, antialias=True
    )[0]
    reference = full[:, 8:28, 12:36]
    reference = reference.flip(-1) if flip else reference
    got = crop_image(image, box).float()
    assert got.shape == (3, 20, 24)
    assert (got[:, 1:-1, 1:-1] - reference[:, 1:-1, 1:-1]).abs().max() <= 1.0
    full_mask = mask[np.arange(60) // 2][:, np.arange(80) // 2]  # nearest at x2: each source pixel twice
    reference_mask = full_mask[8:28, 12:36][:, ::-1] if flip else full_mask[8:28, 12:36]
    assert np.array_equal(crop_mask(mask, box), reference_mask)


def test_mask_crop_samples_pixel_centres_exactly():
    """Arbitrary (non-integer) scales: every mask pixel is the source pixel under its centre."""
    from training.data.transforms import CropBox, crop_mask

    rng = np.random.default_rng(0)
    mask = rng.integers(0, 200, (97, 131), dtype=np.uint8)
    for _ in range(20):
        src_h, src_w = int(rng.integers(5, 97)), int(rng.integers(5, 131))
        box = CropBox(
            int(rng.integers(0, 97 - src_h + 1)),
            int(rng.integers(0, 131 - src_w + 1)),
            src_h,
            src_w,
            int(rng.integers(3, 200)),
            int(rng.integers(3, 200)),
            bool(rng.integers(2)),
        )
        rows = np.floor(box.top + (np.arange(box.height) + 0.5) * src_h / box.height).astype(int)
        cols = np.floor(box.left + (np.arange(box.width) + 0.5) * src_w / box.width).astype(int)
        expected = mask[rows][:, cols[::-1] if box.flip else cols]
        assert np.array_equal(crop_mask(mask, box), expected)


def test_scale_distribution_and_geometry_draws():
    """Effective scale crop/region follows U(0.5, 2) x base/short side; crops stay inside the image."""
    torch.manual_seed(0)
    transform = JointTrainTransform(
        crop_size=32, mean=MEAN, std=STD, scale_range=(0.5, 2.0), base_size=64, photometric=NO_PHOTOMETRIC
    )
    scales = []
    for _ in range(300):
        box, _ = transform.draw(80, 100, None)
        assert 0 <= box.top and box.top + box.src_h <= 80 and 0 <= box.left and box.left + box.src_w <= 100
        scales.append(box.height / box.src_h / (64 / 80))
    scales = np.array(scales)
    assert 0.47 < scales.min() < 0.6 and 1.8 < scales.max() < 2.1  # within a source pixel of U(0.5, 2)
    assert abs(np.median(scales) - 1.25) < 0.15


def test_device_crop_for_device_views():
    image, mask = labelled_image(10, 12)
    transform = JointTrainTransform(
        crop_size=(16, 20), mean=MEAN, std=STD, scale_range=(1.0, 1.0), photometric=NO_PHOTOMETRIC, hflip_p=0.0
    )
    item = transform.device_crop(image, mask)
    crop, crop_mask, size = item["image"], item["mask"], item["image_size"]
    assert crop.dtype == torch.uint8 and crop.shape == (3, 16, 20) and size.tolist() == [10, 12]
    assert item["source_region"].tolist() == [10, 12, 0]  # scale 1: nothing for the device to resize
    assert torch.equal(crop[:, :10, :12], image)  # scale 1, no flip: the image itself
    assert (crop_mask[10:] == 255).all() and (crop_mask[:, 12:] == 255).all()
    assert torch.equal(crop_mask[:10, :12], torch.from_numpy(mask))
