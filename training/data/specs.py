"""Dataset spec strings ``NAME:PATH[:split]``, the one way datasets are named on every command line."""

from __future__ import annotations

from dataclasses import dataclass

from training.data.errors import DatasetSpecError

KNOWN_FORMATS = (
    "voc_aug",
    "voc",
    "ade20k",
    "coco_stuff164k",
    "coco_stuff10k",
    "cityscapes",
    "camvid",
    "oxford_pet",
    "ccp",
    "msrc",
    "folder",
)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    path: str
    split: str | None = None

    def __str__(self) -> str:
        return f"{self.name}:{self.path}" + (f":{self.split}" if self.split else "")

    def with_split(self, split: str) -> "DatasetSpec":
        return DatasetSpec(self.name, self.path, split)


def parse_spec(spec: "str | DatasetSpec") -> DatasetSpec:
    """Parse ``"voc_aug:/data/VOCdevkit/VOC2012"`` or ``"ade20k:/data/ade/ADEChallengeData2016:validation"``.

    The split is the part after the last ':' when it contains no path separator, so paths stay unrestricted.
    """
    if isinstance(spec, DatasetSpec):
        return spec
    name, sep, rest = str(spec).partition(":")
    if not sep or not rest:
        raise DatasetSpecError(
            f"dataset spec {spec!r}: expected NAME:PATH[:split], e.g. voc_aug:/data/VOCdevkit/VOC2012"
        )
    if name not in KNOWN_FORMATS:
        raise DatasetSpecError(f"dataset spec {spec!r}: unknown dataset {name!r}; known: {', '.join(KNOWN_FORMATS)}")
    path, split = rest, None
    head, sep, tail = rest.rpartition(":")
    if sep and head and tail and "/" not in tail and "\\" not in tail:
        path, split = head, tail
    return DatasetSpec(name, path, split)
