"""Open a dataset split with its files listed and checked once: by one rank, from the cache when it still holds.

At start-up every file of a split is checked to exist. With 64 ranks on a shared filesystem that would be 64
listings of the same folders (about 19 million metadata calls for the paper's 150k samples). Here rank 0 alone
lists and checks, or reads the checked listing from the cache (training.data.sample_index); the other ranks receive
it over the process group, so they touch the dataset folder only to read samples. An error on rank 0 (a missing
folder, a missing file) is raised with the same message on every rank.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch.distributed as dist

from training.data import errors
from training.data.readers import READERS, SegmentationReader, open_reader
from training.data.sample_index import DEFAULT_CACHE_DIR, cache_key, load_cached, save_cached
from training.data.specs import DatasetSpec, parse_spec

# Errors a user can fix, re-raised as themselves on the ranks that did not meet them.
_USER_ERRORS = {cls.__name__: cls for cls in (errors.DatasetLayoutError, errors.DatasetSpecError)}


def resolve_cache_dir(value: str | Path | None) -> Path | None:
    """``data.index_cache``: empty = the default cache folder, ``off`` = no cache, else a folder."""
    if value is None or str(value) == "":
        return DEFAULT_CACHE_DIR.expanduser()
    if str(value) == "off":
        return None
    return Path(value).expanduser()


def list_and_check(
    spec: DatasetSpec, *, train: bool, cache_dir: Path | None
) -> tuple[SegmentationReader, list[errors.BadSampleError]]:
    """The reader and its samples whose files are missing, from the cache if valid, else by listing the folder."""
    key = _cache_key(spec, train) if cache_dir is not None else None
    cached = load_cached(cache_dir, key) if key else None
    if cached is not None:
        samples, missing = cached
        return open_reader(spec, train=train, samples=samples), missing
    started_ns = time.time_ns()
    reader = open_reader(spec, train=train)
    missing = reader.missing_files()
    if key:
        save_cached(cache_dir, key, reader.samples, missing, reader.listing_inputs, started_ns)
    return reader, missing


def _cache_key(spec: DatasetSpec, train: bool) -> str | None:
    """The cache entry of the split ``spec`` names (None for formats that list nothing)."""
    reader = READERS.get(spec.name)
    if reader is None or not reader.indexed:
        return None
    split = spec.split or (reader.train_split if train else reader.eval_split)
    split = reader.split_aliases.get(split, split)
    # an explicit split is part of the key: a folder dataset lists differently with and without one
    return cache_key(spec.name, Path(spec.path).expanduser(), split, "explicit" if spec.split else "")


def open_checked(
    spec: str | DatasetSpec, *, train: bool, cache_dir: Path | None
) -> tuple[SegmentationReader, list[errors.BadSampleError]]:
    """The reader of ``spec`` and its samples with missing files, listed by rank 0 only when distributed."""
    spec = parse_spec(spec)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world == 1 or spec.name == "hf":  # hf rows live in Arrow files every rank maps itself
        return list_and_check(spec, train=train, cache_dir=cache_dir)
    payload = [None]
    if dist.get_rank() == 0:
        try:
            reader, missing = list_and_check(spec, train=train, cache_dir=cache_dir)
            payload = [("ok", reader.samples, [(p.path, p.problem) for p in missing])]
        except errors.BadSampleError as error:
            payload = [("error", "BadSampleError", (error.path, error.problem))]
        except tuple(_USER_ERRORS.values()) as error:
            payload = [("error", type(error).__name__, str(error))]
        except Exception as error:  # a bug: rank 0 shows the traceback, the others say where to look
            dist.broadcast_object_list([("error", "bug", f"{spec}: listing failed on rank 0 ({error!r})")], src=0)
            raise
    dist.broadcast_object_list(payload, src=0)
    status, first, second = payload[0]
    if status == "error":
        raise _rebuilt_error(first, second)
    if dist.get_rank() == 0:
        return reader, missing
    return open_reader(spec, train=train, samples=first), [errors.BadSampleError(p, q) for p, q in second]


def _rebuilt_error(kind: str, details) -> Exception:
    if kind == "BadSampleError":
        return errors.BadSampleError(*details)
    if kind in _USER_ERRORS:
        return _USER_ERRORS[kind](details)
    return RuntimeError(details)
