"""The trainer <-> method interface: build_method, forward/backward of every method, momentum encoder, EMA."""

import copy
import math

import pytest
import timm
import torch

from training.data.label_space import LabelSpace
from training.mdp import METHODS, build_method, method_options, momentum_schedule, pseudo_label
from training.mdp.model import build_encoder, ema_update_

ARCH = "resnet18"
SIZE = 32  # OS8 -> 4x4 embedding maps


@pytest.fixture(scope="module")
def label_space():
    return LabelSpace([("voc", ["bg", "cat", "dog"]), ("ade", ["wall", "sky", "tree", "road"])])


def make_batch(seed=0, batch=4):
    generator = torch.Generator().manual_seed(seed)
    dataset_id = torch.tensor([0, 1, 0, 1])[:batch]
    local = torch.randint(0, 3, (batch, SIZE, SIZE), generator=generator)
    mask = torch.where(dataset_id[:, None, None] == 0, local, 3 + local)  # labels inside each dataset's block
    mask[:, :8, :8] = -1
    image = torch.randn(batch, 3, SIZE, SIZE, generator=generator)
    return {
        "image": image,
        "image_k": image + 0.1 * torch.randn(image.shape, generator=generator),
        "mask": mask,
        "dataset_id": dataset_id,
        "index": torch.arange(batch),
    }


def build(name, label_space, **options):
    if name == "moco_v2":
        options.setdefault("queue_size", 32)
    torch.manual_seed(0)
    return build_method(name, label_space=label_space, arch=ARCH, output_stride=8, embed_dim=16, **options)


@pytest.mark.parametrize("name", METHODS)
def test_every_method_trains_end_to_end(name, label_space):
    method = build(name, label_space)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    for step in range(2):  # the first MDP step fills the prototypes, the second has a loss
        out = method(make_batch(step))
        assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
        assert all(value.dim() == 0 for value in out.values())
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        method.momentum_update(0.99)
    first_conv = method.encoder.backbone.conv1.weight.grad
    assert first_conv is not None and first_conv.abs().sum() > 0  # the graph reaches the stem
    assert isinstance(method.encoder.backbone, timm.models.ResNet)


def test_state_dict_layout_and_exportable_backbone(label_space):
    method = build("mdp", label_space)
    keys = set(method.state_dict())
    assert {"memory.prototypes", "memory.counts"} <= keys
    prefixes = {key.split(".")[0] + "." + key.split(".")[1] for key in keys if not key.startswith("memory.")}
    assert prefixes == {"encoder.backbone", "encoder.head", "momentum_encoder.backbone", "momentum_encoder.head"}
    assert method.state_dict()["memory.prototypes"].shape == (label_space.num_classes, 16)
    backbone = {
        k[len("encoder.backbone.") :]: v for k, v in method.state_dict().items() if k.startswith("encoder.backbone.")
    }
    timm.create_model(ARCH, num_classes=0).load_state_dict(backbone, strict=True)
    ce_keys = set(build("supervised_ce", label_space).state_dict())
    assert {"classifier.weight", "classifier.bias"} <= ce_keys
    assert not any(key.startswith("momentum_encoder.") for key in ce_keys)


def test_embeddings_follow_output_stride():
    for output_stride, side in ((8, 4), (16, 2), (32, 1)):
        encoder = build_encoder(ARCH, output_stride, embed_dim=16, head="dense")
        embeddings = encoder(torch.randn(2, 3, SIZE, SIZE))
        assert embeddings.shape == (2, 16, side, side)
        torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2, side, side))


def test_momentum_branch_uses_momentum_weights(label_space):
    reference = build("mdp", label_space, mixing=False)
    perturbed_online = copy.deepcopy(reference)
    with torch.no_grad():
        for param in perturbed_online.encoder.parameters():
            param.add_(torch.randn_like(param))
    perturbed_momentum = copy.deepcopy(reference)
    with torch.no_grad():
        for param in perturbed_momentum.momentum_encoder.parameters():
            param.add_(torch.randn_like(param))
    batch = make_batch()
    for method in (reference, perturbed_online, perturbed_momentum):
        method(batch)
    # Prototypes come from the momentum encoder only: changing the online weights changes nothing...
    torch.testing.assert_close(perturbed_online.memory.prototypes, reference.memory.prototypes)
    # ...while changing the momentum weights does.
    assert not torch.allclose(perturbed_momentum.memory.prototypes, reference.memory.prototypes)


def test_ema_math_and_buffer_copy():
    online, momentum = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        online.weight.fill_(2.0)
        momentum.weight.fill_(1.0)
        online.running_mean.fill_(5.0)
    online.num_batches_tracked.fill_(7)
    ema_update_(online, momentum, 0.9)
    torch.testing.assert_close(momentum.weight, torch.full((3,), 0.9 * 1.0 + 0.1 * 2.0))
    torch.testing.assert_close(momentum.running_mean, torch.full((3,), 5.0))
    assert momentum.num_batches_tracked.item() == 7
    with pytest.raises(ValueError, match="momentum"):
        ema_update_(online, momentum, 1.5)


def test_momentum_update_of_a_method_and_no_op_without_momentum_encoder(label_space):
    method = build("mdp", label_space)
    with torch.no_grad():
        method.encoder.head.out.bias.fill_(1.0)
        method.momentum_encoder.head.out.bias.fill_(0.0)
    method.momentum_update(0.75)
    torch.testing.assert_close(method.momentum_encoder.head.out.bias, torch.full((16,), 0.25))
    assert all(not p.requires_grad for p in method.momentum_encoder.parameters())
    ce = build("supervised_ce", label_space)
    before = copy.deepcopy(ce.state_dict())
    ce.momentum_update(0.5)
    assert all(torch.equal(before[k], v) for k, v in ce.state_dict().items())


def test_momentum_schedule_endpoints():
    assert momentum_schedule(0, 100, 0.99, 1.0) == pytest.approx(0.99)
    assert momentum_schedule(100, 100, 0.99, 1.0) == pytest.approx(1.0)
    assert momentum_schedule(50, 100, 0.99, 1.0) == pytest.approx(0.995)
    assert momentum_schedule(500, 100, 0.99, 1.0) == pytest.approx(1.0)
    assert momentum_schedule(25, 100, 0.99, 1.0) == pytest.approx(1.0 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)
    with pytest.raises(ValueError):
        momentum_schedule(0, 0)


def test_prototypes_update_from_clean_momentum_views_only(label_space):
    torch.manual_seed(0)
    method = build("mdp", label_space, p_mix=1.0)
    batch = make_batch()
    out = method(batch)
    assert out["mixed_fraction"].item() == 1.0
    clean = build("mdp", label_space, mixing=False)
    clean(batch)
    torch.testing.assert_close(method.memory.prototypes, clean.memory.prototypes)


def test_sparse_coding_switches(label_space):
    batch = make_batch()
    outputs = {}
    for variant in ("csc2", "csc1", None):
        method = build("mdp", label_space, mixing=False, sparse_coding=variant, sc_topk=2)
        method(batch)  # fill prototypes
        outputs[variant] = method(batch)
    assert "loss_sc" in outputs["csc2"] and "loss_sc" not in outputs["csc1"] and "loss_sc" not in outputs[None]
    torch.testing.assert_close(
        outputs["csc2"]["loss"], outputs["csc2"]["loss_proto"] + 0.1 * outputs["csc2"]["loss_sc"]
    )
    # CSC1 removes the nearest foreign prototypes from the denominator: the contrastive loss can only drop.
    assert outputs["csc1"]["loss_proto"] < outputs[None]["loss_proto"]
    torch.testing.assert_close(outputs[None]["loss"], outputs[None]["loss_proto"])


def test_unlabeled_images_get_pseudo_labels_but_do_not_update_prototypes(label_space):
    method = build("mdp", label_space, mixing=False, pseudo_label_threshold=0.0)
    labelled = make_batch(0)
    method(labelled)
    counts_before = method.memory.counts.clone()
    unlabeled = make_batch(1)
    unlabeled["mask"] = torch.full_like(unlabeled["mask"], -1)
    unlabeled["unlabeled"] = torch.ones(4, dtype=torch.bool)
    out = method(unlabeled)
    assert torch.equal(method.memory.counts, counts_before)  # nothing from pseudo-labels
    assert out["loss_proto"] > 0  # ...but the pixels were trained on
    out["loss"].backward()
    labels, confidence = pseudo_label(method, method.memory.prototypes, unlabeled["image_k"], threshold=0.0)
    assert labels.shape == (4, SIZE, SIZE) and ((labels >= 0) & method.memory.initialised[labels]).all()
    assert ((confidence > 0) & (confidence <= 1)).all()


def test_pseudo_label_threshold_and_uninitialised_prototypes():
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # class 2 uninitialised

    def encoder(images):  # pixel embeddings straight from the "image": first two channels
        return torch.nn.functional.normalize(images[:, :2], dim=1)

    images = torch.zeros(1, 3, 1, 3)
    images[0, :2, 0, 0] = torch.tensor([1.0, 0.0])
    images[0, :2, 0, 1] = torch.tensor([0.0, 1.0])
    images[0, :2, 0, 2] = torch.tensor([1.0, 1.0])  # equidistant: confidence 0.5
    labels, confidence = pseudo_label(encoder, prototypes, images, threshold=0.6, tau=0.07)
    assert labels.tolist() == [[[0, 1, -1]]]
    assert confidence[0, 0, 2].item() == pytest.approx(0.5)
    labels, _ = pseudo_label(encoder, torch.zeros(3, 2), images, threshold=0.0)
    assert (labels == -1).all()


def test_resume_from_state_dict_gives_identical_loss(label_space):
    method = build("mdp", label_space)
    method(make_batch(0))
    restored = build("mdp", label_space)
    restored.load_state_dict(method.state_dict())
    torch.manual_seed(5)
    expected = method(make_batch(1))["loss"]
    torch.manual_seed(5)
    assert torch.equal(restored(make_batch(1))["loss"], expected)


def test_bad_names_options_and_batches_raise_clear_errors(label_space):
    with pytest.raises(ValueError, match="unknown method 'simclr'"):
        build_method("simclr", label_space=label_space)
    with pytest.raises(TypeError, match="no option \\['tua'\\]"):
        build_method("mdp", label_space=label_space, arch=ARCH, tua=0.1)
    assert method_options("mdp")["tau"] == 0.07 and method_options("mdp")["window"] == 4096
    method = build("mdp", label_space)
    batch = make_batch()
    with pytest.raises(ValueError, match="batch\\['mask'\\] holds ids in \\[-1, 7\\]"):
        method(dict(batch, mask=batch["mask"].masked_fill(batch["mask"] == 0, 7)))
    with pytest.raises(KeyError, match="image_k"):
        method({k: v for k, v in batch.items() if k != "image_k"})
    with pytest.raises(ValueError, match="int64"):
        method(dict(batch, mask=batch["mask"].int()))
    multi_head = build("multi_head", label_space)
    with pytest.raises(ValueError, match="another dataset's block"):
        multi_head(dict(batch, dataset_id=1 - batch["dataset_id"]))
