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
from mm2ct.models import enhance, fusion
from mm2ct.models.enhance import DFEM, ECA, FinalFusion, difference_attention
from mm2ct.models.fusion import FusionModule, parameter_table
from mm2ct.models.ldc import LDC
from mm2ct.models.mamba import Mamba, set_scan_backend

FAST = "torch"
TINY = FusionConfig(embed_dim=8, n_extract=1, n_swap=1, n_m3=1, n_recon=1, d_state=4)
VARIANTS = {  # Table 2 rows 3 and 2, and the conv-only fusion (our extra row)
    "mamba+de": {},
    "mamba": {"de": False},
    "conv": {"mamba": False, "de": False},
}
DE_PARAMETERS = {"de.ldc1.weight", "de.ldc1.mask", "de.ldc1.theta", "de.ldc2.weight", "de.ldc2.mask", "de.ldc2.theta"}
SSM_MARKERS = ("A_log", "A_b_log", "x_proj", "dt_proj", "conv1d", "in_proj", "out_proj", "mixer", "extract",
               "swap", "m3", "recon", "embed_norm", "cross")


def _model(seed: int = 0, **over) -> FusionModule:
    torch.manual_seed(seed)
    return FusionModule(dataclasses.replace(TINY, **over), backend=FAST)


def _pair(batch: int = 2, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(batch, 1, size, size, generator=g) * 2 - 1 for _ in range(2))


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
    assert w12[0, 0].item() == 0.5


def test_dfem_equations() -> None:
    torch.manual_seed(0)
    de = DFEM(4)
    x1, x2, f = (torch.randn(2, 4, 6, 6) for _ in range(3))
    f1, f2 = de(f, x1, x2)
    g12 = torch.sigmoid((x1 - x2).mean(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(f1, de.ldc1(x1) + g12 * f + x1)
    torch.testing.assert_close(f2, de.ldc2(x2) + (1 - g12) * f + x2)
    w = torch.full((1, 4, 1, 1), 0.25)
    o1, o2 = de(f, x1, x2, weights=(w, 3 * w))
    torch.testing.assert_close(o1, de.ldc1(x1) + 0.25 * f + x1)
    torch.testing.assert_close(o2, de.ldc2(x2) + 0.75 * f + x2)


def test_eca_by_hand() -> None:
    eca = ECA()
    with torch.no_grad():
        eca.conv.weight.copy_(torch.tensor([[[1.0, -2.0, 0.5]]]))
    x = torch.tensor([1.0, 2.0, 4.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()  # channel means 1, 2, 4
    logits = torch.tensor([0 * 1 - 2 * 1 + 0.5 * 2, 1 * 1 - 2 * 2 + 0.5 * 4, 1 * 2 - 2 * 4 + 0.5 * 0])  # zero padding
    torch.testing.assert_close(eca(x), x * torch.sigmoid(logits).view(1, 3, 1, 1))
    assert [n for n, _ in eca.named_parameters()] == ["conv.weight"] and eca.conv.bias is None


def test_final_fusion_block_equation() -> None:
    """F_out = F + Y + ECA(Y), Y = M3 block on (primary F; auxiliary F1, F2) mapped back to (B, C, H, W)."""
    torch.manual_seed(0)
    blk = FinalFusion(8, d_state=4, backend=FAST)
    f, f1, f2 = (torch.randn(2, 8, 3, 4) for _ in range(3))
    tokens = [t.flatten(2).transpose(1, 2) for t in (f, f1, f2)]
    y, _ = blk.m3(tokens[1], tokens[2], tokens[0], None, 3, 4)
    y = y.transpose(1, 2).reshape(2, 8, 3, 4)
    torch.testing.assert_close(blk(f, f1, f2), f + y + blk.eca(y))
    # the auxiliary streams act: swapping F1 and F2 (different projections) changes Y
    assert not torch.allclose(blk(f, f1, f2), blk(f, f2, f1))


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
    full, no_de, conv = names["mamba+de"], names["mamba"], names["conv"]
    assert full - no_de == DE_PARAMETERS and no_de < full  # DE off removes the two LDCs and nothing else
    for n in conv:
        assert not any(m in n for m in SSM_MARKERS), n
    assert conv == {n for n in full if n.startswith(("stem.", "head."))}
    assert any("A_log" in n for n in no_de)
    with pytest.raises(ValueError, match="needs mamba"):
        _model(mamba=False)  # de=True without Mamba: the final block is a Mamba block


def _patch_attention(monkeypatch, fn) -> None:
    """Replace the difference-aware attention wherever the fusion code looks it up."""
    for module in (enhance, fusion):
        monkeypatch.setattr(module, "difference_attention", fn, raising=False)


def test_de_attention_acts_on_the_output(monkeypatch) -> None:
    """Replacing (w12, w21) by (0.5, 0.5) must change Φ (§8.3). Before the fix, F_M3 + (F1 + F2)/2 made
    the attention terms sum to F_M3 / 2 whatever the weights were."""
    model = _model()
    t1, t2 = _pair()
    with torch.no_grad():
        out = model(t1, t2)
        _patch_attention(monkeypatch, lambda x1, x2: (torch.full_like(x1[:, :, :1, :1], 0.5),) * 2)
        halves = model(t1, t2)
    assert (out - halves).abs().max() > 1e-5  # before the fix: 6e-8 (rounding); now about 2e-4 at init


def test_de_gradient_reaches_the_attention_logits(monkeypatch) -> None:
    """d Φ / d g != 0 for the logits g = GAP(X1 − X2) of the difference-aware attention."""
    model = _model()
    t1, t2 = _pair()
    logits = []

    def attention(x1, x2):
        g = (x1 - x2).mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        g.retain_grad()
        logits.append(g)
        return torch.sigmoid(g), torch.sigmoid(-g)

    _patch_attention(monkeypatch, attention)
    model(t1, t2).square().mean().backward()
    assert logits and all(g.grad is not None for g in logits)
    assert sum(g.grad.abs().sum() for g in logits) > 1e-8


def test_attention_override_argument() -> None:
    model = _model()
    t1, t2 = _pair()
    feats = model.features(t1, t2)
    with torch.no_grad():
        torch.testing.assert_close(model(t1, t2, attention=(feats["w12"], feats["w21"])), model(t1, t2))
        half = torch.full_like(feats["w12"], 0.5)
        assert not torch.allclose(model(t1, t2, attention=(half, half)), model(t1, t2))
    with pytest.raises(ValueError, match="no DE"):
        _model(de=False)(t1, t2, attention=(half, half))


def test_without_de_the_final_block_reads_the_modality_maps() -> None:
    full = _model()
    no_de = _model(de=False)
    no_de.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("de.")})
    t1, t2 = _pair()
    feats_full, feats_no = full.features(t1, t2), no_de.features(t1, t2)
    torch.testing.assert_close(feats_no["m3"], feats_full["m3"])
    assert not {"w12", "w21", "f1", "f2"} & set(feats_no)
    with torch.no_grad():
        torch.testing.assert_close(feats_no["final"], no_de.final(feats_no["m3"], feats_no["cross_t1"],
                                                                 feats_no["cross_t2"]))
        f1, f2 = full.de(feats_full["m3"], feats_full["cross_t1"], feats_full["cross_t2"])
        torch.testing.assert_close(feats_full["final"], full.final(feats_full["m3"], f1, f2))
        torch.testing.assert_close(feats_no["output"], no_de(t1, t2))
    assert not torch.allclose(feats_full["output"], feats_no["output"])


def test_close_residual_switch() -> None:
    """False (MambaDFuse): a stack's tokens are mapped back without its last residual; True: h + r."""
    dropped, kept = _model(seed=1), _model(seed=1, close_residual=True)
    kept.load_state_dict(dropped.state_dict())
    t1, t2 = _pair()
    a, b = dropped.features(t1, t2), kept.features(t1, t2)
    torch.testing.assert_close(a["stem_t1"], b["stem_t1"])
    shape = a["stem_t1"].shape  # (B, C, H, W)
    with torch.no_grad():
        s1, r1 = dropped.extract1(dropped.embed_norm(a["stem_t1"].flatten(2).transpose(1, 2)))  # (B, L, C)
    torch.testing.assert_close(a["extract_t1"], s1.transpose(1, 2).reshape(shape))
    torch.testing.assert_close(b["extract_t1"], (s1 + r1).transpose(1, 2).reshape(shape))
    assert not torch.allclose(a["output"], b["output"])


def test_aux_dt_init_switch() -> None:
    """"linear": the auxiliary streams' Δ projections keep nn.Linear's init (bias ~ U(±dt_rank^-1/2)), as in
    MambaDFuse; "mamba": bias = softplus^-1(dt), dt in [1e-3, 0.1]. The fusion stream always gets mamba-ssm's."""
    for choice in ("linear", "mamba"):
        torch.manual_seed(0)
        m = CrossModalMamba(64, d_state=4, aux_dt_init=choice)  # dt_rank 4
        dt = torch.nn.functional.softplus(m.dt_proj.bias.detach())
        assert dt.min() >= 1e-4 - 1e-9 and dt.max() <= 0.1 + 1e-6
        for proj in (m.dt_proj_b, m.dt_proj_c):
            bias = proj.bias.detach()
            if choice == "linear":
                assert bias.abs().max() <= 0.5 and bias.min() < 0 < bias.max()
            else:
                assert torch.nn.functional.softplus(bias).max() <= 0.1 + 1e-6 and bias.max() < -2
    with pytest.raises(ValueError, match="aux_dt_init"):
        CrossModalMamba(8, aux_dt_init="other")


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
    assert list(table) == ["stem", "embed_norm", "extract1", "extract2", "swap", "cross", "m3", "de", "final",
                           "recon", "head", "total"]
    assert table["total"] == sum(v for k, v in table.items() if k != "total")
    # paper profile (C = 60; 8/2/5/8 blocks; method.md §8.2): 1,347,271 for the MambaDFuse pipeline, + one M3
    # block (72,120) and ECA (3) for the final fusion block, + two LDCs of 60*60*9 + 60*60 + 1 each for DE
    paper = {v: parameter_table(FusionModule(FusionConfig(**over))) for v, over in VARIANTS.items()}
    assert paper["mamba"]["final"] == 72_123 and paper["mamba+de"]["de"] == 2 * 36_001
    assert paper["mamba"]["total"] == 1_347_271 + 72_123 == 1_419_394
    assert paper["mamba+de"]["total"] == 1_419_394 + 72_002 == 1_491_396
    assert paper["conv"]["total"] == 36_991  # stem 16,560 + head 20,431


def test_features_dict() -> None:
    model = _model()
    t1, t2 = _pair(batch=1)
    feats = model.features(t1, t2)
    assert list(feats) == ["stem_t1", "stem_t2", "extract_t1", "extract_t2", "swap_t1", "swap_t2", "cross_t1",
                           "cross_t2", "fused0", "m3", "w12", "w21", "f1", "f2", "final", "recon", "output"]
    assert all(v.shape == (1, 8, 8, 8) for k, v in feats.items() if k not in ("w12", "w21", "output"))
    assert feats["w12"].shape == (1, 8, 1, 1) and not feats["output"].requires_grad
    torch.testing.assert_close(feats["w12"] + feats["w21"], torch.ones_like(feats["w12"]))  # σ(g) + σ(−g) = 1
    with torch.no_grad():
        torch.testing.assert_close(feats["output"], model(t1, t2))
