"""`python -m training.experiments paper-tables`: the study runs real pretraining and fine-tuning jobs, resumes
finished ones, and writes its own section of the results page; the aggregation and ordering checks are exact."""
from __future__ import annotations

import json
import math

import pytest

from training import experiments
from training.data import classes
from training.data.label_space import LabelSpace
from training.data.synthetic import DATASETS, _local_class_name, unify_map
from training.experiments import (METHODS, SECTION_BEGIN, SECTION_END, check_orderings, replace_section,
                                  summarise)


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
        for target in experiments.TARGETS:
            records += [_record("mdp_csc", target, seed, full), _record("scratch", target, seed, scratch),
                        _record("supervised_ce", target, seed, ce + (10 if target == "cityscapes" else 0))]
    table = summarise(records, [methods["scratch"], methods["supervised_ce"], methods["mdp_csc"]])
    verdicts = {(c["better"], c["worse"], c["target"]): c["verdict"] for c in check_orderings(table)}
    assert verdicts == {("mdp_csc", "scratch", "voc_aug"): "holds", ("mdp_csc", "scratch", "cityscapes"): "holds",
                        ("mdp_csc", "supervised_ce", "voc_aug"): "within noise",  # +1 vs std 2
                        ("mdp_csc", "supervised_ce", "cityscapes"): "reversed"}


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
    space = LabelSpace([("voc_aug", classes.VOC_CLASSES), ("ade20k", classes.ADE20K_CLASSES),
                        ("coco_stuff164k", classes.COCO_STUFF_CLASSES)], unify_map=mapping)
    assert space.num_classes == 342 - len(mapping)


@pytest.mark.slow
def test_quick_study_runs_real_jobs_resumes_and_writes_the_page(tmp_path, capsys):
    results = tmp_path / "docs" / "RESULTS.md"
    results.parent.mkdir()
    results.write_text("# Results\n\nhand-written part\n")
    argv = ["paper-tables", "--quick", "--seeds", "0", "--methods", "scratch", "mdp_unified",
            "--output", str(tmp_path / "study"), "--results", str(results)]
    assert experiments.main(argv) == 0
    study = tmp_path / "study"
    space = json.loads((study / "pretrain" / "mdp_unified" / "seed0" / "label_space.json").read_text())
    assert len(space["unify_map"]) == len(unify_map())
    done = {p.parent.relative_to(study).as_posix() for p in study.rglob(experiments.DONE_NAME)}
    assert done == {"pretrain/mdp_unified/seed0", "finetune/voc_aug/scratch/seed0",
                    "finetune/cityscapes/scratch/seed0", "finetune/voc_aug/mdp_unified/seed0",
                    "finetune/cityscapes/mdp_unified/seed0"}
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
    records = [_record(key, target, seed, base + shift)
               for seed, base in enumerate((50.0, 60.0, 70.0)) for target in experiments.TARGETS
               for key, shift in (("mdp_csc", 2.0), ("scratch", 0.0))]
    table = summarise(records, [methods["scratch"], methods["mdp_csc"]])
    assert table["scratch"]["voc_aug"]["std"] == pytest.approx(10.0)
    (voc, city) = check_orderings(table)
    assert voc["verdict"] == city["verdict"] == "holds"
    assert voc["difference"] == pytest.approx(2.0) and voc["noise"] == pytest.approx(0.0)
    assert voc["paired_seeds"] == [0, 1, 2]
