"""Datasets handed to the trainers: multi-dataset pretraining, single-dataset fine-tuning/eval, unlabelled images.

Items (see docs/DATA.md): pretraining ``{"image", "image_k", "mask" (global ids), "dataset_id", "index"}``;
fine-tuning ``{"image", "mask" (local ids), "dataset_id", "index"}``, plus ``"name"`` in eval mode (whole image);
unlabelled ``{"image", "image_k", "index"}``. Masks are int64 with ``IGNORE_INDEX = -1``.
With ``photometric_on="device"`` (the default on a GPU) a training item instead carries one uint8 ``image``
``[3, H, W]`` holding the crop or its unresampled source region, the crop's real size ``image_size`` int64 ``[2]``,
``source_region`` int64 ``[3]``, no ``image_k``, and its mask as uint8 local ids (255 = ignore and padding); see
JointTrainTransform.device_crop. The trainer resizes, makes both jittered, normalised views and looks the ids up
on its device (training.data.device_augment.DeviceViews with ``label_tables``), so workers skip that work and send
8x fewer mask bytes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from training.data.errors import BadSampleError, DatasetLayoutError
from training.data.label_space import IGNORE_INDEX, LabelSpace, load_unify_map
from training.data.readers import IDENTITY, IMAGE_SUFFIXES, LabelMap, SegmentationReader, load_image
from training.data.shared_listing import open_checked, resolve_cache_dir
from training.data.specs import DatasetSpec
from training.data.transforms import EvalTransform, JointTrainTransform, PhotometricConfig

log = logging.getLogger(__name__)

PHOTOMETRIC_HOMES = ("worker", "device")


def check_photometric_on(value: str) -> str:
    if value not in PHOTOMETRIC_HOMES:
        raise ValueError(f"photometric_on {value!r}: expected one of {', '.join(PHOTOMETRIC_HOMES)}")
    return value


def open_readers(
    specs: Sequence[str | DatasetSpec], *, train: bool, skip_bad_samples: bool, index_cache: str | Path | None = None
) -> tuple[list[SegmentationReader], list[BadSampleError]]:
    """Open every spec and check at start-up that each listed file exists (once for all ranks, and from the
    listing cache while the folders are unchanged: training.data.shared_listing; ``index_cache`` as
    ``data.index_cache``: empty = the default folder, ``off`` = none).

    Missing files raise (naming the first one) unless ``skip_bad_samples``, which drops and returns them.
    """
    readers, dropped = [], []
    cache_dir = resolve_cache_dir(index_cache)
    for spec in specs:
        reader, missing = open_checked(spec, train=train, cache_dir=cache_dir)
        if missing and not skip_bad_samples:
            more = f" (and {len(missing) - 1} more in this split)" if len(missing) > 1 else ""
            raise BadSampleError(
                missing[0].path,
                missing[0].problem
                + more
                + "; fix the dataset, or drop such samples with --set data.skip_bad_samples=true",
            )
        if missing:
            reader.drop(missing)
            dropped.extend(missing)
            log.warning("%s: skipped %d samples with missing files", spec, len(missing))
        readers.append(reader)
    return readers, dropped


def warn_if_crop_dwarfs_images(
    readers: Sequence[SegmentationReader],
    crop_size,
    *,
    base_size: int | None,
    scale_range: Sequence[float],
    samples: int = 8,
) -> None:
    """Warn when the crop is more than twice the longest side the images reach after the largest rescale: every
    crop is then mostly padding, yet a step costs what its crop area costs. Reads the headers of the first
    ``samples`` images of each dataset (unreadable ones are left to the loaders' errors)."""
    crop = max(crop_size) if isinstance(crop_size, Sequence) else crop_size
    for reader in readers:
        sizes = []
        for sample in reader.samples[:samples]:
            try:
                with Image.open(sample.image) as image:
                    sizes.append(image.size)
            except (OSError, ValueError):
                continue
        if not sizes:
            continue
        width, height = max(sizes, key=max)
        longest = max(width, height) * (base_size / min(width, height) if base_size else 1.0) * max(scale_range)
        if crop > 2 * longest:
            log.warning(
                "%s: crop size %d is far larger than its images (%dx%d, at most %d px after rescaling): "
                "every crop is mostly padding and costs as much as a full %d px crop; lower data.crop_size",
                reader.root,
                crop,
                width,
                height,
                longest,
                crop,
            )


def lookup(table: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``table[mask]`` for a uint8 mask ``[H, W]`` -> int64 ``[H, W]`` (index_select: ~3x faster than indexing)."""
    return table.index_select(0, mask.reshape(-1).long()).view(mask.shape)


class SegmentationSamples(Dataset):
    """Concatenation of readers; each sample's mask goes through its dataset's local-value -> id table.

    ``tables[d]`` is int64 ``[256]`` (local uint8 value -> output id, 255 -> -1): global ids for pretraining,
    local ids for fine-tuning. Bad samples raise ``BadSampleError``, or with ``skip_bad_samples`` are replaced by
    the next sample of the same dataset and flagged in shared memory so ``skip_report()`` sees DataLoader workers'
    skips too.
    """

    def __init__(
        self,
        readers: Sequence[SegmentationReader],
        tables: Sequence[torch.Tensor],
        *,
        train: bool,
        transform,
        two_views: bool = False,
        skip_bad_samples: bool = False,
        dropped_at_startup: Sequence[BadSampleError] = (),
        photometric_on: str = "worker",
    ):
        self.readers = list(readers)
        self.tables = list(tables)
        self.train = train
        self.transform = transform
        self.two_views = two_views
        self.photometric_on = check_photometric_on(photometric_on)
        self.skip_bad_samples = skip_bad_samples
        self.dataset_names = [reader.dataset_name for reader in self.readers]
        self.dataset_sizes = [len(reader) for reader in self.readers]
        self.dataset_ids = torch.repeat_interleave(torch.arange(len(self.readers)), torch.tensor(self.dataset_sizes))
        self._starts = np.cumsum([0] + self.dataset_sizes)
        self._skipped = torch.zeros(len(self.dataset_ids), dtype=torch.bool).share_memory_()
        self.dropped_at_startup = list(dropped_at_startup)

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def label_tables(self) -> torch.Tensor:
        """Every dataset's local uint8 value -> output id table, int64 ``[D, 256]`` (``lookup_per_sample``)."""
        return torch.stack(self.tables)

    def locate(self, index: int) -> tuple[int, int]:
        """Concatenated index -> (dataset id, index inside that dataset)."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range 0..{len(self) - 1}")
        dataset_id = int(np.searchsorted(self._starts, index, side="right") - 1)
        return dataset_id, index - int(self._starts[dataset_id])

    def _load_with_policy(self, index: int) -> tuple[int, int, torch.Tensor, np.ndarray, LabelMap]:
        """(index actually loaded, dataset id, image, mask, map): in training the mask holds checked raw values
        and the map turns the crop's pixels into local ids; in evaluation it is already local ids (identity)."""
        dataset_id, local_index = self.locate(index)
        size = self.dataset_sizes[dataset_id]
        reader = self.readers[dataset_id]
        for _ in range(size):
            try:
                if self.train:
                    return index, dataset_id, *reader.load_checked_pair(local_index)
                return index, dataset_id, *reader.load_pair(local_index), IDENTITY
            except BadSampleError as error:
                if not self.skip_bad_samples:
                    raise
                self.mark_skipped(index, error)
                local_index = (local_index + 1) % size
                index = int(self._starts[dataset_id]) + local_index
        raise DatasetLayoutError(f"{reader.root}: every sample of the split is bad")

    def mark_skipped(self, index: int, error: BadSampleError) -> None:
        """Count sample ``index`` as skipped (seen by every process through shared memory) and warn naming it."""
        self._skipped[index] = True
        log.warning("skipping bad sample: %s", error)

    def __getitem__(self, index: int) -> dict:
        return self.make_item(*self._load_with_policy(index))

    def make_item(self, index: int, dataset_id: int, image: torch.Tensor, mask: np.ndarray, label_map) -> dict:
        """The item of a loaded sample: uint8 image ``[3, H, W]``, mask ``[H, W]`` (checked raw values in
        training, local ids in evaluation) and the ``LabelMap`` from raw values to local ids."""
        item = {"dataset_id": torch.tensor(dataset_id), "index": torch.tensor(index)}
        table = self.tables[dataset_id]
        if not self.train:
            item.update(
                image=self.transform(image),
                # masks decoded straight from a PIL buffer are read-only, which torch.from_numpy warns about
                mask=lookup(table, torch.from_numpy(mask if mask.flags.writeable else mask.copy())),
                name=self.readers[dataset_id].samples[index - int(self._starts[dataset_id])].name,
            )
            return item
        if self.photometric_on == "device":  # ids are looked up on the device too (label_tables)
            item.update(self.transform.device_crop(image, mask, label_map))
            return item
        image, mask_t = self.transform.geometric(image, mask, label_map)
        views = self.transform.views(image, 2 if self.two_views else 1)
        item["image"] = views[0]
        if self.two_views:
            item["image_k"] = views[1]
        item["mask"] = lookup(table, self.transform.pad_mask(mask_t))
        return item

    def samples_skipped_while_loading(self) -> int:
        """Bad samples met while loading so far by this process and its DataLoader workers (shared memory)."""
        return int(self._skipped.sum())

    def skip_counters(self, is_main: bool) -> Callable[[], dict[str, float]]:
        """The trainer's ``counters``: ``skipped_samples`` so far. Files dropped at start-up are the same on every
        rank, so only the main process counts them; the trainer sums the counts over ranks."""
        at_startup = len(self.dropped_at_startup) if is_main else 0
        return lambda: {"skipped_samples": float(at_startup + self.samples_skipped_while_loading())}

    def skip_report(self) -> dict:
        """Samples skipped so far (start-up + loading, all DataLoader workers): counts per dataset and files."""
        skipped = torch.nonzero(self._skipped).flatten().tolist()
        by_dataset = {name: 0 for name in self.dataset_names}
        files = [f"{problem.path}: {problem.problem}" for problem in self.dropped_at_startup]
        for problem in self.dropped_at_startup:
            for reader in self.readers:
                if str(reader.root) in problem.path:
                    by_dataset[reader.dataset_name] += 1
                    break
        for index in skipped:
            dataset_id, local_index = self.locate(index)
            by_dataset[self.dataset_names[dataset_id]] += 1
            files.append(str(self.readers[dataset_id].samples[local_index].image))
        return {"skipped": len(files), "by_dataset": by_dataset, "files": files}


def build_pretrain_dataset(
    specs: Sequence[str | DatasetSpec],
    *,
    crop_size,
    mean,
    std,
    scale_range=(0.5, 2.0),
    cat_max_ratio=0.75,
    two_views=True,
    skip_bad_samples=False,
    unify_map: str | Path | Mapping[str, str] | None = None,
    base_size: int | None = None,
    photometric: PhotometricConfig | None = None,
    photometric_on: str = "worker",
    index_cache: str | Path | None = None,
) -> tuple[SegmentationSamples, LabelSpace]:
    """Concatenate several datasets into one label space (in ``specs`` order) for pretraining.

    ``photometric_on="device"``: items carry one uint8 crop; the trainer's DeviceViews makes the views.

    ``unify_map``: optional path to (or dict of) a class-name unification map for the ablation.
    """
    if not specs:
        raise ValueError("build_pretrain_dataset needs at least one dataset spec")
    readers, dropped = open_readers(specs, train=True, skip_bad_samples=skip_bad_samples, index_cache=index_cache)
    warn_if_crop_dwarfs_images(readers, crop_size, base_size=base_size, scale_range=scale_range)
    if isinstance(unify_map, (str, Path)):
        unify_map = load_unify_map(unify_map)
    label_space = LabelSpace([(r.dataset_name, r.class_names) for r in readers], unify_map=unify_map)
    transform = JointTrainTransform(
        crop_size=crop_size,
        mean=mean,
        std=std,
        scale_range=scale_range,
        cat_max_ratio=cat_max_ratio,
        base_size=base_size,
        photometric=photometric,
    )
    tables = [label_space.global_lookup_table(i) for i in range(len(readers))]
    dataset = SegmentationSamples(
        readers,
        tables,
        train=True,
        transform=transform,
        two_views=two_views,
        skip_bad_samples=skip_bad_samples,
        dropped_at_startup=dropped,
        photometric_on=photometric_on,
    )
    return dataset, label_space


def local_lookup_table(num_classes: int) -> torch.Tensor:
    """Local uint8 value -> local id with ``255 -> -1``, int64 ``[256]``."""
    table = torch.full((256,), IGNORE_INDEX, dtype=torch.int64)
    table[:num_classes] = torch.arange(num_classes)
    return table


class SingleDatasetSegmentation(SegmentationSamples):
    """One dataset in its own local ids, with ``class_names``, ``num_classes`` and ``palette``."""

    @property
    def reader(self) -> SegmentationReader:
        return self.readers[0]

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.reader.class_names

    @property
    def num_classes(self) -> int:
        return self.reader.num_classes

    @property
    def palette(self) -> np.ndarray:
        return self.reader.palette


def build_segmentation_dataset(
    spec: str | DatasetSpec,
    *,
    train: bool,
    crop_size=None,
    mean,
    std,
    scale_range=(0.5, 2.0),
    cat_max_ratio=0.75,
    base_size: int | None = None,
    photometric: PhotometricConfig | None = None,
    skip_bad_samples=False,
    photometric_on: str = "worker",
    index_cache: str | Path | None = None,
) -> SingleDatasetSegmentation:
    """Fine-tuning (``train=True``: rescale/crop/flip/jitter to ``crop_size``) or evaluation (``train=False``:
    whole image, no crop, items carry ``"name"``; use batch size 1) dataset in local ids.

    ``photometric_on="device"`` (training only): items carry a uint8 crop and uint8 mask; the trainer's
    DeviceViews (``views=1``, ``label_tables``) jitters, normalises and makes int64 ids on its device."""
    readers, dropped = open_readers([spec], train=train, skip_bad_samples=skip_bad_samples, index_cache=index_cache)
    if train:
        if crop_size is None:
            raise ValueError("build_segmentation_dataset(train=True) needs crop_size")
        warn_if_crop_dwarfs_images(readers, crop_size, base_size=base_size, scale_range=scale_range)
        transform = JointTrainTransform(
            crop_size=crop_size,
            mean=mean,
            std=std,
            scale_range=scale_range,
            cat_max_ratio=cat_max_ratio,
            base_size=base_size,
            photometric=photometric,
        )
    else:
        transform = EvalTransform(mean=mean, std=std)
    return SingleDatasetSegmentation(
        readers,
        [local_lookup_table(readers[0].num_classes)],
        train=train,
        transform=transform,
        skip_bad_samples=skip_bad_samples,
        dropped_at_startup=dropped,
        photometric_on=photometric_on,
    )


class UnlabeledImages(Dataset):
    """Every image under a folder (recursively), two views with shared geometry: ``{"image", "image_k", "index"}``."""

    def __init__(self, folder: str | Path, transform: JointTrainTransform, photometric_on: str = "worker"):
        self.photometric_on = check_photometric_on(photometric_on)
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise DatasetLayoutError(f"{self.folder}: image folder not found")
        self.files = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise DatasetLayoutError(f"{self.folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        if self.photometric_on == "device":
            return {**self.transform.device_crop(load_image(self.files[index]), None), "index": torch.tensor(index)}
        image, _ = self.transform.geometric(load_image(self.files[index]), None)
        query, key = self.transform.views(image, 2)
        return {"image": query, "image_k": key, "index": torch.tensor(index)}


def build_unlabeled_dataset(
    folder: str | Path,
    *,
    crop_size,
    mean,
    std,
    scale_range=(0.5, 2.0),
    base_size: int | None = None,
    photometric: PhotometricConfig | None = None,
    photometric_on: str = "worker",
) -> UnlabeledImages:
    """Images to be pseudo-labelled (the COCO-without-labels experiment)."""
    transform = JointTrainTransform(
        crop_size=crop_size,
        mean=mean,
        std=std,
        scale_range=scale_range,
        cat_max_ratio=1.0,
        base_size=base_size,
        photometric=photometric,
    )
    return UnlabeledImages(folder, transform, photometric_on)
