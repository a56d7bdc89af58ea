"""Configuration: one dataclass tree whose defaults are the paper's settings.

Read it top to bottom: every default below is what MM2CT (Gong et al. 2025) or, where the paper is silent,
SynDiff / MambaDFuse use (``docs/method.md``, "Open choices" numbers in brackets).  Profiles
(``mm2ct/profiles/*.yaml``, listed by ``shipped_profiles``) override a subset of fields; ``load_profile`` validates
every key and type so that a typo in a profile or an override is an error, never silently ignored.

    >>> cfg = load_profile("smoke", train={"epochs": 2})
    >>> cfg.fusion.embed_dim
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mm2ct.atomic import write_text
RETIRED = {"train": {"seed": "use train.seeds (a list; its first seed names the run folder)",
                     "num_workers": "slices are read from a memory-mapped cache in the training process"}}


class ConfigError(ValueError):
    """A profile file or an override names an unknown key or gives a value of the wrong type."""


@dataclass
class DataConfig:
    root: str | None = None          # dataset folder; None -> the embedded phantom, generated under data/generated/
    layout: str = "auto"             # auto | phantom | nifti | goldatlas | synthrad | syndiff_mat
    n_patients: int = 15             # Gold Atlas: the first 15 subjects (SynDiff issue #6) [open choice 1]
    split: tuple[int, int, int] = (9, 2, 4)  # train / val / test patients [open choice 1]
    split_seed: int = 0              # patient shuffling seed for the split
    image_size: int = 256            # slices zero-padded to this size; larger ones resampled down to fit (no crop) [2]
    hu_min: float = -1024.0          # CT window mapped to [-1, 1] (int16 HU range of SynthRAD releases)
    hu_max: float = 3071.0
    mr_norm: str = "syndiff"         # syndiff (volume mean -> 1, global max -> 1) | robust (percentiles in body)
    mr_percentile: float = 99.5      # robust MR normalisation: this body-mask percentile -> +1
    ct_norm: str = "window"          # window (hu_min..hu_max -> [-1, 1], exact inverse) | syndiff [open choice 3]
    split_csv: str | None = None     # patient,split CSV fixing the split (None: seeded; Gold Atlas: committed CSV)
    phantom_grid: str = "gold"       # phantom grid preset: gold (256^2 @1.75 mm) | coarse (128^2 @3.5 mm) | tiny | full
    phantom_slices: int = 56         # slices per phantom patient (48-64 in data.md §4.1)
    phantom_seed: int = 0            # patient p gets seed phantom_seed + p
    phantom_t1_grid: str = "own"     # own: T1 on its own grid, rigidly offset (resampled onto T2) | t2
    phantom_labels: bool = True      # also write the tissue label map (labels.nii.gz) for per-tissue plots
    slices_per_patient: int | None = None  # keep only this many central slices (None: all with body)
    unpaired: bool = True            # each MR slice meets a CT slice from an independent shuffle of the split's
                                     # slices, redrawn every epoch (SynDiff shuffled subject identities) [5]


@dataclass
class ScanConfig:
    backend: str = "auto"            # auto | cuda | cpu | torch | ref  (env MM2CT_SCAN_BACKEND overrides auto)


@dataclass
class FusionConfig:
    embed_dim: int = 60              # C (MambaDFuse MIF config) [open choice 9]
    n_extract: int = 8               # Mamba blocks per modality
    n_swap: int = 2                  # channel-swapping Mamba blocks (shallow fusion)
    n_m3: int = 5                    # cross-modal M3 blocks (deep fusion)
    n_recon: int = 8                 # reconstruction Mamba blocks
    d_state: int = 16                # N of the selective SSM [open choice 10]
    d_conv: int = 4                  # causal depthwise conv width
    expand: int = 2                  # d_inner = expand * C
    mamba: bool = True               # False -> conv-only fusion (shared stem, average, output convs): an extra
                                     # Table 2 row of ours, not the paper's row 1 (which is SynDiff) [23]
    de: bool = True                  # Table 2 switch: dynamic enhancement (LDC + difference-aware attention) feeding
                                     # the final fusion block; False feeds it X1, X2 (needs mamba) [12]
    close_residual: bool = False     # close each Mamba stack with h + r; False drops the last residual, as
                                     # MambaDFuse's code does [11]
    aux_dt_init: str = "linear"      # Δ init of the two auxiliary M3 streams: linear (nn.Linear default, as
                                     # MambaDFuse) | mamba (mamba-ssm's Δ init, like the fusion stream) [11]
    checkpoint: bool = False         # recompute each Mamba/M3 block in backward (activation memory ~ one block)


@dataclass
class TranslatorConfig:
    num_timesteps: int = 4           # T of the adversarial diffusion (SynDiff)
    beta_min: float = 0.1            # VP schedule
    beta_max: float = 20.0
    nf: int = 64                     # NCSN++ base width
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    nz: int = 100                    # latent z size
    z_emb_dim: int = 256             # mapping-network width
    n_mlp: int = 3                   # mapping-network depth
    t_emb_dim: int = 256             # discriminator time embedding
    disc_ngf: int = 64               # diffusive discriminator width
    ngf: int = 64                    # ResNet non-diffusive generator width
    n_blocks_nd: int = 6             # ResNet-6
    ndf: int = 64                    # PatchGAN width
    n_layers_d: int = 3              # PatchGAN depth


@dataclass
class TrainConfig:
    models: tuple[str, ...] = ("cyclegan_t1", "cyclegan_t2", "syndiff_t1", "syndiff_t2", "mm2ct",  # Table 1
                               "mm2ct_nomamba", "mm2ct_node")                                 # + Table 2
    batch_size: int = 4              # MM2CT §4.2
    epochs: int = 100                # MM2CT §4.2
    max_steps_per_epoch: int | None = None  # cap (profiles use it to bound CPU time)
    lr_g: float = 1.6e-4             # generators and fusion module (SynDiff README) [15]
    lr_d: float = 1.0e-4             # discriminators
    beta1: float = 0.5               # Adam betas (SynDiff)
    beta2: float = 0.9
    lr_min: float = 1.0e-5           # cosine decay floor
    lr_schedule_epochs: int | None = None  # period of the cosine decay in epochs (None: epochs). A short run
                                     # with 100 here follows the first epochs of the paper's 100-epoch schedule
    ema_decay: float = 0.999         # EMA on generators + fusion module [17]
    lambda_l1: float = 0.5           # cycle and diffusive L1 weight [18]
    lambda_cyc_cyclegan: float = 10.0  # CycleGAN baseline cycle weight
    lambda_fusion: float = 0.0       # MM2CT: weight of MambaDFuse's fusion loss on Phi (method.md §3.5); the paper
                                     # names none [24]; > 0 gives Phi an MR-like image from the start
    r1_gamma: float = 1.0            # R1 penalty on the diffusive discriminator
    lazy_reg: int = 10               # R1 every lazy_reg steps
    val_every: int = 1               # epochs between validations (best val PSNR picks the checkpoint) [19]
    seeds: tuple[int, ...] = (42,)   # training seeds; several -> mean +/- std in the reports
    amp: bool = False                # bf16/fp16 autocast on CUDA
    jobs: int = 1                    # CPU only: models/seeds trained at once, each in its own process
                                     # (small models barely gain from a 2nd thread)
    threads: int = 0                 # CPU: torch threads of each run and of its evaluation, whatever the machine;
                                     # 0: all cores for one run, cores // jobs for several (then the numbers depend on
                                     # the core count: float sums change with the thread count)
    deterministic: bool = True       # torch.use_deterministic_algorithms (warnings only where none exists)
    device: str = "auto"             # auto | cpu | cuda


@dataclass
class EvalConfig:
    seed: int = 42                   # fixed sampling seed (SynDiff test.py) [21]
    n_samples: int = 1               # diffusion samples per test slice; > 1 scores their mean (SynDiff: 1)
    max_test_slices: int | None = None  # cap for quick profiles
    figure_slices: int = 3           # test slices shown in Fig. 4


@dataclass
class Config:
    profile: str = "paper"
    data: DataConfig = field(default_factory=DataConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    translator: TranslatorConfig = field(default_factory=TranslatorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (lists -> tuples, int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: cannot be None")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported annotation {tp!r}")  # pragma: no cover - programming error


def _apply(obj: Any, updates: dict[str, Any], where: str) -> None:
    if not isinstance(updates, dict):
        raise ConfigError(f"{where}: expected a mapping, got {updates!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in updates.items():
        path = f"{where}.{key}" if where else key
        if key in RETIRED.get(where, {}):
            raise ConfigError(f"{path!r} is no longer a setting: {RETIRED[where][key]}")
        if key not in names:
            raise ConfigError(f"unknown key {path!r}; known keys here: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, path)
        else:
            setattr(obj, key, _coerce(value, hints[key], path))


def retire_keys(d: dict[str, Any]) -> dict[str, Any]:
    """A saved config (a checkpoint's) without the keys that ``RETIRED`` lists, so older runs still load."""
    return {k: ({kk: vv for kk, vv in v.items() if kk not in RETIRED.get(k, {})} if isinstance(v, dict) else v)
            for k, v in d.items()}


def profile_path(name: str) -> Path:
    return Path(str(resources.files("mm2ct") / "profiles" / f"{name}.yaml"))


def shipped_profiles() -> tuple[str, ...]:
    """The profiles that ship with mm2ct: the names of ``mm2ct/profiles/*.yaml``."""
    return tuple(sorted(Path(p.name).stem for p in (resources.files("mm2ct") / "profiles").iterdir()
                        if p.name.endswith(".yaml")))


def from_dict(d: dict[str, Any], source: str = "<dict>") -> Config:
    """Build a validated Config from a (possibly partial) nested dict."""
    cfg = Config()
    try:
        _apply(cfg, d, "")
        check_values(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


# Choices of string settings. They mirror what the code accepts (tests/test_config.py checks them against
# mm2ct.data.sources.LAYOUTS, mm2ct.data.phantom.GRIDS and mm2ct.ops.BACKENDS, which config must not import).
LAYOUT_CHOICES = ("auto", "phantom", "nifti", "goldatlas", "synthrad", "syndiff_mat")
MR_NORM_CHOICES = ("syndiff", "robust")
CT_NORM_CHOICES = ("window", "syndiff")
PHANTOM_GRID_CHOICES = ("full", "gold", "coarse", "tiny")
PHANTOM_T1_GRID_CHOICES = ("own", "t2")
SCAN_BACKEND_CHOICES = ("auto", "cuda", "cpu", "torch", "ref")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _choice(value: str, choices: tuple[str, ...], where: str) -> None:
    if value not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")


def _at_least(value: int | float | None, low: int | float, where: str) -> None:
    """``value`` >= ``low`` (None passes: an optional setting left unset)."""
    if value is not None and value < low:
        raise ConfigError(f"{where}: must be >= {low}, got {value}")


def _positive(value: float, where: str) -> None:
    if value <= 0:
        raise ConfigError(f"{where}: must be > 0, got {value}")


def _fraction(value: float, where: str) -> None:
    """0 <= value < 1 (a decay or an Adam beta: 1 would never forget, more would extrapolate)."""
    if not 0 <= value < 1:
        raise ConfigError(f"{where}: must be in [0, 1), got {value}")


def _finite(obj: Any, where: str) -> None:
    """Every float of the tree is finite (YAML's .nan / .inf are well typed but never a valid setting)."""
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            _finite(getattr(obj, f.name), f"{where}.{f.name}" if where else f.name)
    elif isinstance(obj, tuple):
        for i, v in enumerate(obj):
            _finite(v, f"{where}[{i}]")
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise ConfigError(f"{where}: must be a finite number, got {obj}")


def check_values(cfg: Config) -> None:
    """Values that are well typed but not allowed (out of range, not finite, not a choice) and combinations that
    cannot be built; the ConfigError names the field (``from_dict`` adds the file)."""
    _finite(cfg, "")
    d, t, f, tr, e = cfg.data, cfg.train, cfg.fusion, cfg.translator, cfg.eval
    # data
    _choice(d.layout, LAYOUT_CHOICES, "data.layout")
    _choice(d.mr_norm, MR_NORM_CHOICES, "data.mr_norm")
    _choice(d.ct_norm, CT_NORM_CHOICES, "data.ct_norm")
    _choice(d.phantom_grid, PHANTOM_GRID_CHOICES, "data.phantom_grid")
    _choice(d.phantom_t1_grid, PHANTOM_T1_GRID_CHOICES, "data.phantom_t1_grid")
    _at_least(d.n_patients, 1, "data.n_patients")
    for i, n in enumerate(d.split):
        _at_least(n, 0, f"data.split[{i}]")
    if d.split[0] < 1:
        raise ConfigError(f"data.split: needs at least one training patient (the normalisation is fitted on them), "
                          f"got {tuple(d.split)}")
    if d.split_csv is None and sum(d.split) != d.n_patients:
        raise ConfigError(f"data.split: {tuple(d.split)} adds up to {sum(d.split)} patients, data.n_patients is "
                          f"{d.n_patients}; make them agree (or fix the split with data.split_csv)")
    _at_least(d.image_size, 1, "data.image_size")
    if d.hu_max <= d.hu_min:
        raise ConfigError(f"data.hu_max: must be > data.hu_min ({d.hu_min}), got {d.hu_max}")
    if not 0 < d.mr_percentile <= 100:
        raise ConfigError(f"data.mr_percentile: must be in (0, 100], got {d.mr_percentile}")
    _at_least(d.phantom_slices, 1, "data.phantom_slices")
    _at_least(d.slices_per_patient, 1, "data.slices_per_patient")
    # scan, fusion, translator
    _choice(cfg.scan.backend, SCAN_BACKEND_CHOICES, "scan.backend")
    for name in ("embed_dim", "d_state", "d_conv", "expand"):
        _at_least(getattr(f, name), 1, f"fusion.{name}")
    for name in ("n_extract", "n_swap", "n_m3", "n_recon"):
        _at_least(getattr(f, name), 0, f"fusion.{name}")
    _choice(f.aux_dt_init, ("linear", "mamba"), "fusion.aux_dt_init")
    if f.de and not f.mamba:
        raise ConfigError("fusion.de: true needs fusion.mamba: true (the final fusion block that reads the enhanced "
                          "maps is a Mamba block); set fusion.de: false for the conv-only fusion")
    for name in ("num_timesteps", "nf", "num_res_blocks", "nz", "z_emb_dim", "n_mlp", "t_emb_dim", "disc_ngf", "ngf",
                 "ndf", "n_layers_d"):
        _at_least(getattr(tr, name), 1, f"translator.{name}")
    _at_least(tr.n_blocks_nd, 0, "translator.n_blocks_nd")
    _positive(tr.beta_min, "translator.beta_min")
    if tr.beta_max <= tr.beta_min:
        raise ConfigError(f"translator.beta_max: must be > translator.beta_min ({tr.beta_min}), got {tr.beta_max}")
    if not tr.ch_mult:
        raise ConfigError("translator.ch_mult: give at least one level")
    for name in ("ch_mult", "attn_resolutions"):
        for i, v in enumerate(getattr(tr, name)):
            _at_least(v, 1, f"translator.{name}[{i}]")
    # train
    if not t.models:
        raise ConfigError("train.models: give at least one model")
    if not t.seeds:
        raise ConfigError("train.seeds: give at least one seed")
    for s in t.seeds:
        if t.seeds.count(s) > 1:
            raise ConfigError(f"train.seeds: seed {s} is listed twice (each seed is one run)")
    for name in ("batch_size", "epochs", "max_steps_per_epoch", "lr_schedule_epochs", "lazy_reg", "val_every", "jobs"):
        _at_least(getattr(t, name), 1, f"train.{name}")
    _at_least(t.threads, 0, "train.threads")
    for name in ("lr_g", "lr_d"):
        _positive(getattr(t, name), f"train.{name}")
    for name in ("lr_min", "lambda_l1", "lambda_cyc_cyclegan", "lambda_fusion", "r1_gamma"):
        _at_least(getattr(t, name), 0, f"train.{name}")
    for name in ("beta1", "beta2", "ema_decay"):
        _fraction(getattr(t, name), f"train.{name}")
    if not _DEVICE.match(t.device):
        raise ConfigError(f"train.device: expected auto, cpu, cuda or cuda:N, got {t.device!r}")
    # eval
    for name in ("n_samples", "max_test_slices", "figure_slices"):
        _at_least(getattr(e, name), 1, f"eval.{name}")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _is_file_name(name: str) -> bool:
    return str(name).endswith((".yaml", ".yml"))


def _profile_file(name: str, folder: Path | None = None) -> Path:
    """A shipped profile's file, or a YAML path (relative ones: to ``folder``, the including file's folder)."""
    if not _is_file_name(name):
        return profile_path(name)
    path = Path(name).expanduser()
    return folder / path if folder is not None and not path.is_absolute() else path


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(e).split())


def _read_profile(name: str, chain: tuple[tuple[Path, str], ...] = (),
                  parent: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """(path, raw mapping) of a profile; ``extends: OTHER`` at the top merges it onto profile OTHER (a shipped
    profile's name, or a YAML path relative to the file that names it). ``chain``: the files that led here."""
    path = _profile_file(name, parent.parent if parent is not None else None)
    if not path.is_file():
        if parent is not None:
            raise ConfigError(f"{parent}: extends: {name!r}: {path} not found (a shipped profile: "
                              f"{', '.join(shipped_profiles())}; or a .yaml path, relative to {parent.parent})")
        raise ConfigError(f"unknown profile {name!r}: no file {path} (shipped profiles: "
                          f"{', '.join(shipped_profiles())})")
    chain = (*chain, (path.resolve(), path.name if _is_file_name(name) else str(name)))
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(e)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = raw.pop("extends", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: extends: expected a profile name or a .yaml path, got {base!r}")
        base_path = _profile_file(base, path.parent)
        if base_path.is_file() and base_path.resolve() in [p for p, _ in chain]:
            names = [label for _, label in chain] + [base_path.name if _is_file_name(base) else base]
            raise ConfigError(f"{path}: profiles extend each other in a circle ({' -> '.join(names)})")
        _, base_raw = _read_profile(base, chain, path)
        base_raw.pop("profile", None)
        raw = _merge(base_raw, raw)
    return path, raw


def load_profile(name: str = "smoke", data_dir: str | os.PathLike | None = None, **overrides: Any) -> Config:
    """Load a shipped profile (or a YAML file path), apply overrides, validate everything.

    A profile file may start with ``extends: NAME`` to change only some fields of another profile (NAME: a shipped
    profile, or a .yaml path relative to the file that names it).

    ``data_dir`` (or env ``MM2CT_DATA_DIR`` when not given) sets ``data.root``; overrides are nested dicts per
    section, e.g. ``load_profile("demo", train={"epochs": 3})``.
    """
    path, raw = _read_profile(name)
    raw.setdefault("profile", path.stem)
    merged = _merge(raw, overrides)
    if data_dir is None:
        data_dir = os.environ.get("MM2CT_DATA_DIR") or None
    if data_dir is not None:
        merged = _merge(merged, {"data": {"root": str(data_dir)}})
    return from_dict(merged, source=str(path))


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically)."""
    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
