"""mm2ct.viewer: figures and the ipywidgets slice viewer work headless."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mm2ct.viewer import display_settings, montage, slice_viewer, with_error  # noqa: E402


def _panels():
    rng = np.random.default_rng(0)
    ct = rng.uniform(-1000, 1500, (5, 16, 16)).astype(np.float32)
    return {"t1": rng.random((5, 16, 16)), "t2": rng.random((5, 16, 16)), "sct": ct + 10.0, "ct": ct,
            "mask": np.ones((5, 16, 16))}


def test_error_panel_and_display_windows():
    stacks = with_error(_panels())
    assert list(stacks)[-1] == "error" and np.allclose(stacks["error"], 10.0)
    assert display_settings("ct", stacks["ct"]) == dict(cmap="gray", vmin=-500.0, vmax=1100.0)
    unit = display_settings("sct", stacks["ct"], units="unit")
    assert unit["vmin"] == pytest.approx(2 * (-500 + 1024) / 4095 - 1)
    assert display_settings("error", stacks["error"])["vmax"] == 300.0
    with pytest.raises(ValueError, match="units"):
        display_settings("ct", stacks["ct"], units="mm")


def test_montage_grid():
    fig = montage(_panels(), [0, 2, 4])
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(axes) == 3 * 6                                     # 5 panels + error, 3 rows
    assert [ax.get_title() for ax in axes[:6]] == ["T1", "T2", "sCT", "CT", "mask", "sCT - CT"]
    plt.close(fig)


def test_slice_viewer_is_a_widget_that_redraws():
    w = slice_viewer(_panels(), start=1)
    slider, out = w.children
    assert (slider.min, slider.max, slider.value) == (0, 4, 1)
    slider.value = 3                                              # redraws without a front end
    assert slider.value == 3 and out is not None
    plt.close("all")
