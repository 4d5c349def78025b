"""Readers for the on-disk layouts of the supported datasets.

A reader lists the (image, mask) files of one split and decodes a mask into **local ids** ``0..K-1`` with
**255 = ignore**, checking every value: nothing outside the dataset's label range is silently relabelled.
Files are decoded by training.data.decode: palette PNGs give their indices, never colours; MATLAB .mat label
files by scipy (0.1-0.8 ms per CCP/MSRC file, well below decoding its photo, so they are read per sample).
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.data import classes
from training.data.counting import value_counts
from training.data.decode import load_image, read_label_png
from training.data.errors import BadSampleError, DatasetLayoutError
from training.data.label_space import LOCAL_IGNORE
from training.data.sample_index import SampleFiles, SampleIndex
from training.data.specs import DatasetSpec, parse_spec

INVALID = -1  # marks raw values that are not part of a dataset's encoding in a lookup table
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# What scipy's loadmat raises on truncated or foreign bytes, besides its own MatReadError.
MAT_READ_ERRORS = (OSError, ValueError, TypeError, IndexError, KeyError, EOFError, zlib.error)


def lookup_table(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    """Raw value -> local id (255 = ignore, -1 = not a valid raw value), int16 ``[size]``."""
    table = np.full(size, INVALID, dtype=np.int16)
    for raw, local in mapping.items():
        table[raw] = local
    return table


def identity_table(num_classes: int) -> np.ndarray:
    """Masks already in local ids: ``0..K-1`` and 255."""
    return lookup_table({**{i: i for i in range(num_classes)}, LOCAL_IGNORE: LOCAL_IGNORE})


def proven_valid(raw: np.ndarray, table: np.ndarray) -> bool:
    """Cheap sufficient check that every value of a uint8 mask is valid under ``table`` (one or two SIMD max
    passes).

    True when the mask's largest value, or its largest value below 255 if 255 is valid, lies in the table's
    valid prefix; False means "not proven" (e.g. an encoding with gaps), and the caller counts values.
    """
    invalid = np.flatnonzero(table == INVALID)
    prefix_end = int(invalid[0]) if invalid.size else table.size
    top = int(raw.max()) if raw.size else 0
    if top < prefix_end:
        return True
    if top == LOCAL_IGNORE and table[LOCAL_IGNORE] != INVALID:
        below_ignore = int((raw + np.uint8(1)).max()) - 1  # 255 wraps to 0: the largest value other than 255
        return below_ignore < prefix_end
    return False


class LabelMap:
    """One encoding's raw value -> local id map (``table``: int16 ``[256]``, -1 = invalid) as callables on uint8
    masks: ``check`` raises on invalid values, ``__call__`` maps.

    Encodings that shift every valid value by the same amount mod 256 (local ids: 0; ADE20K's ``0 -> 255,
    v -> v - 1``: -1) map by one wrapping addition, in place if asked; others by PIL's byte lookup table.
    """

    def __init__(self, table: np.ndarray):
        if table.size != 256:
            raise ValueError(f"LabelMap needs a 256-entry table, got {table.size}")
        self.table = table
        valid = np.flatnonzero(table != INVALID)
        shifts = np.unique((table[valid] - valid) % 256)
        self.shift = int(shifts[0]) if shifts.size == 1 else None
        self.lut = None if self.shift is not None else table.astype(np.uint8).tolist()

    def check(self, raw: np.ndarray, path: Path, valid_hint: str) -> None:
        """Raise ``BadSampleError`` naming ``path`` if any value of the uint8 mask is not in the encoding."""
        if proven_valid(raw, self.table):
            return
        bad = np.flatnonzero((value_counts(raw) > 0) & (self.table == INVALID))
        if bad.size:
            raise BadSampleError(path, f"label values {bad[:10].tolist()} outside the dataset's range ({valid_hint})")

    def __call__(self, raw: np.ndarray, in_place: bool = False) -> np.ndarray:
        """Checked uint8 raw values ``[H, W]`` -> local ids uint8 ``[H, W]`` (``raw`` itself when the identity)."""
        if self.shift is not None:
            if self.shift == 0:
                return raw
            if in_place:
                return np.add(raw, np.uint8(self.shift), out=raw)  # uint8 arithmetic wraps mod 256
            return raw + np.uint8(self.shift)
        height, width = raw.shape
        mapped = Image.frombuffer("L", (width, height), np.ascontiguousarray(raw), "raw", "L", 0, 1).point(self.lut)
        return np.array(mapped)  # a writable copy (np.asarray of a PIL image is read-only)


IDENTITY = LabelMap(lookup_table({i: i for i in range(256)}))


def apply_table(raw: np.ndarray, table: np.ndarray, path: Path, valid_hint: str) -> np.ndarray:
    """Map raw label values through ``table`` to local ids uint8 ``[H, W]``; any value outside the encoding
    raises naming the file (8-bit masks: ``LabelMap``; wider integers, e.g. from .mat files: counted)."""
    if raw.dtype == np.uint8 and table.size == 256:
        label_map = LabelMap(table)
        label_map.check(raw, path, valid_hint)
        return label_map(raw)
    if raw.size and (raw.min() < 0 or raw.max() >= table.size):
        bad = np.unique(raw[(raw < 0) | (raw >= table.size)])
        raise BadSampleError(path, f"label values {bad[:10].tolist()} outside the dataset's range ({valid_hint})")
    bad = np.flatnonzero((np.bincount(raw.ravel(), minlength=table.size) > 0) & (table == INVALID))
    if bad.size:
        raise BadSampleError(path, f"label values {bad[:10].tolist()} outside the dataset's range ({valid_hint})")
    return table.astype(np.uint8)[raw]


class SegmentationReader:
    """Base class: ``samples`` of one split, ``class_names``, ``palette`` and ``load_mask``."""

    format_name = ""
    class_names: tuple[str, ...] = ()
    train_split = "train"
    eval_split = "val"
    split_aliases: dict[str, str] = {}
    splits: tuple[str, ...] = ()  # the split names a format knows (checked by _require_known_split)
    valid_hint = ""
    indexed = True  # samples are files listed into a SampleIndex (cacheable, shared between ranks)

    def __init__(
        self, root: str | Path, split: str | None = None, *, train: bool = True, samples: SampleIndex | None = None
    ):
        """``samples``: the split's listing made earlier (cached, or by another rank); None lists the folder."""
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetLayoutError(f"{self.root}: dataset folder not found (for {self.format_name})")
        split = split or (self.train_split if train else self.eval_split)
        self.split = self.split_aliases.get(split, split)
        self.listing_inputs: list[Path] = []  # the list files the listing read (their changes invalidate it)
        self.samples = samples if samples is not None else SampleIndex.pack(self.root, self._list_samples())
        if not len(self.samples):
            raise DatasetLayoutError(f"{self.root}: split {self.split!r} of {self.format_name} is empty")
        self.tables: dict[str, np.ndarray] = self._tables()
        self.label_maps = {name: LabelMap(table) for name, table in self.tables.items() if table.size == 256}

    # ---- format-specific parts -----------------------------------------------------------------------------
    def _list_samples(self) -> list[SampleFiles]:
        raise NotImplementedError

    def _tables(self) -> dict[str, np.ndarray]:
        return {"local": identity_table(len(self.class_names))}

    def _raw_mask(self, sample: SampleFiles) -> np.ndarray:
        return read_label_png(sample.mask)

    # ---- shared ----------------------------------------------------------------------------------------------
    @property
    def dataset_name(self) -> str:
        """Name in the label space (``"<dataset>/<class>"``)."""
        return self.format_name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def palette(self) -> np.ndarray:
        """RGB colour per local class for overlays, uint8 ``[K, 3]``."""
        return classes.distinct_palette(self.num_classes)

    def __len__(self) -> int:
        return len(self.samples)

    def missing_files(self) -> list[BadSampleError]:
        """Samples whose image or mask file does not exist (checked once at start-up)."""
        problems = []
        for sample in self.samples:
            if not sample.image.is_file():
                problems.append(BadSampleError(sample.image, "image file not found"))
            elif sample.mask is None or not sample.mask.is_file():
                problems.append(BadSampleError(sample.mask or sample.image, "mask file not found"))
        return problems

    def drop(self, problems: list[BadSampleError]) -> None:
        bad_paths = {problem.path for problem in problems}
        keep = np.array([str(s.image) not in bad_paths and str(s.mask) not in bad_paths for s in self.samples])
        self.samples = self.samples.select(keep)
        if not len(self.samples):
            raise DatasetLayoutError(f"{self.root}: no usable sample left in split {self.split!r}")

    def load_image(self, index: int) -> torch.Tensor:
        """uint8 RGB ``[3, H, W]``."""
        return load_image(self.samples[index].image)

    def load_mask(self, index: int) -> np.ndarray:
        """Local ids, uint8 ``[H, W]``, 255 = ignore."""
        sample = self.samples[index]
        return apply_table(self._raw_mask(sample), self.tables[sample.encoding], sample.mask, self.valid_hint)

    def load_pair(self, index: int) -> tuple[torch.Tensor, np.ndarray]:
        """uint8 image ``[3, H, W]`` and local-id mask uint8 ``[H, W]``, checked to have the same size."""
        image, raw, label_map = self.load_checked_pair(index)
        return image, label_map(raw)

    def load_checked_pair(self, index: int) -> tuple[torch.Tensor, np.ndarray, LabelMap]:
        """uint8 image ``[3, H, W]``, the mask's checked raw values uint8 ``[H, W]`` and the ``LabelMap`` to local
        ids, so a training crop maps only its own pixels. Masks wider than 8 bits come back already mapped (with
        the identity map)."""
        sample = self.samples[index]
        image = self.load_image(index)
        raw = self._raw_mask(sample)
        if raw.shape != tuple(image.shape[-2:]):
            raise BadSampleError(
                sample.mask,
                f"mask is {raw.shape[1]}x{raw.shape[0]} (WxH) but image "
                f"{sample.image.name} is {image.shape[-1]}x{image.shape[-2]}",
            )
        table = self.tables[sample.encoding]
        if raw.dtype != np.uint8 or table.size != 256:
            return image, apply_table(raw, table, sample.mask, self.valid_hint), IDENTITY
        label_map = self.label_maps[sample.encoding]
        label_map.check(raw, sample.mask, self.valid_hint)
        return image, raw, label_map

    def _require_dir(self, path: Path, what: str) -> Path:
        if not path.is_dir():
            raise DatasetLayoutError(f"{path}: not found; expected {what} in a {self.format_name} layout")
        return path

    def _require_known_split(self) -> None:
        if self.split not in self.splits:
            raise DatasetLayoutError(
                f"{self.root}: unknown {self.format_name} split {self.split!r}; choose one of {', '.join(self.splits)}"
            )

    def _read_list(self, path: Path) -> list[str]:
        self.listing_inputs.append(path)
        if not path.is_file():
            raise DatasetLayoutError(f"{path}: split list not found for split {self.split!r} of {self.format_name}")
        return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def integer_labels(values: np.ndarray, path: Path, key: str) -> np.ndarray:
    """A .mat variable as integer label values (MATLAB often stores them as doubles; those must be whole)."""
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return values
    if values.dtype.kind == "f" and np.array_equal(values, np.round(values)):
        return values.astype(np.int64)
    raise BadSampleError(path, f"variable {key!r} holds {values.dtype} values, not integer labels")


def read_mat_arrays(path: Path, keys: tuple[str, ...]) -> list[np.ndarray]:
    """The integer arrays stored under ``keys`` in a MATLAB .mat label file (scipy.io.loadmat); a missing,
    unreadable or incomplete file raises ``BadSampleError`` naming it."""
    from scipy.io import loadmat  # only the .mat layouts need scipy
    from scipy.io.matlab import MatReadError

    try:
        contents = loadmat(str(path))
    except FileNotFoundError as error:
        raise BadSampleError(path, "mask file not found") from error
    except (MatReadError, *MAT_READ_ERRORS) as error:
        raise BadSampleError(path, f".mat label file is truncated or corrupt ({error})") from error
    found = sorted(k for k in contents if not k.startswith("__"))
    missing = [key for key in keys if key not in found]
    if missing:
        raise BadSampleError(path, f".mat label file has no variable {missing[0]!r} (found: {', '.join(found)})")
    return [integer_labels(contents[key], path, key) for key in keys]


def _image_files(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())


class VOCReader(SegmentationReader):
    """``VOCdevkit/VOC2012``: JPEGImages, SegmentationClass (palette PNGs, 255 boundaries), ImageSets."""

    format_name = "voc"
    class_names = classes.VOC_CLASSES
    valid_hint = "0..20 and 255"
    splits = ("train", "val", "trainval")

    @property
    def palette(self) -> np.ndarray:
        return classes.voc_colormap(self.num_classes)

    def _list_samples(self) -> list[SampleFiles]:
        images = self._require_dir(self.root / "JPEGImages", "JPEGImages/")
        lists = self._require_dir(self.root / "ImageSets" / "Segmentation", "ImageSets/Segmentation/")
        self._require_known_split()
        labels = self.root / "SegmentationClass"
        return [
            SampleFiles(images / f"{i}.jpg", labels / f"{i}.png", i)
            for i in self._read_list(lists / f"{self.split}.txt")
        ]


class VOCAugReader(VOCReader):
    """VOC 2012 + SBD: ``train_aug`` (10,582) as in MMSegmentation's ``pascal_voc12_aug`` config.

    ``train_aug`` reads ``trainaug.txt`` if present, else ``train.txt`` + ``aug.txt``. Images of the official
    lists take their labels from ``SegmentationClass`` (with boundaries), the others from ``SegmentationClassAug``.
    """

    format_name = "voc_aug"
    train_split = "train_aug"
    splits = ("train_aug", "aug", "train", "val", "trainval")

    def _list_samples(self) -> list[SampleFiles]:
        if self.split != "train_aug":
            samples = super()._list_samples()
            if self.split == "aug":
                return [
                    SampleFiles(s.image, self.root / "SegmentationClassAug" / f"{s.name}.png", s.name) for s in samples
                ]
            return samples
        images = self._require_dir(self.root / "JPEGImages", "JPEGImages/")
        lists = self._require_dir(self.root / "ImageSets" / "Segmentation", "ImageSets/Segmentation/")
        if (lists / "trainaug.txt").is_file():
            ids = self._read_list(lists / "trainaug.txt")
        elif (lists / "aug.txt").is_file():
            ids = self._read_list(lists / "train.txt") + self._read_list(lists / "aug.txt")
        else:
            raise DatasetLayoutError(
                f"{lists}: neither trainaug.txt nor aug.txt found; run MMSegmentation's "
                "tools/dataset_converters/voc_aug.py to build SegmentationClassAug and the aug lists"
            )
        official = set()
        for name in ("train.txt", "val.txt"):
            if (lists / name).is_file():
                official.update(self._read_list(lists / name))
        samples = []
        for i in ids:
            label = self.root / "SegmentationClass" / f"{i}.png"
            if i not in official or not label.is_file():
                label = self.root / "SegmentationClassAug" / f"{i}.png"
            samples.append(SampleFiles(images / f"{i}.jpg", label, i))
        return samples


class ADE20KReader(SegmentationReader):
    """``ADEChallengeData2016``: annotations 0..150, 0 = "other objects" -> ignore, v -> v - 1."""

    format_name = "ade20k"
    class_names = classes.ADE20K_CLASSES
    train_split, eval_split = "training", "validation"
    split_aliases = {"train": "training", "val": "validation"}
    valid_hint = "0..150, 0 = other"

    def _list_samples(self) -> list[SampleFiles]:
        images = self._require_dir(self.root / "images" / self.split, f"images/{self.split}/")
        labels = self._require_dir(self.root / "annotations" / self.split, f"annotations/{self.split}/")
        return [SampleFiles(p, labels / f"{p.stem}.png", p.stem) for p in _image_files(images, (".jpg", ".jpeg"))]

    def _tables(self) -> dict[str, np.ndarray]:
        return {"local": lookup_table({0: LOCAL_IGNORE, **{v: v - 1 for v in range(1, 151)}})}


def coco_stuff_raw_table() -> np.ndarray:
    """0-based stuffthingmaps id (0..181, 255 unlabeled) -> 0..170; the 11 unannotated ids are invalid."""
    used = [raw for raw in range(classes.COCO_STUFF_NUM_RAW_IDS) if raw not in classes.COCO_STUFF_UNUSED_RAW_IDS]
    return lookup_table({**{raw: local for local, raw in enumerate(used)}, LOCAL_IGNORE: LOCAL_IGNORE})


class COCOStuff164kReader(SegmentationReader):
    """``coco_stuff164k``: ``<id>_labelTrainIds.png`` (0..170) if converted, else raw ``<id>.png`` (0..181)."""

    format_name = "coco_stuff164k"
    class_names = classes.COCO_STUFF_CLASSES
    train_split, eval_split = "train2017", "val2017"
    split_aliases = {"train": "train2017", "val": "val2017"}
    valid_hint = "raw 0-based ids 0..181 without the 11 unannotated ids, 255 = unlabeled; trainIds 0..170"

    def _list_samples(self) -> list[SampleFiles]:
        images = self._require_dir(self.root / "images" / self.split, f"images/{self.split}/")
        labels = self._require_dir(self.root / "annotations" / self.split, f"annotations/{self.split}/")
        samples = []
        for image in _image_files(images, (".jpg", ".jpeg")):
            converted = labels / f"{image.stem}_labelTrainIds.png"
            if converted.is_file():
                samples.append(SampleFiles(image, converted, image.stem, "train_ids"))
            else:
                samples.append(SampleFiles(image, labels / f"{image.stem}.png", image.stem, "raw"))
        return samples

    def _tables(self) -> dict[str, np.ndarray]:
        return {"raw": coco_stuff_raw_table(), "train_ids": identity_table(self.num_classes)}


class COCOStuff10kReader(SegmentationReader):
    """``coco_stuff10k``: the released ``annotations/*.mat`` (key 'S', 1-based, 0 unlabeled) with
    ``imageLists/{train,test}.txt``, or MMSegmentation's converted ``annotations/<split>2014/*_labelTrainIds.png``
    (0 unlabeled, 1..171)."""

    format_name = "coco_stuff10k"
    class_names = classes.COCO_STUFF_CLASSES
    train_split, eval_split = "train", "test"
    split_aliases = {"val": "test", "train2014": "train", "test2014": "test"}
    valid_hint = "1-based COCO ids 1..182 without the 11 unannotated ids, 0 = unlabeled"

    def _list_samples(self) -> list[SampleFiles]:
        converted = self.root / "images" / f"{self.split}2014"
        if converted.is_dir():
            labels = self._require_dir(
                self.root / "annotations" / f"{self.split}2014", f"annotations/{self.split}2014/"
            )
            return [
                SampleFiles(p, labels / f"{p.stem}_labelTrainIds.png", p.stem, "converted")
                for p in _image_files(converted, (".jpg", ".jpeg"))
            ]
        ids = self._read_list(self.root / "imageLists" / f"{self.split}.txt")
        images, labels = self.root / "images", self.root / "annotations"
        return [SampleFiles(images / f"{i}.jpg", labels / f"{i}.mat", i, "mat") for i in ids]

    def _tables(self) -> dict[str, np.ndarray]:
        raw_164k = coco_stuff_raw_table()
        one_based = {v: int(raw_164k[v - 1]) for v in range(1, 183) if raw_164k[v - 1] != INVALID}
        table = lookup_table({0: LOCAL_IGNORE, **one_based})
        return {"mat": table, "converted": lookup_table({0: LOCAL_IGNORE, **{v: v - 1 for v in range(1, 172)}})}

    def _raw_mask(self, sample: SampleFiles) -> np.ndarray:
        if sample.encoding != "mat":
            return read_label_png(sample.mask)
        return read_mat_arrays(sample.mask, ("S",))[0]


class CityscapesReader(SegmentationReader):
    """``cityscapes``: ``*_gtFine_labelTrainIds.png`` if present, else raw ``*_gtFine_labelIds.png`` (0..33)."""

    format_name = "cityscapes"
    class_names = classes.CITYSCAPES_CLASSES
    valid_hint = "labelIds 0..33; trainIds 0..18 and 255"

    @property
    def palette(self) -> np.ndarray:
        return np.asarray(classes.CITYSCAPES_PALETTE, dtype=np.uint8)

    def _list_samples(self) -> list[SampleFiles]:
        images = self._require_dir(self.root / "leftImg8bit" / self.split, f"leftImg8bit/{self.split}/")
        labels = self._require_dir(self.root / "gtFine" / self.split, f"gtFine/{self.split}/")
        samples = []
        for image in sorted(images.glob("*/*_leftImg8bit.png")):
            stem = image.name[: -len("_leftImg8bit.png")]
            folder = labels / image.parent.name
            train_ids = folder / f"{stem}_gtFine_labelTrainIds.png"
            if train_ids.is_file():
                samples.append(SampleFiles(image, train_ids, stem, "train_ids"))
            else:
                samples.append(SampleFiles(image, folder / f"{stem}_gtFine_labelIds.png", stem, "label_ids"))
        return samples

    def _tables(self) -> dict[str, np.ndarray]:
        label_ids = {
            i: classes.CITYSCAPES_ID_TO_TRAIN_ID.get(i, LOCAL_IGNORE) for i in range(classes.CITYSCAPES_NUM_LABEL_IDS)
        }
        return {"label_ids": lookup_table(label_ids), "train_ids": identity_table(self.num_classes)}


class FolderReader(SegmentationReader):
    """Users' own data: ``classes.txt`` (one name per line), ``images/[split/]``, ``masks/[split/]`` PNGs with
    local ids 0..K-1 and 255 = ignore; a mask has the image's relative path with a ``.png`` suffix. Without a
    ``<split>`` sub-folder (and no explicit split) every image under ``images/`` is used.

    Its label-space name is the folder's name.
    """

    format_name = "folder"
    valid_hint = "0..K-1 from classes.txt and 255"

    def __init__(
        self, root: str | Path, split: str | None = None, *, train: bool = True, samples: SampleIndex | None = None
    ):
        root = Path(root).expanduser()
        names_file = root / "classes.txt"
        if root.is_dir() and not names_file.is_file():
            raise DatasetLayoutError(f"{names_file}: class-name file not found (one class name per line)")
        if root.is_dir():
            names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
            if not names or len(names) > LOCAL_IGNORE or len(set(names)) != len(names):
                raise DatasetLayoutError(f"{names_file}: needs 1..255 distinct class names, found {len(names)}")
            self.class_names = tuple(names)
            self.valid_hint = f"0..{len(names) - 1} and 255"
        self._explicit_split = split is not None
        super().__init__(root, split, train=train, samples=samples)

    @property
    def dataset_name(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.root.resolve().name) or "folder"

    def _list_samples(self) -> list[SampleFiles]:
        images = self._require_dir(self.root / "images", "images/")
        masks = self._require_dir(self.root / "masks", "masks/")
        if (images / self.split).is_dir():
            images, masks = images / self.split, masks / self.split
        elif self._explicit_split:
            raise DatasetLayoutError(f"{images / self.split}: split folder not found")
        return [
            SampleFiles(p, masks / p.relative_to(images).with_suffix(".png"), str(p.relative_to(images)))
            for p in _image_files(images)
        ]


class CamVidReader(SegmentationReader):
    """CamVid as prepared for SegNet (480x360): ``<split>/`` RGB PNGs and ``<split>annot/`` grayscale PNGs of the
    same name, 0..10 = the 11 classes, 11 = unlabelled -> ignore. ``trainval`` = train + val. The release's
    ``<split>.txt`` lists hold the same pairs as paths of its authors' machine, so the folders are read."""

    format_name = "camvid"
    class_names = classes.CAMVID_CLASSES
    splits = ("train", "val", "test", "trainval")
    valid_hint = "0..10 and 11 = unlabelled"

    def _list_samples(self) -> list[SampleFiles]:
        self._require_known_split()
        parts = ("train", "val") if self.split == "trainval" else (self.split,)
        samples = []
        for part in parts:
            images = self._require_dir(self.root / part, f"{part}/")
            labels = self._require_dir(self.root / f"{part}annot", f"{part}annot/")
            samples += [SampleFiles(p, labels / p.name, p.stem) for p in _image_files(images, (".png",))]
        return samples

    def _tables(self) -> dict[str, np.ndarray]:
        local = {i: i for i in range(self.num_classes)}
        return {"local": lookup_table({**local, classes.CAMVID_UNLABELLED: LOCAL_IGNORE})}


class OxfordPetReader(SegmentationReader):
    """Oxford-IIIT Pet in the layout torchvision.datasets.OxfordIIITPet reads: ``images/<id>.jpg``,
    ``annotations/trimaps/<id>.png`` and the split lists ``annotations/{trainval,test}.txt``
    (``<id> <class> <species> <breed>``). The path may be that folder or torchvision's ``root`` holding it as
    ``oxford-iiit-pet/``. Trimap 1 = pet -> 1, 2 = background -> 0, 3 = the uncertain border -> ignore. Only
    listed images are read, so other files under ``images/`` (.mat files, unlisted images) do not matter; images
    stored as PNG or GIF under a .jpg name are decoded by their content."""

    format_name = "oxford_pet"
    class_names = classes.OXFORD_PET_CLASSES
    train_split, eval_split = "trainval", "test"
    split_aliases = {"train": "trainval", "val": "test"}
    splits = ("trainval", "test")
    valid_hint = "trimap 1 = pet, 2 = background, 3 = border"

    def _list_samples(self) -> list[SampleFiles]:
        self._require_known_split()
        base = self.root / "oxford-iiit-pet" if (self.root / "oxford-iiit-pet").is_dir() else self.root
        images = self._require_dir(base / "images", "images/")
        trimaps = self._require_dir(base / "annotations" / "trimaps", "annotations/trimaps/")
        ids = self._read_list(base / "annotations" / f"{self.split}.txt")
        return [SampleFiles(images / f"{i}.jpg", trimaps / f"{i}.png", i) for i in ids]

    def _tables(self) -> dict[str, np.ndarray]:
        return {"local": lookup_table({1: 1, 2: 0, 3: LOCAL_IGNORE})}


# Datasets without an official split: sample number n goes to train if n % 5 is 0, 1 or 2, to val if 3, to test
# if 4 (60/20/20). The rule depends on nothing but the file's own name, so it is the same on every machine and
# does not move samples when files are added or missing.
NUMBERED_SPLITS: dict[str, tuple[int, ...]] = {
    "train": (0, 1, 2),
    "val": (3,),
    "test": (4,),
    "trainval": (0, 1, 2, 3),
    "all": (0, 1, 2, 3, 4),
}


class NumberedSplitReader(SegmentationReader):
    """A dataset split by ``NUMBERED_SPLITS`` on a number in each file name (``_sample_number``)."""

    splits = tuple(NUMBERED_SPLITS)
    name_pattern = re.compile(r"(\d+)")  # group 1: the number that decides the split

    def _in_split(self, path: Path) -> bool:
        match = self.name_pattern.fullmatch(path.stem)
        if match is None:
            raise DatasetLayoutError(
                f"{path}: unexpected file name in a {self.format_name} layout "
                f"(expected {self.name_pattern.pattern} before the suffix)"
            )
        return int(match.group(1)) % 5 in NUMBERED_SPLITS[self.split]


class CCPReader(NumberedSplitReader):
    """Clothing Co-Parsing: ``photos/<NNNN>.jpg`` and, for the 1,004 pixel-annotated photos,
    ``annotations/pixel-level/<NNNN>.mat`` holding ``groundtruth`` (uint8 ``[H, W]``, 0..58 in the order of
    ``label_list.mat``, 0 = background). No official split: ``NUMBERED_SPLITS`` on the photo number."""

    format_name = "ccp"
    class_names = classes.CCP_CLASSES
    valid_hint = "0..58, 0 = background"

    def _list_samples(self) -> list[SampleFiles]:
        self._require_known_split()
        photos = self._require_dir(self.root / "photos", "photos/")
        labels = self._require_dir(self.root / "annotations" / "pixel-level", "annotations/pixel-level/")
        self._check_label_list()
        return [
            SampleFiles(photos / f"{p.stem}.jpg", p, p.stem, "mat")
            for p in sorted(labels.glob("*.mat"))
            if self._in_split(p)
        ]

    def _check_label_list(self) -> None:
        """The release's class list, if present, must be the one the ids are decoded with."""
        path = self.root / "label_list.mat"
        self.listing_inputs.append(path)
        if not path.is_file():
            return
        from scipy.io import loadmat

        try:
            names = [str(np.asarray(cell).ravel()[0]) for cell in loadmat(str(path))["label_list"].ravel()]
        except (*MAT_READ_ERRORS, AttributeError) as error:
            raise DatasetLayoutError(f"{path}: cannot read the class list 'label_list' ({error})") from error
        if names != [classes.CCP_LABEL_LIST_BACKGROUND, *classes.CCP_CLASSES[1:]]:
            raise DatasetLayoutError(
                f"{path}: class list differs from the {len(self.class_names)} classes this "
                "reader decodes (Clothing Co-Parsing's label_list.mat)"
            )

    def _tables(self) -> dict[str, np.ndarray]:
        return {"mat": lookup_table({i: i for i in range(self.num_classes)})}  # no ignore value

    def _raw_mask(self, sample: SampleFiles) -> np.ndarray:
        return read_mat_arrays(sample.mask, ("groundtruth",))[0]


class MSRCReader(NumberedSplitReader):
    """MSRC-v2 with the cleaned-up labels: ``Images/<row>_<n>_s.bmp`` and ``newsegmentations_mats/<row>_<n>_s_GT.mat``
    holding ``newseg`` (segment map ``[H, W]``, 1..S) and ``newlabels`` (class 1..23 of segments 1..L); segments
    past L are void -> ignore. No official split: ``NUMBERED_SPLITS`` on n, the image's number within its class
    row, so every row is split alike."""

    format_name = "msrc"
    class_names = classes.MSRC_CLASSES
    name_pattern = re.compile(r"\d+_(\d+)_s")
    valid_hint = "segment ids 1..255, classes 1..23"

    def _list_samples(self) -> list[SampleFiles]:
        self._require_known_split()
        images = self._require_dir(self.root / "Images", "Images/")
        labels = self._require_dir(self.root / "newsegmentations_mats", "newsegmentations_mats/")
        return [
            SampleFiles(p, labels / f"{p.stem}_GT.mat", p.stem)
            for p in _image_files(images, (".bmp",))
            if self._in_split(p)
        ]

    def _tables(self) -> dict[str, np.ndarray]:
        return {"local": lookup_table({**{i: i for i in range(self.num_classes)}, LOCAL_IGNORE: LOCAL_IGNORE})}

    def _raw_mask(self, sample: SampleFiles) -> np.ndarray:
        """Local ids uint8 ``[H, W]``: each segment takes its class, segments without one are void."""
        segments, labels = read_mat_arrays(sample.mask, ("newseg", "newlabels"))
        labels = labels.ravel()
        bad = np.unique(labels[(labels < 1) | (labels > self.num_classes)])
        if bad.size:
            raise BadSampleError(
                sample.mask, f"'newlabels' holds classes {bad[:10].tolist()} outside 1..{self.num_classes}"
            )
        if labels.size >= LOCAL_IGNORE:
            raise BadSampleError(sample.mask, f"'newlabels' lists {labels.size} segments; at most 254 are supported")
        segment_table = np.full(256, LOCAL_IGNORE, dtype=np.int16)
        segment_table[0] = INVALID  # segment ids start at 1
        segment_table[1 : labels.size + 1] = labels - 1
        return apply_table(segments, segment_table, sample.mask, "segment ids 1..255 in 'newseg'")


READERS: dict[str, type[SegmentationReader]] = {
    reader.format_name: reader
    for reader in (
        VOCReader,
        VOCAugReader,
        ADE20KReader,
        COCOStuff164kReader,
        COCOStuff10kReader,
        CityscapesReader,
        CamVidReader,
        OxfordPetReader,
        CCPReader,
        MSRCReader,
        FolderReader,
    )
}


def open_reader(
    spec: str | DatasetSpec, *, train: bool = True, samples: SampleIndex | None = None
) -> SegmentationReader:
    """Reader for a spec string; the split defaults to the format's training or evaluation split.

    ``samples``: the split's listing made before (training.data.shared_listing), so the folder is not listed again.
    """
    spec = parse_spec(spec)
    if spec.name == "hf":  # its own module: it needs the datasets library, and it takes options
        from training.data.hub_streaming import open_hub_reader

        return open_hub_reader(spec, train=train)
    return READERS[spec.name](spec.path, spec.split, train=train, samples=samples)
