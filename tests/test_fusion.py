"""Fusion-module parts (docs/method.md §3.2-3.4, §4.1, §5.2, §8.2-8.3): channel swap, M3, LDC, difference
attention, the assembled FusionModule and its ablation switches."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mm2ct.config import FusionConfig
from mm2ct.models.channel_swap import TokenSwapMamba, channel_swap
from mm2ct.models.cross_modal import CrossModalMamba, M3Block
from mm2ct.models.enhance import DynamicEnhancement, difference_attention
from mm2ct.models.fusion import FusionModule, parameter_table
from mm2ct.models.ldc import LDC
from mm2ct.models.mamba import Mamba, set_scan_backend

FAST = "torch"
TINY = FusionConfig(embed_dim=8, n_extract=1, n_swap=1, n_m3=1, n_recon=1, d_state=4)
VARIANTS = {  # Table 2 rows (+ the conv-only path with DE for completeness)
    "mamba+de": {},
    "mamba": {"de": False},
    "conv+de": {"mamba": False},
    "conv": {"mamba": False, "de": False},
}
SSM_MARKERS = ("A_log", "A_b_log", "x_proj", "dt_proj", "conv1d", "in_proj", "out_proj", "mixer", "extract",
               "swap", "m3", "recon", "embed_norm", "cross")


def _model(seed: int = 0, **over) -> FusionModule:
    torch.manual_seed(seed)
    return FusionModule(dataclasses.replace(TINY, **over), backend=FAST)


def _pair(batch: int = 2, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 1, size, size, generator=g) * 2 - 1, torch.rand(batch, 1, size, size, generator=g) * 2 - 1)


# ----------------------------------------------------------------------------------------------- channel swap
def test_channel_swap_is_exact_and_an_involution() -> None:
    a, b = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    s1, s2 = channel_swap(a, b)
    even, odd = slice(0, None, 2), slice(1, None, 2)
    assert torch.equal(s1[..., even], b[..., even]) and torch.equal(s1[..., odd], a[..., odd])
    assert torch.equal(s2[..., even], a[..., even]) and torch.equal(s2[..., odd], b[..., odd])
    back1, back2 = channel_swap(s1, s2)
    assert torch.equal(back1, a) and torch.equal(back2, b)
    with pytest.raises(ValueError, match="shape"):
        channel_swap(a, b[..., :6])


def test_token_swap_block() -> None:
    torch.manual_seed(0)
    blk = TokenSwapMamba(8, d_state=4, backend=FAST)
    x1, x2, r1, r2 = (torch.randn(2, 6, 8) for _ in range(4))
    y1, y2, q1, q2 = blk(x1, x2, r1, r2)
    torch.testing.assert_close(q1, x1 + r1)
    torch.testing.assert_close(q2, x2 + r2)
    s1, s2 = channel_swap(blk.norm1(x1 + r1), blk.norm2(x2 + r2))
    torch.testing.assert_close(y1, blk.mixer1(s1))
    torch.testing.assert_close(y2, blk.mixer2(s2))
    assert blk(x1, x2)[2] is x1  # residual None = 0


# ----------------------------------------------------------------------------------------------- M3
def test_m3_parameters_and_shared_A_b() -> None:
    m = CrossModalMamba(8, d_state=4)
    names = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert names["A_log"] == names["A_b_log"] == (16, 4) and "A_c_log" not in names
    for s in ("", "_b", "_c"):
        assert names[f"conv1d{s}.weight"] == (16, 1, 4) and names[f"D{s}"] == (16,)
        assert names[f"x_proj{s}.weight"] == (9, 16) and names[f"dt_proj{s}.weight"] == (16, 1)
    assert names["in_proj_extra1.weight"] == names["in_proj_extra2.weight"] == names["in_proj.weight"] == (32, 8)
    assert names["out_proj.weight"] == (8, 16)
    assert sum(p.numel() for p in CrossModalMamba(60).parameters()) + 3 * 120 + 600 == 72120  # §3.4: ≈ 72 k


def test_m3_reduces_to_mamba_when_the_modality_streams_are_silenced() -> None:
    """Zero auxiliary projections -> z = 0 -> SiLU gate 0: the mixer is a plain Mamba on the fusion stream,
    and A_b (used only by streams 1 and 2) gets no gradient."""
    torch.manual_seed(0)
    m3 = CrossModalMamba(8, d_state=4, backend=FAST)
    with torch.no_grad():
        m3.in_proj_extra1.weight.zero_()
        m3.in_proj_extra2.weight.zero_()
    plain = Mamba(8, d_state=4, backend=FAST)
    plain.load_state_dict({k: v for k, v in m3.state_dict().items() if k in plain.state_dict()})
    f, e1, e2 = (torch.randn(2, 6, 8) for _ in range(3))
    out = m3(f, e1, e2)
    torch.testing.assert_close(out, plain(f))
    out.sum().backward()
    assert m3.A_b_log.grad.abs().max() == 0 and m3.A_log.grad.abs().max() > 0


def test_m3_block() -> None:
    torch.manual_seed(0)
    blk = M3Block(8, d_state=4, backend=FAST)
    x1, x2, f, r = (torch.randn(2, 12, 8) for _ in range(4))
    out, r2 = blk(x1, x2, f, r, 3, 4)
    assert out.shape == (2, 12, 8)
    torch.testing.assert_close(r2, f + r)
    mixed = blk.mixer(blk.norm1(blk.norm1(f + r)), blk.norm2(blk.norm2(x2)), blk.norm3(blk.norm3(x1)))
    grid = mixed.transpose(1, 2).reshape(2, 8, 3, 4)
    torch.testing.assert_close(out, (blk.dwconv(grid) + grid).flatten(2).transpose(1, 2))


# ----------------------------------------------------------------------------------------------- LDC
def test_ldc_effective_kernel_equation() -> None:
    torch.manual_seed(0)
    ldc = LDC(3, 2)
    with torch.no_grad():
        ldc.mask.copy_(torch.rand(2, 3))
        ldc.theta.fill_(0.7)
    W, M = ldc.weight.detach(), ldc.mask.detach()
    expected = W.clone()
    for o in range(2):
        for i in range(3):
            expected[o, i, 1, 1] = W[o, i, 1, 1] * (1 - 0.7 * M[o, i] * W[o, i].sum())
    torch.testing.assert_close(ldc.effective_weight().detach(), expected)
    x = torch.randn(2, 3, 6, 5)
    torch.testing.assert_close(ldc(x), F.conv2d(x, expected, padding=1))
    assert {n for n, _ in ldc.named_parameters()} == {"weight", "mask", "theta"}
    assert LDC(3, 2).theta.item() == 0.5 and torch.equal(LDC(3, 2).mask, torch.ones(2, 3))
    assert "centre" not in ldc.state_dict()  # constant buffer, not a weight


def test_ldc_with_theta_zero_is_a_plain_conv() -> None:
    ldc = LDC(4, 4, theta=0.0)
    x = torch.randn(1, 4, 7, 7)
    torch.testing.assert_close(ldc(x), F.conv2d(x, ldc.weight, padding=1))


# ----------------------------------------------------------------------------------------------- attention
def test_difference_attention_on_constant_maps() -> None:
    a = torch.tensor([0.0, 1.0, -2.0, 3.0]).view(1, 4, 1, 1).expand(2, 4, 5, 5)
    b = torch.tensor([0.0, -1.0, 1.0, 3.0]).view(1, 4, 1, 1).expand(2, 4, 5, 5)
    w12, w21 = difference_attention(a, b)
    assert w12.shape == (2, 4, 1, 1)
    torch.testing.assert_close(w12.flatten(1)[0], torch.sigmoid(torch.tensor([0.0, 2.0, -3.0, 0.0])))
    torch.testing.assert_close(w21.flatten(1)[0], torch.sigmoid(torch.tensor([0.0, -2.0, 3.0, 0.0])))
    assert w12[0, 0].item() == 0.5 and torch.allclose(w12 + w21, torch.ones_like(w12))


def test_dynamic_enhancement_equations() -> None:
    torch.manual_seed(0)
    de = DynamicEnhancement(4)
    x1, x2, f = (torch.randn(2, 4, 6, 6) for _ in range(3))
    f1, f2, w12, w21 = de.enhance(x1, x2, f)
    g12 = torch.sigmoid((x1 - x2).mean(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(f1, de.ldc1(x1) + g12 * f + x1)
    torch.testing.assert_close(f2, de.ldc2(x2) + (1 - g12) * f + x2)
    torch.testing.assert_close(de(x1, x2, f), f + (f1 + f2) / 2)
    with torch.no_grad():  # no texture term: constant maps, hand-computed output
        de.ldc1.weight.zero_()
        de.ldc2.weight.zero_()
    c1, c2, cf = torch.full((1, 4, 3, 3), 2.0), torch.full((1, 4, 3, 3), 1.0), torch.full((1, 4, 3, 3), 4.0)
    s = torch.sigmoid(torch.tensor(1.0))
    expected = 4.0 + ((s * 4 + 2) + ((1 - s) * 4 + 1)) / 2  # = 4 + (4 + 3) / 2
    torch.testing.assert_close(de(c1, c2, cf), torch.full((1, 4, 3, 3), float(expected)))


# ----------------------------------------------------------------------------------------------- FusionModule
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fusion_shapes_range_and_gradients(variant: str) -> None:
    model = _model(**VARIANTS[variant])
    t1, t2 = _pair()
    out = model(t1, t2)
    assert out.shape == (2, 1, 8, 8) and out.dtype == torch.float32
    assert out.abs().max() < 1
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{variant}: no gradient reaches {name}"


def test_fusion_non_square_and_errors() -> None:
    model = _model()
    assert model(torch.zeros(1, 1, 4, 6), torch.zeros(1, 1, 4, 6)).shape == (1, 1, 4, 6)
    with pytest.raises(ValueError, match="one shape"):
        model(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="embed_dim"):
        FusionModule(dataclasses.replace(TINY, embed_dim=2))


def test_ablation_switches_remove_what_they_say() -> None:
    names = {v: {n for n, _ in _model(**over).named_parameters()} for v, over in VARIANTS.items()}
    full, no_de, conv_de, conv = names["mamba+de"], names["mamba"], names["conv+de"], names["conv"]
    assert full - no_de == {"de.ldc1.weight", "de.ldc1.mask", "de.ldc1.theta",
                            "de.ldc2.weight", "de.ldc2.mask", "de.ldc2.theta"}
    assert conv_de - conv == full - no_de
    for n in conv | conv_de:
        assert not any(m in n for m in SSM_MARKERS), n
    assert not any("ldc" in n for n in no_de | conv)
    assert conv == {n for n in full if n.startswith(("stem.", "head."))}
    assert any("A_log" in n for n in no_de)


def test_conv_only_path_definition() -> None:
    """mamba=False, de=False: tanh(head((stem(T1) + stem(T2)) / 2)), nothing else."""
    model = _model(mamba=False, de=False)
    t1, t2 = _pair()
    torch.testing.assert_close(model(t1, t2), torch.tanh(model.head((model.stem(t1) + model.stem(t2)) / 2)))


def test_without_de_the_output_is_decoded_from_F_M3() -> None:
    full = _model()
    no_de = _model(de=False)
    no_de.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("de.")})
    t1, t2 = _pair()
    feats_full, feats_no = full.features(t1, t2), no_de.features(t1, t2)
    torch.testing.assert_close(feats_no["m3"], feats_full["m3"])
    assert "de" not in feats_no and "w12" not in feats_no
    torch.testing.assert_close(feats_full["de"], full.de(feats_full["cross_t1"], feats_full["cross_t2"],
                                                          feats_full["m3"]))
    with torch.no_grad():
        torch.testing.assert_close(feats_no["output"], no_de(t1, t2))


def test_features_dict() -> None:
    model = _model()
    t1, t2 = _pair(batch=1)
    feats = model.features(t1, t2)
    assert list(feats) == ["stem_t1", "stem_t2", "extract_t1", "extract_t2", "swap_t1", "swap_t2", "cross_t1",
                           "cross_t2", "fused0", "m3", "w12", "w21", "de", "recon", "output"]
    assert all(v.shape == (1, 8, 8, 8) for k, v in feats.items() if k not in ("w12", "w21", "output"))
    assert feats["w12"].shape == (1, 8, 1, 1) and not feats["output"].requires_grad
    with torch.no_grad():
        torch.testing.assert_close(feats["output"], model(t1, t2))


def test_deterministic_for_a_seed() -> None:
    t1, t2 = _pair()
    with torch.no_grad():
        assert torch.equal(_model(seed=5)(t1, t2), _model(seed=5)(t1, t2))
        assert not torch.equal(_model(seed=5)(t1, t2), _model(seed=6)(t1, t2))


def test_parity_reference_vs_fast_scan() -> None:
    model = _model()
    t1, t2 = _pair(batch=1)
    with torch.no_grad():
        fast = model(t1, t2)
        ref = set_scan_backend(model, "ref")(t1, t2)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


def test_checkpointing_changes_memory_not_results() -> None:
    plain, ckpt = _model(seed=3), _model(seed=3, checkpoint=True)
    t1, t2 = _pair()
    outs, grads = [], []
    for model in (plain, ckpt):
        out = model(t1, t2)
        out.square().mean().backward()
        outs.append(out)
        grads.append([p.grad for p in model.parameters()])
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_parameter_table_and_paper_size() -> None:
    table = parameter_table(_model())
    assert list(table) == ["stem", "embed_norm", "extract1", "extract2", "swap", "cross", "m3", "de", "recon",
                           "head", "total"]
    assert table["total"] == sum(v for k, v in table.items() if k != "total")
    # paper profile (C = 60; 8/2/5/8): ≈ 1.35 M without DE, ≈ 1.42 M with DE (method.md §8.2)
    assert parameter_table(FusionModule(FusionConfig(de=False)))["total"] == 1_347_271
    assert parameter_table(FusionModule(FusionConfig()))["total"] == 1_419_273
