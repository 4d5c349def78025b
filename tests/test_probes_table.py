"""The one-knob probe table: criteria read from a run's metrics.jsonl and the section written into a page."""

from __future__ import annotations

import json

from training.studies import probes


def _write_metrics(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_summary_compares_the_first_tenth_with_the_last_fifth_and_keeps_the_last_probe(tmp_path):
    records = [{"step": 0, "val_backbone_probe": 0.2}]
    records += [
        {"step": s, "loss_proto": 5.0 if s <= 10 else 3.0 if s <= 80 else 2.0, "prototype_accuracy": s / 100}
        for s in range(10, 101, 10)
    ]
    records += [
        {"step": 50, "val_backbone_probe": 0.3, "prototype_cos_mean": 0.5, "val_prototype_accuracy": 0.25},
        {"step": 100, "val_backbone_probe": 0.4, "prototype_cos_mean": 0.1, "val_prototype_accuracy": 0.35},
    ]
    _write_metrics(tmp_path / "metrics.jsonl", records)
    summary = probes.summarise(tmp_path / "metrics.jsonl")
    assert summary["steps"] == 100
    assert (summary["loss_early"], summary["loss_late"], summary["loss_ratio"]) == (5.0, 2.0, 0.4)
    assert summary["accuracy_first"] == 0.1 and summary["accuracy_late"] == 0.95  # steps 90 and 100
    assert summary["val_backbone_probe_init"] == 0.2 and summary["val_backbone_probe"] == 0.4
    assert summary["prototype_cos_end"] == 0.1 and summary["val_prototype_accuracy"] == 0.35


def test_table_replaces_its_section_and_marks_missing_values(tmp_path):
    records = [{"step": 0, "val_backbone_probe": 0.2}, {"step": 10, "loss": 4.0}, {"step": 100, "loss": 2.0}]
    _write_metrics(tmp_path / "metrics.jsonl", records)
    row = (probes.PROBES[-1], probes.summarise(tmp_path / "metrics.jsonl"))  # supervised CE: no prototype keys
    page = tmp_path / "LEARNING.md"
    page.write_text(f"# page\n\n{probes.SECTION_BEGIN}\nold table\n{probes.SECTION_END}\n\nkept\n")
    probes.write_section(page, probes.table([row]))
    text = page.read_text()
    assert "old table" not in text and text.endswith("\n\nkept\n") and text.count(probes.SECTION_BEGIN) == 1
    line = next(line for line in text.splitlines() if line.startswith(f"| {probes.PROBES[-1].label} |"))
    assert "4.00 -> 2.00 (0.50)" in line and "| - -> - |" in line and "nan" not in line
