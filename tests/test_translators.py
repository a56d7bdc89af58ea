"""Translator assemblies (docs/method.md §2.1, §8.4, §8.6): names, wiring, inference API, parameter counts."""
from __future__ import annotations

import pytest
import torch

from mm2ct.config import Config, load_profile
from mm2ct.translators import MODELS, MM2CT, CycleGAN, SynDiff, Translator, build, parameter_counts


@pytest.fixture(scope="module")
def models(cfg) -> dict[str, Translator]:
    torch.manual_seed(0)
    return {name: build(name, cfg) for name in MODELS}


@pytest.fixture(scope="module")
def sources(make_images) -> dict[str, torch.Tensor]:
    return make_images(0)


EXPECTED = {  # name -> (class, sources, fusion (mamba, de) or None)
    "cyclegan_t1": (CycleGAN, ("t1",), None), "cyclegan_t2": (CycleGAN, ("t2",), None),
    "syndiff_t1": (SynDiff, ("t1",), None), "syndiff_t2": (SynDiff, ("t2",), None),
    "mm2ct": (MM2CT, ("t1", "t2"), (True, True)), "mm2ct_node": (MM2CT, ("t1", "t2"), (True, False)),
    "mm2ct_nomamba": (MM2CT, ("t1", "t2"), (False, False)),
}


def test_every_name_builds_with_its_sources_and_networks(models) -> None:
    assert set(models) == set(EXPECTED)
    for name, tr in models.items():
        cls, sources, fusion = EXPECTED[name]
        assert type(tr) is cls and tr.name == name and tr.sources == sources
        assert isinstance(tr, Translator)
        gens = ["G_nd_ab", "G_nd_ba"] + (["G_diff_a", "G_diff_b"] if cls is not CycleGAN else [])
        discs = (["D_diff_a", "D_diff_b"] if cls is not CycleGAN else []) + ["D_nd_a", "D_nd_b"]
        if fusion is not None:
            gens.append("fusion")
            assert (tr.fusion.cfg.mamba, tr.fusion.cfg.de) == fusion
        assert list(tr.generator_names) == gens and list(tr.discriminator_names) == discs
        assert tr.generators() == [getattr(tr, n) for n in gens]
        assert tr.discriminators() == [getattr(tr, n) for n in discs]


def test_the_base_class_is_abstract(cfg) -> None:
    """Translator holds what every family shares; only a family (CycleGAN, SynDiff, MM2CT) says how to generate."""
    with pytest.raises(TypeError, match="abstract"):
        Translator("cyclegan_t1", ("t1",), cfg)
    assert not issubclass(SynDiff, CycleGAN) and issubclass(MM2CT, SynDiff)


def test_mm2ct_wiring_channels(models) -> None:
    """§8.4: G_nd_ab reads Phi (1 ch), G_nd_ba writes (T1', T2'); G_diff_a reads [x^A (2), CT'], writes 2;
    G_diff_b reads [x^B, Phi(MR')]; D_diff_a sees 4 channels, D_diff_b 2; D_nd_a 2, D_nd_b 1."""
    tr = models["mm2ct"]
    assert tr.G_nd_ab.model[1].in_channels == 1 and tr.G_nd_ba.model[-2].out_channels == 2
    assert (tr.G_diff_a.in_ch, tr.G_diff_a.out_ch, tr.G_diff_b.in_ch, tr.G_diff_b.out_ch) == (3, 2, 2, 1)
    assert tr.D_diff_a.start_conv.in_channels == 4 and tr.D_diff_b.start_conv.in_channels == 2
    assert tr.D_nd_a.model[0].in_channels == 2 and tr.D_nd_b.model[0].in_channels == 1
    single = models["syndiff_t1"]
    assert (single.G_diff_a.in_ch, single.G_diff_a.out_ch, single.G_diff_b.in_ch) == (2, 1, 2)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_translate_shape_range_and_determinism(models, sources, name: str) -> None:
    tr = models[name]
    a = tr.translate(sources, seed=42)
    assert a.shape == (2, 1, 32, 32) and a.dtype == torch.float32 and a.abs().max() <= 1
    assert not a.requires_grad
    torch.testing.assert_close(tr.translate(sources, seed=42), a, rtol=0, atol=0)
    samples = tr.sample(sources, 3, seed=1)
    assert samples.shape == (3, 2, 1, 32, 32)
    torch.testing.assert_close(samples[0], tr.translate(sources, seed=1), rtol=0, atol=0)  # one stream per seed
    if isinstance(tr, SynDiff):
        assert not torch.equal(tr.translate(sources, seed=43), a)  # the seed matters for diffusion models
        assert samples.std(dim=0).mean() > 0  # repeated samples spread (the uncertainty map)
    else:
        assert samples.std(dim=0).max() == 0


def test_translate_reports_missing_or_misshapen_sources(models, sources) -> None:
    with pytest.raises(KeyError, match="missing \\['t2'\\]"):
        models["mm2ct"].translate({"t1": sources["t1"]})
    with pytest.raises(ValueError, match="expected sources of shape"):
        models["syndiff_t1"].translate({"t1": sources["t1"][..., :16, :16]})
    with pytest.raises(ValueError, match="unknown translator 'syndiff'"):
        build("syndiff", load_profile("smoke"))


def test_parameter_counts_per_component(models) -> None:
    for name, tr in models.items():
        counts = parameter_counts(tr)
        named = list(tr.generator_names) + list(tr.discriminator_names)
        assert list(counts) == named + ["generators", "discriminators", "total"]
        assert counts["total"] == sum(p.numel() for p in tr.parameters())
        assert counts["generators"] == sum(counts[n] for n in tr.generator_names)
    full, node, conv = (parameter_counts(models[n])["fusion"] for n in ("mm2ct", "mm2ct_node", "mm2ct_nomamba"))
    assert full > node > conv > 0
    assert parameter_counts(models["syndiff_t1"]) == parameter_counts(models["syndiff_t2"])


def test_paper_size_counts() -> None:
    """Paper widths (§2.3-2.5, §8.2) at 256 x 256, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        syndiff, mm2ct = build("syndiff_t1", Config()), build("mm2ct", Config())
    s, m = parameter_counts(syndiff), parameter_counts(mm2ct)
    for name in ("syndiff_t1", "mm2ct"):
        print(name, {k: f"{v:,}" for k, v in (s if name == "syndiff_t1" else m).items()})
    assert (s["G_nd_ab"], s["G_diff_b"], s["D_diff_b"], s["D_nd_b"]) == (7_825_153, 39_724_673, 27_736_705, 2_762_689)
    # MM2CT differs only where the MR domain has 2 channels (§8.4), plus the fusion module
    assert m["G_nd_ba"] - s["G_nd_ba"] == 64 * 49 + 1              # 7x7 output conv: one more output channel
    # G_diff_a: 3 instead of 2 inputs in the first conv and the first pyramid conv, 2 instead of 1 outputs
    assert m["G_diff_a"] - s["G_diff_a"] == 64 * 9 + 64 * 9 + (64 * 9 + 1)
    assert m["D_diff_a"] - s["D_diff_a"] == 2 * 128                 # 1x1 start conv: 4 instead of 2 inputs
    assert m["D_nd_a"] - s["D_nd_a"] == 64 * 16                     # 4x4 first conv: 2 instead of 1 input
    assert m["fusion"] == 1_491_396                                 # method.md §8.2: ~1.49 M with DE
