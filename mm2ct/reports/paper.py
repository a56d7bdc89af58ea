"""The paper's side of the tables: which run fills each row of Table 1 and Table 2 and the paper's numbers beside
it (docs/method.md §1.4, §1.5).

A row is a ``RowSpec``: the run it reads (``runs/<profile>/<model>/eval/summary.json``), its label, and the paper's
PSNR / SSIM with a note on where they come from (verbatim, derived, or not recovered). Table 1 ends with a row of
ours, the template (``mm2ct.template``: the mean training CT, no MR), which every model has to beat.
"""
from __future__ import annotations

from dataclasses import dataclass

from mm2ct.template import TEMPLATE


@dataclass(frozen=True)
class RowSpec:
    """One table row: the run it comes from and the paper's numbers beside it (None: not recovered)."""
    model: str
    method: str
    input: str
    paper_psnr: float | None = None
    paper_ssim: float | None = None
    paper_status: str = "not recovered"
    paper_tag: str = ""                       # short qualifier shown beside the paper's value in Markdown
    extra: tuple[tuple[str, str], ...] = ()   # extra leading columns (Table 2: Mamba module, DE)
    choose_from: tuple[str, ...] = ()         # a row that is one of these runs, picked per seed by validation PSNR
    ours: bool = False                        # a row of ours, not the paper's: left out of the ordering check


_SYNDIFF_PAPER = dict(paper_psnr=25.36, paper_ssim=88.97, paper_tag="derived",
                      paper_status="derived: the paper's best SynDiff row (input T1 or T2 not known) = "
                                   "MM2CT - 0.36 dB / - 0.57 %, method.md §1.4")
TABLE1: tuple[RowSpec, ...] = (
    RowSpec("cyclegan_t1", "CycleGAN", "T1"),
    RowSpec("cyclegan_t2", "CycleGAN", "T2"),
    RowSpec("syndiff_t1", "SynDiff", "T1", **_SYNDIFF_PAPER),
    RowSpec("syndiff_t2", "SynDiff", "T2", **_SYNDIFF_PAPER),
    RowSpec("mm2ct", "MM2CT", "T1+T2", 25.72, 89.54,
            "assumed equal to Table 2 row 3 (Table 1 itself not recovered), method.md §1.4",
            "= Table 2"),
    RowSpec(TEMPLATE, "template", "no MR", paper_status="not in the paper (ours: the mean training CT, whatever "
            "the MR; the floor every model has to beat)", ours=True),
)
TABLE2: tuple[RowSpec, ...] = (
    RowSpec("syndiff_best", "no Mamba module, no DE: SynDiff (Table 1)", "T1 or T2", 25.36, 88.97,
            "verbatim, Table 2 row 1 (equal to the paper's SynDiff row)", extra=(("Mamba module", "–"), ("DE", "–")),
            choose_from=("syndiff_t1", "syndiff_t2")),
    RowSpec("mm2ct_node", "Mamba module", "T1+T2", 25.49, 89.45, "verbatim, Table 2 row 2",
            extra=(("Mamba module", "✓"), ("DE", "–"))),
    RowSpec("mm2ct", "Mamba module + DE", "T1+T2", 25.72, 89.54, "verbatim, Table 2 row 3",
            extra=(("Mamba module", "✓"), ("DE", "✓"))),
    RowSpec("mm2ct_nomamba", "conv-only fusion (ours)", "T1+T2", paper_status="not in the paper",
            extra=(("Mamba module", "–"), ("DE", "–")), ours=True),
)
INPUT_OF = {spec.model: spec.input for spec in TABLE1}   # a trained run's input, for rows chosen among runs
FUSION_MODELS = ("mm2ct_nomamba", "mm2ct_node", "mm2ct")  # the runs with a fused image Φ
TEMPLATE_KEYS = ("mae_hu", "dice_bone")   # "every model beats the template" is checked on these (Table 1)
SINGLE_MODALITY = ("cyclegan_t1", "cyclegan_t2", "syndiff_t1", "syndiff_t2")
