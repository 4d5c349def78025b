"""docs/RELIABILITY.md's figures are counted from the reliability tests' tables, not typed by hand."""

import re
from pathlib import Path

import test_reliability_bad_data as bad_data
import test_reliability_disk as disk
import test_reliability_errors as errors
import test_reliability_kill as kill
import test_reliability_weights as weights

DOC = Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md"
ELASTIC_KILLS = 1  # tests/test_reliability_elastic.py kills one worker once


def counted_figures() -> dict[str, int]:
    killed = len(kill.KILL_CHAIN) * len(kill.MAINS) + ELASTIC_KILLS
    disk_faults = len(disk.CHECKPOINT_FAULTS) + 2 * len(disk.EXPORT_FAULTS)  # fresh folder and over an export
    return {
        "processes killed (SIGKILL)": killed,
        "runs resumed after a fault": killed + len(disk.CHECKPOINT_FAULTS),
        "disk / write faults injected": disk_faults,
        "faults injected in total": killed + disk_faults,
        "tampered or code-carrying weights refused": len(weights.TAMPER_CASES) + len(weights.PICKLE_ROUTES),
        "bad inputs tried": len(bad_data.READER_SPECS) * len(bad_data.FAULTS),
        "bad command-line inputs, one line each": len(errors.CASES),
        "data lost": 0,
    }


def test_documented_figures_match_the_test_tables():
    section = DOC.read_text().split("## Figures", 1)[1]
    documented = {name.strip(): int(value) for name, value in re.findall(r"^\| ([^|]+) \| (\d+) \|$", section, re.M)}
    assert documented == counted_figures()
