"""Batched device-side MoCo-v2 views: shapes, dtype, identity at p=0, grayscale, per-sample independence,
seeded determinism, padding, and the trainer wrapper on a uint8 batch from the data layer."""

import pytest
import torch

from training.data.device_augment import (
    BatchPhotometric,
    DeviceViews,
    gaussian_blur,
    hsv_to_rgb,
    resize_regions,
    rgb_to_hsv,
)
from training.data.transforms import NO_PHOTOMETRIC, JointTrainTransform, Normalize, PhotometricConfig, crop_image

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ONLY_COLOUR = PhotometricConfig(color_jitter_p=1.0, grayscale_p=0.0, blur_p=0.0)


def crops(batch=4, size=24, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)


def test_shapes_dtype_and_identity_at_p0():
    images = crops()
    query, key = BatchPhotometric(NO_PHOTOMETRIC, MEAN, STD)(images)
    assert query.shape == key.shape == images.shape and query.dtype == key.dtype == torch.float32
    expected = torch.stack([Normalize(MEAN, STD)(image) for image in images])
    assert torch.allclose(query, expected, atol=1e-5) and torch.equal(query, key)
    # Enabled config whose probabilities are all zero: jitter() must return its input untouched.
    off = BatchPhotometric(PhotometricConfig(color_jitter_p=0.0, grayscale_p=0.0, blur_p=0.0), MEAN, STD)
    x = images.float() / 255
    assert torch.equal(off.jitter(x), x)


def test_grayscale_p1_gives_equal_channels():
    augment = BatchPhotometric(PhotometricConfig(color_jitter_p=0.0, grayscale_p=1.0, blur_p=0.0), MEAN, STD)
    out = augment.jitter(crops().float() / 255)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def test_hsv_round_trip_and_zero_hue_shift():
    x = crops(batch=2, size=16).float() / 255
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5)
    import torchvision.transforms.v2.functional as F

    shifted = hsv_to_rgb(torch.cat((torch.remainder(rgb_to_hsv(x)[:, :1] + 0.25, 1.0), rgb_to_hsv(x)[:, 1:]), 1))
    assert torch.allclose(shifted, F.adjust_hue(x, 0.25), atol=1e-4)  # same hue rotation as torchvision


def test_per_sample_independence_and_views_differ():
    # The same crop repeated: any difference between samples comes from independent per-sample draws.
    images = crops(batch=1).repeat(6, 1, 1, 1)
    query, key = BatchPhotometric(ONLY_COLOUR, MEAN, STD)(images, generator=torch.Generator().manual_seed(3))
    assert len({tuple(q.flatten()[:50].tolist()) for q in query}) == 6
    assert not torch.equal(query, key)


def test_seeded_determinism():
    augment = BatchPhotometric(PhotometricConfig(), MEAN, STD)
    images = crops()
    first = augment(images, generator=torch.Generator().manual_seed(7))
    second = augment(images, generator=torch.Generator().manual_seed(7))
    other = augment(images, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_blur_matches_a_per_sample_reference():
    x = crops(batch=3, size=20).float() / 255
    sigma = torch.tensor([0.5, 1.0, 2.0])
    batched = gaussian_blur(x, sigma, 2.0)
    for i in range(3):  # reference: one sample at a time with its own kernel
        assert torch.allclose(batched[i : i + 1], gaussian_blur(x[i : i + 1], sigma[i : i + 1], 2.0), atol=1e-6)
    assert batched[2].std() < batched[0].std() < x.std()  # larger sigma, smoother
    flat = torch.full((1, 3, 20, 20), 0.3)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([1.5]), 2.0), flat, atol=1e-6)  # kernels sum to 1


def test_padding_is_zero_after_normalisation():
    images = crops(batch=2, size=16)
    sizes = torch.tensor([[10, 12], [16, 16]])
    query, key = BatchPhotometric(PhotometricConfig(), MEAN, STD)(images, sizes)
    for view in (query, key):
        assert (view[0, :, 10:] == 0).all() and (view[0, :, :, 12:] == 0).all()
        assert (view[0, :, :10, :12] != 0).any() and (view[1] != 0).any()
    with pytest.raises(ValueError, match=r"crop sizes must be int64 \[B, 2\]"):
        BatchPhotometric(PhotometricConfig(), MEAN, STD)(images, torch.tensor([10, 12]))
    with pytest.raises(ValueError, match="expects uint8"):
        BatchPhotometric(PhotometricConfig(), MEAN, STD)(images.float())


def test_padding_is_filled_with_edge_pixels_so_the_blur_sees_no_border():
    from training.data.device_augment import replicate_edges

    images = torch.zeros(2, 3, 6, 8, dtype=torch.uint8)
    images[0, :, :4, :5] = torch.arange(20, dtype=torch.uint8).view(4, 5) + 1
    images[1] = 7
    sizes = torch.tensor([[4, 5], [6, 8]])
    filled = replicate_edges(images, sizes)
    assert torch.equal(filled[0, 0, :4, :5], images[0, 0, :4, :5]) and torch.equal(filled[1], images[1])
    assert filled[0, 0, 5].tolist() == [16, 17, 18, 19, 20, 20, 20, 20]  # last real row, then its last pixel
    assert filled[0, 0, :, 7].tolist() == [5, 10, 15, 20, 20, 20]
    # A flat crop stays flat right up to its border under the blur: no dark band from the zero padding.
    flat = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    flat[:, :, :20, :20] = 200
    blur_only = PhotometricConfig(color_jitter_p=0.0, grayscale_p=0.0, blur_p=1.0, blur_sigma=(2.0, 2.0))
    view = BatchPhotometric(blur_only, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(flat, torch.tensor([[20, 20]]), views=1)[0]
    assert torch.allclose(view[0, :, :20, :20], torch.full((3, 20, 20), 200 / 255), atol=1e-4)


def test_worker_crop_then_device_views_share_geometry():
    """device_crop (worker) -> DeviceViews (trainer): two float views of the same crop, masks untouched."""
    torch.manual_seed(0)
    transform = JointTrainTransform(
        crop_size=(20, 24), mean=MEAN, std=STD, scale_range=(0.5, 0.5), photometric=NO_PHOTOMETRIC
    )
    image = torch.randint(0, 256, (3, 24, 30), dtype=torch.uint8)
    mask = (torch.arange(30) // 10).repeat(24, 1).to(torch.uint8).numpy()
    item = transform.device_crop(image, mask)
    crop, crop_mask, size = item["image"], item["mask"], item["image_size"]
    assert crop.dtype == torch.uint8 and crop.shape == (3, 20, 24) and size.tolist() == [12, 15]
    assert item["source_region"].tolist() == [12, 15, 0]  # shrunk (antialiased) by the worker
    assert (crop_mask[12:] == 255).all() and (crop_mask[:, 15:] == 255).all() and crop_mask[:12, :15].max() < 3
    assert (crop[:, 12:] == 0).all() and (crop[:, :, 15:] == 0).all()  # the device fills it (replicate_edges)

    seen = {}

    def model(batch):
        seen.update(batch)
        return {"loss": batch["image"].sum()}

    wrapper = DeviceViews(model, BatchPhotometric(PhotometricConfig(), MEAN, STD))
    wrapper({"image": crop[None], "image_size": size[None], "mask": crop_mask[None].long()})
    assert seen["image"].dtype == seen["image_k"].dtype == torch.float32
    assert seen["image"].shape == seen["image_k"].shape == (1, 3, 20, 24) and "image_size" not in seen
    assert (seen["image"][0, :, 12:] == 0).all() and (seen["image_k"][0, :, :, 15:] == 0).all()
    assert seen["mask"].dtype == torch.int64

    # uint8 local ids (what device-mode workers send) become ids through each sample's dataset table
    tables = torch.full((2, 256), -1, dtype=torch.int64)
    tables[0, :3] = torch.tensor([10, 11, 12])
    tables[1, :3] = torch.tensor([20, 21, 22])
    masks = crop_mask.expand(2, -1, -1).contiguous()
    batch = {
        "image": crop.expand(2, -1, -1, -1).contiguous(),
        "image_size": size.expand(2, 2).contiguous(),
        "mask": masks,
        "dataset_id": torch.tensor([1, 0]),
    }
    DeviceViews(model, BatchPhotometric(PhotometricConfig(), MEAN, STD), label_tables=tables)(batch)
    expected = torch.stack([tables[1][masks[0].long()], tables[0][masks[1].long()]])
    assert seen["mask"].dtype == torch.int64 and torch.equal(seen["mask"], expected)
    assert (seen["mask"][:, 12:] == -1).all() and set(seen["mask"][0, :12, :15].unique().tolist()) <= {20, 21, 22}
    with pytest.raises(ValueError, match="uint8 masks .* no label_tables"):
        wrapper(batch)

    float_batch = {"image": torch.zeros(1, 3, 4, 4), "image_k": torch.ones(1, 3, 4, 4)}
    wrapper(float_batch)  # views made by workers pass through untouched
    assert torch.equal(seen["image_k"], float_batch["image_k"])


def test_config_switch_is_strict():
    from training import config as config_lib

    assert config_lib.load_config("demo", []).data.photometric_on == "auto"
    assert config_lib.load_config("demo", ["data.photometric_on=device"]).data.photometric_on == "device"
    assert config_lib.load_config("demo", ["data.photometric_on=worker"]).data.photometric_on == "worker"
    with pytest.raises(config_lib.ConfigError, match="photometric_on 'gpu'.*'auto', 'device' or 'worker'"):
        config_lib.load_config("demo", ["data.photometric_on=gpu"])


def test_device_finishes_the_regions_workers_leave_unresampled():
    """Enlarging draws reach the device as source regions; resized and flipped there they match the worker's own
    crop (torch's uint8 kernel) within one grey level, and a float bilinear resize to float precision. Shrinking
    draws are finished by the worker. The mask is the worker's either way, so image and mask stay aligned."""
    image = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(40) // 8).repeat(30, 1).to(torch.uint8).numpy()
    transform = JointTrainTransform(
        crop_size=(32, 36), mean=MEAN, std=STD, scale_range=(0.5, 2.0), cat_max_ratio=1.0, photometric=NO_PHOTOMETRIC
    )
    items, references, kinds = [], [], set()
    for seed in range(40):
        torch.manual_seed(seed)
        item = transform.device_crop(image, mask)
        torch.manual_seed(seed)
        box, cropped = transform.draw(30, 40, mask)
        assert torch.equal(item["mask"][: box.height, : box.width], torch.from_numpy(cropped))
        height, width, flip = item["source_region"].tolist()
        enlarging = box.src_h <= box.height and box.src_w <= box.width
        kinds.add((enlarging, flip))
        assert (height, width, flip) == (
            (box.src_h, box.src_w, int(box.flip)) if enlarging else (box.height, box.width, 0)
        )
        items.append(item)
        references.append(crop_image(image, box))
    assert kinds == {(True, 0), (True, 1), (False, 0)}  # both kinds of draw, flipped or not, are covered
    batch = {key: torch.stack([item[key] for item in items]) for key in ("image", "image_size", "source_region")}
    finished = resize_regions(batch["image"], batch["source_region"], batch["image_size"])
    assert finished.dtype == torch.float32 and finished.shape == (40, 3, 32, 36)
    for index, (item, reference) in enumerate(zip(items, references)):
        height, width = item["image_size"].tolist()
        ours = finished[index, :, :height, :width]
        assert (ours.round() - reference.float()).abs().max() <= 1, index
        region_h, region_w, flip = item["source_region"].tolist()
        region = item["image"][None, :, :region_h, :region_w].float()
        exact = torch.nn.functional.interpolate(region, size=(height, width), mode="bilinear", align_corners=False)
        assert torch.allclose(ours, exact[0].flip(-1) if flip else exact[0], atol=1e-3), index

    # Through BatchPhotometric with no jitter: normalised finished crops, zero outside their real size.
    views = BatchPhotometric(NO_PHOTOMETRIC, MEAN, STD)(
        batch["image"], batch["image_size"], views=1, regions=batch["source_region"]
    )[0]
    for index, (item, reference) in enumerate(zip(items, references)):
        height, width = item["image_size"].tolist()
        expected = Normalize(MEAN, STD)(reference)
        assert (views[index, :, :height, :width] - expected).abs().max() <= 1.01 / 255 / min(STD), index
        assert (views[index, :, height:] == 0).all() and (views[index, :, :, width:] == 0).all()
    with pytest.raises(ValueError, match=r"source regions must be int64 \[B, 3\]"):
        BatchPhotometric(NO_PHOTOMETRIC, MEAN, STD)(batch["image"], batch["image_size"], regions=batch["image_size"])
