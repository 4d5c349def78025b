"""An export of a run trained with MDP's dataset centring: the prototype segmenter scores pixels as the loss did."""

import pytest
import torch
import torch.nn.functional as F
from prototype_checkpoints import make_export

from mdp_hub import CheckpointError, PrototypeSegmenter, load_prototypes
from mdp_hub.prototypes import centred_prototype_logits


@pytest.fixture(scope="module")
def centred(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("centred"), dataset_centring=True)


@pytest.mark.parametrize("source", ["export", "checkpoint"])
def test_segmenter_logits_are_the_centred_logits_of_the_method(centred, source):
    method, batch, checkpoint, folder = centred
    segmenter = PrototypeSegmenter.from_pretrained(folder if source == "export" else checkpoint)
    with torch.no_grad():
        embeddings = method.encoder(batch)  # [1, D, h, w], eval mode
        pixels = embeddings.permute(0, 2, 3, 1).reshape(-1, embeddings.shape[1])
        prototypes = F.normalize(method.memory.prototypes, dim=1)
        offsets = method.class_offsets()
        expected = centred_prototype_logits(pixels, prototypes, offsets, segmenter.tau)
        logits = segmenter(batch)  # [1, C, H, W], upsampled
    small = F.interpolate(expected.t().reshape(1, -1, *embeddings.shape[-2:]), size=batch.shape[-2:], mode="bilinear")
    seen = segmenter.available
    torch.testing.assert_close(logits[:, seen], small[:, seen], atol=1e-4, rtol=1e-4)
    plain = torch.einsum("bdhw,kd->bkhw", embeddings, prototypes) / segmenter.tau
    assert not torch.allclose(logits[:, seen], F.interpolate(plain, size=batch.shape[-2:], mode="bilinear")[:, seen])


def test_centred_prototypes_are_not_handed_out_without_their_offsets(centred):
    _, _, _, folder = centred
    with pytest.raises(CheckpointError, match="dataset-centred"):
        load_prototypes(folder)
    *_, offsets = load_prototypes(folder, with_offsets=True)
    assert offsets.shape[1] == 8 and offsets.abs().sum() > 0
