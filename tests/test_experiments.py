"""`python -m training.experiments paper-tables`: the study runs real pretraining and fine-tuning jobs, resumes
finished ones, and writes its own section of the results page; the aggregation and ordering checks are exact."""

from __future__ import annotations

import json
import math
import re

import pytest

from training import experiments
from training.data import classes
from training.data.label_space import LabelSpace
from training.data.synthetic import DATASETS, _local_class_name, unify_map
from training.studies import design, scheduling, tables
from training.studies.design import METHODS
from training.studies.orderings import check_orderings
from training.studies.tables import SECTION_BEGIN, SECTION_END, replace_section, summarise


def _record(method, target, seed, miou):
    return {"kind": "finetune", "method": method, "target": target, "seed": seed, "mIoU": miou}


def test_summary_is_mean_and_sample_std_over_seeds():
    records = [_record("scratch", "voc_aug", s, v) for s, v in ((0, 40.0), (1, 44.0), (2, 42.0))]
    records += [_record("scratch", "cityscapes", 0, 30.0), {"kind": "pretrain", "method": "scratch", "seed": 0}]
    records += [{"kind": "finetune", "method": "scratch", "target": "cityscapes", "seed": 1, "error": "boom"}]
    table = summarise(records, [METHODS[0]])
    voc, city = table["scratch"]["voc_aug"], table["scratch"]["cityscapes"]
    assert voc["mean"] == pytest.approx(42.0) and voc["std"] == pytest.approx(2.0) and voc["n"] == 3
    assert city["n"] == 1 and city["mean"] == 30.0 and math.isnan(city["std"])  # the failed seed is not a zero


def test_orderings_hold_reverse_or_fall_within_noise():
    methods = {m.key: m for m in METHODS}
    records = []
    for seed, (full, scratch, ce) in enumerate(((50, 40, 49), (52, 41, 53), (54, 42, 51))):
        for target in design.TARGETS:
            records += [
                _record("mdp_csc", target, seed, full),
                _record("scratch", target, seed, scratch),
                _record("supervised_ce", target, seed, ce + (10 if target == "cityscapes" else 0)),
            ]
    table = summarise(records, [methods["scratch"], methods["supervised_ce"], methods["mdp_csc"]])
    verdicts = {(c["better"], c["worse"], c["target"]): c["verdict"] for c in check_orderings(table)}
    assert verdicts == {
        ("mdp_csc", "scratch", "voc_aug"): "holds",
        ("mdp_csc", "scratch", "cityscapes"): "holds",
        ("mdp_csc", "supervised_ce", "voc_aug"): "within noise",  # +1 vs std 2
        ("mdp_csc", "supervised_ce", "cityscapes"): "reversed",
    }


def test_mixing_and_sparse_coding_together_are_checked_only_without_the_mixing_only_row():
    methods = {m.key: m for m in METHODS}
    records = [
        _record(key, target, seed, value + seed)
        for seed in (0, 1)
        for target in design.TARGETS
        for key, value in (("mdp_csc", 50), ("mdp_no_mixing", 45), ("mdp", 48))
    ]

    def pairs(keys: list[str]) -> set:
        table = summarise([r for r in records if r["method"] in keys], [methods[k] for k in keys])
        return {(c["better"], c["worse"]) for c in check_orderings(table)}

    assert pairs(["mdp_no_mixing", "mdp_csc"]) == {("mdp_csc", "mdp_no_mixing")}
    assert pairs(["mdp_no_mixing", "mdp", "mdp_csc"]) == {("mdp", "mdp_no_mixing"), ("mdp_csc", "mdp")}


def test_section_replacement_keeps_the_rest_of_the_page():
    page = "# Results\n\nintro\n\n## Other section\n\nkept | exactly\n"
    first = replace_section(page, f"{SECTION_BEGIN}\nA\n{SECTION_END}\n")
    assert first.startswith(page) and first.endswith(f"{SECTION_BEGIN}\nA\n{SECTION_END}\n")
    second = replace_section(first + "\n## After\n", f"{SECTION_BEGIN}\nB\n{SECTION_END}\n")
    assert second == page + f"\n{SECTION_BEGIN}\nB\n{SECTION_END}\n\n## After\n"
    with pytest.raises(ValueError, match="no '<!-- paper-tables:end -->'"):
        replace_section(f"{SECTION_BEGIN}\nhalf", "x")


def test_unification_map_merges_exactly_the_classes_rendered_from_one_concept():
    mapping = unify_map()
    assert mapping["ade20k/person"] == "voc_aug/person" and mapping["coco_stuff164k/sea"] == "ade20k/water"
    assert not set(mapping.values()) & set(mapping)  # no chains
    assert not any(label.endswith(("/background", "/other")) for label in (*mapping, *mapping.values()))
    for source, target in mapping.items():  # every merge joins two renderings of the same concept
        concepts = []
        for label in (source, target):
            dataset, name = label.split("/", 1)
            spec = DATASETS[dataset]
            rendered = {**spec.top, **spec.middle, **spec.bottom, **spec.things}
            concepts.append({c for c, raw in rendered.items() if _local_class_name(dataset, raw) == name})
        assert concepts[0] & concepts[1], (source, target)
    space = LabelSpace(
        [
            ("voc_aug", classes.VOC_CLASSES),
            ("ade20k", classes.ADE20K_CLASSES),
            ("coco_stuff164k", classes.COCO_STUFF_CLASSES),
        ],
        unify_map=mapping,
    )
    assert space.num_classes == 342 - len(mapping)


@pytest.mark.slow
def test_quick_study_runs_real_jobs_resumes_and_writes_the_page(tmp_path, capsys):
    results = tmp_path / "docs" / "RESULTS.md"
    results.parent.mkdir()
    results.write_text("# Results\n\nhand-written part\n")
    argv = [
        "paper-tables",
        "--quick",
        "--seeds",
        "0",
        "--methods",
        "scratch",
        "mdp_unified",
        "--output",
        str(tmp_path / "study"),
        "--results",
        str(results),
    ]
    assert experiments.main(argv) == 0
    study = tmp_path / "study"
    space = json.loads((study / "pretrain" / "mdp_unified" / "seed0" / "label_space.json").read_text())
    assert len(space["unify_map"]) == len(unify_map())
    done = {p.parent.relative_to(study).as_posix() for p in study.rglob(scheduling.DONE_NAME)}
    assert done == {
        "pretrain/mdp_unified/seed0",
        "finetune/voc_aug/scratch/seed0",
        "finetune/cityscapes/scratch/seed0",
        "finetune/voc_aug/mdp_unified/seed0",
        "finetune/cityscapes/mdp_unified/seed0",
    }
    page = results.read_text()
    assert page.startswith("# Results\n\nhand-written part\n") and page.count(SECTION_BEGIN) == 1
    assert "| MDP prototypes, unified labels |" in page and (results.parent / "RESULTS_paper_tables.png").is_file()
    data = json.loads(results.with_suffix(".json").read_text())["paper_tables"]
    first = data["table"]
    assert all(first[m][t]["n"] == 1 and 0 <= first[m][t]["mean"] <= 100 for m in first for t in first[m])

    capsys.readouterr()
    assert experiments.main(argv) == 0  # everything finished: nothing runs again, same numbers
    assert capsys.readouterr().out.count("(already finished)") == 5
    again = json.loads(results.with_suffix(".json").read_text())["paper_tables"]["table"]
    assert again == first and results.read_text().count(SECTION_BEGIN) == 1


def test_orderings_compare_paired_seeds_not_pooled_spreads():
    """A seed effect shared by both rows (here +-10) must not hide a consistent +2 difference."""
    methods = {m.key: m for m in METHODS}
    records = [
        _record(key, target, seed, base + shift)
        for seed, base in enumerate((50.0, 60.0, 70.0))
        for target in design.TARGETS
        for key, shift in (("mdp_csc", 2.0), ("scratch", 0.0))
    ]
    table = summarise(records, [methods["scratch"], methods["mdp_csc"]])
    assert table["scratch"]["voc_aug"]["std"] == pytest.approx(10.0)
    (voc, city) = check_orderings(table)
    assert voc["verdict"] == city["verdict"] == "holds"
    assert voc["difference"] == pytest.approx(2.0) and voc["noise"] == pytest.approx(0.0)
    assert voc["paired_seeds"] == [0, 1, 2]


# ---- the study on dataset specs (photo formats, a folder dataset as target) -----------------------------------
def make_photo_study_data(root):
    """Tiny CamVid, Oxford-IIIT Pet and CCP sets to pretrain on, MSRC-v2 and a folder dataset as targets."""
    from test_data_photo_readers import make_camvid, make_ccp, make_msrc, make_pets
    from test_data_readers import grid, write_image, write_mask

    mask = grid([0, 1, 2, 3, 11, 5, 8, 9] * 8, 48)
    camvid = make_camvid(
        root / "CamVid", {"train": {f"t{i}": mask for i in range(4)}, "test": {f"s{i}": mask for i in range(2)}}
    )
    pets = make_pets(
        root / "pets",
        trainval={f"Abyssinian_{i}": grid([1, 2, 3, 1] * 16, 48) for i in range(4)},
        test={"beagle_1": grid([2, 1, 1, 3] * 16, 48)},
    )
    ccp = make_ccp(root / "ccp", {f"{n:04d}": grid([0, 19, 41, 14] * 16, 48) for n in (1, 2, 5, 6)})
    msrc = make_msrc(root / "msrc", {f"1_{n}_s": (grid([1, 2, 3, 4] * 16, 48), [2, 7, 4]) for n in range(1, 6)})
    scenes = root / "my_scenes"
    (scenes / "classes.txt").parent.mkdir(parents=True)
    (scenes / "classes.txt").write_text("ground\nsky\n")
    for split, count in (("train", 4), ("val", 2)):
        for i in range(count):
            write_image(scenes / "images" / split / f"{i}.png", 48, 64)
            write_mask(scenes / "masks" / split / f"{i}.png", grid([0, 1, 255, 1] * 16, 48))
    return [f"camvid:{camvid}", f"ccp:{ccp}", f"oxford_pet:{pets}"], f"msrc:{msrc}:test", f"folder:{scenes}"


def test_targets_are_resolved_from_specs_seen_or_held_out(tmp_path):
    pretrain, msrc, folder = make_photo_study_data(tmp_path)
    camvid_test = pretrain[0].replace("CamVid", "CamVid/") + ":test"  # the same folder spelled differently
    data = design.resolve_study_data(pretrain, [camvid_test, msrc, folder], None, design.QUICK)
    assert data.names == ["camvid", "ccp", "oxford_pet"] and not data.synthetic and data.unify_map is None
    assert [(t.key, t.split, t.role) for t in data.targets] == [
        ("camvid", "test", "seen"),
        ("msrc", "test", "held out"),
        ("my_scenes", "val", "held out"),
    ]
    assert data.targets[0].train_spec == pretrain[0].replace("CamVid", "CamVid/")  # its training split
    with pytest.raises(ValueError, match="each dataset may be a target once"):
        design.resolve_study_data(pretrain, [msrc, msrc.replace(":test", ":val")], None, design.QUICK)
    with pytest.raises(ValueError, match="--targets: name the datasets"):
        design.resolve_study_data(pretrain, [], None, design.QUICK)
    with pytest.raises(ValueError, match="mdp_unified needs --unify-map"):
        design.study_methods(["scratch", "mdp_unified"], has_unify_map=False)
    assert "mdp_unified" not in [m.key for m in design.study_methods(None, has_unify_map=False)]


def test_bad_dataset_spec_is_one_line_and_exit_code_2(tmp_path, capsys):
    argv = [
        "paper-tables",
        "--pretrain",
        f"camvid:{tmp_path}/nowhere",
        "--targets",
        f"msrc:{tmp_path}",
        "--output",
        str(tmp_path / "study"),
        "--results",
        str(tmp_path / "RESULTS.md"),
    ]
    assert experiments.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("python -m training.experiments: error: ")
    assert "nowhere: dataset folder not found (for camvid)" in error
    assert error.count("\n") == 1 and not (tmp_path / "study").exists()


@pytest.mark.slow
def test_quick_study_on_dataset_specs_writes_its_own_section(tmp_path):
    pretrain, _, folder = make_photo_study_data(tmp_path / "data")
    results = tmp_path / "docs" / "RESULTS.md"
    results.parent.mkdir()
    synthetic_section = f"{SECTION_BEGIN}\nsynthetic numbers\n{SECTION_END}\n"
    results.write_text(f"# Results\n\n{synthetic_section}")
    argv = [
        "paper-tables",
        "--quick",
        "--seeds",
        "0",
        "--methods",
        "supervised_ce",
        "--pretrain",
        *pretrain,
        "--targets",
        f"{pretrain[0]}:test",
        folder,
        "--section",
        "real-images",
        "--output",
        str(tmp_path / "study"),
        "--results",
        str(results),
    ]
    assert experiments.main(argv) == 0
    study = tmp_path / "study"
    space = json.loads((study / "pretrain" / "supervised_ce" / "seed0" / "label_space.json").read_text())
    assert [d["name"] for d in space["datasets"]] == ["camvid", "ccp", "oxford_pet"]
    done = {p.parent.relative_to(study).as_posix() for p in study.rglob(scheduling.DONE_NAME)}
    assert done == {
        "pretrain/supervised_ce/seed0",
        "finetune/camvid/supervised_ce/seed0",
        "finetune/my_scenes/supervised_ce/seed0",
    }
    page = results.read_text()
    begin, end = tables.section_markers("real-images")
    assert page.startswith(f"# Results\n\n{synthetic_section}") and page.count(begin) == 1 and end in page
    assert "## The paper's tables in miniature: pretrained on camvid + ccp + oxford_pet" in page
    assert "fine-tune camvid (seen) | vs scratch | fine-tune my_scenes (held out) |" in page
    assert "camvid on its test split, my_scenes on its val split" in page and "### Pretraining dynamics" in page
    dynamics_row = next(
        line for line in page.splitlines() if line.startswith("| supervised CE, concatenated labels | 3 |")
    )
    probe_start, probe_end = re.search(r"\| ([0-9.]+) -> ([0-9.]+) \|", dynamics_row).groups()
    assert 0 <= float(probe_start) <= 1 and 0 <= float(probe_end) <= 1  # the learning probe's numbers reach the page
    command = (
        "paper-tables --quick --pretrain camvid:CamVid ccp:ccp oxford_pet:pets --targets camvid:CamVid:test "
        "folder:my_scenes --methods supervised_ce --seeds 0 --section real-images`"
    )
    assert command in page
    assert (results.parent / "RESULTS_real_images.png").is_file()
    assert (results.parent / "RESULTS_real_images_pretraining.png").is_file()
    data = json.loads(results.with_suffix(".json").read_text())["real_images"]
    assert [t["key"] for t in data["info"]["targets"]] == ["camvid", "my_scenes"]
    assert all(0 <= data["table"]["supervised_ce"][t]["mean"] <= 100 for t in ("camvid", "my_scenes"))
