"""Translator networks (docs/method.md §2.3-2.5): FIR resampling, shapes, and paper-size structure and counts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import signal

from mm2ct.models.discriminators import DiffusiveDiscriminator, PatchDiscriminator, minibatch_stddev
from mm2ct.models.layers import (AdaptiveGroupNorm, FIRDownConv, downsample_2d, fir_kernel, group_count,
                                 timestep_embedding, upfirdn2d, upsample_2d)
from mm2ct.models.ncsnpp import AttnBlock, NCSNpp, ResBlock
from mm2ct.models.resnet import ResnetGenerator

PAPER_NCSNPP = dict(nf=64, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,), nz=100,
                    z_emb_dim=256, n_mlp=3)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ----------------------------------------------------------------------------------------------- FIR resampling
def _upfirdn_ref(x: np.ndarray, k1: np.ndarray, up: int, down: int, pad: tuple[int, int]) -> np.ndarray:
    """Separable reference from scipy.signal.upfirdn (full convolution of the zero-stuffed signal), cropped to
    the padded window: ours[i] = full[i + K - 1 - pad0] (zero beyond the end)."""
    K = len(k1)
    for axis in (-2, -1):
        n = x.shape[axis]
        full = signal.upfirdn(k1, x, up=up, down=1, axis=axis)
        length = n * up + pad[0] + pad[1] - K + 1
        widths = [(0, 0)] * x.ndim
        widths[axis] = (K, length + K)
        full = np.pad(full, widths)  # zeros where the window reaches past the full convolution
        idx = np.arange(length) + K - 1 - pad[0] + K
        x = np.take(full, idx, axis=axis)
        x = np.take(x, np.arange(0, length, down), axis=axis)
    return x


@pytest.mark.parametrize("up, down, pad", [(1, 2, (1, 1)), (2, 1, (2, 1)), (1, 1, (2, 2)), (2, 2, (1, 2))])
def test_upfirdn2d_matches_scipy_reference(up: int, down: int, pad: tuple[int, int]) -> None:
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    k1 = np.array([1.0, 3.0, 2.0, 1.0])  # asymmetric: catches a missing kernel flip
    ours = upfirdn2d(x, torch.from_numpy(np.outer(k1, k1)), up=up, down=down, pad=pad).numpy()
    np.testing.assert_allclose(ours, _upfirdn_ref(x.numpy(), k1, up, down, pad), atol=1e-10)


def test_fir_resampling_shapes_and_constants() -> None:
    k = fir_kernel()
    assert k.sum().item() == pytest.approx(1.0) and k.shape == (4, 4)
    x = torch.ones(1, 2, 16, 16)
    up, down = upsample_2d(x, k), downsample_2d(x, k)
    assert up.shape == (1, 2, 32, 32) and down.shape == (1, 2, 8, 8)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.ones_like(up[..., 2:-2, 2:-2]))  # DC gain 1
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.ones_like(down[..., 1:-1, 1:-1]))
    assert FIRDownConv(2, 5)(x).shape == (1, 5, 8, 8)


def test_embeddings_and_adagn() -> None:
    e = timestep_embedding(torch.tensor([0, 3]), 64)
    assert e.shape == (2, 64)
    torch.testing.assert_close(e[0], torch.cat([torch.zeros(32), torch.ones(32)]))
    assert e[1, 0].item() == pytest.approx(np.sin(3.0)) and e[1, 31].item() == pytest.approx(np.sin(3e-4), rel=1e-3)
    assert timestep_embedding(torch.tensor([1]), 7).shape == (1, 7)
    assert (group_count(64), group_count(256), group_count(192), group_count(14), group_count(2)) == (16, 32, 32, 2, 1)
    norm = AdaptiveGroupNorm(8, 16)
    h = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(norm(h, torch.zeros(2, 16)), torch.nn.functional.group_norm(h, 2, eps=1e-6))


# ----------------------------------------------------------------------------------------------- NCSN++ generator
def test_ncsnpp_shapes_dtype_range() -> None:
    G = NCSNpp(3, 2, 32, nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), nz=8, z_emb_dim=16, n_mlp=1)
    out = G(torch.randn(2, 3, 32, 32), torch.tensor([0, 3]), torch.randn(2, 8))
    assert out.shape == (2, 2, 32, 32) and out.dtype == torch.float32 and out.abs().max() <= 1
    assert G.attn_levels == [False, True]
    with pytest.raises(ValueError, match="expected input"):
        G(torch.randn(2, 3, 16, 16), torch.tensor([0, 3]), torch.randn(2, 8))
    with pytest.raises(ValueError, match="not divisible"):
        NCSNpp(2, 1, 36, nf=8, ch_mult=(1, 2, 2, 2))


def _expected_ncsnpp_params(in_ch: int, out_ch: int, image_size: int, nf: int, ch_mult, num_res_blocks: int,
                            attn_resolutions, nz: int, z_emb_dim: int, n_mlp: int) -> int:
    """SynDiff's NCSN++ parameter count, rebuilt from §2.3's layout with closed-form per-layer counts."""
    temb = 4 * nf

    def conv(i, o, k):
        return i * o * k * k + o

    def lin(i, o):
        return i * o + o

    def res(i, o, resample=False):
        skip = conv(i, o, 1) if (i != o or resample) else 0
        return lin(z_emb_dim, 2 * i) + conv(i, o, 3) + lin(temb, o) + lin(z_emb_dim, 2 * o) + conv(o, o, 3) + skip

    def attn(c):
        return 2 * c + 4 * conv(c, c, 1)

    total = lin(nf, temb) + lin(temb, temb) + lin(nz, z_emb_dim) + n_mlp * lin(z_emb_dim, z_emb_dim)
    total += conv(in_ch, nf, 3)
    skips, ch, pyr = [nf], nf, in_ch
    levels = len(ch_mult)
    for lev, m in enumerate(ch_mult):
        has_attn = image_size // 2 ** lev in attn_resolutions
        for _ in range(num_res_blocks):
            total += res(ch, nf * m) + (attn(nf * m) if has_attn else 0)
            ch = nf * m
            skips.append(ch)
        if lev < levels - 1:
            total += res(ch, ch, True) + conv(pyr, ch, 3)
            pyr = ch
            skips.append(ch)
    total += 2 * res(ch, ch) + attn(ch)
    for lev in reversed(range(levels)):
        for _ in range(num_res_blocks + 1):
            total += res(ch + skips.pop(), nf * ch_mult[lev])
            ch = nf * ch_mult[lev]
        total += attn(ch) if image_size // 2 ** lev in attn_resolutions else 0
        total += res(ch, ch, True) if lev else 0
    return total + 2 * ch + conv(ch, out_ch, 3)


def test_ncsnpp_paper_structure_and_count() -> None:
    with torch.device("meta"):
        G = NCSNpp(2, 1, 256, **PAPER_NCSNPP)
    assert G.resolutions == [256, 128, 64, 32, 16, 8]
    widths = [[b.conv0.out_channels for b in blocks] for blocks in G.down_blocks]
    assert widths == [[64, 64], [64, 64], [128, 128], [128, 128], [256, 256], [256, 256]]  # 2 res blocks per level
    assert [len(b) for b in G.up_blocks] == [3] * 6  # num_res_blocks + 1 going up
    assert len(G.downsample) == len(G.upsample) == 5 and all(b.down for b in G.downsample)
    assert sum(isinstance(m, AttnBlock) for m in G.modules()) == 2 + 1 + 1  # down at 16 (x2), middle, up at 16
    assert [m.out_features for m in G.time_embed if isinstance(m, torch.nn.Linear)] == [256, 256]
    assert G.time_embed[0].in_features == 64
    lin = [m for m in G.z_transform if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(100, 256)] + [(256, 256)] * 3
    assert all(isinstance(m.norm0, torch.nn.Module) and m.norm0.style.out_features == 2 * m.conv0.in_channels
               for m in G.modules() if isinstance(m, ResBlock))
    count = n_params(G)
    print(f"NCSN++ (paper, 2 -> 1 ch, 256): {count:,} parameters")
    assert count == _expected_ncsnpp_params(2, 1, 256, **PAPER_NCSNPP) == 39_724_673


# ----------------------------------------------------------------------------------------------- discriminators
@pytest.mark.parametrize("size, n_down", [(32, 3), (64, 4), (256, 6)])
def test_diffusive_discriminator_depth_adapts_to_size(size: int, n_down: int) -> None:
    with torch.device("meta"):
        D = DiffusiveDiscriminator(2, size, ngf=8, t_emb_dim=16)
        out = D(torch.zeros(3, 2, size, size), torch.zeros(3, dtype=torch.long), torch.zeros(3, 2, size, size))
    assert D.n_down == n_down and out.shape == (3,)


def test_diffusive_discriminator_forward_and_paper_count() -> None:
    D = DiffusiveDiscriminator(1, 32, ngf=8, t_emb_dim=16)
    out = D(torch.randn(2, 1, 32, 32), torch.tensor([0, 2]), torch.randn(2, 1, 32, 32))
    assert out.shape == (2,) and out.dtype == torch.float32 and torch.isfinite(out).all()
    with torch.device("meta"):
        P = DiffusiveDiscriminator(1, 256, ngf=64, t_emb_dim=256)
    widths = [(b.conv1.in_channels, b.conv1.out_channels) for b in P.blocks]
    assert widths == [(128, 256), (256, 512)] + [(512, 512)] * 4
    blocks = sum(i * o * 9 + o + o * o * 9 + o + 256 * o + o + i * o for i, o in widths)
    expected = 2 * (256 * 256 + 256) + (2 * 128 + 128) + blocks + (513 * 512 * 9 + 512) + (512 + 1)
    print(f"Diffusive discriminator (paper, nc 2, 256): {n_params(P):,} parameters")
    assert n_params(P) == expected == 27_736_705


def test_minibatch_stddev_groups() -> None:
    h = torch.randn(6, 4, 2, 2)
    assert minibatch_stddev(h).shape == (6, 5, 2, 2)  # group 3: the largest divisor of 6 that is <= 4
    assert minibatch_stddev(h[:1])[:, -1].abs().max() < 1e-3  # one sample: zero spread (sqrt(1e-8))


def test_patchgan_shapes_and_paper_count() -> None:
    D = PatchDiscriminator(2, ndf=8, n_layers=2)
    assert D(torch.randn(2, 2, 32, 32)).shape == (2, 1, 6, 6)
    with torch.device("meta"):
        P = PatchDiscriminator(1)
        assert P(torch.zeros(1, 1, 256, 256)).shape == (1, 1, 30, 30)
    # CycleGAN's 3-channel n_layers=3 PatchGAN has 2,764,737 parameters; one input channel saves 2 * 64 * 16
    assert n_params(P) == 2_764_737 - 2 * 64 * 16


def test_resnet_generator_shapes_and_paper_count() -> None:
    G = ResnetGenerator(1, 2, ngf=8, n_blocks=1)
    out = G(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 2, 32, 32) and out.abs().max() <= 1
    with torch.device("meta"):
        P = ResnetGenerator(1, 1, 64, 6)
    # CycleGAN's resnet_6blocks (3 -> 3 channels) has 7,837,699 parameters; 1 -> 1 channel drops
    # 2 * 64 * 49 weights of the 7x7 input conv and 2 * 64 * 49 + 2 of the 7x7 output conv
    assert n_params(P) == 7_837_699 - 2 * 64 * 49 - (2 * 64 * 49 + 2) == 7_825_153
    assert sum(type(m).__name__ == "ResidualBlock" for m in P.modules()) == 6
