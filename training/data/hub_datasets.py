"""Segmentation datasets as the Hugging Face Hub shares them, read through the ``datasets`` library.

Spec: ``hf:SOURCE[:split][?key=value&...]``, where SOURCE is a Hub dataset id (read from the Hugging Face cache when
offline), a local folder in the Hub repo layout (Parquet shards and a README / dataset card), or a folder written by
``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``. Options:

* ``image=COLUMN``, ``mask=COLUMN``: found automatically when the dataset has exactly one image column and one mask
  column (an ``Image`` column named like a mask, or a 2-D integer / ``ClassLabel`` array);
* ``classes=FILE``: the class names (an ``id2label`` JSON object, a JSON list, or one name per line); otherwise they
  come from the mask's ``ClassLabel`` feature, else ``id2label.json`` or ``config.json`` (``id2label``) in the repo;
* ``ignore_index=N`` (default 255): the raw value that marks unlabelled pixels;
* ``reduce_labels=true``: the ADE20K convention, raw 0 = "other" (ignored) and class ``v`` stored as ``v + 1``;
* ``remap=RAW:ID,RAW:ID,...``: an explicit raw value -> class id table (other values are refused);
* ``name=NAME``: the dataset's name in the concatenated label space (default: from SOURCE);
* ``stream=true``, ``shuffle_buffer=N``: read the split as a stream of shards instead (training.data.hub_streaming).

Rows are read map-style from the memory-mapped Arrow tables (``datasets`` converts Parquet once, into its cache);
DataLoader workers share those pages instead of copying the dataset. Every mask value is checked as for the other
readers, and a bad row is named ``SOURCE:split row N``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from training.data.decode import decode_image_bytes, decode_label_bytes
from training.data.errors import BadSampleError, DatasetLayoutError, DatasetSpecError
from training.data.label_space import LOCAL_IGNORE
from training.data.readers import INVALID, LabelMap, SampleFiles, SegmentationReader, lookup_table

OPTIONS = ("image", "mask", "classes", "ignore_index", "reduce_labels", "remap", "name", "stream", "shuffle_buffer")
MASK_NAME_HINTS = ("mask", "label", "annotation", "segment", "seg", "gt")
SPLIT_ALIASES = {"val": "validation", "validation": "val"}
NAMES_FILES = ("id2label.json", "config.json")
ROWS_CHECKED_AT_START = 16


class RowSamples(Sequence):
    """The rows of one split as :class:`SampleFiles` made on demand (no object per row).

    ``where_of(row)`` names a row in messages (``SOURCE:split row N``, or with the shard for a stream)."""

    def __init__(self, where_of: Callable[[int], str], rows: Sequence[int]):
        self.where_of, self.rows = where_of, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        row = int(self.rows[index])
        name = self.where_of(row)
        return SampleFiles(Path(name), Path(name), f"row{row}")


class HubDatasetReader(SegmentationReader):
    """A Hugging Face dataset split: image and mask columns, class names and a checked label convention."""

    format_name = "hf"
    indexed = False  # rows of the dataset's own files: nothing to list or cache
    train_split = "train"
    eval_split = "validation"

    def __init__(self, root: str | Path, split: str | None = None, *, train: bool = True, options=()):
        self.options = _checked_options(options)
        self.source = str(root)
        self.root = Path(self.source).expanduser()
        dataset, self.split = self._open_split(split or (self.train_split if train else self.eval_split))
        self.where = f"{self.source}:{self.split}"
        self.image_column, self.mask_column = _columns(dataset, self.options, self.where)
        self.class_names = tuple(_class_names(dataset, self.mask_column, self.root, self.source, self.options))
        self.dataset = _raw_bytes(dataset.select_columns([self.image_column, self.mask_column]))
        self._last_row: tuple[int, dict] | None = None
        self.samples = RowSamples(self.row_where, self._rows())
        if not len(self.samples):
            raise DatasetLayoutError(f"{self.where}: the split is empty")
        self.tables = {"local": _label_table(self.options, len(self.class_names), self.where)}
        self.valid_hint = _valid_hint(self.options, len(self.class_names))
        self.label_maps = {"local": LabelMap(self.tables["local"])}
        self._check_first_masks()

    @property
    def dataset_name(self) -> str:
        name = self.options.get("name") or self.source.rstrip("/").split("/")[-1]
        return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "hf"

    def _open_split(self, split: str):
        return _load_split(self.source, split)

    def _rows(self) -> Sequence[int]:
        return range(len(self.dataset))

    def row_where(self, row: int) -> str:
        """How messages name a row: ``SOURCE:split row N``."""
        return f"{self.where} row {row}"

    def missing_files(self) -> list[BadSampleError]:
        return []  # rows live in the dataset's own files: nothing to find missing at start-up

    def drop(self, problems: list[BadSampleError]) -> None:
        pass

    def _record(self, row: int) -> dict:
        """The row's cells, read once for its image and its mask (a loader asks for both, one after the other)."""
        if self._last_row is None or self._last_row[0] != row:
            self._last_row = (row, self.dataset[row])
        return self._last_row[1]

    def load_image(self, index: int) -> torch.Tensor:
        row = int(self.samples.rows[index])
        where = self.row_where(row)
        return decode_image_bytes(_cell_bytes(self._record(row)[self.image_column], where, "image"), where)

    def _raw_mask(self, sample: SampleFiles) -> np.ndarray:
        row = int(sample.name[3:])
        return self._mask_of(self._record(row)[self.mask_column], self.row_where(row))

    def _mask_of(self, cell, where: str) -> np.ndarray:
        if isinstance(cell, dict):  # an Image cell: encoded bytes
            return decode_label_bytes(_cell_bytes(cell, where, "mask"), where)
        values = np.asarray(cell)
        if values.ndim != 2 or values.dtype.kind not in "iu":
            raise BadSampleError(where, f"mask is not a 2-D integer array (shape {values.shape}, {values.dtype})")
        if values.size and 0 <= values.min() and values.max() <= 255:
            return values.astype(np.uint8)
        return values

    def _check_first_masks(self) -> None:
        """The class names and label convention must fit the masks: the first rows are decoded at start-up."""
        table, misfits, checked = self.tables["local"], [], 0
        for index in range(min(ROWS_CHECKED_AT_START, len(self.samples))):
            sample = self.samples[index]
            try:
                values = np.unique(self._raw_mask(sample)).astype(np.int64)
            except BadSampleError:
                continue  # a broken row is the sample's problem, reported when it is loaded
            checked += 1
            inside = (values >= 0) & (values < table.size)
            bad = np.concatenate([values[~inside], values[inside][table[values[inside]] == INVALID]])
            if bad.size:
                misfits.append((sample.name[3:], sorted(bad.tolist())[:10]))
        if misfits and len(misfits) * 2 > checked:  # one odd row is that row's problem; most rows, the convention's
            row, values = misfits[0]
            raise DatasetLayoutError(
                f"{self.where}: mask values {values} (row {row}; {len(misfits)} of the first {checked} rows) do not "
                f"fit the {len(self.class_names)} class names ({self.valid_hint}); give the right classes=, "
                "ignore_index=, reduce_labels= or remap= in the spec"
            )


def _checked_options(options) -> dict[str, str]:
    options = dict(options)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise DatasetSpecError(f"hf dataset option(s) {unknown}: unknown; known: {', '.join(OPTIONS)}")
    return options


def _load_split(source: str, split: str):
    """``(datasets.Dataset, split name)`` of a Hub id, a Hub-layout folder or a ``save_to_disk`` folder."""
    datasets = datasets_library(source)
    path = Path(source).expanduser()
    try:
        if is_saved_to_disk(path):
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(path) if path.is_dir() else source)
    except Exception as error:  # the library raises many kinds (not found, offline, bad files): one line here
        raise DatasetLayoutError(f"hf:{source}: cannot be read as a Hugging Face dataset ({error})") from None
    if isinstance(loaded, datasets.Dataset):
        return loaded, split
    name = pick_split(list(loaded), split, source)
    return loaded[name], name


def pick_split(names: list[str], split: str, source: str) -> str:
    """``split`` or its alias (``val`` / ``validation``) among the dataset's split ``names``."""
    for name in (split, SPLIT_ALIASES.get(split)):
        if name in names:
            return name
    raise DatasetLayoutError(f"hf:{source}: no split {split!r}; it has {', '.join(names)}")


def datasets_library(source: str):
    """The ``datasets`` module, or one line saying how to install it."""
    try:
        import datasets
    except ImportError:
        raise DatasetSpecError(f"hf:{source}: reading Hub datasets needs the datasets library: pip install datasets")
    return datasets


def is_saved_to_disk(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return path.is_dir() and any((path / name).is_file() for name in ("dataset_dict.json", "state.json"))


def _is_image(feature) -> bool:
    return type(feature).__name__ == "Image"


def _label_leaf(feature):
    """The innermost feature of a (nested) sequence or array feature, or None for anything else."""
    depth = 0
    while type(feature).__name__ in ("Sequence", "List", "LargeList") or isinstance(feature, list):
        feature = feature[0] if isinstance(feature, list) else feature.feature
        depth += 1
    if type(feature).__name__.startswith("Array2D"):
        return feature
    return feature if depth == 2 else None


def _columns(dataset, options: dict, where: str) -> tuple[str, str]:
    features = dataset.features
    for key in ("image", "mask"):
        if key in options and options[key] not in features:
            raise DatasetSpecError(f"{where}: no column {options[key]!r} ({key}=); columns: {', '.join(features)}")
    images = [name for name, feature in features.items() if _is_image(feature)]
    arrays = [name for name, feature in features.items() if _label_leaf(feature) is not None]
    masks = [name for name in images if any(hint in name.lower() for hint in MASK_NAME_HINTS)] + arrays
    mask = options.get("mask") or (masks[0] if len(masks) == 1 else None)
    candidates = [name for name in images if name != mask]
    image = options.get("image") or (candidates[0] if len(candidates) == 1 else None)
    if image is None or mask is None:
        raise DatasetSpecError(
            f"{where}: cannot tell the image and mask columns apart (columns: {', '.join(features)}); "
            "give them as ?image=COLUMN&mask=COLUMN"
        )
    return image, mask


def _class_names(dataset, mask_column: str, root: Path, source: str, options: dict) -> list[str]:
    if options.get("classes"):
        return _names_from_file(Path(options["classes"]).expanduser())
    leaf = _label_leaf(dataset.features[mask_column])
    if leaf is not None and type(leaf).__name__ == "ClassLabel":
        return list(leaf.names)
    for name in NAMES_FILES:
        path = _repo_file(root, source, name)
        if path is not None:
            names = _names_from_file(path, key="id2label" if name == "config.json" else None)
            if names:
                return names
    raise DatasetLayoutError(
        f"hf:{source}: no class names: the mask column {mask_column!r} has no ClassLabel feature and there is no "
        "id2label.json or config.json with id2label; give them as ?classes=FILE (id2label JSON or one per line)"
    )


def _repo_file(root: Path, source: str, name: str) -> Path | None:
    if root.is_dir():
        return root / name if (root / name).is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source, name, repo_type="dataset"))
    except Exception:  # absent from the repo, or offline without it in the cache
        return None


def _names_from_file(path: Path, key: str | None = None) -> list[str]:
    """Class names from an id2label JSON object (ids 0..K-1), a JSON list, or one name per line."""
    if not path.is_file():
        raise DatasetSpecError(f"{path}: class-name file not found")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError:
        return [line.strip() for line in text.splitlines() if line.strip()]
    if key is not None:
        data = data.get(key) if isinstance(data, dict) else None
        if data is None:
            return []
    if isinstance(data, list):
        return [str(name) for name in data]
    ids = sorted(int(i) for i in data)
    if ids != list(range(len(ids))):
        raise DatasetLayoutError(f"{path}: id2label ids must be 0..K-1 without gaps, got {ids[:10]}...")
    return [str(data[str(i)]) for i in ids]


def _label_table(options: dict, num_classes: int, where: str) -> np.ndarray:
    """Raw value -> local id (255 = ignore, -1 = invalid), int16 ``[256]``."""
    if not 1 <= num_classes <= LOCAL_IGNORE:
        raise DatasetLayoutError(f"{where}: needs 1..255 class names, found {num_classes}")
    ignore = _int_option(options, "ignore_index", LOCAL_IGNORE, where)
    if options.get("remap"):
        mapping = {}
        for pair in options["remap"].split(","):
            raw, sep, local = pair.partition(":")
            if not sep:
                raise DatasetSpecError(f"{where}: remap={options['remap']!r}: expected RAW:ID,RAW:ID,...")
            mapping[int(raw)] = int(local)
    elif flag(options, "reduce_labels"):
        mapping = {0: LOCAL_IGNORE, **{v + 1: v for v in range(num_classes)}}
    else:
        mapping = {v: v for v in range(num_classes)}
    mapping[ignore] = LOCAL_IGNORE
    bad = [local for local in mapping.values() if local != LOCAL_IGNORE and not 0 <= local < num_classes]
    if bad or any(not 0 <= raw <= 255 for raw in mapping):
        raise DatasetSpecError(f"{where}: the label convention maps outside 0..{num_classes - 1} or raw 0..255")
    return lookup_table(mapping)


def _valid_hint(options: dict, num_classes: int) -> str:
    if options.get("remap"):
        return f"remap {options['remap']}"
    if flag(options, "reduce_labels"):
        return f"0 = other, 1..{num_classes} the classes"
    return f"0..{num_classes - 1} and {options.get('ignore_index', LOCAL_IGNORE)}"


def flag(options: dict, key: str) -> bool:
    """A boolean option: ``true``, ``yes`` or ``1`` (any case) is on."""
    return options.get(key, "false").lower() in ("1", "true", "yes")


def _int_option(options: dict, key: str, default: int, where: str) -> int:
    try:
        return int(options.get(key, default))
    except ValueError:
        raise DatasetSpecError(f"{where}: {key}={options[key]!r} is not an integer") from None


def _raw_bytes(dataset):
    """Image columns as ``{"bytes", "path"}`` cells: decoded here, by the project's decoders, not by PIL inside
    ``datasets``."""
    import datasets

    for name, feature in dataset.features.items():
        if _is_image(feature):
            dataset = dataset.cast_column(name, datasets.Image(decode=False))
    return dataset


def _cell_bytes(cell, where: str, what: str) -> bytes:
    if not isinstance(cell, dict):
        raise BadSampleError(where, f"{what} cell is not an encoded image")
    if cell.get("bytes"):
        return cell["bytes"]
    if cell.get("path"):
        try:
            return Path(cell["path"]).read_bytes()
        except OSError as error:
            raise BadSampleError(where, f"{what} file {cell['path']} cannot be read ({error.strerror})") from None
    raise BadSampleError(where, f"{what} cell is empty")
