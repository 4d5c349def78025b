"""Zero-fine-tuning evaluation of the prototype segmenter (training/experiments_prototypes.py) on a folder dataset
whose ground truth is known: the segmenter's own restricted predictions with an ignored band."""

import numpy as np
import pytest
import torch
from PIL import Image

from mdp_hub import PrototypeSegmenter
from prototype_checkpoints import build_method_with_prototypes, save_checkpoint, write_image
from training.data import LabelSpace
from training.experiments_prototypes import zero_finetune_scores

SPACE = LabelSpace([("gt", ["a", "b", "c"]), ("other", ["w", "x", "y", "z"])])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero_finetune")
    method, _ = build_method_with_prototypes(SPACE)
    save_checkpoint(method, root / "last.pth", SPACE)
    segmenter = PrototypeSegmenter.from_pretrained(root / "last.pth")
    folder = root / "gt"
    folder.mkdir()
    (folder / "classes.txt").write_text("a\nb\nc\n")
    masks, confidences = [], []
    for seed in range(2):
        image = write_image(folder / "images" / f"{seed}.png", seed=seed)
        mask = segmenter.segment(image, restrict_to="gt").labels.numpy().astype(np.uint8)
        mask[:, :5] = 255
        (folder / "masks").mkdir(exist_ok=True)
        Image.fromarray(mask, mode="L").save(folder / "masks" / f"{seed}.png")
        masks.append((image, mask))
        confidences.append(segmenter.segment(image, restrict_to=None).scores.flatten())
    # thresholds inside the range of this untrained model's confidences, so that each one splits the pixels
    thresholds = (0.0, *torch.cat(confidences).quantile(torch.tensor([0.25, 0.5, 0.75])).tolist())
    return segmenter, zero_finetune_scores(segmenter, f"folder:{folder}", thresholds=thresholds), masks


def numpy_miou(target: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """MMSeg's rule on flat arrays without ignored pixels: mean IoU over classes 0..K-1 that have a union."""
    ious = []
    for k in range(num_classes):
        union = np.sum((target == k) | (pred == k))
        if union:
            ious.append(np.sum((target == k) & (pred == k)) / union)
    return 100 * float(np.mean(ious))


def test_restricted_predictions_that_match_the_ground_truth_score_100(evaluated):
    _, scores, _ = evaluated
    assert (scores["dataset"], scores["images"], scores["classes"]) == ("gt", 2, 3)
    assert scores["restricted"]["mIoU"] == pytest.approx(100.0)
    assert scores["restricted"]["aAcc"] == pytest.approx(100.0)


def test_open_label_space_counts_other_datasets_classes_as_errors(evaluated):
    segmenter, scores, masks = evaluated
    targets, preds, confidences = [], [], []
    for image, mask in masks:
        result = segmenter.segment(image, restrict_to=None)
        global_labels = result.labels.numpy()
        keep = mask != 255
        targets.append(mask[keep])
        preds.append(np.where(global_labels < 3, global_labels, 3)[keep])  # ids 3.. belong to "other"
        confidences.append(result.scores.numpy()[keep])
    target, pred, confidence = np.concatenate(targets), np.concatenate(preds), np.concatenate(confidences)
    assert (pred == 3).any()  # the open setting does lose pixels to the other dataset here
    assert scores["open"]["mIoU"] == pytest.approx(numpy_miou(target, pred, 3))  # column 3 is not a class
    assert scores["open"]["aAcc"] == pytest.approx(100 * np.mean(target == pred))
    everything = scores["pseudo_labels"]["0.0"]  # threshold 0 keeps every labelled pixel
    assert everything["kept"] == pytest.approx(1.0)
    assert everything["accuracy"] == pytest.approx(np.mean(target == pred))
    splits = 0
    # the evaluation decodes images through the data layer, PIL here: float rounding may move a pixel that
    # sits exactly on a threshold (the thresholds are quantiles of these very confidences)
    pixel = 2 / confidence.size
    for threshold, quality in scores["pseudo_labels"].items():
        confident = confidence >= float(threshold)
        splits += 0 < confident.sum() < confident.size
        assert quality["kept"] == pytest.approx(confident.mean(), abs=pixel)
        assert quality["accuracy"] == pytest.approx(np.mean(target[confident] == pred[confident]), abs=4 * pixel)
    assert splits == 3
    counts = np.bincount(target, minlength=3)
    assert scores["majority_class_mIoU"] == pytest.approx(100 * counts.max() / counts.sum() / np.sum(counts > 0))
    assert scores["majority_class_mIoU"] == pytest.approx(
        numpy_miou(target, np.full_like(target, counts.argmax()), 3))
