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


def _images(fig) -> dict[str, np.ndarray]:
    """{panel title: the image data it shows} of a figure's panels (colorbars left out)."""
    return {ax.get_title(): np.asarray(ax.images[0].get_array()) for ax in fig.axes
            if ax.get_label() != "<colorbar>" and ax.images}


def _title_boxes(fig):
    """(title, bounding box in pixels) of every panel title and the suptitle, as the Agg renderer draws them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)   # a shown (closed) figure keeps its layout; draw it again to measure
    canvas.draw()
    r = canvas.get_renderer()
    boxes = [(ax.get_title(), ax.title.get_window_extent(r)) for ax in fig.axes
             if ax.get_label() != "<colorbar>" and ax.get_title()]
    sup = fig.get_suptitle()
    return boxes + ([("suptitle " + sup, fig._suptitle.get_window_extent(r))] if sup else [])


def _assert_no_overlap(fig):
    boxes = _title_boxes(fig)
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1:]:
            assert not box_a.overlaps(box_b), f"title {a!r} overlaps title {b!r}"


def test_slice_viewer_shows_the_slice_the_slider_selects():
    panels = _panels()
    labels = {z: f"P00, z = {z}" for z in range(5)}
    w = slice_viewer(panels, start=1, labels=labels)
    slider, out = w.children
    assert (slider.min, slider.max, slider.value) == (0, 4, 1)
    shown = _images(w.figure)
    assert list(shown) == ["T1", "T2", "sCT", "CT", "mask", "sCT - CT"]
    np.testing.assert_array_equal(shown["sCT"], panels["sct"][1])
    assert w.figure.get_suptitle() == "P00, z = 1"
    slider.value = 3                                              # redraws without a front end
    shown = _images(w.figure)
    for key, title in (("t1", "T1"), ("t2", "T2"), ("sct", "sCT"), ("ct", "CT"), ("mask", "mask")):
        np.testing.assert_array_equal(shown[title], np.asarray(panels[key][3], np.float32))
    np.testing.assert_allclose(shown["sCT - CT"], panels["sct"][3] - panels["ct"][3])   # the error in HU
    np.testing.assert_allclose(shown["sCT - CT"], 10.0, atol=1e-3)
    assert w.figure.get_suptitle() == "P00, z = 3" and w.figure.axes[0].get_ylabel() == "slice 3"
    plt.close("all")


def test_viewer_and_montage_titles_do_not_overlap():
    panels = _panels()
    for four in (True, False):                                   # notebook 01: T1 | T2 | CT | mask; notebook 10: + sCT
        p = {k: v for k, v in panels.items() if not four or k != "sct"}
        w = slice_viewer(p, start=2, labels={z: f"phantom_000, z = {z}" for z in range(5)})
        _assert_no_overlap(w.figure)
        boxes = dict(_title_boxes(w.figure))
        assert boxes["suptitle phantom_000, z = 2"].y0 >= max(b.y1 for t, b in boxes.items() if t != "suptitle "
                                                              "phantom_000, z = 2")   # above every panel title
    fig = montage(panels, [0, 2], title="two slices")
    _assert_no_overlap(fig)
    plt.close("all")
