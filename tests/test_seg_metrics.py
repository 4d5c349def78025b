"""mIoU, accuracy and reduce_zero_label against hand-computed values and an independent MMSeg-style count."""

import math

import numpy as np
import pytest
import torch

from training.seg.metrics import ConfusionMatrix, confusion_matrix, metrics_from_confusion, reduce_zero_label

# 5 classes: 0 and 1 are confused with each other, 2 is in the GT but only ever predicted as 3, 3 is predicted
# but never in the GT (IoU 0, counted), 4 is absent everywhere (IoU NaN, skipped). One ignored pixel carries a
# prediction of 2 that must not count as a prediction of 2.
TARGET = torch.tensor([[0, 0, 1, 1], [2, -1, 0, 1]])
PRED = torch.tensor([[0, 1, 1, 1], [3, 2, 0, 0]])


def test_confusion_matrix_by_hand():
    expected = torch.tensor(
        [
            [2, 1, 0, 0, 0],
            [1, 2, 0, 0, 0],
            [0, 0, 0, 1, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
        ]
    )
    assert torch.equal(confusion_matrix(PRED, TARGET, num_classes=5), expected)


def test_metrics_by_hand():
    meter = ConfusionMatrix(5, class_names=list("abcde"))
    meter.update(PRED, TARGET)
    result = meter.compute()
    assert result.iou[:4] == pytest.approx([50.0, 50.0, 0.0, 0.0])
    assert math.isnan(result.iou[4])
    assert result.miou == pytest.approx(25.0)  # (50 + 50 + 0 + 0) / 4: class 4 skipped, class 3 counted
    assert result.acc[:3] == pytest.approx([200 / 3, 200 / 3, 0.0])
    assert math.isnan(result.acc[3]) and math.isnan(result.acc[4])
    assert result.macc == pytest.approx(400 / 9)
    assert result.aacc == pytest.approx(400 / 7)
    table = result.markdown()
    assert "| e | n/a | n/a |" in table and "| 25.00 |" in table


def test_accumulates_over_updates_like_one_big_batch():
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(-1, 6, (4, 9, 11), generator=generator)
    pred = torch.randint(0, 6, (4, 9, 11), generator=generator)
    split = ConfusionMatrix(6)
    for index in range(4):
        split.update(pred[index], target[index])
    whole = ConfusionMatrix(6)
    whole.update(pred, target)
    assert torch.equal(split.matrix, whole.matrix)
    assert split.matrix.sum() == (target != -1).sum()


def test_matches_mmseg_style_histogram_count():
    """MMSeg's IoUMetric: histc of intersection / prediction / label areas per image, summed, nanmean."""
    generator = torch.Generator().manual_seed(1)
    num_classes = 7
    target = torch.randint(-1, 5, (3, 16, 16), generator=generator)  # classes 5, 6 never in the GT
    pred = torch.randint(0, 6, (3, 16, 16), generator=generator)  # class 6 never predicted either
    area_intersect = area_pred = area_label = np.zeros(num_classes)
    for p, t in zip(pred.numpy(), target.numpy()):
        keep = t != -1
        p, t = p[keep], t[keep]
        area_intersect = area_intersect + np.histogram(p[p == t], bins=num_classes, range=(0, num_classes))[0]
        area_pred = area_pred + np.histogram(p, bins=num_classes, range=(0, num_classes))[0]
        area_label = area_label + np.histogram(t, bins=num_classes, range=(0, num_classes))[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = area_intersect / (area_pred + area_label - area_intersect)
    meter = ConfusionMatrix(num_classes)
    meter.update(pred, target)
    result = meter.compute()
    assert result.miou == pytest.approx(np.nanmean(iou) * 100)
    assert np.allclose(np.array(result.iou), iou * 100, equal_nan=True)
    assert math.isnan(result.iou[6]) and result.iou[5] == 0.0


def test_out_of_range_label_is_an_error():
    meter = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"labels \[255\] are outside \[0, 3\)"):
        meter.update(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 255], [1, 2]]))


def test_reduce_zero_label_uint8_and_int64():
    raw = torch.tensor([0, 1, 2, 150, 255], dtype=torch.uint8)
    assert reduce_zero_label(raw).tolist() == [255, 0, 1, 149, 255]
    assert reduce_zero_label(raw).dtype == torch.uint8
    signed = torch.tensor([0, 1, 150, -1])
    assert reduce_zero_label(signed, ignore_index=-1).tolist() == [-1, 0, 149, -1]


def test_reduce_zero_label_feeds_metrics_without_class_zero():
    """ADE-style: raw 0 is 'other', becomes ignore; prediction at those pixels must not count."""
    raw = torch.tensor([[0, 1, 1], [2, 2, 0]])
    target = reduce_zero_label(raw, ignore_index=-1)
    pred = torch.tensor([[1, 0, 0], [1, 1, 1]])
    result = metrics_from_confusion(confusion_matrix(pred, target, 2), ["a", "b"])
    assert result.iou == pytest.approx([100.0, 100.0])
