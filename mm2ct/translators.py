"""Translator assemblies: the one place that builds a model from a config by name (docs/method.md §2.1, §8.4, §8.6).

    tr = build("mm2ct", cfg)                 # cfg: mm2ct.config.Config (translator, fusion, data.image_size)
    ct = tr.translate({"t1": t1, "t2": t2}, seed=42)     # (B, 1, H, W) in [-1, 1]

Domains: "a" = MR, the translator's ``sources`` stacked as channels (1 channel, or 2 = (T1, T2) for MM2CT);
"b" = CT, 1 channel. Networks are named submodules:

    G_nd_ab, G_nd_ba    non-diffusive ResNet generators MR -> CT and CT -> MR (§2.5)
    D_nd_a, D_nd_b      PatchGANs on MR and CT (§2.5)
    G_diff_a, G_diff_b  diffusive NCSN++ generators producing MR and CT (§2.3)        [SynDiff, MM2CT]
    D_diff_a, D_diff_b  time-conditioned diffusive discriminators (§2.4)              [SynDiff, MM2CT]
    fusion              the Mamba fusion module Phi(T1, T2) -> 1 channel (§8.2)     [MM2CT]
    schedule            the T-step diffusion schedule (no parameters)                [SynDiff, MM2CT]

``condition(x_a)`` is what an MR image becomes before a generator that reads MR sees it: Phi(T1, T2) for MM2CT,
the image itself otherwise. Wiring (§2.6, §8.4):

    G_nd_ab(condition(x_a)) = CT'        G_nd_ba(x_b) = MR'  (C_A channels)
    G_diff_b(cat[x^b_{t+1}, condition(MR')], t, z) -> x̂_0^b      G_diff_a(cat[x^a_{t+1}, CT'], t, z) -> x̂_0^a

Inference (§2.8): MR -> CT by T-step sampling of G_diff_b with source = condition(real MR); CycleGAN: G_nd_ab.
Models contain no training logic (losses: ``mm2ct.losses``).
"""
from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping

import torch
import torch.nn as nn

from mm2ct.diffusion import DiffusionSchedule
from mm2ct.models.discriminators import DiffusiveDiscriminator, PatchDiscriminator
from mm2ct.models.ncsnpp import NCSNpp
from mm2ct.models.resnet import ResnetGenerator

MODALITIES = ("t1", "t2")

# name -> (family, sources, fusion-config overrides)
MODELS: dict[str, tuple[str, tuple[str, ...], dict[str, bool]]] = {
    "cyclegan_t1": ("cyclegan", ("t1",), {}),
    "cyclegan_t2": ("cyclegan", ("t2",), {}),
    "syndiff_t1": ("syndiff", ("t1",), {}),
    "syndiff_t2": ("syndiff", ("t2",), {}),
    "mm2ct": ("mm2ct", ("t1", "t2"), {}),
    "mm2ct_node": ("mm2ct", ("t1", "t2"), {"de": False}),                      # Table 2 row 2
    "mm2ct_nomamba": ("mm2ct", ("t1", "t2"), {"mamba": False, "de": False}),   # Table 2 row 1 (conv-only fusion)
}


def _rng(device: torch.device, seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    if generator is not None:
        return generator
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


class Translator(nn.Module, abc.ABC):
    """Base of every MR -> CT translator: the non-diffusive half that every family shares (§2.5, §8.6) and the
    inference API; a family says how it generates CT (``generate``). Not a model by itself.

    Attributes: ``name``, ``family`` ("cyclegan", "syndiff" or "mm2ct"), ``sources`` (("t1",), ("t2",) or
    ("t1", "t2")), ``image_size``; ``generator_names`` / ``discriminator_names`` list the networks.
    """

    family: str
    generator_names: tuple[str, ...] = ("G_nd_ab", "G_nd_ba")
    discriminator_names: tuple[str, ...] = ("D_nd_a", "D_nd_b")

    def __init__(self, name: str, sources: tuple[str, ...], cfg):
        super().__init__()
        tc = cfg.translator
        self.name, self.sources, self.image_size = name, tuple(sources), cfg.data.image_size
        n_a = len(self.sources)  # MR channels
        self.G_nd_ab = ResnetGenerator(self.condition_channels, 1, tc.ngf, tc.n_blocks_nd)
        self.G_nd_ba = ResnetGenerator(1, n_a, tc.ngf, tc.n_blocks_nd)
        self.D_nd_a = PatchDiscriminator(n_a, tc.ndf, tc.n_layers_d)
        self.D_nd_b = PatchDiscriminator(1, tc.ndf, tc.n_layers_d)

    @property
    def condition_channels(self) -> int:
        """Channels of ``condition(x_a)``."""
        return len(self.sources)

    def generators(self) -> list[nn.Module]:
        """Modules the generator loss updates (and EMA tracks), the fusion module included."""
        return [getattr(self, n) for n in self.generator_names]

    def discriminators(self) -> list[nn.Module]:
        """Modules the discriminator losses update."""
        return [getattr(self, n) for n in self.discriminator_names]

    def mr(self, sources: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Domain-a image: the translator's sources (each (B, 1, H, W)) stacked as channels -> (B, C_A, H, W)."""
        missing = [s for s in self.sources if s not in sources]
        if missing:
            raise KeyError(f"translator {self.name!r} needs sources {self.sources}; missing {missing} "
                           f"(got keys {sorted(sources)})")
        x = torch.cat([sources[s] for s in self.sources], dim=1)
        if x.shape[1:] != (len(self.sources), self.image_size, self.image_size):
            raise ValueError(f"translator {self.name!r}: expected sources of shape (B, 1, {self.image_size}, "
                             f"{self.image_size}), got {[tuple(sources[s].shape) for s in self.sources]}")
        return x

    def condition(self, x_a: torch.Tensor) -> torch.Tensor:
        """What a generator reading MR sees: (B, C_A, H, W) -> (B, condition_channels, H, W)."""
        return x_a

    @abc.abstractmethod
    def generate(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Synthetic CT (B, 1, H, W) in [-1, 1] from ``condition(MR)``, drawing randomness from ``generator``."""

    @torch.no_grad()
    def translate(self, sources: Mapping[str, torch.Tensor], seed: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """MR -> synthetic CT (B, 1, H, W) in [-1, 1], used by evaluation and inference. Randomness (diffusion
        models) comes from ``generator``, else from a new one seeded with ``seed``, else from the global RNG."""
        cond = self.condition(self.mr(sources))  # (B, condition_channels, H, W)
        return self.generate(cond, _rng(cond.device, seed, generator))

    @torch.no_grad()
    def sample(self, sources: Mapping[str, torch.Tensor], n: int, seed: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws of ``translate`` from one random stream (the condition computed once): (n, B, 1, H, W).
        Their mean and standard deviation over the first axis give the prediction and the uncertainty map
        (zero spread for CycleGAN)."""
        cond = self.condition(self.mr(sources))
        g = _rng(cond.device, seed, generator)
        return torch.stack([self.generate(cond, g) for _ in range(n)])


class CycleGAN(Translator):
    """CycleGAN baseline (§8.6): SynDiff's non-diffusive half alone; MR -> CT is G_nd_ab (deterministic)."""

    family = "cyclegan"

    def generate(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.G_nd_ab(cond)


class SynDiff(Translator):
    """SynDiff (§2.1-2.8) with one MR source: adds the diffusive generators, discriminators and the schedule."""

    family = "syndiff"
    generator_names = ("G_nd_ab", "G_nd_ba", "G_diff_a", "G_diff_b")
    discriminator_names = ("D_diff_a", "D_diff_b", "D_nd_a", "D_nd_b")

    def __init__(self, name: str, sources: tuple[str, ...], cfg):
        super().__init__(name, sources, cfg)
        tc, size, n_a = cfg.translator, cfg.data.image_size, len(self.sources)
        self.G_diff_a = NCSNpp.from_config(tc, in_ch=n_a + 1, out_ch=n_a, image_size=size)          # [x^a, CT']
        self.G_diff_b = NCSNpp.from_config(tc, in_ch=1 + self.condition_channels, out_ch=1, image_size=size)
        self.D_diff_a = DiffusiveDiscriminator(n_a, size, tc.disc_ngf, tc.t_emb_dim)
        self.D_diff_b = DiffusiveDiscriminator(1, size, tc.disc_ngf, tc.t_emb_dim)
        self.schedule = DiffusionSchedule(tc.num_timesteps, tc.beta_min, tc.beta_max)
        self.nz = tc.nz

    def latent(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I_nz): (batch, nz), on the model's device."""
        return torch.randn(batch, self.nz, generator=generator, device=self.schedule.betas.device)

    def generate(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """T-step sampling of G_diff_b with source = condition(MR) (§2.8): (B, 1, H, W)."""
        return self.schedule.sample(self.G_diff_b, cond, self.latent, generator, channels=1)


class MM2CT(SynDiff):
    """MM2CT (§8.4): SynDiff on a 2-channel MR domain (T1, T2) whose MR-reading generators see the fused
    Phi(T1, T2) (1 channel). Phi trains with the generators."""

    family = "mm2ct"
    generator_names = SynDiff.generator_names + ("fusion",)

    def __init__(self, name: str, sources: tuple[str, ...], cfg):
        from mm2ct.models.fusion import FusionModule  # lazily: the fusion module pulls in the scan kernels

        super().__init__(name, sources, cfg)
        self.fusion = FusionModule(cfg.fusion)

    @property
    def condition_channels(self) -> int:
        return 1

    def condition(self, x_a: torch.Tensor) -> torch.Tensor:
        """Phi(T1, T2): (B, 2, H, W) -> (B, 1, H, W) in [-1, 1]."""
        return self.fusion(x_a[:, 0:1], x_a[:, 1:2])


FAMILIES = {"cyclegan": CycleGAN, "syndiff": SynDiff, "mm2ct": MM2CT}


def build(name: str, cfg) -> Translator:
    """Build translator ``name`` (one of ``MODELS``) from a full ``Config``: its ``translator`` section, its
    ``fusion`` section (with the variant's switches applied) and ``data.image_size``."""
    if name not in MODELS:
        raise ValueError(f"unknown translator {name!r}; known: {', '.join(MODELS)}")
    family, sources, fusion_overrides = MODELS[name]
    if fusion_overrides:
        cfg = dataclasses.replace(cfg, fusion=dataclasses.replace(cfg.fusion, **fusion_overrides))
    return FAMILIES[family](name, sources, cfg)


def parameter_counts(translator: Translator) -> dict[str, int]:
    """Trainable parameters per named network, then "generators" (fusion included), "discriminators", "total"."""
    counts = {n: sum(p.numel() for p in getattr(translator, n).parameters())
              for n in translator.generator_names + translator.discriminator_names}
    counts["generators"] = sum(counts[n] for n in translator.generator_names)
    counts["discriminators"] = sum(counts[n] for n in translator.discriminator_names)
    counts["total"] = counts["generators"] + counts["discriminators"]
    return counts
