"""LabelSpace: offsets of the paper's concatenated space, ignore handling, serialisation, unification."""

import json

import pytest
import torch

from training.data import IGNORE_INDEX, LabelSpace
from training.data.classes import ADE20K_CLASSES, COCO_STUFF_CLASSES, VOC_CLASSES


def paper_space(unify_map=None) -> LabelSpace:
    return LabelSpace(
        [("voc_aug", VOC_CLASSES), ("ade20k", ADE20K_CLASSES), ("coco_stuff164k", COCO_STUFF_CLASSES)],
        unify_map=unify_map,
    )


def test_class_list_lengths_match_the_benchmarks():
    assert (len(VOC_CLASSES), len(ADE20K_CLASSES), len(COCO_STUFF_CLASSES)) == (21, 150, 171)
    assert ADE20K_CLASSES[7] == "bed"  # mmseg's 'bed ' with the trailing space stripped


def test_paper_space_offsets_and_names():
    space = paper_space()
    assert space.num_classes == 342 and IGNORE_INDEX == -1
    assert [d.offset for d in space.datasets] == [0, 21, 171]
    assert space.dataset_slice("ade20k") == slice(21, 171) and space.dataset_slice(2) == slice(171, 342)
    assert space.class_names[0] == "voc_aug/background"
    assert space.class_names[21] == "ade20k/wall" and space.class_names[341] == "coco_stuff164k/wood"


def test_to_global_maps_offsets_and_both_ignore_values():
    space = paper_space()
    local = torch.tensor([[0, 149, 255, -1]])
    assert space.to_global(1, local).tolist() == [[21, 170, -1, -1]]
    batch = torch.tensor([[0, 20], [0, 170]])
    dataset_ids = torch.tensor([[0], [2]])
    assert space.to_global(dataset_ids, batch).tolist() == [[0, 20], [171, 341]]
    table = space.global_lookup_table("coco_stuff164k")
    assert table[0] == 171 and table[170] == 341 and table[171] == -1 and table[255] == -1


def test_round_trip_dict_and_json(tmp_path):
    space = paper_space({"ade20k/person": "voc_aug/person"})
    assert LabelSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space
    space.save(tmp_path / "labels.json")
    assert LabelSpace.load(tmp_path / "labels.json") == space
    broken = space.to_dict() | {"num_classes": 5}
    with pytest.raises(ValueError, match="inconsistent"):
        LabelSpace.from_dict(broken)
    with pytest.raises(ValueError, match="not a label space"):
        LabelSpace.from_dict({"datasets": []})


def test_unification_merges_classes_by_name():
    space = paper_space({"ade20k/person": "voc_aug/person", "coco_stuff164k/person": "voc_aug/person"})
    assert space.num_classes == 340
    person = space.class_names.index("voc_aug/person")
    assert space.to_global(1, torch.tensor([12])).item() == person  # ADE20K local 12 = person
    assert space.to_global(2, torch.tensor([0])).item() == person  # COCO-Stuff local 0 = person
    assert space.to_global(1, torch.tensor([13])).item() == space.class_names.index("ade20k/earth")
    assert space.dataset_class_ids("ade20k").shape == (150,)
    with pytest.raises(ValueError, match="undefined with a unification map"):
        space.dataset_slice("ade20k")


def test_bad_unification_and_duplicate_names():
    with pytest.raises(ValueError, match="unknown class 'ade20k/persons'"):
        paper_space({"ade20k/persons": "voc_aug/person"})
    with pytest.raises(ValueError, match="itself merged away"):
        paper_space({"ade20k/person": "voc_aug/person", "voc_aug/person": "coco_stuff164k/person"})
    with pytest.raises(ValueError, match="appears twice"):
        LabelSpace([("a", ["x"]), ("a", ["y"])])
