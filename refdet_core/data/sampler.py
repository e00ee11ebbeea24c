"""Episode sampling: which videos, frames and augmentation variants each episode reads.

``EpisodeSampler`` yields small picklable ``EpisodeSpec``s, deterministic per (seed, epoch), split across DDP
ranks. ``num_aug`` is real: every (frame, variant) pair of a video is a distinct sample with its own augmentation
seed, and each video's pairs are used in a reshuffled cycle, so all variants of all frames come up before any
repeats.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from refdet_core.data.augment import mix_seed
from refdet_core.data.frames import FrameSource
from refdet_core.data.store import select_frames

Pools = Mapping[str, tuple[Sequence[int], Sequence[int]]]  # video_id -> (annotated frames, background frames)


@dataclass(frozen=True)
class EpisodeSpec:
    """What one episode reads: videos (class order), and per query its class, frame, variant and aug seed."""

    index: int
    epoch: int
    videos: tuple[str, ...]  # (N,)
    query_class: tuple[int, ...]  # (B,)
    query_frame: tuple[int, ...]  # (B,)
    query_variant: tuple[int, ...]  # (B,) in range(num_aug)
    query_seed: tuple[int, ...]  # (B,) augmentation seed of (seed, epoch, video, frame, variant)
    support_variant: tuple[int, ...]  # (N,)
    seed: int


class _Cycle:
    """Endless reshuffled pass over (frame, variant) pairs: every pair is used once before any repeats."""

    def __init__(self, frames: Sequence[int], num_aug: int, rng: np.random.Generator):
        self.pairs = [(int(f), v) for f in frames for v in range(num_aug)]
        self.rng, self.order, self.pos = rng, np.empty(0, dtype=np.int64), 0

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def take(self) -> tuple[int, int]:
        if self.pos >= len(self.order):
            self.order, self.pos = self.rng.permutation(len(self.pairs)), 0
        self.pos += 1
        return self.pairs[int(self.order[self.pos - 1])]


class EpisodeSampler(Sampler[EpisodeSpec]):
    """Episode specs, deterministic per (seed, epoch); ``set_epoch(e)`` as DistributedSampler.

    All ranks draw the same global sequence of ``ceil(episodes / world_size) * world_size`` episodes; rank r takes
    episodes ``r, r + world_size, ...`` so ranks are disjoint and equally long. ``frames`` maps each video to
    its (annotated, background) frames. Per query slot, background is drawn with share ``bg_share`` (stochastic
    rounding per episode), falling back to the other pool when a video has none.
    """

    def __init__(
        self,
        video_ids: Sequence[str],
        n_way: int,
        n_query: int,
        episodes: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        frames: Pools,
        bg_share: float = 0.0,
        num_aug: int = 1,
        support_variants: int = 0,
    ):
        assert 0 < n_way <= len(video_ids), f"n_way={n_way} needs at least that many videos, got {len(video_ids)}"
        assert 0 <= rank < world_size, f"rank {rank} not in [0, {world_size})"
        for vid in video_ids:
            ann, bg = frames[vid]
            assert len(ann) + len(bg) > 0, f"video {vid!r} has no frames to sample"
        self.video_ids, self.n_way, self.n_query = list(video_ids), n_way, n_query
        self.episodes, self.seed, self.rank, self.world_size = episodes, seed, rank, world_size
        self.frames, self.bg_share, self.num_aug = frames, bg_share, num_aug
        self.support_variants = support_variants
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.episodes / self.world_size)

    def __iter__(self) -> Iterator[EpisodeSpec]:
        rng = np.random.default_rng([self.seed, self.epoch])
        cycles = {
            vid: (_Cycle(ann, self.num_aug, rng), _Cycle(bg, self.num_aug, rng))
            for vid, (ann, bg) in ((v, self.frames[v]) for v in self.video_ids)
        }
        for i in range(len(self) * self.world_size):
            spec = self._episode(i, rng, cycles)  # drawn on every rank so the streams stay aligned
            if i % self.world_size == self.rank:
                yield spec

    def _episode(self, index: int, rng: np.random.Generator, cycles: dict[str, tuple[_Cycle, _Cycle]]) -> EpisodeSpec:
        picks = rng.choice(len(self.video_ids), self.n_way, replace=False)
        videos = tuple(self.video_ids[int(i)] for i in picks)
        b = self.n_way * self.n_query
        n_bg = int(math.floor(self.bg_share * b + rng.random()))
        is_bg = np.zeros(b, dtype=bool)
        is_bg[rng.choice(b, n_bg, replace=False)] = True
        cls, frm, var, seeds = [], [], [], []
        for slot in range(b):
            c = slot // self.n_query
            ann, bg = cycles[videos[c]]
            pool = (bg if bg else ann) if is_bg[slot] else (ann if ann else bg)
            f, v = pool.take()
            cls.append(c)
            frm.append(f)
            var.append(v)
            seeds.append(mix_seed(self.seed, self.epoch, videos[c], f, v))
        sv = [int(rng.integers(self.support_variants)) if self.support_variants > 0 else -1 for _ in videos]
        return EpisodeSpec(
            index=index,
            epoch=self.epoch,
            videos=videos,
            query_class=tuple(cls),
            query_frame=tuple(frm),
            query_variant=tuple(var),
            query_seed=tuple(seeds),
            support_variant=tuple(sv),
            seed=mix_seed(self.seed, self.epoch, index),
        )


def frame_pools(layout: Any, source: FrameSource, video_ids: Sequence[str], bg_share: float) -> dict[str, tuple]:
    """(annotated, background) frames per video: what the store keeps, or for a seek reader the same selection
    a store with ``bg_share`` would keep (so seek and store runs sample alike)."""
    if hasattr(source, "annotated"):
        return {v: (source.annotated(v), source.background(v)) for v in video_ids}

    return {v: select_frames(layout.videos[v], bg_share) for v in video_ids}
