"""The paper's orderings of methods, checked one by one on a study's paired seeds."""

from __future__ import annotations

import statistics

# (better, worse, what the paper reports): the orderings the paper's tables claim, checked on every target.
PAPER_ORDERINGS: tuple[tuple[str, str, str], ...] = (
    ("mdp_csc", "scratch", "pretraining helps (R10: COCO-Stuff 38.37 vs 25.02)"),
    ("mdp_csc", "supervised_ce", "prototype contrast beats plain supervised CE (R3)"),
    ("mdp_csc", "multi_head", "beats one head per dataset (R4: VOC 73.32 vs 71.19)"),
    ("mdp_csc", "pixel_to_pixel", "beats pixel-to-pixel contrast (R2: 73.32 vs 71.19, Cityscapes 77.75 vs 77.17)"),
    ("mdp_no_mixing", "region_bank", "class prototypes beat a region bank (R5: 70.56 vs 70.11)"),
    ("mdp", "mdp_no_mixing", "cross-dataset mixing helps (R7: 73.32 vs 71.98)"),
    ("mdp_csc", "mdp", "sparse coding helps, mostly on the unseen dataset (R8: Cityscapes 76.53 vs 75.37)"),
    ("mdp_csc", "mdp_no_mixing", "mixing and sparse coding together help (R7, R8: 73.32 vs 71.98)"),
)


# An ordering checked only when the row between its two rows was not run (it would count the same claim twice).
ORDERING_SKIPPED_WITH = {("mdp_csc", "mdp_no_mixing"): "mdp"}


def paired_difference(a: dict, b: dict) -> tuple[float, float, list[int]] | None:
    """(mean of a - b over common seeds, its noise, the seeds) for two cells of ``summarise``; None if no common
    seed. Noise: sample std of the per-seed differences, or with one common seed the larger std of the cells."""
    common = sorted(set(a["seeds"]) & set(b["seeds"]))
    if not common:
        return None
    differences = [a["values"][a["seeds"].index(seed)] - b["values"][b["seeds"].index(seed)] for seed in common]
    if len(common) > 1:
        noise = statistics.stdev(differences)
    else:
        noise = max((s for s in (a["std"], b["std"]) if s == s), default=0.0)
    return statistics.fmean(differences), noise, common


def check_orderings(table: dict) -> list[dict]:
    """Each paper ordering on each target: holds / reversed / within noise.

    Seeds are paired (seed k of both rows shares the fine-tuning data order and the synthetic data), so the
    comparison is the mean of the per-seed differences against their sample standard deviation; with fewer than
    two common seeds, the larger of the two rows' standard deviations (0 with one seed each) stands in for it.
    """
    checks = []
    for better, worse, claim in PAPER_ORDERINGS:
        if better not in table or worse not in table or ORDERING_SKIPPED_WITH.get((better, worse)) in table:
            continue
        for target in table[better]:
            paired = paired_difference(table[better][target], table[worse][target])
            if paired is None:
                continue
            difference, noise, common = paired
            verdict = "holds" if difference > noise else "reversed" if difference < -noise else "within noise"
            checks.append(
                {
                    "better": better,
                    "worse": worse,
                    "target": target,
                    "difference": difference,
                    "noise": noise,
                    "paired_seeds": common,
                    "verdict": verdict,
                    "claim": claim,
                }
            )
    return checks
