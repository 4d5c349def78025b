"""Zero-fine-tuning evaluation of the prototype segmenter (training/experiments_prototypes.py) on a folder dataset
whose ground truth is known: the segmenter's own restricted predictions with an ignored band."""

import numpy as np
import pytest
import torch
from PIL import Image
from prototype_checkpoints import build_method_with_prototypes, save_checkpoint, write_image

from mdp_hub import PrototypeSegmenter
from training.data import LabelSpace
from training.studies.prototypes import zero_finetune_scores

SPACE = LabelSpace([("gt", ["a", "b", "c"]), ("other", ["w", "x", "y", "z"])])


# The scores read the images through the data layer, the reference below through PIL and torchvision: the inputs
# differ by one float32 ulp and the logits (about 10 here) by ~3e-6, the confidences by ~5e-7. This untrained
# model's embeddings are nearly collapsed, so a quarter of the pixels have their top two classes closer than 1e-3:
# such a pixel can fall to one class through one path and to the other through the other, depending on the CPU.
# Pixels closer than these margins (~300x the measured differences) to a decision (top-two logits, restricted or
# open; confidence vs a threshold) are marked ignore, so every remaining decision is the same on any machine and
# the comparisons below can be exact.
LOGIT_MARGIN = 1e-3
SCORE_MARGIN = 1e-4


def top_two_gap(logits: torch.Tensor) -> np.ndarray:
    """``[1, K, H, W]`` logits -> ``[H, W]`` difference between the best and the second-best class."""
    top = logits.topk(2, dim=1).values[0]
    return (top[0] - top[1]).numpy()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero_finetune")
    method, _ = build_method_with_prototypes(SPACE)
    save_checkpoint(method, root / "last.pth", SPACE)
    segmenter = PrototypeSegmenter.from_pretrained(root / "last.pth")
    folder = root / "gt"
    folder.mkdir()
    (folder / "classes.txt").write_text("a\nb\nc\n")
    (folder / "masks").mkdir()
    samples = []
    for seed in range(2):
        image = write_image(folder / "images" / f"{seed}.png", seed=seed)
        batch = segmenter.preprocess(Image.open(image).convert("RGB"))[None]
        with torch.inference_mode():
            gap = np.minimum(top_two_gap(segmenter(batch, restrict_to="gt")), top_two_gap(segmenter(batch)))
        samples.append(
            (image, segmenter.predict(batch, restrict_to="gt"), segmenter.predict(batch, restrict_to=None), gap)
        )
    # thresholds inside the range of this untrained model's confidences, so that each one splits the pixels
    confidences = torch.cat([everything.scores.flatten() for _, _, everything, _ in samples])
    thresholds = (0.0, *confidences.quantile(torch.tensor([0.25, 0.5, 0.75])).tolist())
    masks = []
    for image, restricted, everything, gap in samples:
        mask = restricted.labels[0].numpy().astype(np.uint8)
        scores = everything.scores[0].numpy()
        near_threshold = np.any([np.abs(scores - t) < SCORE_MARGIN for t in thresholds], axis=0)
        mask[(gap < LOGIT_MARGIN) | near_threshold] = 255
        mask[:, :5] = 255
        Image.fromarray(mask, mode="L").save(folder / "masks" / f"{image.stem}.png")
        masks.append((mask, everything.labels[0].numpy(), scores))
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
    _, scores, masks = evaluated
    targets, preds, confidences = [], [], []
    for mask, global_labels, score in masks:
        keep = mask != 255
        targets.append(mask[keep])
        preds.append(np.where(global_labels < 3, global_labels, 3)[keep])  # ids 3.. belong to "other"
        confidences.append(score[keep])
    target, pred, confidence = np.concatenate(targets), np.concatenate(preds), np.concatenate(confidences)
    assert target.size > 0.5 * 2 * 48 * (64 - 5)  # the margins left most labelled pixels
    assert (pred == 3).any()  # the open setting does lose pixels to the other dataset here
    assert scores["open"]["mIoU"] == pytest.approx(numpy_miou(target, pred, 3))  # column 3 is not a class
    assert scores["open"]["aAcc"] == pytest.approx(100 * np.mean(target == pred))
    everything = scores["pseudo_labels"]["0.0"]  # threshold 0 keeps every labelled pixel
    assert everything["kept"] == pytest.approx(1.0)
    assert everything["accuracy"] == pytest.approx(np.mean(target == pred))
    splits = 0
    for threshold, quality in scores["pseudo_labels"].items():
        confident = confidence >= float(threshold)
        splits += 0 < confident.sum() < confident.size
        assert quality["kept"] == pytest.approx(confident.mean())
        assert quality["accuracy"] == pytest.approx(np.mean(target[confident] == pred[confident]))
    assert splits == 3
    counts = np.bincount(target, minlength=3)
    assert scores["majority_class_mIoU"] == pytest.approx(100 * counts.max() / counts.sum() / np.sum(counts > 0))
    assert scores["majority_class_mIoU"] == pytest.approx(numpy_miou(target, np.full_like(target, counts.argmax()), 3))
