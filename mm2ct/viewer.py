"""Slice figures and an ipywidgets slice viewer: T1 | T2 | CT | mask, and later sCT | error.

Panels are stacks of axial slices (Z, H, W) in the radiological view of ``mm2ct.data.preprocess.SliceGeometry``
(anterior up, patient right on the left), keyed by what they show; the key picks the display:

* ``t1``, ``t2``, ``mr``: grey, 1st-99.5th percentile of the stack;
* ``ct``, ``sct``: grey, the CT window (``units="hu"``: [-500, 1100] HU; ``units="unit"``: the same window on the
  [-1, 1] scale of ``data.hu_min``/``hu_max``, docs/data.md §5);
* ``mask``: binary; ``error`` (added as sct - ct when both are given): diverging, +-300 HU (or its unit equivalent).

``slice_viewer`` returns an ipywidgets box (slider + figure) that works headless: building it draws into an Output
widget and never needs a front end; ``box.figure`` is the figure it shows (the slider's slice).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

CT_WINDOW_HU = (-500.0, 1100.0)
ERROR_WINDOW_HU = 300.0
TITLES = {"t1": "T1", "t2": "T2", "mr": "MR", "ct": "CT", "sct": "sCT", "mask": "mask", "error": "sCT - CT"}


def _as_stack(a) -> np.ndarray:
    a = np.asarray(a, np.float32)
    return a[None] if a.ndim == 2 else a


def with_error(panels: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Panels as (Z, H, W) float32 stacks, plus ``error`` = sct - ct when both are present."""
    out = {k: _as_stack(v) for k, v in panels.items()}
    if "sct" in out and "ct" in out and "error" not in out:
        out["error"] = out["sct"] - out["ct"]
    return out


def display_settings(key: str, stack: np.ndarray, units: str = "hu", hu_min: float = -1024.0,
                     hu_max: float = 3071.0) -> dict:
    """imshow keywords (cmap, vmin, vmax) for a panel."""
    if units not in ("hu", "unit"):
        raise ValueError(f"units must be 'hu' or 'unit', got {units!r}")
    scale = 1.0 if units == "hu" else 2.0 / (hu_max - hu_min)
    kind = key.split("_")[0]
    if kind in ("ct", "sct"):
        lo, hi = CT_WINDOW_HU
        if units == "unit":
            lo, hi = (lo - hu_min) * scale - 1.0, (hi - hu_min) * scale - 1.0
        return dict(cmap="gray", vmin=lo, vmax=hi)
    if kind == "error":
        w = ERROR_WINDOW_HU * scale
        return dict(cmap="RdBu_r", vmin=-w, vmax=w)
    if kind == "mask":
        return dict(cmap="gray", vmin=0.0, vmax=1.0)
    finite = stack[np.isfinite(stack)]
    lo, hi = (np.percentile(finite, [1.0, 99.5]) if finite.size else (0.0, 1.0))
    return dict(cmap="gray", vmin=float(lo), vmax=float(hi) if hi > lo else float(lo) + 1.0)


def montage(panels: Mapping[str, np.ndarray], slices: list[int] | None = None, units: str = "hu",
            titles: bool = True, size: float = 2.2, hu_min: float = -1024.0, hu_max: float = 3071.0,
            title: str | None = None):
    """A figure with one column per panel and one row per slice index (default: the middle slice); ``title``
    above all panels (laid out with them, so it never covers a panel's title)."""
    import matplotlib.pyplot as plt

    stacks = with_error(panels)
    n = min(s.shape[0] for s in stacks.values())
    slices = [n // 2] if slices is None else list(slices)
    settings = {k: display_settings(k, s, units, hu_min, hu_max) for k, s in stacks.items()}
    fig, axes = plt.subplots(len(slices), len(stacks), figsize=(size * len(stacks), size * len(slices)),
                             squeeze=False)
    for r, z in enumerate(slices):
        for c, (key, stack) in enumerate(stacks.items()):
            ax = axes[r, c]
            im = ax.imshow(stack[z], interpolation="nearest", **settings[key])
            ax.set_xticks([])
            ax.set_yticks([])
            if titles and r == 0:
                ax.set_title(TITLES.get(key, key))
            if c == 0:
                ax.set_ylabel(f"slice {z}")
            if key.split("_")[0] == "error" and r == len(slices) - 1:
                fig.colorbar(im, ax=ax, fraction=0.046, label="HU" if units == "hu" else "[-1, 1]")
    if title:
        fig.suptitle(title)
    fig.tight_layout()   # places the suptitle above the panel titles
    return fig


def slice_viewer(panels: Mapping[str, np.ndarray], units: str = "hu", start: int | None = None,
                 hu_min: float = -1024.0, hu_max: float = 3071.0, labels: Mapping[int, str] | None = None):
    """An ipywidgets viewer: a slice slider above one row of panels; returns the widget (display it, or not).

    ``labels``: optional names per slice index (e.g. the patient's z on its source grid) shown in the title.
    The returned box's ``figure`` is the figure shown for the slider's slice (redrawn when it moves).
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    stacks = with_error(panels)
    n = min(s.shape[0] for s in stacks.values())
    slider = widgets.IntSlider(value=n // 2 if start is None else int(start), min=0, max=n - 1,
                               description="slice", continuous_update=False)
    out = widgets.Output()
    box = widgets.VBox([slider, out])

    def draw(z: int) -> None:
        with out:
            out.clear_output(wait=True)
            fig = montage(stacks, [z], units, hu_min=hu_min, hu_max=hu_max,
                          title=None if labels is None else labels.get(z, ""))
            display(fig)
            plt.close(fig)   # shown; its artists stay readable through box.figure
        box.figure = fig

    slider.observe(lambda change: draw(change["new"]), names="value")
    draw(slider.value)
    return box
