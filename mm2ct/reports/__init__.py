"""Table 1, Table 2 and Fig. 4 of MM2CT from evaluated runs, beside the paper's numbers (never trains).

Inputs are what ``mm2ct.evaluate.evaluate`` writes for each run ``runs/<profile>/<model>[-seed<S>]/eval/``:
``summary.json`` (tables) and ``predictions.npz`` (figure).  Outputs go to ``ws.reports_dir``, each written to a
temporary file and renamed:

    table1.csv / table1.md / table1.json     CycleGAN, SynDiff (T1, T2) vs MM2CT (T1+T2)   (docs/method.md §1.4)
    table2.csv / table2.md / table2.json     ablation: no Mamba / Mamba / Mamba + DE       (docs/method.md §1.5)
    figure4.png / figure4.pdf / figure4.txt  T1 | T2 | each model's sCT | CT, and |sCT - CT| maps in HU
    fused.png / fused.txt                    T1 | T2 | Φ(T1, T2) of each fusion model (what its generators read)

The parts:

    paper.py     the paper's numbers and the rows of each table (RowSpec, TABLE1, TABLE2, FUSION_MODELS)
    runs.py      the evaluated runs behind a report: load_summaries, missing_runs, MissingRunError, provenance
    tables.py    Table, table1, table2, the ordering checks, Markdown / CSV / JSON
    figures.py   figure4, fused_figure, bar_plot, choose_slices, load_predictions

Provenance: every artefact carries the profile, data folder, seeds, git commits (train, eval, report) and wall
time (train + eval seconds) of the runs behind its numbers: ``#`` lines at the top of the CSV
(``pandas.read_csv(path, comment="#")`` skips them), a block in the Markdown, the JSON sidecar, the caption text
and the PDF/PNG metadata of the figure.  Paths in them are relative to the work directory (``ws.root``).

    t1 = table1(ws); print(t1.markdown)          # raises MissingRunError naming the runs to train/evaluate
    print(t1.ordering_text())                    # does the paper's ordering hold, per metric and seed
    fig = figure4(ws).figure
"""
from mm2ct.reports.figures import (ERROR_WINDOW, HU_WINDOW, Figure4, bar_plot, choose_slices, figure4, fused_figure,
                                   load_predictions)
from mm2ct.reports.paper import FUSION_MODELS, SINGLE_MODALITY, TABLE1, TABLE2, RowSpec
from mm2ct.reports.runs import MissingRunError, load_summaries, missing_runs, provenance, provenance_lines
from mm2ct.reports.tables import METRICS, Table, ordering_lines, run_models, table1, table2

__all__ = [
    "ERROR_WINDOW", "FUSION_MODELS", "HU_WINDOW", "METRICS", "SINGLE_MODALITY", "TABLE1", "TABLE2", "Figure4",
    "MissingRunError", "RowSpec", "Table", "bar_plot", "choose_slices", "figure4", "fused_figure",
    "load_predictions", "load_summaries", "missing_runs", "ordering_lines", "provenance", "provenance_lines",
    "run_models", "table1", "table2",
]
