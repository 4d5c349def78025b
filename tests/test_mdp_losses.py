"""Loss values of training/mdp/losses.py against hand-computed ones on small explicit tensors."""

import math

import pytest
import torch

from training.mdp.losses import (
    centred_prototype_logits,
    csc1_exclusion,
    moco_infonce,
    pixel_cross_entropy,
    pixel_to_pixel_loss,
    pixel_to_prototype_nce,
    pixel_to_region_loss,
    prototype_log_probs,
    prototype_logits,
    sparse_coding_loss,
    topk_other_classes,
    within_image_region_nce,
)

E = math.e


def nll(target_logit, all_logits):
    return -(target_logit - math.log(sum(math.exp(v) for v in all_logits)))


def test_prototype_nce_matches_hand_computation():
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    labels = torch.tensor([0, 1])
    mask = torch.tensor([True, True, True])
    loss = pixel_to_prototype_nce(prototype_log_probs(logits, mask), labels, mask)
    expected = (nll(1.0, [1, 0, 0]) + nll(2.0, [0, 2, 0])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_prototype_nce_masks_uninitialised_classes_and_skips_their_and_ignored_pixels():
    logits = torch.tensor([[1.0, 0.0, 5.0], [0.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 4.0]])
    labels = torch.tensor([0, 1, -1, 2])  # pixel 2 ignored, pixel 3 has an uninitialised class
    mask = torch.tensor([True, True, False])
    loss = pixel_to_prototype_nce(prototype_log_probs(logits, mask), labels, mask)
    expected = (nll(1.0, [1, 0]) + nll(2.0, [0, 2])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_prototype_nce_two_label_mixed_pixels():
    logits = torch.tensor([[1.0, 0.5, 0.0], [0.0, 2.0, 1.0]])
    labels_a, labels_b = torch.tensor([0, 1]), torch.tensor([1, -1])
    weight_b = torch.tensor([0.25, 0.5])  # pixel 1: partner side ignored -> own label only, renormalised
    mask = torch.ones(3, dtype=torch.bool)
    loss = pixel_to_prototype_nce(prototype_log_probs(logits, mask), labels_a, mask, labels_b, weight_b)
    pixel0 = 0.75 * nll(1.0, [1, 0.5, 0]) + 0.25 * nll(0.5, [1, 0.5, 0])
    pixel1 = nll(2.0, [0, 2, 1])
    assert loss.item() == pytest.approx((pixel0 + pixel1) / 2, rel=1e-6)


def test_prototype_nce_csc1_drops_excluded_classes_from_denominator():
    logits = torch.tensor([[1.0, 0.5, 0.0]])
    excluded = torch.tensor([[False, True, False]])
    mask = torch.ones(3, dtype=torch.bool)
    loss = pixel_to_prototype_nce(prototype_log_probs(logits, mask, excluded), torch.tensor([0]), mask)
    assert loss.item() == pytest.approx(nll(1.0, [1, 0]), rel=1e-6)


def test_losses_are_zero_and_backward_is_finite_without_labelled_pixels():
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.full((4,), -1)
    none = torch.zeros(3, dtype=torch.bool)
    for loss in (
        pixel_to_prototype_nce(prototype_log_probs(logits, none), labels, none),
        sparse_coding_loss(prototype_log_probs(logits, none), labels, none, k=1),
        pixel_cross_entropy(logits, labels),
    ):
        loss.backward()
        assert loss.item() == 0.0
        assert torch.isfinite(logits.grad).all()


def test_prototype_logits_are_fp32_cosine_over_tau_even_under_autocast():
    q = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    protos = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = prototype_logits(q.bfloat16(), protos, 0.07)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, q.bfloat16().float() @ protos.t() / 0.07)


def test_centred_prototype_logits_are_the_cosine_of_the_centred_pixel_and_plain_with_zero_offsets():
    generator = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(6, 4, generator=generator), dim=1)
    protos = torch.nn.functional.normalize(torch.randn(3, 4, generator=generator), dim=1)
    dataset_means = 0.5 * torch.randn(2, 4, generator=generator)
    offsets = dataset_means[torch.tensor([0, 0, 1])]  # classes 0, 1 of dataset 0; class 2 of dataset 1
    expected = torch.stack(
        [torch.nn.functional.cosine_similarity(q - offsets[c], protos[c][None], dim=1) for c in range(3)], dim=1
    )
    torch.testing.assert_close(centred_prototype_logits(q, protos, offsets, 0.1), expected / 0.1)
    torch.testing.assert_close(centred_prototype_logits(q, protos, torch.zeros(3, 4), 0.1), q @ protos.t() / 0.1)


def test_topk_other_classes_excludes_label_and_uninitialised():
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    index, valid = topk_other_classes(logits, torch.tensor([0]), torch.tensor([True, False, True, True, True]), 2)
    assert index.tolist() == [[2, 3]] and valid.all()
    index, valid = topk_other_classes(logits, torch.tensor([0]), torch.tensor([True, False, True, False, False]), 2)
    assert valid.tolist() == [[True, False]] and index[0, 0].item() == 2


def test_csc2_value_and_stop_gradient_code():
    values = [2.0, 1.0, 0.5, 0.0]
    logits = torch.tensor([values], requires_grad=True)
    mask = torch.ones(4, dtype=torch.bool)
    loss = sparse_coding_loss(prototype_log_probs(logits, mask), torch.tensor([0]), mask, k=2)
    lse = math.log(sum(math.exp(v) for v in values))
    code = [math.exp(1.0) / (math.exp(1.0) + math.exp(0.5)), math.exp(0.5) / (math.exp(1.0) + math.exp(0.5))]
    expected = -(code[0] * (1.0 - lse) + code[1] * (0.5 - lse))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # The code is a constant: d/dlogit_c = p_c * sum(a) - a_c, so the top-k neighbours are pulled (negative grad).
    probs = torch.softmax(torch.tensor(values), 0)
    expected_grad = probs - torch.tensor([0.0, code[0], code[1], 0.0])
    torch.testing.assert_close(logits.grad[0], expected_grad)
    assert logits.grad[0, 1] < 0 and logits.grad[0, 2] < 0


def test_csc2_code_temperature_ratio_sharpens_code():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0]])
    mask = torch.ones(4, dtype=torch.bool)
    log_probs = prototype_log_probs(logits, mask)
    broad = sparse_coding_loss(log_probs, torch.tensor([0]), mask, k=2, code_temperature_ratio=10.0)
    sharp = sparse_coding_loss(log_probs, torch.tensor([0]), mask, k=2, code_temperature_ratio=0.01)
    lse = math.log(sum(math.exp(v) for v in [2.0, 1.0, 0.5, 0.0]))
    assert sharp.item() == pytest.approx(-(1.0 - lse), rel=1e-4)  # all weight on the nearest neighbour
    assert broad.item() > sharp.item()


def test_pixel_to_pixel_within_image():
    embeddings = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]]])
    labels = torch.tensor([[0, 0, 1, -1]])  # anchor 2 has no positive, pixel 3 is ignored
    loss = pixel_to_pixel_loss(embeddings, labels, tau=1.0)
    anchor0 = nll(0.6, [0.6, 0.0])
    anchor1 = nll(0.6, [0.6, 0.8])
    assert loss.item() == pytest.approx((anchor0 + anchor1) / 2, rel=1e-6)


def test_pixel_to_pixel_never_contrasts_across_images():
    embeddings = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    labels = torch.tensor([[0, 0], [0, 0]])
    # Within each image the only other pixel is the positive: log(1) = 0, whatever the other image holds.
    assert pixel_to_pixel_loss(embeddings, labels, tau=0.1).item() == pytest.approx(0.0, abs=1e-6)


def test_pixel_to_region_multiple_positives_and_empty_slots():
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.0, 0.0]])
    bank_labels = torch.tensor([0, 1, 0, -1])
    loss = pixel_to_region_loss(query, torch.tensor([0, 2]), bank, bank_labels, tau=1.0)  # class 2 not in bank
    lse = math.log(E + 1 + math.exp(0.6))
    assert loss.item() == pytest.approx(-((1.0 - lse) + (0.6 - lse)) / 2, rel=1e-6)


def test_pixel_cross_entropy_restricted_to_dataset_block():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    allowed = torch.tensor([[True, True, False, False], [False, False, True, True]])
    loss = pixel_cross_entropy(logits, torch.tensor([0, 3]), allowed)
    assert loss.item() == pytest.approx((nll(1.0, [1, 2]) + nll(4.0, [3, 4])) / 2, rel=1e-6)
    unrestricted = pixel_cross_entropy(logits, torch.tensor([0, -1]))
    assert unrestricted.item() == pytest.approx(nll(1.0, [1, 2, 3, 4]), rel=1e-6)


def test_moco_infonce():
    query, key = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    assert moco_infonce(query, key, queue, tau=1.0).item() == pytest.approx(nll(0.6, [0.6, 0.0, -1.0]), rel=1e-6)


def test_csc1_exclusion_keeps_both_labels_of_a_mixed_pixel():
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    mask = torch.ones(4, dtype=torch.bool)
    excluded = csc1_exclusion(logits, torch.tensor([0]), mask, k=2)
    assert excluded.tolist() == [[False, True, True, False]]
    excluded = csc1_exclusion(logits, torch.tensor([0]), mask, k=2, keep_labels=[torch.tensor([0]), torch.tensor([1])])
    assert excluded.tolist() == [[False, False, True, False]]


def test_within_image_region_nce_contrasts_a_pixel_with_its_own_image_regions_only():
    # Image 0 holds classes 0 and 2; image 1 only class 1 (nothing to contrast, skipped). Class 1's region
    # in image 1 points along the first pixel's embedding, yet never enters image 0's denominator.
    embeddings = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    labels = torch.tensor([[0, 2, 1], [1, 1, 1]])  # pixel (0, 2): class 1 has no region in image 0: skipped
    regions = torch.zeros(2, 3, 2)
    regions[0, 0] = torch.tensor([0.6, 0.8])
    regions[0, 2] = torch.tensor([0.0, 1.0])
    regions[1, 1] = torch.tensor([1.0, 0.0])
    present = torch.tensor([[True, False, True], [False, True, False]])
    loss = within_image_region_nce(embeddings, labels, regions, present, tau=1.0)
    pixel0 = nll(0.6, [0.6, 0.0])
    pixel1 = nll(1.0, [0.8, 1.0])
    assert loss.item() == pytest.approx((pixel0 + pixel1) / 2, rel=1e-6)
    ignored = within_image_region_nce(embeddings, torch.full_like(labels, -1), regions, present, tau=1.0)
    assert ignored.item() == 0.0
