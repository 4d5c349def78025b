"""The sample list of one split, stored as a few packed arrays, and its cache on disk.

A reader's split can hold 118k samples (COCO-Stuff) and a run 150k. Kept as a list of Python objects, every
DataLoader worker would copy the pages of that list as it touches the objects' reference counts (and the garbage
collector touches them all), so each of 8 workers per GPU would grow by the size of the list. ``SampleIndex`` keeps
the paths as UTF-8 bytes in one uint8 array with offsets and makes a ``SampleFiles`` only when one is asked for:
workers read those pages and never write them.

Listing a split and checking that its files exist costs two metadata calls per sample: 300k calls to a shared
filesystem for the paper's datasets, and that on every start-up and restart. ``load_cached`` / ``save_cached``
keep the checked listing in a cache folder, keyed by format, folder and split, and valid while every folder the
listing went through (and every list file it read) keeps its modification time: adding, removing or renaming a file
changes its folder's time, so the listing is made again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.errors import BadSampleError


@dataclass(frozen=True)
class SampleFiles:
    """One sample on disk; ``encoding`` names the lookup table that turns the mask's values into local ids."""

    image: Path
    mask: Path | None
    name: str
    encoding: str = "local"


log = logging.getLogger(__name__)

CACHE_VERSION = 1
DEFAULT_CACHE_DIR = Path("~/.cache/mdp-hub/dataset-index")
CACHE_ENTRIES_KEPT = 256
# File times come from the kernel's tick clock, a few ms behind time.time_ns(): a folder changed this close to the
# start of its listing might have changed during it.
CLOCK_MARGIN_NS = 100_000_000  # the oldest entries beyond this are removed when one is written


class PackedStrings:
    """Strings as UTF-8 bytes in one uint8 array ``data`` with end offsets int64 ``[N]``."""

    def __init__(self, data: np.ndarray, ends: np.ndarray):
        self.data, self.ends = data, ends

    @classmethod
    def pack(cls, strings: Sequence[str]) -> "PackedStrings":
        encoded = [s.encode() for s in strings]
        ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), ends)

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, index: int) -> str:
        start = int(self.ends[index - 1]) if index > 0 else 0
        return self.data[start : int(self.ends[index])].tobytes().decode()

    def select(self, keep: np.ndarray) -> "PackedStrings":
        """The strings at ``keep`` (int64 positions ``[M]``)."""
        return PackedStrings.pack([self[int(i)] for i in keep])


class SampleIndex(Sequence):
    """The (image, mask, name, encoding) of each sample of a split, as ``SampleFiles`` made on demand.

    Paths under ``root`` are stored relative to it. A sample without a mask stores an empty mask path.
    """

    def __init__(self, root: Path, images, masks, names, encodings: np.ndarray, encoding_names: tuple[str, ...]):
        self.root = Path(root)
        self.images, self.masks, self.names = images, masks, names
        self.encodings, self.encoding_names = encodings, tuple(encoding_names)

    @classmethod
    def pack(cls, root: Path, samples: Sequence) -> "SampleIndex":
        """From ``SampleFiles`` (any sequence), e.g. a reader's fresh listing."""
        prefix = str(root).rstrip("/") + "/"

        def relative(path) -> str:
            text = "" if path is None else str(path)
            return text[len(prefix) :] if text.startswith(prefix) else text

        encoding_names = tuple(dict.fromkeys(s.encoding for s in samples))
        codes = {name: code for code, name in enumerate(encoding_names)}
        return cls(
            root,
            PackedStrings.pack([relative(s.image) for s in samples]),
            PackedStrings.pack([relative(s.mask) for s in samples]),
            PackedStrings.pack([s.name for s in samples]),
            np.array([codes[s.encoding] for s in samples], dtype=np.uint8),
            encoding_names,
        )

    def __len__(self) -> int:
        return len(self.encodings)

    def __getitem__(self, index):

        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range for a split of {len(self)}")
        index = index % len(self)
        mask = self.masks[index]
        return SampleFiles(
            self.root / self.images[index],
            self.root / mask if mask else None,
            self.names[index],
            self.encoding_names[int(self.encodings[index])],
        )

    def select(self, keep: np.ndarray) -> "SampleIndex":
        """The samples where the bool ``keep`` ``[N]`` is true, in order."""
        positions = np.flatnonzero(keep)
        return SampleIndex(
            self.root,
            self.images.select(positions),
            self.masks.select(positions),
            self.names.select(positions),
            self.encodings[positions],
            self.encoding_names,
        )

    def folders(self) -> list[str]:
        """Every folder holding a sample's file, with its parents up to ``root``, relative to ``root`` (the
        folders whose modification times say whether the listing still holds)."""
        parents = set()
        for strings in (self.images, self.masks):
            parents.update(strings[i].rpartition("/")[0] for i in range(len(strings)))
        folders = {""}
        for parent in parents:
            while parent and parent not in folders:
                folders.add(parent)
                parent = parent.rpartition("/")[0]
        return sorted(folders)


# ---------------------------------------------------------------- cache on disk


def cache_key(format_name: str, root: Path, split: str, extra: str = "") -> str:
    """Name of the cache entry of one split of one folder."""
    text = json.dumps([CACHE_VERSION, format_name, str(Path(root).resolve()), split, extra])
    return f"{format_name}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"


def fingerprint(root: Path, folders: Sequence[str], files: Sequence[Path]) -> list[list]:
    """``[path, inode, mtime_ns, size]`` of each folder (relative to ``root``) and file; a missing one gives
    ``[path, 0, 0, 0]``."""
    entries = []
    for path in [root / folder if folder else root for folder in folders] + [Path(f) for f in files]:
        try:
            status = path.stat()
            entries.append([str(path), status.st_ino, status.st_mtime_ns, status.st_size])
        except OSError:
            entries.append([str(path), 0, 0, 0])
    return entries


def save_cached(
    cache_dir: Path,
    key: str,
    index: SampleIndex,
    missing: Sequence[BadSampleError],
    inputs: Sequence[Path],
    listed_since_ns: int,
) -> None:
    """Write the checked listing (atomically: a reader never sees half a file), unless a folder or list file
    changed after ``listed_since_ns`` (``time.time_ns()`` before the listing began; less a margin for the
    filesystem's coarser clock): the listing may then have missed that change.

    A cache folder that cannot be written only costs the next start-up its listing: logged, not raised."""
    meta = {
        "version": CACHE_VERSION,
        "root": str(index.root),
        "encoding_names": list(index.encoding_names),
        "missing": [[problem.path, problem.problem] for problem in missing],
        "inputs": [str(path) for path in inputs],
        "folders": index.folders(),
    }
    meta["fingerprint"] = fingerprint(index.root, meta["folders"], inputs)
    if max(entry[2] for entry in meta["fingerprint"]) >= listed_since_ns - CLOCK_MARGIN_NS:
        return
    arrays = {"encodings": index.encodings, "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    for field in ("images", "masks", "names"):
        strings = getattr(index, field)
        arrays[f"{field}_data"], arrays[f"{field}_ends"] = strings.data, strings.ends
    target = Path(cache_dir).expanduser() / f"{key}.npz"
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(partial, target)
        _prune(target.parent)
    except OSError as error:
        partial.unlink(missing_ok=True)
        log.warning("dataset index cache %s not written (%s); the next start-up lists the files again", target, error)


def load_cached(cache_dir: Path, key: str) -> tuple[SampleIndex, list[BadSampleError]] | None:
    """The cached listing and its missing files, or None when there is none or a folder changed since."""
    path = Path(cache_dir).expanduser() / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        meta = json.loads(arrays["meta"].tobytes())
    except (OSError, ValueError, KeyError):
        return None  # absent, or unreadable: made again
    if meta.get("version") != CACHE_VERSION:
        return None
    root = Path(meta["root"])
    if fingerprint(root, meta["folders"], meta["inputs"]) != meta["fingerprint"]:
        return None
    strings = {f: PackedStrings(arrays[f"{f}_data"], arrays[f"{f}_ends"]) for f in ("images", "masks", "names")}
    index = SampleIndex(root, **strings, encodings=arrays["encodings"], encoding_names=tuple(meta["encoding_names"]))
    return index, [BadSampleError(path, problem) for path, problem in meta["missing"]]


def _prune(cache_dir: Path) -> None:
    entries = sorted(cache_dir.glob("*.npz"), key=lambda p: p.stat().st_mtime_ns)
    for stale in entries[:-CACHE_ENTRIES_KEPT]:
        stale.unlink(missing_ok=True)
