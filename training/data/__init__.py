"""Multi-dataset data layer: readers of the real layouts, one concatenated label space, joint augmentation,
cross-dataset sampling, the synthetic benchmark and the dataset doctor. See docs/DATA.md."""

from training.data.datasets import (
    SegmentationSamples,
    SingleDatasetSegmentation,
    UnlabeledImages,
    build_pretrain_dataset,
    build_segmentation_dataset,
    build_unlabeled_dataset,
)
from training.data.errors import BadSampleError, DatasetLayoutError
from training.data.label_space import IGNORE_INDEX, LabelSpace, load_unify_map
from training.data.readers import READERS, open_reader
from training.data.sampling import MultiDatasetSampler
from training.data.specs import DatasetSpec, parse_spec
from training.data.synthetic import ensure_synthetic
from training.data.transforms import PhotometricConfig

__all__ = [
    "IGNORE_INDEX",
    "LabelSpace",
    "load_unify_map",
    "DatasetSpec",
    "parse_spec",
    "build_pretrain_dataset",
    "build_segmentation_dataset",
    "build_unlabeled_dataset",
    "MultiDatasetSampler",
    "ensure_synthetic",
    "PhotometricConfig",
    "BadSampleError",
    "DatasetLayoutError",
    "READERS",
    "open_reader",
    "SegmentationSamples",
    "SingleDatasetSegmentation",
    "UnlabeledImages",
]
