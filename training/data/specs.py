"""Dataset spec strings ``NAME:PATH[:split][?key=value&...]``, the one way datasets are named on every command line.

Options (after ``?``) are read by the formats that take them (``hf``: column names, label convention, class names);
any other format refuses them."""

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
    "hf",
)
FORMATS_WITH_OPTIONS = ("hf",)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    path: str
    split: str | None = None
    options: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        query = "&".join(f"{key}={value}" for key, value in self.options)
        return f"{self.name}:{self.path}" + (f":{self.split}" if self.split else "") + (f"?{query}" if query else "")

    def with_split(self, split: str) -> "DatasetSpec":
        return DatasetSpec(self.name, self.path, split, self.options)


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
    rest, _, query = rest.partition("?")
    options = _parse_options(spec, query)
    if options and name not in FORMATS_WITH_OPTIONS:
        raise DatasetSpecError(
            f"dataset spec {spec!r}: {name} takes no options (only {', '.join(FORMATS_WITH_OPTIONS)})"
        )
    path, split = rest, None
    head, sep, tail = rest.rpartition(":")
    if sep and head and tail and "/" not in tail and "\\" not in tail:
        path, split = head, tail
    return DatasetSpec(name, path, split, options)


def _parse_options(spec: str, query: str) -> tuple[tuple[str, str], ...]:
    options = []
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DatasetSpecError(f"dataset spec {spec!r}: option {item!r} is not KEY=VALUE")
        options.append((key, value))
    return tuple(options)
