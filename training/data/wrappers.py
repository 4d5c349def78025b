"""Dataset wrappers of a pretraining run: labelled and unlabelled samples in one dataset, with indices and a
labelled flag."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from training.data.label_space import IGNORE_INDEX, LOCAL_IGNORE


class LabeledWithFlag(Dataset):
    """Pretraining items plus ``unlabeled=False`` so they collate with pseudo-labelled items."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.dataset_ids = dataset.dataset_ids

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "unlabeled": torch.tensor(False)}


class UnlabeledAsPretrain(Dataset):
    """Unlabeled images in the pretraining item format: mask all ignore, ``unlabeled=True``.

    They get a dataset id of their own (``source_id`` = number of labelled datasets), so cross-dataset mixing
    pairs them with labelled images; the method pseudo-labels them from the prototypes.
    """

    def __init__(self, dataset, source_id: int):
        self.dataset = dataset
        self.dataset_ids = torch.full((len(dataset),), source_id, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        if item["image"].dtype == torch.uint8:  # photometric_on=device: uint8 local ids, as labelled items send
            mask = torch.full(item["image"].shape[-2:], LOCAL_IGNORE, dtype=torch.uint8)
        else:
            mask = torch.full(item["image"].shape[-2:], IGNORE_INDEX, dtype=torch.int64)
        return {**item, "mask": mask, "dataset_id": self.dataset_ids[index], "unlabeled": torch.tensor(True)}


class ConcatWithIndex(Dataset):
    """Concatenation keeping ``dataset_ids`` for MultiDatasetSampler; item ``index`` is the concatenated index."""

    def __init__(self, parts: list):
        self.parts = parts
        self.dataset_ids = torch.cat([part.dataset_ids for part in parts])
        self.starts = torch.tensor([0] + [len(part) for part in parts]).cumsum(0).tolist()

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int) -> dict:
        part = next(i for i in range(len(self.parts)) if index < self.starts[i + 1])
        item = self.parts[part][index - self.starts[part]]
        return {**item, "index": torch.tensor(index)}


class DatasetSubset(Dataset):
    """The samples of some datasets only (one stage of sequential pretraining), keeping global ids."""

    def __init__(self, dataset, keep_ids: list[int]):
        self.dataset = dataset
        keep = torch.isin(dataset.dataset_ids, torch.tensor(keep_ids))
        self.indices = torch.nonzero(keep).flatten()
        self.dataset_ids = dataset.dataset_ids[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[int(self.indices[index])]
