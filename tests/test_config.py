"""Config: profile loading, validation errors, overrides and round trips."""
from __future__ import annotations

import dataclasses

import pytest

from mm2ct.config import Config, ConfigError, from_dict, load_profile, save_config, shipped_profiles


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
    with pytest.raises(ConfigError, match="unknown profile 'smok'.*demo, demo_long, demo_seeds, paper, smoke"):
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
    assert long.train.epochs == 20 and long.train.lr_schedule_epochs is None and demo.train.lr_schedule_epochs == 100
    assert dataclasses.replace(long.train, epochs=5, lr_schedule_epochs=100) == demo.train
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
