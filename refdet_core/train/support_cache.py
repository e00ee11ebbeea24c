"""Persistent cache of the frozen support-encoder features, per reference video and augmentation variant.

The frozen prefix of the encoder (all of it when ``trainable_blocks == 0``) gives the same tokens for the
same reference images every time, so they are computed once per (video, variant) and reused every
episode; only the trainable blocks and the projections run per step. The original re-encoded its
references at 512² in every episode. Variant -1 (fresh random augmentation) is never cached.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from refdet_core.config import RefDetConfig
from refdet_core.models.refdet import prepare_support


class SupportFeatureCache:
    """Byte-bounded LRU of frozen-prefix tokens: key (video_id, variant) -> (K, T, E)."""

    def __init__(self, encoder: nn.Module, *, max_mb: float = 2048) -> None:
        self.encoder = encoder
        self.max_bytes = int(max_mb * 2**20)
        self.entries: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def stats(self) -> dict[str, float]:
        total = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / total if total else 0.0,
            "entries": len(self.entries),
            "mb": self.bytes / 2**20,
        }

    def fingerprint(self) -> str:
        """Hash of what the cached tokens depend on: the encoder's weights, frozen depth and colour cue."""
        h = hashlib.blake2b(digest_size=16)
        h.update(repr((self.encoder.n_frozen, getattr(self.encoder, "colour_bins", 0))).encode())
        with torch.no_grad():
            model = self.encoder.model  # INT8-packed weights are not parameters; the float ones still differ
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                h.update(name.encode())
                h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def adopt(self, entries: dict[tuple[str, int], torch.Tensor]) -> None:
        """Take over entries computed by another cache with the same fingerprint (tensors are shared)."""
        for key, value in entries.items():
            self._put(key, value)

    def _put(self, key: tuple[str, int], value: torch.Tensor) -> None:
        self.entries[key] = value
        self.bytes += value.numel() * value.element_size()
        while self.bytes > self.max_bytes and len(self.entries) > 1:
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()

    def tokens(self, support: torch.Tensor, video_ids: Sequence[str], variants: Sequence[int]) -> torch.Tensor:
        """support (N, K, 3, S, S) -> frozen-prefix tokens (N, K, T, E); cached where variant >= 0.

        ``variants`` are host ints (the batch's metadata), so a lookup never reads the device.
        """
        n, k = support.shape[:2]
        assert len(video_ids) == n and len(variants) == n, "one video id and variant per support row"
        out: list[torch.Tensor | None] = [None] * n
        todo = []
        for i, (vid, var) in enumerate(zip(video_ids, variants)):
            key = (vid, int(var))
            if var >= 0 and key in self.entries:
                self.entries.move_to_end(key)
                out[i] = self.entries[key]
                self.hits += 1
            else:
                todo.append(i)
                self.misses += 1
        if todo:
            fresh = self.encoder.forward_frozen(prepare_support(support[todo]).flatten(0, 1))  # (len*K, T, E)
            fresh = fresh.view(len(todo), k, *fresh.shape[1:])
            for j, i in enumerate(todo):
                out[i] = fresh[j]
                if variants[i] >= 0:
                    self._put((video_ids[i], int(variants[i])), fresh[j].detach())
        return torch.stack(out)  # type: ignore[arg-type]


class TrainingForward:
    """The trainer's ``forward(net, batch)``, and the support-feature cache it owns when the config uses one.

    ``prototypes(model, batch)`` gives what the step's forward computes from the references, for the stage-wise
    callers (profiler, guard, accuracy) that call the model's stages one by one.
    """

    def __init__(self, model: nn.Module, cfg: RefDetConfig) -> None:
        encoder = model.support_encoder
        usable = cfg.speed.support_cache and cfg.model.head_mode != "standard" and encoder.n_frozen > 0
        self.cache = SupportFeatureCache(encoder) if usable else None
        self.needs_images = model.match is not None  # the match path reads the images beside the tokens
        self.reid = model.match is not None and cfg.loss.w_reid > 0  # the reid loss's crops join the forward

    def _tokens(self, batch: Any) -> torch.Tensor:
        return self.cache.tokens(batch.support, batch.support_video_ids, batch.support_variant)

    def prototypes(self, model: nn.Module, batch: Any) -> Any:
        """``Prototypes`` of the batch's references (None in standard mode), through the cache when there is one."""
        if self.cache is None:
            return model.prototypes(batch.support)
        return model.prototypes(batch.support if self.needs_images else None, tokens=self._tokens(batch))

    def __call__(self, net: nn.Module, batch: Any) -> Any:
        reid = {"reid_targets": (batch.boxes, batch.labels)} if self.reid else {}
        if self.cache is None:
            return net(batch.query, batch.support, **reid)
        support = batch.support if self.needs_images else None
        return net(batch.query, support, support_tokens=self._tokens(batch), **reid)
