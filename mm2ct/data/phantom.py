"""Procedural 3-D pelvis phantom: paired T1w MR, T2w MR, CT (HU), body mask and tissue labels per seed.

The embedded default dataset (``docs/data.md`` §3 explains why no real paired pelvis data can be installed here;
§4 is the specification this file follows):

* grid (§4.1): RAS+ affine centred on the volume, presets in ``GRIDS``; labels are rendered on a finer grid
  (``sub`` voxels per output voxel and axis) and the *signals* (HU, T1w, T2w) are averaged down -> partial volume;
* anatomy (§4.2): body outline with subcutaneous fat, muscles, pelvic bones with cortical shell and marrow,
  femoral heads/necks/shafts, sacrum, bladder (urine), prostate (TZ/PZ), seminal vesicles, rectum (gas / faeces /
  fluid), sigmoid and small-bowel loops, iliac/femoral vessels; every size, position and content varies with the
  seed (per-axis scale, pelvic tilt, bladder filling, marrow fat fraction, a smooth elastic field, ...);
* signals (§4.3): HU and the spin-echo equation ``S = PD (1 - exp(-TR/T1)) exp(-TE/T2)`` with T1w and T2w timings
  at 1.5 T or 3 T (drawn per patient), per-patient tissue jitter and low-frequency texture;
* artefacts (§4.5): smooth multiplicative MR bias field, Rician noise and a random global gain per sequence;
  slightly correlated CT noise; CT rounded to int16 HU in [-1024, 3071]; body mask dilated by 2 voxels;
* optionally (§4.1) T1 on its own grid (thicker slices, a 1-2 mm / 1-2 degree rigid offset of the grid) so that
  the "resample T1 onto T2" step of real data is exercised.  The anatomy is fixed in world coordinates, so the
  resampled T1 is aligned with T2 and CT up to interpolation.

T1 and T2 carry complementary information about HU (§4.4): e.g. marrow and fat/muscle partial volume share T1w
values but not T2w values; fat and fluid-rich soft tissue share T2w values but not T1w values.
``tests/test_phantom.py`` measures it with a per-voxel k-NN estimator.

    >>> case = generate_patient(seed=3, grid="tiny", n_slices=8)
    >>> case.ct.dtype, case.t2.shape
    (dtype('int16'), (48, 48, 8))
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy import ndimage

from mm2ct.atomic import is_temporary, sweep_stale, write_text
from mm2ct.data.io import DataError

GENERATOR_VERSION = 1
HU_MIN, HU_MAX = -1024, 3071        # int16 HU range of the SynthRAD releases (data.md §2.2, §4.1)


@dataclass(frozen=True)
class Tissue:
    """One row of the tissue table (data.md §4.3): HU mean/sd, relative proton density, T1/T2 (ms) at 1.5 / 3 T."""
    label: int
    hu: float
    hu_sd: float
    pd: float
    t1: tuple[float, float]
    t2: tuple[float, float]


# data.md §4.3.  Air and gas have PD 0 (no MR signal); their T1/T2 are placeholders.
TISSUES: dict[str, Tissue] = {
    "air": Tissue(0, -1000, 5, 0.0, (1.0, 1.0), (1.0, 1.0)),
    "gas": Tissue(1, -950, 40, 0.0, (1.0, 1.0), (1.0, 1.0)),
    "fat": Tissue(2, -100, 20, 0.90, (290, 380), (130, 120)),          # T2: TSE-effective value
    "muscle": Tissue(3, 45, 12, 0.75, (1000, 1400), (35, 32)),
    "cortical_bone": Tissue(4, 1200, 250, 0.05, (250, 250), (0.5, 0.5)),
    "marrow": Tissue(5, 250, 80, 0.85, (550, 590), (50, 49)),          # trabecular bone + red/mixed marrow
    "fatty_marrow": Tissue(6, -50, 30, 0.90, (300, 390), (110, 100)),  # femoral canal
    "urine": Tissue(7, 8, 6, 1.00, (2800, 3200), (1200, 1100)),
    "wall": Tissue(8, 40, 10, 0.75, (1000, 1300), (55, 50)),           # bladder / rectal / bowel wall
    "prostate_tz": Tissue(9, 40, 10, 0.85, (1320, 1600), (88, 74)),
    "prostate_pz": Tissue(10, 38, 10, 0.90, (1400, 1700), (130, 115)),
    "seminal_vesicle": Tissue(11, 30, 10, 0.95, (1800, 2100), (180, 160)),
    "faeces": Tissue(12, 20, 40, 0.70, (800, 900), (70, 65)),
    "bowel_fluid": Tissue(13, 15, 10, 1.00, (2500, 3000), (300, 280)),
    "blood": Tissue(14, 40, 8, 0.90, (1440, 1930), (290, 275)),
    "cartilage": Tissue(15, 80, 20, 0.80, (1060, 1240), (35, 36)),
}
LABELS: dict[str, int] = {name: t.label for name, t in TISSUES.items()}
LABEL_NAMES: list[str] = sorted(LABELS, key=LABELS.get)
_L = LABELS  # short alias inside this module


@dataclass(frozen=True)
class GridPreset:
    """Output grid of one preset (data.md §4.1); ``sub`` = fine-grid voxels per output voxel (in-plane, slice)."""
    n_xy: int
    spacing_xy: float
    spacing_z: float
    sub: tuple[int, int]
    slices: int


GRIDS: dict[str, GridPreset] = {
    "full": GridPreset(512, 0.875, 2.5, (1, 2), 56),    # Gold Atlas native in-plane resolution (slow)
    "gold": GridPreset(256, 1.75, 2.5, (2, 2), 56),     # resized Gold Atlas slices, the paper's 256 x 256
    "coarse": GridPreset(128, 3.5, 5.0, (2, 2), 24),    # CPU demo: resampled to 48 x 48 by the slice pipeline
    "tiny": GridPreset(48, 448 / 48, 10.0, (2, 4), 8),  # smoke tests: resampled to 32 x 32
}
_Z_CENTRE = 10.0   # anatomical z (mm above the femoral-head centres) of the volume centre


def grid_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """RAS+ voxel -> mm affine with the origin at the volume centre (data.md §4.1)."""
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = -0.5 * (np.asarray(shape) - 1) * np.asarray(spacing)
    return aff


# ----------------------------------------------------------------------------------------------- shape library
# Each shape gives a distance-like "depth" (mm inside the surface, negative outside) on anatomy coordinates
# u (3, ...) and an anatomy-space bounding box used to skip work.  Depth lets walls and cortical shells be drawn
# as "0 < depth <= thickness" and unions as a maximum.

class _Shape:
    lo: np.ndarray
    hi: np.ndarray

    def depth(self, u: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class _Ellipsoid(_Shape):
    def __init__(self, c, r, rot: np.ndarray | None = None):
        self.c = np.asarray(c, np.float32)
        self.r = np.asarray(r, np.float32)
        self.rot = None if rot is None else np.asarray(rot, np.float32)
        ext = self.r if rot is None else np.full(3, self.r.max(), np.float32)
        self.lo, self.hi = self.c - ext, self.c + ext

    def depth(self, u):
        v = u - self.c[:, None, None, None]
        if self.rot is not None:
            v = np.einsum("ji,j...->i...", self.rot, v)          # local = rot^T (u - c)
        q = (v[0] / self.r[0]) ** 2 + (v[1] / self.r[1]) ** 2 + (v[2] / self.r[2]) ** 2
        rho = np.sqrt(q)
        g = np.sqrt((v[0] / self.r[0] ** 2) ** 2 + (v[1] / self.r[1] ** 2) ** 2 + (v[2] / self.r[2] ** 2) ** 2)
        g = np.maximum(g / np.maximum(rho, 1e-6), 1.0 / self.r.max())   # |grad rho|
        return (1.0 - rho) / g


class _Capsule(_Shape):
    """Segment p0 -> p1 with radius r."""

    def __init__(self, p0, p1, r: float):
        self.p0, self.p1 = np.asarray(p0, np.float32), np.asarray(p1, np.float32)
        self.r = float(r)
        self.lo = np.minimum(self.p0, self.p1) - self.r
        self.hi = np.maximum(self.p0, self.p1) + self.r

    def depth(self, u):
        d = self.p1 - self.p0
        v = [u[c] - self.p0[c] for c in range(3)]
        t = np.clip((d[0] * v[0] + d[1] * v[1] + d[2] * v[2]) / float(d @ d), 0.0, 1.0)
        w2 = sum((v[c] - d[c] * t) ** 2 for c in range(3))
        return self.r - np.sqrt(w2)


class _Union(_Shape):
    def __init__(self, parts: list[_Shape]):
        self.parts = parts
        self.lo = np.min([p.lo for p in parts], axis=0)
        self.hi = np.max([p.hi for p in parts], axis=0)

    def depth(self, u):
        d = self.parts[0].depth(u)
        for p in self.parts[1:]:
            np.maximum(d, p.depth(u), out=d)
        return d


class _Chain(_Union):
    """A tube through knots (union of capsules)."""

    def __init__(self, knots, r: float):
        knots = np.asarray(knots, np.float32)
        super().__init__([_Capsule(a, b, r) for a, b in zip(knots[:-1], knots[1:])])


class _Body(_Shape):
    """Elliptic cylinder with a radial Fourier perturbation and a flat posterior side (data.md §4.2).

    Evaluated on every point (no bounding box) at output resolution, then extended to sub-voxels linearly.
    """

    def __init__(self, yc, a, b, y_back, coeffs, phases, a_wave):
        self.yc, self.a, self.b, self.y_back = yc, a, b, y_back
        self.coeffs, self.phases, self.a_wave = [float(c) for c in coeffs], [float(p) for p in phases], a_wave

    def depth(self, u):
        a = self.a * (1.0 + self.a_wave[0] * np.sin(u[2] / self.a_wave[1] + self.a_wave[2]))
        x, y = u[0] / a, (u[1] - self.yc) / self.b
        rho = np.sqrt(x * x + y * y)
        e = (x + 1j * y).astype(np.complex64) / np.maximum(rho, 1e-6)     # exp(i theta)
        ek, radius = e, np.ones_like(rho)
        for c, p in zip(self.coeffs, self.phases):                       # sum_k c_k cos(k theta + p_k), k = 2..
            ek = ek * e
            radius += c * (ek * np.complex64(np.exp(1j * p))).real
        g = np.sqrt((x / a) ** 2 + (y / self.b) ** 2) / np.maximum(rho, 1e-6)
        g = np.maximum(g, 1.0 / self.a)
        return np.minimum((radius - rho) / g, u[1] - self.y_back)


class _Tube(_Shape):
    """Cranio-caudal tube whose centre and radius follow knots in z (rectum, data.md §4.2)."""

    def __init__(self, zk, xk, yk, rk):
        self.zk, self.xk, self.yk, self.rk = (np.asarray(v, np.float32) for v in (zk, xk, yk, rk))
        r = self.rk.max()
        self.lo = np.array([self.xk.min() - r, self.yk.min() - r, self.zk[0]], np.float32)
        self.hi = np.array([self.xk.max() + r, self.yk.max() + r, self.zk[-1]], np.float32)

    def depth(self, u):
        z = u[2]
        dx, dy = u[0] - np.interp(z, self.zk, self.xk), u[1] - np.interp(z, self.zk, self.yk)
        d = np.interp(z, self.zk, self.rk) - np.sqrt(dx * dx + dy * dy)
        return np.minimum(d, np.minimum(z - self.zk[0], self.zk[-1] - z))


class _Sacrum(_Shape):
    """Posterior midline wedge tilted by alpha, tapering caudally, concave anteriorly (data.md §4.2)."""

    def __init__(self, top, alpha, length, width, thick, sag):
        self.top = np.asarray(top, np.float32)
        self.es = np.array([0, -math.sin(alpha), -math.cos(alpha)], np.float32)   # along the bone, down/back
        self.eh = np.array([0, math.cos(alpha), -math.sin(alpha)], np.float32)    # thickness, anterior
        self.L, self.W, self.T, self.sag = length, width, thick, sag
        apex = self.top + self.es * length
        ext = max(width, thick) / 2 + sag
        self.lo = np.minimum(self.top, apex) - ext
        self.hi = np.maximum(self.top, apex) + ext
        self.apex = apex

    def depth(self, u):
        v = [u[c] - self.top[c] for c in range(3)]
        s = self.es[1] * v[1] + self.es[2] * v[2]
        h = self.eh[1] * v[1] + self.eh[2] * v[2]
        f = np.clip(s / self.L, 0.0, 1.0)
        hc = self.sag * 4.0 * (f * f - f)                      # centre line bows posteriorly
        half_w = 0.5 * self.W * (1.0 - 0.55 * f)
        half_t = 0.5 * self.T * (1.0 - 0.45 * f)
        d = np.minimum(half_w - np.abs(u[0]), half_t - np.abs(h - hc))
        return np.minimum(d, np.minimum(s, self.L - s))


class _IliacWing(_Shape):
    """Curved plate flaring cranially from the sacro-iliac joint to the anterior spine (data.md §4.2)."""

    def __init__(self, side, xc, yc, a0, a_slope, b, z_lo, z_hi, thick):
        self.side, self.xc, self.yc = side, xc, yc
        self.a0, self.a_slope, self.b = a0, a_slope, b
        self.z_lo, self.z_hi, self.t = z_lo, z_hi, thick
        a_max = a0 + a_slope * (z_hi - z_lo)
        xs = [side * (xc - thick - 10), side * (xc + a_max + thick)]
        self.lo = np.array([min(xs), yc - b - thick - 10, z_lo], np.float32)
        self.hi = np.array([max(xs), yc + thick + 10, z_hi], np.float32)

    def depth(self, u):
        z = u[2]
        a = self.a0 + self.a_slope * np.clip(z - self.z_lo, 0, None)
        x = self.side * u[0] - self.xc
        y = u[1] - self.yc
        rho = np.sqrt((x / a) ** 2 + (y / self.b) ** 2)
        g = np.sqrt((x / a ** 2) ** 2 + (y / self.b ** 2) ** 2) / np.maximum(rho, 1e-6)
        dist = np.abs(1.0 - rho) / np.maximum(g, 1e-3)
        t = self.t + 8.0 * np.clip((30.0 - z) / 25.0, 0.0, 1.0)           # thicker towards the acetabulum
        d = np.minimum(0.5 * t - dist, np.minimum(x + 0.5 * t, 0.5 * t - y))
        return np.minimum(d, np.minimum(z - self.z_lo, self.z_hi - z))


class _Cup(_Shape):
    """Acetabulum: a spherical shell around the femoral head, open laterally and inferiorly."""

    def __init__(self, centre, r_in, r_out, side):
        self.c = np.asarray(centre, np.float32)
        self.r_in, self.r_out = r_in, r_out
        n = np.array([-side, 0.0, 0.7], np.float32)
        self.n = n / np.linalg.norm(n)
        self.lo, self.hi = self.c - r_out, self.c + r_out

    def depth(self, u):
        v = [u[c] - self.c[c] for c in range(3)]
        d = np.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
        half = self.n[0] * v[0] + self.n[2] * v[2] + 0.35 * self.r_in
        return np.minimum(np.minimum(d - self.r_in, self.r_out - d), half)


# ---------------------------------------------------------------------------------------------------- anatomy

def _rot(axis: str, deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


@dataclass
class _Layer:
    """What ``_Anatomy.paint`` draws, in order: one label, or wall + content, or a bone complex."""
    kind: str                                  # "fill" | "hollow" | "bone"
    shape: _Shape | None = None
    label: int = 0
    wall: float = 0.0                          # hollow organs: wall thickness (mm), label "wall"
    inner_only: bool = False                   # muscles, bowel: only inside the subcutaneous fat layer
    bubbles: list[_Shape] = field(default_factory=list)   # gas pockets inside a hollow organ's content
    parts: list[tuple[_Shape, int, float]] = field(default_factory=list)  # bone: (shape, core label, cortex mm)


class _Anatomy:
    """Per-seed geometry in anatomical mm (x right, y anterior, z superior; z = 0 at the femoral heads)."""

    def __init__(self, rng: np.random.Generator):
        U = rng.uniform
        self.params: dict[str, Any] = {}
        P = self.params
        self.scale = U(0.9, 1.1, 3)
        tilt = U(-7.0, 7.0)                                 # pelvic tilt (deg)
        self.rot = _rot("x", tilt)
        self.shift = np.array([U(-5, 5), U(-5, 5), U(-8, 8)])  # patient position in the scanner (mm)
        t_fat, margin = U(10, 40), U(8, 20)
        P.update(tilt_deg=tilt, scale=self.scale.tolist(), subcutaneous_fat_mm=t_fat)

        # bones ---------------------------------------------------------------------------------------------
        alpha = math.radians(U(25, 40))
        sac_len, sac_w, sac_t = U(85, 100), U(90, 110), U(30, 40)
        sacrum = _Sacrum((U(-3, 3), -45 + U(-5, 5), 95), alpha, sac_len, sac_w, sac_t, U(6, 12))
        coccyx = _Capsule(sacrum.apex, sacrum.apex + np.array([0, 14, -25]), 6.0)
        y_post = float(sacrum.apex[1]) - 0.5 * sac_t * 0.55 - 2
        # body outline from the skeleton plus muscle margin and fat (data.md §4.2: LR 160-200, AP 105-130 mm)
        y_front = 70.0 + margin * 0.5 + t_fat
        y_back = y_post - margin * 0.7 - t_fat
        a = 150.0 + margin + t_fat
        yc, b = 0.5 * (y_front + y_back), 0.5 * (y_front - y_back) / 0.96
        amp = U(0.03, 0.05)
        coeffs = amp * rng.dirichlet(np.ones(4))
        self.body = _Body(yc, a, b, y_back, coeffs, U(0, 2 * math.pi, 4), (U(0.02, 0.04), U(60, 120), U(0, 6.3)))
        self.t_fat = t_fat
        P.update(body_lr_mm=2 * a, body_ap_mm=y_front - y_back)
        self.layers: list[_Layer] = []
        bones: list[_Layer] = [_Layer("bone", parts=[(sacrum, _L["marrow"], U(1.5, 2.5)),
                                                     (coccyx, _L["marrow"], 1.5)])]
        cartilage: list[_Shape] = []
        vessels: list[_Shape] = []
        muscles: list[_Shape] = []
        heads = []
        for side in (1, -1):
            H = np.array([side * (90 + U(-5, 5)), 15 + U(-5, 5), U(-5, 5)])
            rh, cart = U(22, 27), U(2, 4)
            heads.append((H, rh))
            neck_dir = np.array([side * math.cos(math.radians(40)), -0.12, -math.sin(math.radians(40))])
            neck_len = U(40, 50)
            troch = H + neck_dir * neck_len
            shaft_top = troch + np.array([side * 2.0, -3.0, -8.0])
            femur = [
                (_Ellipsoid(H, (rh, rh, rh)), _L["marrow"], U(1.5, 3.0)),
                (_Capsule(H, troch, U(15, 18)), _L["marrow"], U(1.5, 3.0)),
                (_Ellipsoid(troch + np.array([side * 8.0, -4.0, 4.0]), (18, 22, 26)), _L["marrow"], 2.0),
                (_Capsule(shaft_top, shaft_top + np.array([-side * 12.0, 4.0, -220.0]), U(13, 15)),
                 _L["fatty_marrow"], U(4, 6)),
            ]
            wing = _IliacWing(side, 40.0, 20.0, U(45, 55), U(0.3, 0.45), U(70, 80), 5.0, U(95, 115), U(5, 15))
            cup_t = U(8, 12)
            tuber = np.array([side * 55.0, -28.0, -55.0]) + U(-4, 4, 3)
            pubic = np.array([side * 14.0, 55.0, -25.0]) + np.array([0, U(-4, 4), U(-4, 4)])
            hip = [
                (wing, _L["marrow"], U(1.5, 3.0)),
                (_Cup(H, rh + cart, rh + cart + cup_t, side), _L["marrow"], U(2, 3)),
                (_Capsule(H + np.array([-side * 12.0, -5.0, 14.0]), (side * 44.0, -48.0, 45.0), U(12, 16)),
                 _L["marrow"], 2.0),                                                       # ilium body
                (_Capsule(H + np.array([-side * 8.0, -18.0, -14.0]), tuber, U(13, 16)), _L["marrow"], 2.0),
                (_Ellipsoid(tuber, (18, 20, 15)), _L["marrow"], 2.5),                       # ischial tuberosity
                (_Capsule(H + np.array([-side * 18.0, 20.0, -6.0]), pubic, U(10, 13)), _L["marrow"], 2.0),
                (_Ellipsoid(pubic, (10, 14, 20)), _L["marrow"], 2.0),                       # pubic body
                (_Capsule(pubic + np.array([side * 4.0, -6.0, -14.0]), tuber + np.array([0, 10.0, 0]), 8.5),
                 _L["marrow"], 1.8),                                                        # inferior ramus
            ]
            bones += [_Layer("bone", parts=femur), _Layer("bone", parts=hip)]
            cartilage.append(_Ellipsoid(H, (rh + cart,) * 3))
            # vessels: external iliac artery + vein, then femoral vessels (data.md §4.2)
            knots = np.array([[side * 30, -30, 125], [side * 52, -5, 60], [side * 70, 48, 5],
                              [side * 80, 55, -40], [side * 85, 52, -220]], float)
            knots[:, :2] += U(-4, 4, 2)
            vessels += [_Chain(knots, U(4, 6)), _Chain(knots + [-side * 9, -7, 0], U(6, 9))]
            # muscles (data.md §4.2)
            muscles += [
                _Ellipsoid((side * 78, -68, 0), (U(65, 75), U(38, 46), 85), _rot("z", side * 25)),  # gluteus max.
                _Ellipsoid((side * 115, -20, 45), (35, 45, 50), _rot("z", side * 30)),              # glut. med./min.
                _Capsule((side * 30, -72, 60), (side * 115, -20, 10), U(12, 16)),                   # piriformis
                _Chain([[side * 50, -20, 130], [side * 62, 20, 50], [side * 80, 40, 0],
                        [side * 88, 30, -55]], U(20, 26)),                                          # iliopsoas
                _Ellipsoid((side * 58, 8, -20), (9, 35, 26)),                                       # obturator int.
                _Ellipsoid((side * 30, y_front - t_fat - 7, 60), (24, 6, 90)),                       # rectus abd.
                _Chain([[side * 108, 15, -25], [side * 100, 20, -240]], U(50, 58)),                 # thigh
                _Ellipsoid((side * 48, 25, -70), (30, 32, 40)),                                     # adductors
            ]
        muscles.append(_Ellipsoid((0, -8, -48), (42, 38, 10)))       # levator ani (pelvic floor)

        # hollow organs ----------------------------------------------------------------------------------------
        def content(p_gas=0.35, p_fluid=0.35):
            r = rng.uniform()
            return "gas" if r < p_gas else "bowel_fluid" if r < p_gas + p_fluid else "faeces"

        loops: list[_Layer] = []
        n_loops = int(rng.integers(0, 6))
        for _ in range(n_loops):                    # small-bowel loops in the upper pelvis
            p = np.array([U(-60, 60), U(-10, 50), U(35, 115)])
            knots = [p]
            for _ in range(2):
                d = rng.normal(size=3) * np.array([1, 1, 0.35])
                knots.append(knots[-1] + d / np.linalg.norm(d) * U(30, 60))
            loops.append(_Layer("hollow", _Chain(knots, U(10, 20)), _L[content()], wall=U(2, 3), inner_only=True))
        P["bowel_loops"] = n_loops

        rect_r, rect_x = U(12, 25), U(-5, 5)
        zk = np.array([-90.0, -45.0, -28.0, 0.0, 25.0, 50.0])
        ys = [float(sacrum.top[1] + sacrum.es[1] * sacrum.L * f) for f in (1.0, 0.75, 0.5)]
        yk = np.array([-5.0, -10.0, -18.0, ys[0] + 0.5 * sac_t * 0.6 + rect_r + 6,
                       ys[1] + 0.5 * sac_t * 0.7 + rect_r + 6, ys[2] + 0.5 * sac_t + rect_r + 6])
        yk[3:] = np.maximum(yk[3:], -5.0 - rect_r)
        rk = np.array([7.0, 7.0, rect_r * 0.8, rect_r, rect_r, rect_r * 0.9])
        rectum = _Tube(zk, np.full(6, rect_x), yk, rk)
        rect_content = content(0.4, 0.2)
        bubbles: list[_Shape] = []
        if rect_content == "faeces":                # faeces with gas bubbles
            for _ in range(int(rng.integers(2, 8))):
                zb = U(-20, 45)
                bubbles.append(_Ellipsoid((rect_x + U(-0.5, 0.5) * rect_r, np.interp(zb, zk, yk) +
                                           U(-0.5, 0.5) * rect_r, zb), (U(2, 6),) * 3))
        elif rect_content == "bowel_fluid":        # fluid with a gas cap on the anterior (upper, supine) side
            bubbles.append(_Tube(zk, np.full(6, rect_x), yk + rk * 1.6, rk))
        P["rectal_content"] = rect_content
        sig_r = U(13, 20)
        sigmoid = _Chain([[rect_x, yk[-1], 45], [-35 + U(-10, 10), -15 + U(-10, 10), 75],
                          [-15 + U(-10, 10), 15 + U(-10, 10), 95]], sig_r)

        bl_vol = U(100, 500)                         # ml (data.md §4.2)
        r = (bl_vol * 1000 / (4 / 3 * math.pi * 1.25 * 1.05)) ** (1 / 3)
        pr_vol = U(20, 60)
        f = (pr_vol / 24.7) ** (1 / 3)
        pr_r = np.array([22.5, 15.0, 17.5]) * f
        pr_c = np.array([U(-3, 3), 18.0 + U(-4, 4), -32.0 + U(-5, 5)])
        bl_r = np.array([1.25 * r, r, 1.05 * r])
        bl_c = np.array([U(-6, 6), 40.0 - bl_r[1] + U(-5, 5), pr_c[2] + pr_r[2] + bl_r[2] - 6])
        P.update(bladder_ml=bl_vol, prostate_ml=pr_vol)
        sv = [_Ellipsoid((side * U(14, 20), -12 + U(-3, 3), pr_c[2] + pr_r[2] + 6), (U(16, 22), 6, 9),
                         _rot("y", side * 25.0)) for side in (1, -1)]
        tz = _Ellipsoid(pr_c + np.array([0, 0.25 * pr_r[1], 0.1 * pr_r[2]]), pr_r * 0.6)

        self.layers += [_Layer("fill", m, _L["muscle"], inner_only=True) for m in muscles]
        self.layers += loops + [_Layer("hollow", sigmoid, _L[content()], wall=U(2, 3), inner_only=True)]
        self.layers += [
            _Layer("hollow", _Ellipsoid(bl_c, bl_r), _L["urine"], wall=U(3, 5)),
            *[_Layer("fill", s, _L["seminal_vesicle"]) for s in sv],
            _Layer("fill", _Ellipsoid(pr_c, pr_r), _L["prostate_pz"]),
            _Layer("fill", tz, _L["prostate_tz"]),
            _Layer("hollow", rectum, _L[rect_content], wall=U(3, 5), bubbles=bubbles),
            *[_Layer("fill", v, _L["blood"]) for v in vessels],
            _Layer("fill", _Ellipsoid((0, 55, -25), (6, 12, 18)), _L["cartilage"]),   # pubic symphysis
            *[_Layer("fill", c, _L["cartilage"]) for c in cartilage],
            *bones,
        ]

    @property
    def affine(self) -> np.ndarray:
        """World mm -> anatomical mm (4, 4): this seed's patient position, per-axis scale and pelvic tilt."""
        m = np.eye(4)
        m[:3, :3] = self.rot @ np.diag(1.0 / self.scale)
        m[:3, 3] = -m[:3, :3] @ self.shift + [0.0, 0.0, _Z_CENTRE]
        return m

    def paint(self, u: np.ndarray, bd: np.ndarray) -> np.ndarray:
        """Tissue labels (uint8, u.shape[1:]) of anatomical points u (3, X, Y, Z) with body depth bd (X, Y, Z)."""
        lab = np.zeros(u.shape[1:], np.uint8)
        # anatomy-coordinate range per index along each axis, from every 2nd point, widened by one step
        us = u[:, ::2, ::2, ::2]
        pad = max(float(np.abs(np.diff(us[:, :2, 0, 0])).max(initial=0)),
                  float(np.abs(np.diff(us[:, 0, :2, 0])).max(initial=0)),
                  float(np.abs(np.diff(us[:, 0, 0, :2])).max(initial=0))) + 1.0
        ranges = []
        for ax in range(3):
            other = tuple(a for a in range(3) if a != ax)
            for c in range(3):
                lo = np.repeat(us[c].min(axis=other), 2)[:u.shape[1 + ax]] - pad
                hi = np.repeat(us[c].max(axis=other), 2)[:u.shape[1 + ax]] + pad
                ranges.append((lo, hi))

        def block(shape: _Shape) -> tuple[slice, ...] | None:
            sl = []
            for ax in range(3):
                ok = np.ones(u.shape[1 + ax], bool)
                for c in range(3):
                    lo, hi = ranges[3 * ax + c]
                    ok &= (hi >= shape.lo[c]) & (lo <= shape.hi[c])
                idx = np.flatnonzero(ok)
                if idx.size == 0:
                    return None
                sl.append(slice(idx[0], idx[-1] + 1))
            return tuple(sl)

        lab[bd > 0] = _L["fat"]
        inner = bd > self.t_fat
        for layer in self.layers:
            if layer.kind == "bone":
                self._paint_bone(lab, u, layer.parts, block)
                continue
            sl = block(layer.shape)
            if sl is None:
                continue
            d = layer.shape.depth(u[(slice(None),) + sl])
            sub = lab[sl]
            if layer.kind == "fill":
                sub[(d > 0) & inner[sl] if layer.inner_only else d > 0] = layer.label
            else:
                if layer.inner_only:
                    d = np.minimum(d, np.where(inner[sl], np.inf, -1.0))
                lumen = d > layer.wall
                sub[(d > 0) & ~lumen] = _L["wall"]
                sub[lumen] = layer.label
                for bubble in layer.bubbles:
                    sub[lumen & (bubble.depth(u[(slice(None),) + sl]) > 0)] = _L["gas"]
        lab[(bd > 0) & (bd <= 2.0)] = _L["muscle"]      # 2 mm skin (soft tissue)
        return lab

    @staticmethod
    def _paint_bone(lab, u, parts, block) -> None:
        """Union of parts; cortical shell where depth <= the deepest part's cortex, else that part's core."""
        outer = block(_Union([shape for shape, _, _ in parts]))
        if outer is None:
            return
        u, lab = u[(slice(None),) + outer], lab[outer]
        best = np.full(lab.shape, -np.inf, np.float32)
        core_lab = np.zeros(lab.shape, np.uint8)
        ctx = np.zeros(lab.shape, np.float32)
        for shape, core, cortex in parts:
            sl = block(shape)
            if sl is None:
                continue
            sl = tuple(slice(a.start - o.start, a.stop - o.start) for a, o in zip(sl, outer))
            d = shape.depth(u[(slice(None),) + sl])
            b, better = best[sl], d > best[sl]
            b[better] = d[better]
            core_lab[sl][better] = core
            ctx[sl][better] = cortex
        bone = best > 0
        lab[bone & (best <= ctx)] = _L["cortical_bone"]
        inner = bone & (best > ctx)
        lab[inner] = core_lab[inner]


# ----------------------------------------------------------------------------------------------- tissue signals

class _Signals:
    """Per-patient tissue values (data.md §4.3): HU mean/sd and normalised spin-echo signals per label."""

    def __init__(self, rng: np.random.Generator):
        U = rng.uniform
        self.field_t = float(rng.choice([1.5, 3.0]))
        fi = 0 if self.field_t == 1.5 else 1
        tr1 = (500.0 if fi == 0 else 600.0) * U(0.9, 1.1)
        te1 = 10.0 * U(0.9, 1.1)
        tr2 = (5000.0 if fi == 0 else 6000.0) * U(0.9, 1.1)
        te2 = 100.0 * U(0.9, 1.1)
        n = len(TISSUES)
        self.hu, self.hu_sd = np.zeros(n, np.float32), np.zeros(n, np.float32)
        self.s1, self.s2 = np.zeros(n, np.float32), np.zeros(n, np.float32)
        for t in TISSUES.values():
            pd, t1, t2 = t.pd * U(0.93, 1.07), t.t1[fi] * U(0.93, 1.07), t.t2[fi] * U(0.93, 1.07)
            self.hu[t.label] = t.hu + (U(-10, 10) if t.label > 1 else 0.0)
            self.hu_sd[t.label] = t.hu_sd
            self.s1[t.label] = pd * (1 - math.exp(-tr1 / t1)) * math.exp(-te1 / t2)
            self.s2[t.label] = pd * (1 - math.exp(-tr2 / t1)) * math.exp(-te2 / t2)
        # marrow fat fraction (age): mixes trabecular/red marrow with fatty marrow signals
        w = U(0.0, 0.6)
        m, fm = _L["marrow"], _L["fatty_marrow"]
        self.hu[m] = (1 - w) * self.hu[m] + w * 60.0
        self.s1[m] = (1 - w) * self.s1[m] + w * self.s1[fm]
        self.s2[m] = (1 - w) * self.s2[m] + w * self.s2[fm]
        flow_void = U(0.1, 0.3) if U() < 0.5 else 1.0          # optional flow void in vessels
        self.s1[_L["blood"]] *= flow_void
        self.s2[_L["blood"]] *= flow_void
        self.s1 /= self.s1.max()
        self.s2 /= self.s2.max()
        self.params = dict(field_strength_t=self.field_t, t1w_tr_te=[tr1, te1], t2w_tr_te=[tr2, te2],
                           marrow_fat_fraction=w, flow_void=flow_void)


# ------------------------------------------------------------------------------------------ smooth random fields

class _Fields:
    """Random smooth fields in world space: elastic displacement (mm), tissue texture and trabecular texture.

    Defined on regular control grids covering the T2 volume plus a margin and sampled (trilinearly) at world
    points of any grid, so a T1 volume on its own grid sees the same deformed anatomy and texture.
    """

    def __init__(self, rng: np.random.Generator, extent: np.ndarray, fine: float):
        lo, hi = -extent / 2 - 25.0, extent / 2 + 25.0
        self.grids = {}
        # elastic displacement: ~5 mm max, correlation ~25 mm (data.md §4.2)
        disp = self._noise(rng, lo, hi, 12.0, 2.0, 3)
        disp *= rng.uniform(3.0, 6.0) / max(np.abs(disp).max(), 1e-6)
        self.grids["disp"] = (disp, lo, 12.0)
        self.grids["texture"] = (self._noise(rng, lo, hi, 4.0, 1.5, 2), lo, 4.0)
        self.grids["trabecular"] = (self._noise(rng, lo, hi, fine, 0.8, 1), lo, fine)

    @staticmethod
    def _noise(rng, lo, hi, spacing, sigma, n) -> np.ndarray:
        shape = tuple(int(math.ceil(v)) + 1 for v in (hi - lo) / spacing)
        out = np.empty((n, *shape), np.float32)
        for i in range(n):
            f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
            out[i] = f / max(float(f.std()), 1e-6)
        return out

    def sample(self, name: str, p: np.ndarray) -> np.ndarray:
        """Field ``name`` at world points p (3, ...) -> (C, ...)."""
        grid, lo, spacing = self.grids[name]
        idx = (p - lo.reshape(3, *([1] * (p.ndim - 1)))) / spacing
        return np.stack([ndimage.map_coordinates(g, idx, order=1, mode="nearest") for g in grid])


# ------------------------------------------------------------------------------------------------- rendering

def _voxel_centres(affine: np.ndarray, i: np.ndarray, j: np.ndarray, k: np.ndarray) -> np.ndarray:
    """World coordinates (3, len(i), len(j), len(k)) of (fractional) voxel indices on an affine grid."""
    a = affine.astype(np.float32)
    return (a[:3, 0, None, None, None] * i[None, :, None, None] + a[:3, 1, None, None, None] * j[None, None, :, None]
            + a[:3, 2, None, None, None] * k[None, None, None, :] + a[:3, 3, None, None, None])


def _block_mean(x: np.ndarray, s: tuple[int, int, int]) -> np.ndarray:
    """Mean over s[0] x s[1] x s[2] blocks (partial volume, data.md §4.1)."""
    for ax, f in enumerate(s):
        if f > 1:
            idx = [slice(None)] * 3
            acc = None
            for i in range(f):
                idx[ax] = slice(i, None, f)
                acc = x[tuple(idx)].copy() if acc is None else np.add(acc, x[tuple(idx)], out=acc)
            x = acc
    return x / float(s[0] * s[1] * s[2])


def _block_label(lab: np.ndarray, s: tuple[int, int, int]) -> np.ndarray:
    """Median sub-voxel label of each block: the majority label whenever one holds more than half the block."""
    n = lab.shape
    b = lab.reshape(n[0] // s[0], s[0], n[1] // s[1], s[1], n[2] // s[2], s[2]).transpose(0, 2, 4, 1, 3, 5)
    b = b.reshape(*b.shape[:3], -1)
    half = b.shape[-1] // 2
    return np.partition(b, half, axis=-1)[..., half]


def _upsample_linear(x: np.ndarray, s: tuple[int, int, int]) -> np.ndarray:
    """Values at sub-voxel centres from a smooth field on the output grid (first-order Taylor, per block)."""
    g = np.gradient(x) if min(x.shape) > 1 else [np.gradient(x, axis=a) if x.shape[a] > 1 else np.zeros_like(x)
                                                  for a in range(3)]
    out = x[:, None, :, None, :, None]
    for ax, f in enumerate(s):
        off = ((np.arange(f) + 0.5) / f - 0.5).astype(np.float32)
        shape = [1] * 6
        shape[2 * ax + 1] = f
        out = out + g[ax][:, None, :, None, :, None] * off.reshape(shape)
    n = x.shape
    return np.ascontiguousarray(out.reshape(n[0] * s[0], n[1] * s[1], n[2] * s[2]), dtype=np.float32)


def _render(anat: _Anatomy, sig: _Signals, fields: _Fields, shape, affine, sub, want: tuple[str, ...]):
    """Render the fine label map slab by slab and average HU / T1w / T2w signals down to the output grid.

    Returns a dict with the requested ``want`` entries among "hu", "s1", "s2" (float32 (X, Y, Z), noise-free)
    plus "labels" (uint8 majority label) and "body" (bool: any non-air sub-voxel).
    """
    nx, ny, nz = shape
    sxy, sz = sub
    s = (sxy, sxy, sz)
    fi = (np.arange(nx)[:, None] + (np.arange(sxy) + 0.5) / sxy - 0.5).ravel().astype(np.float32)
    fj = (np.arange(ny)[:, None] + (np.arange(sxy) + 0.5) / sxy - 0.5).ravel().astype(np.float32)
    slab = max(1, int(2.5e6 // (nx * ny * sxy * sxy * sz)))
    out = {k: np.zeros(shape, np.float32) for k in want}
    out["labels"] = np.zeros(shape, np.uint8)
    out["body"] = np.zeros(shape, bool)
    tables = {"hu": sig.hu, "s1": sig.s1, "s2": sig.s2}
    marrow = _L["marrow"]
    to_anat = anat.affine
    vox_to_anat = to_anat @ affine

    def rep(a):                                                 # output grid -> fine grid (nearest)
        return np.repeat(np.repeat(np.repeat(a, sxy, -3), sxy, -2), sz, -1)

    ii, jj = np.arange(nx, dtype=np.float32), np.arange(ny, dtype=np.float32)
    ih, jh = np.arange(0.5, nx, 2, dtype=np.float32), np.arange(0.5, ny, 2, dtype=np.float32)  # 2x2 block centres
    for k0 in range(0, nz, slab):
        k1 = min(nz, k0 + slab)
        kk = np.arange(k0, k1)
        fk = (kk[:, None] + (np.arange(sz) + 0.5) / sz - 0.5).ravel().astype(np.float32)
        kf = kk.astype(np.float32)
        q = _voxel_centres(affine, ii, jj, kf)                                      # (3, nx, ny, ns) world
        q2 = _voxel_centres(affine, ih, jh, kf)                                     # (3, nx/2, ny/2, ns)

        def smooth(name):           # a smooth field sampled at 2x2 block centres, extended linearly: (C, nx, ny, ns)
            return np.stack([_upsample_linear(f, (2, 2, 1)) for f in fields.sample(name, q2)])

        d = np.tensordot(to_anat[:3, :3].astype(np.float32), smooth("disp"), axes=1)
        bd = _upsample_linear(anat.body.depth(_voxel_centres(vox_to_anat, ii, jj, kf) + d), s)
        u = _voxel_centres(vox_to_anat, fi, fj, fk) + rep(d)                         # (3, nx*s, ny*s, ns*sz)
        lab = anat.paint(u, bd)
        del u
        tex = rep(smooth("texture"))
        spic = rep(fields.sample("trabecular", q)[0]) > 0.8                           # trabecular spicules
        spic &= lab == marrow
        for key in want:
            v = tables[key][lab]
            if key == "hu":
                v = v + sig.hu_sd[lab] * tex[0] + 250.0 * spic
            else:
                v = v * (1.0 + 0.05 * tex[1]) * np.where(spic, 0.75, 1.0).astype(np.float32)
            out[key][..., k0:k1] = _block_mean(v, s)
        out["labels"][..., k0:k1] = _block_label(lab, s)
        out["body"][..., k0:k1] = _block_mean((lab != 0).astype(np.float32), s) > 0
    return out


def _bias_field(rng, shape, max_log: float) -> np.ndarray:
    """exp of a random 3rd-order polynomial over the volume, scaled to |log| <= max_log (data.md §4.5)."""
    x, y, z = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    log = np.zeros(shape, np.float32)
    for c in range(4):
        plane = sum(rng.uniform(-1, 1) * np.outer(x ** a, y ** b) for a in range(4 - c) for b in range(4 - a - c)
                    if a + b + c)
        log += np.asarray(plane, np.float32)[:, :, None] * (z ** c)[None, None, :]
    return np.exp(log * (max_log / max(float(np.abs(log).max()), 1e-6)))


def _mr(signal, rng, muscle: float) -> tuple[np.ndarray, dict]:
    """Bias field, Rician noise at SNR 20-40 in muscle, random global gain (data.md §4.5)."""
    bias_max, snr, gain = rng.uniform(0.1, 0.3), rng.uniform(20.0, 40.0), rng.uniform(200.0, 2000.0)
    sigma = muscle / snr
    s = signal * _bias_field(rng, signal.shape, bias_max)
    re = s + sigma * rng.standard_normal(s.shape, np.float32)
    im = sigma * rng.standard_normal(s.shape, np.float32)
    return (gain * np.sqrt(re * re + im * im)).astype(np.float32), dict(bias_max_log=bias_max, snr_muscle=snr,
                                                                          gain=gain)


def _ct(hu, rng) -> tuple[np.ndarray, dict]:
    """Slightly correlated Gaussian noise (in-plane blur 0.6 px), rounded int16 HU in [-1024, 3071]."""
    sigma = rng.uniform(10.0, 20.0)
    noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape, np.float32), (0.6, 0.6, 0))
    noise *= sigma / max(float(noise.std()), 1e-6)
    return np.clip(np.rint(hu + noise), HU_MIN, HU_MAX).astype(np.int16), dict(ct_noise_hu=sigma)


# -------------------------------------------------------------------------------------------------- public API

@dataclass
class PhantomCase:
    """One phantom patient: volumes (X, Y, Z) in RAS order on ``affine`` (T1 on ``t1_affine``)."""
    seed: int
    t1: np.ndarray            # float32 T1w, arbitrary units
    t2: np.ndarray            # float32 T2w, arbitrary units
    ct: np.ndarray            # int16 HU in [-1024, 3071]
    mask: np.ndarray          # uint8 body mask (dilated by 2 voxels in-plane)
    labels: np.ndarray        # uint8 majority tissue label per voxel (``LABEL_NAMES``)
    affine: np.ndarray        # (4, 4) voxel -> RAS mm of t2, ct, mask, labels
    t1_affine: np.ndarray     # (4, 4) voxel -> RAS mm of t1 (== affine unless T1 has its own grid)
    params: dict[str, Any]


def _t1_grid(rng, affine, shape) -> tuple[np.ndarray, tuple[int, int, int]]:
    """T1's own grid (data.md §1.3, §4.1): 1.2x thicker slices covering the T2 extent, a 1-2 deg / 1-2 mm offset."""
    sp = np.sqrt((affine[:3, :3] ** 2).sum(0))
    dz = 1.2 * sp[2]
    nz = int(math.ceil(shape[2] * sp[2] / dz)) + 2
    t1_shape = (shape[0], shape[1], nz)
    aff = grid_affine(t1_shape, (sp[0], sp[1], dz))
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    ang = math.radians(rng.uniform(1, 2))
    kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    r = np.eye(3) + math.sin(ang) * kx + (1 - math.cos(ang)) * kx @ kx        # Rodrigues
    t = rng.normal(size=3)
    t *= rng.uniform(1, 2) / np.linalg.norm(t)
    rigid = np.eye(4)
    rigid[:3, :3], rigid[:3, 3] = r, t
    return rigid @ aff, t1_shape


def generate_patient(seed: int, grid: str = "coarse", n_slices: int | None = None, t1_grid: str = "t2") -> PhantomCase:
    """Generate one phantom patient (deterministic per seed; the anatomy does not depend on the grid).

    ``grid``: a key of ``GRIDS``; ``n_slices``: slices of the T2/CT grid (default: the preset's);
    ``t1_grid``: "t2" (T1 on the T2 grid) or "own" (its own grid, data.md §4.1).
    """
    if grid not in GRIDS:
        raise ValueError(f"unknown phantom grid {grid!r}; choose one of {', '.join(GRIDS)}")
    if t1_grid not in ("t2", "own"):
        raise ValueError(f"t1_grid must be 't2' or 'own', got {t1_grid!r}")
    if n_slices is not None and n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    preset = GRIDS[grid]
    nz = int(n_slices if n_slices is not None else preset.slices)
    shape = (preset.n_xy, preset.n_xy, nz)
    spacing = (preset.spacing_xy, preset.spacing_xy, preset.spacing_z)
    affine = grid_affine(shape, spacing)
    # independent streams: the anatomy does not depend on the grid, nor T2/CT on where T1 lies
    r_anat, r_sig, r_fields, r_grid, r_t1, r_t2, r_ct = (np.random.default_rng(s) for s in
                                                         np.random.SeedSequence(seed).spawn(7))
    anat = _Anatomy(r_anat)
    sig = _Signals(r_sig)
    extent = np.asarray(shape) * np.asarray(spacing)
    fields = _Fields(r_fields, extent, max(2.5, preset.spacing_xy))
    own = t1_grid == "own"
    t1_affine, t1_shape = _t1_grid(r_grid, affine, shape) if own else (affine, shape)
    r = _render(anat, sig, fields, shape, affine, preset.sub, ("hu", "s2") if own else ("hu", "s1", "s2"))
    s1 = _render(anat, sig, fields, t1_shape, t1_affine, preset.sub, ("s1",))["s1"] if own else r["s1"]
    muscle = _L["muscle"]
    t1, t1_noise = _mr(s1, r_t1, float(sig.s1[muscle]))
    t2, t2_noise = _mr(r["s2"], r_t2, float(sig.s2[muscle]))
    ct, ct_noise = _ct(r["hu"], r_ct)
    mask = ndimage.binary_dilation(r["body"], np.ones((3, 3, 1), bool), iterations=2).astype(np.uint8)
    params = dict(seed=seed, grid=grid, t1_grid=t1_grid, **anat.params, **sig.params,
                  t1_noise=t1_noise, t2_noise=t2_noise, **ct_noise)
    return PhantomCase(seed, t1, t2, ct, mask, r["labels"], affine, t1_affine, _jsonable(params))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return round(float(obj), 4)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_patient(case: PhantomCase, folder: str | os.PathLike, labels: bool = True) -> Path:
    """Write ``folder/{t1,t2,ct,mask}.nii.gz`` (+ ``labels.nii.gz``), each atomically (data.md §5)."""
    from mm2ct.data.io import write_nifti

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_nifti(folder / "t1.nii.gz", case.t1, case.t1_affine, descrip="mm2ct phantom T1w")
    write_nifti(folder / "t2.nii.gz", case.t2, case.affine, descrip="mm2ct phantom T2w")
    write_nifti(folder / "ct.nii.gz", case.ct, case.affine, descrip="mm2ct phantom CT (HU)")
    write_nifti(folder / "mask.nii.gz", case.mask, case.affine, descrip="mm2ct phantom body mask")
    if labels:
        write_nifti(folder / "labels.nii.gz", case.labels, case.affine, descrip="mm2ct phantom tissue labels")
    return folder


MANIFEST = "phantom.json"
_PATIENT = re.compile(r"^phantom_\d{3,}$")


class PhantomFolderError(DataError):
    """The output folder holds something that is not a phantom of ours."""


def patient_id(i: int) -> str:
    return f"phantom_{i:03d}"


def dataset_spec(n_patients: int, seed: int = 0, grid: str = "coarse", n_slices: int | None = None,
                 t1_grid: str = "t2", labels: bool = True) -> dict[str, Any]:
    """What identifies a generated phantom folder (stored in its manifest; ``ensure_dataset`` compares it)."""
    return dict(generator="mm2ct.data.phantom", version=GENERATOR_VERSION, n_patients=int(n_patients),
                seed=int(seed), grid=grid, n_slices=int(GRIDS[grid].slices if n_slices is None else n_slices),
                t1_grid=t1_grid,
                labels=bool(labels))


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
    except ValueError as e:
        raise DataError(path, f"corrupt phantom manifest ({e}); generate the phantom again (`mm2ct phantom`)") from None
    if not isinstance(manifest, dict):
        raise DataError(path, "corrupt phantom manifest (not a JSON object); generate the phantom again")
    return manifest


def check_output_folder(out: str | os.PathLike) -> None:
    """Refuse an output folder that holds anything but a previous phantom (its manifest, ``phantom_NNN`` patient
    folders, temporary files of its writers): a manifest written there would hide the patients of a dataset."""
    out = Path(out)
    if not (out.exists() or out.is_symlink()):
        return
    if not out.is_dir():
        raise PhantomFolderError(out, "exists and is not a folder; choose a new or empty folder for --out")
    foreign = sorted(p.name for p in out.iterdir()
                     if not (p.name == MANIFEST or is_temporary(p.name) or (p.is_dir() and _PATIENT.match(p.name))))
    if foreign:
        listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise PhantomFolderError(out, f"holds files that are not an mm2ct phantom ({listed}); a phantom written "
                                      f"there would hide them: choose a new or empty folder for --out")


def generate_dataset(out: str | os.PathLike, n_patients: int, seed: int = 0, grid: str = "coarse",
                     n_slices: int | None = None, t1_grid: str = "t2", labels: bool = True,
                     progress: bool = True, log: Callable[[str], None] | None = None) -> Path:
    """Write ``n_patients`` phantom patients (patient i gets seed ``seed + i``) and the manifest ``phantom.json``.

    Layout: ``out/<patient>/{t1,t2,ct,mask[,labels]}.nii.gz`` (the generic NIfTI layout, data.md §5) plus the
    manifest, written last, so a folder with a manifest is complete. ``out`` must be new, empty or a previous
    phantom (``check_output_folder``), whose patients are replaced (those beyond ``n_patients`` removed).
    """
    from tqdm.auto import tqdm

    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    out = Path(out)
    check_output_folder(out)
    spec = dataset_spec(n_patients, seed, grid, n_slices, t1_grid, labels)
    out.mkdir(parents=True, exist_ok=True)
    sweep_stale(out)
    (out / MANIFEST).unlink(missing_ok=True)
    patients = []
    for i in tqdm(range(n_patients), desc=f"phantom ({grid})", unit="patient", disable=not progress):
        t0 = time.perf_counter()
        case = generate_patient(seed + i, grid, spec["n_slices"], t1_grid)
        sweep_stale(out / patient_id(i))
        write_patient(case, out / patient_id(i), labels)
        patients.append(dict(id=patient_id(i), seconds=round(time.perf_counter() - t0, 2), **case.params))
        if log:
            log(f"{patient_id(i)}: {patients[-1]['seconds']} s")
    keep = {p["id"] for p in patients}
    for old in out.iterdir():                                    # patients of a larger previous phantom
        if old.is_dir() and _PATIENT.match(old.name) and old.name not in keep:
            shutil.rmtree(old)
    write_text(out / MANIFEST, json.dumps(dict(spec, patients=patients, label_names=LABEL_NAMES), indent=1))
    return out


# ------------------------------------------------------------------------------------------------------ CLI

def configure(parser) -> None:
    from mm2ct.cli import positive_int

    parser.add_argument("--patients", type=positive_int, default=3, help="number of patients (default 3)")
    parser.add_argument("--out", required=True, help="output folder (DIR/<patient>/{t1,t2,ct,mask}.nii.gz)")
    parser.add_argument("--seed", type=int, default=0, help="patient i gets seed SEED + i (default 0)")
    parser.add_argument("--size", choices=sorted(GRIDS), default="coarse",
                        help="grid preset: " + "; ".join(f"{k} {g.n_xy}x{g.n_xy} @{g.spacing_xy:.3g} mm, "
                                                         f"{g.spacing_z:g} mm slices" for k, g in GRIDS.items()))
    parser.add_argument("--slices", type=positive_int, default=None,
                        help="slices per patient (default: the preset's)")
    parser.add_argument("--t1-grid", choices=("t2", "own"), default="own",
                        help="T1 on the T2 grid, or on its own grid with a small rigid offset (default own)")
    parser.add_argument("--no-labels", action="store_true", help="do not write labels.nii.gz")


def run(args) -> int:
    out = generate_dataset(args.out, args.patients, args.seed, args.size, args.slices, args.t1_grid,
                           labels=not args.no_labels)
    print(f"wrote {args.patients} phantom patients to {out}")
    return 0
