"""The training setup the speed program measures: built without a run folder, fed endlessly, its support-feature
cache prefilled, and the prototypes computed as the trainer's forward computes them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch

from refdet_core.config import RefDetConfig
from refdet_core.train.run import build_training


def build_setup(cfg: RefDetConfig) -> Any:
    """``build_training`` without an output folder (it applies every speed setting, compile included)."""
    return build_training(cfg, out_dir=None, progress=False)


def endless(loader: Any, start_epoch: int = 0) -> Iterator[Any]:
    """Batches of ``loader`` over as many epochs as needed (``set_epoch`` called for each)."""
    epoch = start_epoch
    while True:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def support_prototypes(model: Any, batch: Any) -> list[torch.Tensor] | None:
    """Prototypes per scale (N, D_s) as the trainer's forward makes them: cached frozen tokens or re-encoding."""
    if model.head.mode == "standard":
        return None
    cache = getattr(model, "support_feature_cache", None)
    if cache is None:
        return model.encode_support(batch.support).per_scale
    tokens = cache.tokens(batch.support, batch.support_video_ids, batch.support_variant)  # (N, K, T, E)
    return model.support_encoder.from_frozen(tokens.flatten(0, 1), k=tokens.shape[1]).per_scale


_PREFILLED: OrderedDict[tuple, dict[tuple[str, int], torch.Tensor]] = OrderedDict()  # the last prefills
_PREFILL_KEEP = 2


def prefill_support_cache(setup: Any) -> float:
    """Encode every (training video, support variant) into the support-feature cache; returns seconds.

    A training run does this once (like building the frame store); without it the first episodes pay the misses.
    Setups of one process whose encoders, references and variants match (the scaling points of 03, the
    entries of 04) reuse the last prefills instead of encoding again (0 s returned).
    """
    cache = getattr(setup.model, "support_feature_cache", None)
    if cache is None:
        return 0.0
    dataset = setup.trainer.loader.dataset
    variants = range(max(setup.cfg.speed.support_variants, 1)) if dataset.augment else range(1)
    d = setup.cfg.data
    key = (cache.fingerprint(), d.data_root, d.support_size, d.k_shot, tuple(setup.train_ids), tuple(variants),
           str(setup.trainer.device))  # fmt: skip
    if key in _PREFILLED:
        cache.adopt(_PREFILLED[key])
        _PREFILLED.move_to_end(key)
        return 0.0
    start = time.perf_counter()
    with torch.no_grad():
        for vid in setup.train_ids:
            for v in variants:
                support = dataset.support_images(vid, v).to(setup.trainer.device)
                cache.tokens(support, [vid], [v])
    cache.hits = cache.misses = 0  # the report counts lookups of training steps only
    _PREFILLED[key] = dict(cache.entries)
    while len(_PREFILLED) > _PREFILL_KEEP:
        _PREFILLED.popitem(last=False)
    return time.perf_counter() - start
