"""Hugging Face datasets read as streams of shards (``hf:SOURCE[:split]?stream=true``): for datasets too big for
the local disk, which ``datasets`` streams (``IterableDataset``) instead of converting them to Arrow.

Shards are the split's data files: the Parquet files of a Hub repo or of a folder in the Hub layout (streamed by
``load_dataset(..., streaming=True)``), or the Arrow files of a ``save_to_disk`` folder (``to_iterable_dataset``).
Their row counts come from the Parquet footers (the dataset's length for Arrow) at start-up, so every epoch is
planned before a row is read (:func:`epoch_ranges`):

* the shards are ordered by a permutation drawn from ``seed + epoch`` (the same on every rank) and laid end to end;
* stream reader ``g = rank * W + w`` (W DataLoader workers per rank, at least 1) takes the next contiguous range
  of that sequence: ``batch_size`` times its number of batches. Every rank gets ``steps * batch_size`` rows with
  ``steps = rows // (world_size * batch_size)``, so every rank runs the same number of steps; the fewer than
  ``world_size * batch_size`` rows left at the end of the sequence are not read in that epoch (``drop_last``, as
  map-style sampling does), and which rows those are changes with the epoch's shard order;
* a reader shuffles its rows through a buffer of ``shuffle_buffer`` rows (0 = shard order only) drawn from a
  generator seeded by ``(seed, epoch, g)``.

Every row of a range is yielded once, so an epoch yields every row exactly once across ranks and workers but that
remainder. A reader's range starts inside a shard at most once per epoch: the rows before it are read and dropped
(bytes only, nothing decoded). Fewer shards than readers is refused: the readers would mostly read each other's
rows to drop them.

Resume at a step boundary is exact: the DataLoader takes batches from its workers round robin, so after ``k``
batches of an epoch worker ``w`` has given ``ceil((k - w) / W)`` of them; the resumed reader recomputes its range
and buffer order and drops that many batches of rows (read, not decoded), and DataLoader worker ``j`` plays worker
``(j + k) % W`` so the next batch comes from the worker it would have come from.

Rows are decoded and checked as :class:`HubDatasetReader` rows are, and a bad row is named
``SOURCE:split SHARD row N`` (N = its row in that shard).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from training.data.errors import BadSampleError, DatasetLayoutError, DatasetSpecError
from training.data.hub_datasets import (
    HubDatasetReader,
    _int_option,
    datasets_library,
    flag,
    is_saved_to_disk,
    pick_split,
)
from training.data.specs import DatasetSpec, parse_spec

DEFAULT_SHUFFLE_BUFFER = 64  # rows per reader: encoded images of ~0.1-1 MB each, W readers per rank
READ_BATCH = 16  # rows per Arrow batch read from a shard
HUB_FILE_PREFIX = re.compile(r"^hf://datasets/[^@]+@[^/]+/")


def open_hub_reader(spec: DatasetSpec, *, train: bool) -> HubDatasetReader:
    """The reader of an ``hf:`` spec: streamed with ``stream=true``, map-style otherwise."""
    if is_streaming(spec):
        return HubStreamReader(spec.path, spec.split, train=train, options=spec.options)
    if "shuffle_buffer" in dict(spec.options):
        raise DatasetSpecError(f"dataset spec {spec}: shuffle_buffer= applies to streams only; add stream=true")
    return HubDatasetReader(spec.path, spec.split, train=train, options=spec.options)


def is_streaming(spec: str | DatasetSpec) -> bool:
    """True for an ``hf:`` spec with ``stream=true`` (any other string, e.g. ``synthetic``, is not a stream)."""
    if isinstance(spec, str) and not spec.startswith("hf:"):
        return False
    spec = parse_spec(spec)
    return spec.name == "hf" and flag(dict(spec.options), "stream")


@dataclass(frozen=True)
class Shard:
    name: str  # the data file (relative to the dataset), or "shard i of K" for a save_to_disk folder
    rows: int


class HubStreamReader(HubDatasetReader):
    """One split read shard by shard. Rows are numbered through the shards in file order (``samples``), so
    ``load_pair(i)`` works too (sequential reads continue the open shard; others reopen a shard and read up to
    the row: fine for checks and a few fixed images, not for random access)."""

    def _open_split(self, split: str):
        stream, split, self.shards = _open_stream(self.source, split)
        self.shard_starts = np.cumsum([0] + [shard.rows for shard in self.shards])  # int64 [n_shards + 1]
        where = f"{self.source}:{split}"
        self.shuffle_buffer = _int_option(self.options, "shuffle_buffer", DEFAULT_SHUFFLE_BUFFER, where)
        self._cursor: list | None = None  # [shard, next offset, iterator] of the open shard
        if stream.features is None:
            raise DatasetLayoutError(f"hf:{where}: the stream declares no features (columns); read it map-style")
        return stream, split

    def _rows(self) -> Sequence[int]:
        return range(int(self.shard_starts[-1]))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cursor": None}  # an open shard stream does not travel to workers

    def locate(self, row: int) -> tuple[int, int]:
        """Row of the split -> (shard, row inside the shard)."""
        shard = int(np.searchsorted(self.shard_starts, row, side="right") - 1)
        return shard, row - int(self.shard_starts[shard])

    def row_where(self, row: int) -> str:
        shard, offset = self.locate(row)
        return f"{self.where} {self.shards[shard].name} row {offset}"

    def shard_records(self, shard: int, start: int = 0, stop: int | None = None) -> Iterator[dict]:
        """The cells of rows ``start..stop-1`` of one shard, encoded images undecoded; a shard that ends early
        raises naming it."""
        stop = self.shards[shard].rows if stop is None else stop
        stream = self.dataset.shard(num_shards=len(self.shards), index=shard, contiguous=True)
        records = _unbatched((stream.skip(start) if start else stream).iter(batch_size=READ_BATCH))
        for offset in range(start, stop):
            record = next(records, None)
            if record is None:
                raise DatasetLayoutError(
                    f"{self.where} {self.shards[shard].name}: ended after {offset} rows, its metadata says "
                    f"{self.shards[shard].rows}; the shard changed since start-up"
                )
            yield record

    def _record(self, row: int) -> dict:
        if self._last_row is not None and self._last_row[0] == row:
            return self._last_row[1]
        shard, offset = self.locate(row)
        if self._cursor is None or self._cursor[0] != shard or self._cursor[1] > offset:
            self._cursor = [shard, offset, self.shard_records(shard, offset)]
        for _ in range(offset - self._cursor[1]):  # forward inside the open shard: read and drop
            next(self._cursor[2])
        self._cursor[1] = offset + 1
        self._last_row = (row, next(self._cursor[2]))
        return self._last_row[1]

    def load_record(self, row: int, record: dict):
        """``load_checked_pair`` of row ``row`` from its cells already read: uint8 image ``[3, H, W]``, checked raw
        mask ``[H, W]`` and its ``LabelMap``."""
        self._last_row = (row, record)
        return self.load_checked_pair(row)


def _unbatched(batches: Iterator[dict]) -> Iterator[dict]:
    """Rows of column batches. ``IterableDataset.iter`` reads what it is told: iterating the dataset itself inside
    a DataLoader worker would split its shards by worker a second time."""
    for batch in batches:
        columns = list(batch)
        yield from (dict(zip(columns, cells)) for cells in zip(*batch.values()))


def _open_stream(source: str, split: str):
    """``(IterableDataset, split name, shards)`` of a Hub id, a Hub-layout folder or a ``save_to_disk`` folder."""
    datasets = datasets_library(source)
    path = Path(source).expanduser()
    try:
        if is_saved_to_disk(path):
            return _saved_stream(datasets, path, split, source)
        builder = datasets.load_dataset_builder(str(path) if path.is_dir() else source)
        files_by_split = builder.config.data_files or {}
        name = pick_split([str(key) for key in files_by_split], split, source)
        files = [str(file) for file in files_by_split[name]]
        stream = builder.as_streaming_dataset(split=name)
        rows = [_parquet_rows(file, source) for file in files]
    except (DatasetLayoutError, DatasetSpecError):
        raise
    except Exception as error:  # the library raises many kinds (not found, offline, bad files): one line here
        raise DatasetLayoutError(f"hf:{source}: cannot be streamed as a Hugging Face dataset ({error})") from None
    if stream.n_shards != len(files):
        raise DatasetLayoutError(f"hf:{source}:{name}: {len(files)} data files but {stream.n_shards} stream shards")
    root = str(path.resolve()) + "/" if path.is_dir() else ""
    names = [HUB_FILE_PREFIX.sub("", file).removeprefix(root) for file in files]
    return stream, name, [Shard(shard_name, count) for shard_name, count in zip(names, rows)]


def _parquet_rows(file: str, source: str) -> int:
    """Rows of one Parquet data file, from its footer (a few KB read, also for a file on the Hub)."""
    import fsspec
    import pyarrow.parquet as pq

    if not file.endswith(".parquet"):
        raise DatasetLayoutError(
            f"hf:{source}: streaming reads Parquet data files, this split has {file.rsplit('/', 1)[-1]}; read it "
            "map-style (without stream=true)"
        )
    with fsspec.open(file, "rb") as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def _saved_stream(datasets, path: Path, split: str, source: str):
    """A ``save_to_disk`` folder streamed in as many contiguous shards as it has Arrow files."""
    loaded = datasets.load_from_disk(str(path))
    if not isinstance(loaded, datasets.Dataset):
        split = pick_split(list(loaded), split, source)
        loaded = loaded[split]
    count = max(1, len(loaded.cache_files))
    rows = [len(loaded) // count + (i < len(loaded) % count) for i in range(count)]
    shards = [Shard(f"shard {i} of {count}", n) for i, n in enumerate(rows)]
    return loaded.to_iterable_dataset(num_shards=count), split, shards


# ---------------------------------------------------------------- the epoch plan


def worker_batches(steps: int, workers: int, worker: int) -> int:
    """Batches worker ``worker`` gives per epoch: a rank's ``steps`` batches, dealt round robin from worker 0."""
    return steps // workers + (worker < steps % workers)


def batches_taken(skip: int, workers: int, worker: int) -> int:
    """Batches of worker ``worker`` among its rank's first ``skip`` batches of the epoch (round robin)."""
    return (skip - worker + workers - 1) // workers if skip > worker else 0


def epoch_ranges(
    shard_rows: Sequence[int], *, seed: int, epoch: int, world_size: int, workers: int, batch_size: int
) -> list[list[tuple[int, int, int]]]:
    """Every stream reader's rows of ``epoch`` as ``(shard, start, stop)`` ranges, for reader
    ``g = rank * workers + worker`` at position ``g`` (see the module's docstring)."""
    order = torch.randperm(len(shard_rows), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    steps = sum(shard_rows) // (world_size * batch_size)
    ranges, position, offset = [], 0, 0  # the next row: shard order[position], row offset
    for reader in range(world_size * workers):
        need, own = batch_size * worker_batches(steps, workers, reader % workers), []
        while need:
            shard = order[position]
            take = min(need, shard_rows[shard] - offset)
            if take:
                own.append((shard, offset, offset + take))
            offset, need = offset + take, need - take
            if offset == shard_rows[shard]:
                position, offset = position + 1, 0
        ranges.append(own)
    return ranges


def shuffled(rows: Iterator, size: int, generator: np.random.Generator) -> Iterator:
    """Buffer shuffle: each output is drawn uniformly from the ``size`` rows read last (``size`` 0: as read)."""
    if size <= 0:
        yield from rows
        return
    buffer = []
    for row in rows:
        if len(buffer) < size:
            buffer.append(row)
            continue
        slot = int(generator.integers(size))
        yield buffer[slot]
        buffer[slot] = row
    for slot in generator.permutation(len(buffer)):
        yield buffer[slot]


# ---------------------------------------------------------------- the iterable dataset


class StreamingSegmentation(IterableDataset):
    """The items of :class:`~training.data.datasets.SegmentationSamples` over streamed readers, one epoch at a
    time: ``set_epoch(epoch, skip)`` then iterate (in a DataLoader with ``batch_size`` and ``drop_last``).

    Items are those of ``samples`` (``index``: the row's concatenated index over the readers). With
    ``skip_bad_samples`` a bad row is counted (``samples.skip_report()``) and replaced by the worker's last good
    row, decoded again (the next good one when none came before), so every rank still runs the planned steps.
    """

    def __init__(self, samples, *, batch_size: int, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 seed: int = 0):  # fmt: skip
        self.samples, self.batch_size, self.seed = samples, batch_size, seed
        self.rank, self.world_size, self.workers = rank, world_size, max(1, num_workers)
        readers = samples.readers
        self.shards = [(d, s) for d, reader in enumerate(readers) for s in range(len(reader.shards))]
        self.shard_rows = [readers[d].shards[s].rows for d, s in self.shards]
        self.index_starts = np.cumsum([0] + [len(reader) for reader in readers])
        self.buffer = max(reader.shuffle_buffer for reader in readers)
        self.steps_per_epoch = sum(self.shard_rows) // (world_size * batch_size)
        if len(self.shards) < world_size * self.workers:
            sources = ", ".join(f"hf:{reader.where} ({len(reader.shards)})" for reader in readers)
            raise DatasetLayoutError(
                f"{sources}: {len(self.shards)} shard(s) for {world_size * self.workers} stream readers "
                f"({world_size} rank(s) x {self.workers} worker(s)); each reader streams shards of its own: lower "
                f"data.num_workers to {max(1, len(self.shards) // world_size)} or fewer, or reshard the dataset "
                f"into at least {world_size * self.workers} Parquet files"
            )
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Iterate ``epoch`` without its first ``skip`` batches of this rank."""
        self.epoch, self.skip = epoch, skip

    def reader_rows(self, worker: int) -> Iterator[tuple[int, int, dict]]:
        """``(dataset id, row, cells)`` of worker ``worker`` of this rank in this epoch, in buffer order, after
        the rows of the batches already taken (read, not decoded)."""
        reader = self.rank * self.workers + worker
        ranges = epoch_ranges(
            self.shard_rows,
            seed=self.seed,
            epoch=self.epoch,
            world_size=self.world_size,
            workers=self.workers,
            batch_size=self.batch_size,
        )[reader]
        generator = np.random.default_rng([self.seed, self.epoch, reader])
        rows = shuffled(self._read(ranges), self.buffer, generator)
        return itertools.islice(rows, batches_taken(self.skip, self.workers, worker) * self.batch_size, None)

    def _read(self, ranges: list[tuple[int, int, int]]) -> Iterator[tuple[int, int, dict]]:
        for shard, start, stop in ranges:
            dataset_id, index = self.shards[shard]
            reader = self.samples.readers[dataset_id]
            first = int(reader.shard_starts[index])
            for offset, record in enumerate(reader.shard_records(index, start, stop), start):
                yield dataset_id, first + offset, record

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        # A resumed epoch's next batch is due from worker skip % W, and the DataLoader asks its worker 0 first.
        worker = ((info.id if info is not None else 0) + self.skip) % self.workers
        last, owed = None, 0
        for row in self.reader_rows(worker):
            try:
                item = self._item(*row)
            except BadSampleError as error:
                if not self.samples.skip_bad_samples:
                    raise
                self.samples.mark_skipped(int(self.index_starts[row[0]]) + row[1], error)
                if last is None:
                    owed += 1
                    continue
                item = self._item(*last)
            else:
                last = row
            yield item
            for _ in range(owed):
                yield self._item(*last)
            owed = 0
        if owed:
            raise DatasetLayoutError(f"every row worker {worker} of rank {self.rank} read in epoch {self.epoch} is bad")

    def _item(self, dataset_id: int, row: int, record: dict) -> dict:
        image, raw, label_map = self.samples.readers[dataset_id].load_record(row, record)
        return self.samples.make_item(int(self.index_starts[dataset_id]) + row, dataset_id, image, raw, label_map)
