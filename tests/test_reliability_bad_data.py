"""Bad data, table-driven: every reader (VOC, VOC aug, ADE20K, COCO-Stuff 164k, Cityscapes, generic folder) against
corrupt, truncated, wrong-mode, wrong-size, out-of-range and missing files. Each must raise ``BadSampleError`` naming
the broken file (or, for missing files, be reported by the start-up check that ``skip_bad_samples`` counts), and an
invalid label value must never be mapped to some class. Counted figure: ``len(READER_SPECS) * len(FAULTS)``.

The dataset on disk stays intact: a sample's paths are pointed at a broken copy in a temporary folder.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image
from test_finetune_roundtrip import make_shapes_dataset
from test_pretrain_run import synthetic_root  # noqa: F401  (fixture)

from training.data.errors import BadSampleError, DatasetLayoutError
from training.data.readers import open_reader, read_label_png
from training.data.sample_index import SampleIndex
from training.data.synthetic import synthetic_specs

READER_SPECS = {
    "voc": lambda root, shapes: f"voc:{root / 'VOCdevkit' / 'VOC2012'}:val",
    "voc_aug": lambda root, shapes: synthetic_specs(root)["pretrain"][0],
    "ade20k": lambda root, shapes: synthetic_specs(root)["pretrain"][1],
    "coco_stuff164k": lambda root, shapes: synthetic_specs(root)["pretrain"][2],
    "cityscapes": lambda root, shapes: synthetic_specs(root)["downstream_train"],
    "folder": lambda root, shapes: f"folder:{shapes}:train",
}


def _corrupt_image(sample, tmp):
    path = tmp / f"corrupt{sample.image.suffix}"
    path.write_bytes(b"\x00not an image at all" * 20)
    return dataclasses.replace(sample, image=path), path


def _truncated_image(sample, tmp):
    path = tmp / f"truncated{sample.image.suffix}"
    data = sample.image.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return dataclasses.replace(sample, image=path), path


def _rgb_mask(sample, tmp):
    path = tmp / "rgb_mask.png"
    Image.open(sample.mask).convert("RGB").save(path)
    return dataclasses.replace(sample, mask=path), path


def _small_mask(sample, tmp):
    path = tmp / "small_mask.png"
    with Image.open(sample.mask) as mask:
        mask.crop((0, 0, mask.width // 2, mask.height)).save(path)
    return dataclasses.replace(sample, mask=path), path


def _out_of_range_mask(sample, tmp):
    path = tmp / "out_of_range.png"
    raw = read_label_png(sample.mask).copy()
    raw[1, 1] = 254  # not a class, nor ignore, in any of the encodings
    Image.fromarray(raw.astype(np.uint8), mode="L").save(path)
    return dataclasses.replace(sample, mask=path), path


def _missing_image(sample, tmp):
    path = tmp / f"gone{sample.image.suffix}"
    return dataclasses.replace(sample, image=path), path


def _missing_mask(sample, tmp):
    path = tmp / "gone.png"
    return dataclasses.replace(sample, mask=path), path


FAULTS = {
    "corrupt image": (_corrupt_image, "image is truncated or corrupt"),
    "truncated image": (_truncated_image, "image is truncated or corrupt"),
    "wrong-mode mask (RGB)": (_rgb_mask, "label image has mode 'RGB'"),
    "wrong-size mask": (_small_mask, "mask is .* but image .* is"),
    "out-of-range label value": (_out_of_range_mask, r"label values \[254\] outside the dataset's range"),
    "missing image": (_missing_image, "image file not found"),
    "missing mask": (_missing_mask, "mask file not found"),
}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("folder") / "shapes", seed=0, train_images=2, val_images=1)


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("reader_name", sorted(READER_SPECS))
def test_bad_file_raises_naming_it_or_is_counted_at_startup(
    reader_name,
    fault,
    synthetic_root,
    shapes,  # noqa: F811
    tmp_path,
):
    reader = open_reader(READER_SPECS[reader_name](synthetic_root, shapes))
    assert reader.format_name == reader_name
    reader.load_pair(0)  # the intact sample loads
    break_sample, expected = FAULTS[fault]
    broken, broken_path = break_sample(reader.samples[0], tmp_path)
    reader.samples = SampleIndex.pack(reader.root, [broken, *reader.samples[1:]])
    with pytest.raises(BadSampleError, match=expected) as caught:
        reader.load_pair(0)
    assert caught.value.path == str(broken_path)
    assert str(broken_path) in str(caught.value)
    if fault.startswith("missing"):  # found before training starts, so skip_bad_samples can drop and count it
        assert [p.path for p in reader.missing_files()] == [str(broken_path)]
        before = len(reader)
        if before == 1:  # nothing left to train on is a layout error naming the dataset, not an empty epoch
            with pytest.raises(DatasetLayoutError, match="no usable sample left"):
                reader.drop(reader.missing_files())
        else:
            reader.drop(reader.missing_files())
            assert len(reader) == before - 1


def test_a_bad_sample_met_in_a_dataloader_worker_is_one_line(capsys):
    from torch.utils.data import DataLoader, Dataset

    from mdp_hub.errors import command
    from training.data.errors import BadSampleError

    class OneBadSample(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise BadSampleError("/data/masks/0001.png", "mask 10x10 differs from its image 12x12")

    @command("python -m training.pretrain")
    def main(argv):
        next(iter(DataLoader(OneBadSample(), num_workers=1)))

    assert main([]) == 2
    line = capsys.readouterr().err.strip()
    assert line == (
        "python -m training.pretrain: error: /data/masks/0001.png: mask 10x10 differs from its image 12x12 "
        "(in DataLoader worker process 0)"
    )
