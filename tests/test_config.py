"""Config: profile loading, validation errors, overrides and round trips."""
from __future__ import annotations

import dataclasses

import pytest

from mm2ct.config import (Config, ConfigError, from_dict, load_profile, profile_path, save_config,
                          shipped_profiles)


@pytest.mark.parametrize("name", shipped_profiles())
def test_shipped_profiles_load(name: str) -> None:
    cfg = load_profile(name)
    assert cfg.profile == name
    assert sum(cfg.data.split) <= cfg.data.n_patients


def test_defaults_are_the_paper_settings() -> None:
    cfg = Config()
    assert (cfg.train.batch_size, cfg.train.epochs) == (4, 100)          # MM2CT §4.2
    assert (cfg.fusion.embed_dim, cfg.fusion.n_extract, cfg.fusion.n_swap, cfg.fusion.n_m3,
            cfg.fusion.n_recon) == (60, 8, 2, 5, 8)                      # MambaDFuse MIF
    assert cfg.translator.num_timesteps == 4 and cfg.translator.ch_mult == (1, 1, 2, 2, 4, 4)
    assert (cfg.train.beta1, cfg.train.beta2, cfg.train.lambda_l1) == (0.5, 0.9, 0.5)
    assert load_profile("paper").fusion == Config().fusion


@pytest.mark.parametrize("override, message", [
    ({"train": {"epoch": 3}}, "unknown key 'train.epoch'"),
    ({"trian": {}}, "unknown key 'trian'"),
    ({"train": {"epochs": "3"}}, "train.epochs: expected an integer"),
    ({"train": {"epochs": 2.5}}, "train.epochs: expected an integer"),
    ({"fusion": {"mamba": "yes"}}, "fusion.mamba: expected true/false"),
    ({"data": {"split": [1, 2]}}, "data.split: expected 3 items"),
    ({"translator": {"ch_mult": 3}}, "translator.ch_mult: expected a list"),
    ({"fusion": 5}, "fusion: expected a mapping"),
])
def test_bad_values_raise_clear_errors(override, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_profile("smoke", **override)


def test_overrides_and_coercion() -> None:
    cfg = load_profile("smoke", train={"lr_g": 1, "seeds": [1, 2, 3]}, data={"slices_per_patient": None})
    assert cfg.train.lr_g == 1.0 and isinstance(cfg.train.lr_g, float)
    assert cfg.train.seeds == (1, 2, 3)
    assert cfg.data.slices_per_patient is None


def test_data_dir_argument_and_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MM2CT_DATA_DIR", str(tmp_path / "env"))
    assert load_profile("smoke").data.root == str(tmp_path / "env")
    assert load_profile("smoke", data_dir=tmp_path / "arg").data.root == str(tmp_path / "arg")
    monkeypatch.delenv("MM2CT_DATA_DIR")
    assert load_profile("smoke").data.root is None


def test_unknown_profile_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="unknown profile 'smok'.*demo, demo_long, demo_seeds, gpu_demo, paper, smoke"):
        load_profile("smok")


def test_save_and_reload_round_trip(tmp_path) -> None:
    cfg = load_profile("demo", train={"epochs": 7})
    save_config(cfg, tmp_path / "config.yaml")
    again = load_profile(str(tmp_path / "config.yaml"))
    assert again == cfg
    assert from_dict(cfg.to_dict()) == cfg


def test_a_profile_can_extend_another(tmp_path) -> None:
    seeds = load_profile("demo_seeds")
    assert seeds.profile == "demo_seeds" and seeds.train.seeds == (42, 43, 44)
    assert seeds.fusion == load_profile("demo").fusion
    long, demo = load_profile("demo_long"), load_profile("demo")
    assert long.train.epochs == 60 and long.train.lr_schedule_epochs is None and demo.train.lr_schedule_epochs == 100
    assert "mm2ct_nomamba" in long.train.models and "mm2ct_nomamba" not in demo.train.models
    assert dataclasses.replace(long.train, epochs=15, lr_schedule_epochs=100, ema_decay=0.95, val_every=3,
                               models=demo.train.models) == demo.train
    (tmp_path / "a.yaml").write_text(f"extends: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"extends: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(ConfigError, match="in a circle"):
        load_profile(str(tmp_path / "a.yaml"))


def test_shipped_profiles_are_the_yaml_files() -> None:
    from importlib import resources

    files = {p.name[:-5] for p in (resources.files("mm2ct") / "profiles").iterdir() if p.name.endswith(".yaml")}
    assert set(shipped_profiles()) == files >= {"smoke", "demo", "demo_seeds", "demo_long", "paper"}
    with pytest.raises(ConfigError, match="shipped profiles: .*demo_long.*demo_seeds"):
        load_profile("no_such_profile")


def test_retired_keys_are_named_in_profiles_and_dropped_from_checkpoints() -> None:
    from mm2ct.config import retire_keys

    with pytest.raises(ConfigError, match=r"'train.seed' is no longer a setting: use train.seeds"):
        from_dict({"train": {"seed": 3}})
    saved = Config().to_dict()
    saved["train"].update(seed=7, num_workers=2)          # a checkpoint written before they were retired
    assert from_dict(retire_keys(saved)) == Config()


@pytest.mark.parametrize("override, message", [
    ({"train": {"lr_g": -1e-4}}, "train.lr_g: must be > 0"),
    ({"train": {"lr_d": float("nan")}}, "train.lr_d: must be a finite number"),
    ({"train": {"batch_size": 0}}, "train.batch_size: must be >= 1"),
    ({"data": {"image_size": 0}}, "data.image_size: must be >= 1"),
    ({"train": {"ema_decay": 1.5}}, r"train.ema_decay: must be in \[0, 1\)"),
    ({"train": {"epochs": 0}}, "train.epochs: must be >= 1"),
    ({"train": {"seeds": []}}, "train.seeds: give at least one seed"),
    ({"train": {"seeds": [1, 1]}}, "train.seeds: seed 1 is listed twice"),
    ({"train": {"models": []}}, "train.models: give at least one model"),
    ({"train": {"jobs": 0}}, "train.jobs: must be >= 1"),
    ({"train": {"max_steps_per_epoch": 0}}, "train.max_steps_per_epoch: must be >= 1"),
    ({"train": {"beta1": 1.0}}, r"train.beta1: must be in \[0, 1\)"),
    ({"train": {"device": "gpu"}}, "train.device: expected auto, cpu, cuda or cuda:N"),
    ({"data": {"mr_norm": "fancy"}}, "data.mr_norm: expected one of syndiff, robust, got 'fancy'"),
    ({"data": {"ct_norm": "hu"}}, "data.ct_norm: expected one of window, syndiff"),
    ({"data": {"layout": "dicom"}}, "data.layout: expected one of auto, phantom"),
    ({"data": {"hu_min": 100.0, "hu_max": 0.0}}, "data.hu_max: must be > data.hu_min"),
    ({"data": {"split": [0, 1, 2]}}, r"data.split: needs at least one training patient"),
    ({"data": {"split": [1, -1, 3]}}, r"data.split\[1\]: must be >= 0"),
    ({"data": {"n_patients": 4}}, r"data.split: \(1, 1, 1\) adds up to 3 patients, data.n_patients is 4"),
    ({"data": {"phantom_slices": 0}}, "data.phantom_slices: must be >= 1"),
    ({"eval": {"n_samples": 0}}, "eval.n_samples: must be >= 1"),
    ({"translator": {"beta_min": 30.0}}, "translator.beta_max: must be > translator.beta_min"),
    ({"translator": {"ch_mult": []}}, "translator.ch_mult: give at least one level"),
    ({"fusion": {"embed_dim": 0}}, "fusion.embed_dim: must be >= 1"),
    ({"fusion": {"n_m3": -1}}, "fusion.n_m3: must be >= 0"),
])
def test_out_of_range_values_name_the_file_and_the_field(override, message) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        load_profile("smoke", **override)
    assert str(e.value).startswith(str(profile_path("smoke")))


def test_a_split_csv_may_choose_fewer_patients() -> None:
    cfg = load_profile("smoke", data={"n_patients": 5, "split_csv": "my_split.csv"})
    assert cfg.data.n_patients == 5


def test_profile_file_errors_name_the_file(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: [1\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid YAML"):
        load_profile(str(bad))
    bad.write_text("extends: smoke\ntrain:\n  lr_g: .nan\n")
    with pytest.raises(ConfigError, match=f"{bad}: train.lr_g: must be a finite number"):
        load_profile(str(bad))


def test_extends_resolves_next_to_the_including_file_and_names_the_whole_cycle(tmp_path, monkeypatch) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "base.yaml").write_text("extends: smoke\ntrain:\n  epochs: 3\n")
    (tmp_path / "profiles" / "mine.yaml").write_text("extends: base.yaml\ntrain:\n  batch_size: 1\n")
    monkeypatch.chdir(tmp_path)                              # base.yaml is not in the working directory
    cfg = load_profile(str(tmp_path / "profiles" / "mine.yaml"))
    assert (cfg.profile, cfg.train.epochs, cfg.train.batch_size) == ("mine", 3, 1)
    for a, b in (("a", "b"), ("b", "c"), ("c", "a")):
        (tmp_path / f"{a}.yaml").write_text(f"extends: {b}.yaml\n")
    with pytest.raises(ConfigError, match=r"in a circle \(a.yaml -> b.yaml -> c.yaml -> a.yaml\)"):
        load_profile(str(tmp_path / "a.yaml"))
    (tmp_path / "lost.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=f"{tmp_path / 'lost.yaml'}: extends: .*nowhere.yaml.* not found"):
        load_profile(str(tmp_path / "lost.yaml"))


def test_choices_are_what_the_code_accepts() -> None:
    from mm2ct import config
    from mm2ct.data.phantom import GRIDS
    from mm2ct.data.sources import LAYOUTS
    from mm2ct.ops import BACKENDS

    assert config.LAYOUT_CHOICES == ("auto", *LAYOUTS)
    assert set(config.PHANTOM_GRID_CHOICES) == set(GRIDS)
    assert config.SCAN_BACKEND_CHOICES == ("auto", *BACKENDS)
