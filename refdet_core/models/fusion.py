"""Query-support fusion: PSALM and CHEAF, picked from ``FUSION``.

Both take the query maps ``feats`` (list of (B, C_s, H_s, W_s), fine to coarse) and the episode's prototypes
(list of (N, D_s), or None for a support-free base detector) and return fused maps (B, Out_s, H_s, W_s) with
Out = 128/256/512/512 for P2..P5 at YOLOv8n width. No label ever enters: every query pixel is fused with the
whole set of N prototypes (attention over the N prototype tokens and a cosine-correlation map, max over N).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refdet_core.models.backbone import ConvBNAct


def fused_channels(in_channels: tuple[int, ...]) -> tuple[int, ...]:
    """Fused width per scale: 4x the query channels, capped at 2x the coarsest (32/64/128/256 -> 128/256/512/512)."""
    return tuple(min(4 * c, 2 * in_channels[-1]) for c in in_channels)


def num_heads(c: int) -> int:
    return max(1, min(4, c // 16))


class ShortLong(nn.Module):
    """Short-long depthwise stack: 3x3 -> SiLU -> 7x7. (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, *, c: int) -> None:
        super().__init__()
        self.short = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.long = nn.Conv2d(c, c, 7, padding=3, groups=c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.long(F.silu(self.short(x)))


class DWBNAct(nn.Module):
    """Depthwise 3x3 + BN + SiLU. (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, *, c: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(c_in=c, c_out=c, k=3, groups=c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PrototypeTokens(nn.Module):
    """Prototypes (N, D) -> tokens (N, c) in the query's key space: Linear + LayerNorm."""

    def __init__(self, *, d: int, c: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d, c)
        self.norm = nn.LayerNorm(c)

    def forward(self, protos: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(protos))


def efficient_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Linear attention: keys softmax over positions, queries over channels, per head.

    q: (B, Ck, L), k: (B, Ck, M), v: (B, Cv, M) -> (B, Cv, L).
    """
    b, ck, length = q.shape
    cv = v.shape[1]
    q = q.reshape(b, heads, ck // heads, length).softmax(dim=2)  # (B, h, dk, L)
    k = k.reshape(b, heads, ck // heads, -1).softmax(dim=3)  # (B, h, dk, M)
    v = v.reshape(b, heads, cv // heads, -1)  # (B, h, dv, M)
    context = k @ v.transpose(2, 3)  # (B, h, dk, dv)
    return (context.transpose(2, 3) @ q.to(context.dtype)).reshape(b, cv, length)


def correlation_max(u: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Cosine between each pixel (B, C, L) and each token (N, C), max over N -> (B, 1, L)."""
    cos = torch.einsum("bcl,nc->bnl", F.normalize(u.float(), dim=1), F.normalize(tokens.float(), dim=1))
    return cos.amax(dim=1, keepdim=True)


class PyramidEnrich(nn.Module):
    """Top-down (1x1 + upsample) then bottom-up (grouped 3x3 stride 2) exchange, depthwise refine, raw residual."""

    def __init__(self, *, channels: tuple[int, ...]) -> None:
        super().__init__()
        pairs = list(zip(channels[:-1], channels[1:]))
        self.lateral = nn.ModuleList(nn.Conv2d(hi, lo, 1) for lo, hi in pairs)
        self.down = nn.ModuleList(nn.Conv2d(lo, hi, 3, 2, 1, groups=lo) for lo, hi in pairs)
        self.smooth = nn.ModuleList(DWBNAct(c=c) for c in channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """list of (B, C_s, H_s, W_s) -> same shapes."""
        td = list(feats)
        for i in range(len(feats) - 2, -1, -1):
            up = F.interpolate(self.lateral[i](td[i + 1]), size=feats[i].shape[-2:], mode="bilinear")
            td[i] = feats[i] + up
        bu = [td[0]]
        for i in range(1, len(feats)):
            down = self.down[i - 1](bu[-1])
            if down.shape[-2:] != td[i].shape[-2:]:
                down = F.adaptive_avg_pool2d(down, td[i].shape[-2:])
            bu.append(td[i] + down)
        return [smooth(x) + raw for smooth, x, raw in zip(self.smooth, bu, feats)]


class SupportGatedAttention(nn.Module):
    """Linear attention whose values are gated per pixel by attention over the N prototype tokens.

    gate = sigmoid(sum_n softmax_n(q . t_n) t_n); plus a learnt per-channel scale of the max-over-N cosine
    correlation map. (B, C, H, W), (N, D) -> (B, C, H, W) (residual included).
    """

    def __init__(self, *, c: int, d: int) -> None:
        super().__init__()
        ck = c // 2
        self.heads = num_heads(c)
        self.q_mix, self.k_mix = ShortLong(c=c), ShortLong(c=c)
        self.q, self.k, self.v = nn.Conv2d(c, ck, 1), nn.Conv2d(c, ck, 1), nn.Conv2d(c, ck, 1)
        self.tokens = PrototypeTokens(d=d, c=ck)
        self.corr_scale = nn.Parameter(torch.full((1, ck, 1), 0.1))
        self.out = nn.Conv2d(ck, c, 1)

    def forward(self, x: torch.Tensor, protos: torch.Tensor | None) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.q(self.q_mix(x)).flatten(2)  # (B, Ck, L)
        k = self.k(self.k_mix(x)).flatten(2)  # (B, Ck, L)
        v = self.v(x).flatten(2)  # (B, Ck, L)
        y = efficient_attention(q, k, v, self.heads)  # (B, Ck, L)
        if protos is not None:
            t = self.tokens(protos)  # (N, Ck)
            attn = torch.einsum("bcl,nc->bln", q, t.to(q.dtype)).mul(q.shape[1] ** -0.5).softmax(dim=-1)  # (B, L, N)
            gate = torch.sigmoid(attn @ t.to(attn.dtype)).transpose(1, 2)  # (B, Ck, L)
            y = y * gate + self.corr_scale * correlation_max(q, t)
        return x + self.out(y.reshape(b, -1, h, w).to(x.dtype))


class Refine(nn.Module):
    """Depthwise 3x3 + BN + SiLU, 1x1 to Out + BN + SiLU, plus a 1x1 projection of the raw query map."""

    def __init__(self, *, c: int, c_out: int) -> None:
        super().__init__()
        self.dw = DWBNAct(c=c)
        self.pw = ConvBNAct(c_in=c, c_out=c_out)
        self.skip = nn.Conv2d(c, c_out, 1)

    def forward(self, x: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x)) + self.skip(raw)


class PSALM(nn.Module):
    """Pyramid enrichment, support-gated linear attention with short-long convolutions, refinement.

    Args:
        in_channels: query channels per scale (32, 64, 128, 256).
        proto_dims: prototype dims per scale (32, 64, 128, 256).
    """

    def __init__(self, *, in_channels: tuple[int, ...], proto_dims: tuple[int, ...]) -> None:
        super().__init__()
        assert len(in_channels) == len(proto_dims), f"{len(in_channels)} scales but {len(proto_dims)} prototype dims"
        self.out_channels = fused_channels(in_channels)
        self.pyramid = PyramidEnrich(channels=in_channels)
        self.attn = nn.ModuleList(SupportGatedAttention(c=c, d=d) for c, d in zip(in_channels, proto_dims))
        self.refine = nn.ModuleList(Refine(c=c, c_out=o) for c, o in zip(in_channels, self.out_channels))

    def forward(self, feats: list[torch.Tensor], prototypes: list[torch.Tensor] | None) -> list[torch.Tensor]:
        """feats: list of (B, C_s, H_s, W_s); prototypes: list of (N, D_s) or None -> list of (B, Out_s, H_s, W_s)."""
        assert len(feats) == len(self.attn), f"expected {len(self.attn)} scales, got {len(feats)}"
        protos = prototypes if prototypes is not None else [None] * len(feats)
        enriched = self.pyramid(feats)
        return [
            refine(attn(e, p), raw) for attn, refine, e, p, raw in zip(self.attn, self.refine, enriched, protos, feats)
        ]


class HybridAttention(nn.Module):
    """Efficient attention over the query pixels and the N prototype tokens together, plus a short-long conv
    branch and the max-over-N correlation map, fused by 1x1. (B, C, H, W), (N, D) -> (B, C, H, W)."""

    def __init__(self, *, c: int, d: int) -> None:
        super().__init__()
        ck = c // 2
        self.heads = num_heads(c)
        self.q, self.k, self.v = nn.Conv2d(c, ck, 1), nn.Conv2d(c, ck, 1), nn.Conv2d(c, ck, 1)
        self.tokens = PrototypeTokens(d=d, c=ck)
        self.o = nn.Conv2d(ck, c, 1)
        self.local = ShortLong(c=c)
        self.fuse = ConvBNAct(c_in=2 * c + 1, c_out=c)

    def forward(self, x: torch.Tensor, protos: torch.Tensor | None) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = self.q(x).flatten(2), self.k(x).flatten(2), self.v(x).flatten(2)  # (B, Ck, L)
        corr = torch.zeros_like(q[:, :1])  # (B, 1, L)
        if protos is not None:
            t = self.tokens(protos).t().to(k.dtype).expand(b, -1, -1)  # (B, Ck, N)
            k, v = torch.cat([k, t], dim=2), torch.cat([v, t], dim=2)  # (B, Ck, L + N)
            corr = correlation_max(q, t[0].t()).to(q.dtype)
        y = self.o(efficient_attention(q, k, v, self.heads).reshape(b, -1, h, w).to(x.dtype))  # (B, C, H, W)
        mixed = torch.cat([y, self.local(x), corr.reshape(b, 1, h, w).to(x.dtype)], dim=1)
        return x + self.fuse(mixed)


class GatedCrossScale(nn.Module):
    """Cross-scale pyramid: channel (SE) and spatial gates per level, top-down 1x1 + upsample, bottom-up 3x3
    stride 2, then depthwise + grouped pointwise fusion with a residual."""

    def __init__(self, *, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.se = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, max(c // 16, 4), 1), nn.SiLU(), nn.Conv2d(max(c // 16, 4), c, 1))
            for c in channels
        )
        self.spatial = nn.ModuleList(
            nn.Sequential(ConvBNAct(c_in=c, c_out=max(c // 8, 4)), nn.Conv2d(max(c // 8, 4), 1, 1)) for c in channels
        )
        pairs = list(zip(channels[:-1], channels[1:]))
        self.lateral = nn.ModuleList(nn.Conv2d(hi, lo, 1) for lo, hi in pairs)
        self.down = nn.ModuleList(ConvBNAct(c_in=lo, c_out=hi, k=3, stride=2) for lo, hi in pairs)
        self.mix = nn.ModuleList(nn.Sequential(DWBNAct(c=c), ConvBNAct(c_in=c, c_out=c, groups=2)) for c in channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """list of (B, C_s, H_s, W_s) -> same shapes."""
        gated = [
            x * torch.sigmoid(se(x.mean(dim=(2, 3), keepdim=True))) * torch.sigmoid(sp(x))
            for x, se, sp in zip(feats, self.se, self.spatial)
        ]
        td = list(gated)
        for i in range(len(td) - 2, -1, -1):
            td[i] = gated[i] + F.interpolate(self.lateral[i](td[i + 1]), size=td[i].shape[-2:], mode="bilinear")
        bu = [td[0]]
        for i in range(1, len(td)):
            bu.append(td[i] + self.down[i - 1](bu[-1]))
        return [x + mix(y) for x, mix, y in zip(feats, self.mix, bu)]


class CHEAF(nn.Module):
    """Cross-scale hybrid efficient attention fusion.

    Per scale: hybrid efficient attention over query pixels + prototype tokens (with a short-long conv branch and
    the correlation map); then a gated cross-scale pyramid; then a grouped 3x3 + 1x1 output with a 1x1 skip.
    """

    def __init__(self, *, in_channels: tuple[int, ...], proto_dims: tuple[int, ...]) -> None:
        super().__init__()
        assert len(in_channels) == len(proto_dims), f"{len(in_channels)} scales but {len(proto_dims)} prototype dims"
        self.out_channels = fused_channels(in_channels)
        self.attn = nn.ModuleList(HybridAttention(c=c, d=d) for c, d in zip(in_channels, proto_dims))
        self.cross = GatedCrossScale(channels=in_channels)
        self.expand = nn.ModuleList(
            nn.Sequential(ConvBNAct(c_in=c, c_out=o, k=3, groups=c), ConvBNAct(c_in=o, c_out=o))
            for c, o in zip(in_channels, self.out_channels)
        )
        self.skip = nn.ModuleList(nn.Conv2d(c, o, 1) for c, o in zip(in_channels, self.out_channels))

    def forward(self, feats: list[torch.Tensor], prototypes: list[torch.Tensor] | None) -> list[torch.Tensor]:
        """feats: list of (B, C_s, H_s, W_s); prototypes: list of (N, D_s) or None -> list of (B, Out_s, H_s, W_s)."""
        assert len(feats) == len(self.attn), f"expected {len(self.attn)} scales, got {len(feats)}"
        protos = prototypes if prototypes is not None else [None] * len(feats)
        attended = self.cross([attn(x, p) for attn, x, p in zip(self.attn, feats, protos)])
        return [exp(a) + skip(x) for exp, skip, a, x in zip(self.expand, self.skip, attended, feats)]


FUSION: dict[str, type[nn.Module]] = {"psalm": PSALM, "cheaf": CHEAF}

__all__ = ["CHEAF", "FUSION", "PSALM", "efficient_attention", "fused_channels"]
