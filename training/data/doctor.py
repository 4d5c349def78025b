"""Dataset doctor: validate a dataset's layout and every sample, and summarise what is in it."""

from __future__ import annotations

from collections import Counter

import numpy as np

from training.data.errors import BadSampleError, DatasetLayoutError
from training.data.label_space import LOCAL_IGNORE
from training.data.readers import SegmentationReader, open_reader
from training.data.specs import DatasetSpec, parse_spec


def check_reader(reader: SegmentationReader, spec: DatasetSpec) -> dict:
    """Decode every sample; collect problems (file + what is wrong), class pixel counts and image sizes."""
    errors = [{"file": p.path, "problem": p.problem} for p in reader.missing_files()]
    missing = {e["file"] for e in errors}
    pixels = np.zeros(256, dtype=np.int64)
    images_with_class = np.zeros(256, dtype=np.int64)
    sizes: Counter = Counter()
    for index, sample in enumerate(reader.samples):
        if str(sample.image) in missing or str(sample.mask) in missing:
            continue
        try:
            image, mask = reader.load_pair(index)
        except BadSampleError as error:
            errors.append({"file": error.path, "problem": error.problem})
            continue
        sizes[(int(image.shape[-1]), int(image.shape[-2]))] += 1
        counts = np.bincount(mask.ravel(), minlength=256)
        pixels += counts
        images_with_class += counts > 0
    present = [i for i in range(reader.num_classes) if pixels[i] > 0]
    labelled = int(pixels[:LOCAL_IGNORE].sum())
    widths = [w for w, _ in sizes] or [0]
    heights = [h for _, h in sizes] or [0]
    return {
        "spec": str(spec),
        "dataset": reader.dataset_name,
        "split": reader.split,
        "samples": len(reader),
        "valid_samples": sum(sizes.values()),
        "errors": errors,
        "num_classes": reader.num_classes,
        "classes_present": len(present),
        "class_pixels": {reader.class_names[i]: int(pixels[i]) for i in present},
        "class_images": {reader.class_names[i]: int(images_with_class[i]) for i in present},
        "ignore_pixels": int(pixels[LOCAL_IGNORE]),
        "labelled_pixels": labelled,
        "image_sizes": {
            "min_wh": [min(widths), min(heights)],
            "max_wh": [max(widths), max(heights)],
            "most_common_wh": list(sizes.most_common(1)[0][0]) if sizes else None,
        },
    }


def check_spec(spec: str | DatasetSpec) -> list[dict]:
    """Reports for the spec's split, or for the default training and evaluation splits if none is given."""
    spec = parse_spec(spec)
    reports = []
    for train in [True] if spec.split else [True, False]:
        try:
            reader = open_reader(spec, train=train)
        except (DatasetLayoutError, BadSampleError) as error:
            split = spec.split or ("(default training split)" if train else "(default evaluation split)")
            reports.append(
                {
                    "spec": str(spec),
                    "split": split,
                    "samples": 0,
                    "errors": [{"file": str(spec.path), "problem": str(error)}],
                }
            )
            continue
        reports.append(check_reader(reader, spec.with_split(reader.split)))
    return reports


def format_report(report: dict, max_errors: int = 20) -> str:
    lines = [f"== {report['spec']}: {report['samples']} samples, {len(report['errors'])} problems"]
    for error in report["errors"][:max_errors]:
        lines.append(f"  ERROR {error['file']}: {error['problem']}")
    if len(report["errors"]) > max_errors:
        lines.append(f"  ... and {len(report['errors']) - max_errors} more problems")
    if "class_pixels" not in report:
        return "\n".join(lines)
    sizes = report["image_sizes"]
    lines.append(
        f"  image sizes (WxH): min {sizes['min_wh'][0]}x{sizes['min_wh'][1]}, "
        f"max {sizes['max_wh'][0]}x{sizes['max_wh'][1]}, most common {sizes['most_common_wh']}"
    )
    total = report["labelled_pixels"] + report["ignore_pixels"]
    lines.append(
        f"  classes present: {report['classes_present']} of {report['num_classes']}; "
        f"ignore pixels {100 * report['ignore_pixels'] / max(total, 1):.1f}%"
    )
    for name, count in sorted(report["class_pixels"].items(), key=lambda kv: -kv[1]):
        share = 100 * count / max(report["labelled_pixels"], 1)
        lines.append(f"    {name:<28} {share:6.2f}% of labelled pixels, in {report['class_images'][name]} images")
    return "\n".join(lines)
