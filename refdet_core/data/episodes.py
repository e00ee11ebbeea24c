"""Episodes: a sampler of episode specs, a dataset that turns one spec into a whole ``EpisodeBatch``, a loader.

An episode draws ``n_way`` videos and ``n_query`` frames of each (a share ``bg_share`` from background frames),
plus each video's ``k_shot`` reference images. The sampler runs in the main process and yields small picklable
``EpisodeSpec``s; ``EpisodeDataset.__getitem__(spec)`` reads, augments and collates in a DataLoader worker
(``batch_size=None``), so workers prefetch whole episodes.

Support variants: ``support_variant`` is 0 for the clean references (validation, or augmentation off),
``1..support_variants-1`` for reproducible augmented variants the support-feature cache may key on, and -1 for
a one-off augmentation that must not be cached (support cache off).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from refdet_core.config import RefDetConfig
from refdet_core.data.augment import (
    QueryAugConfig,
    SupportAugConfig,
    augment_query,
    augment_support,
    mix_seed,
    paste_object,
)
from refdet_core.data.frames import FrameSource, SeekReader, letterbox, read_image_rgb
from refdet_core.data.sampler import EpisodeSampler, EpisodeSpec, frame_pools
from refdet_core.data.store import store_from_config

__all__ = [
    "EpisodeBatch",
    "EpisodeDataset",
    "EpisodeSampler",
    "EpisodeSpec",
    "frame_pools",
    "load_fixed_episode",
    "make_loader",
    "make_sampler",
    "make_source",
]


@dataclass
class EpisodeBatch:
    """One episode, collated. B = n_way * n_query queries, N = n_way videos, K references each."""

    query: torch.Tensor  # uint8 (B, 3, S, S)
    support: torch.Tensor  # uint8 (N, K, 3, Ss, Ss)
    boxes: list[torch.Tensor]  # B x float32 (n_i, 4) xyxy letterbox px
    labels: list[torch.Tensor]  # B x long (n_i,) episode-local class in [0, N)
    base_labels: list[torch.Tensor]  # B x long (n_i,) base-class index or -1
    class_ids: torch.Tensor  # long (B,) episode-local class of each query's video
    video_ids: list[str]  # (B,)
    support_video_ids: list[str]  # (N,) order of the prototypes
    support_variant: tuple[int, ...]  # (N,) host ints: the support cache keys on them without reading the device
    frame_indices: torch.Tensor  # long (B,)
    letterbox: torch.Tensor  # float32 (B, 3): scale, pad_x, pad_y

    def _map(self, fn: Any) -> EpisodeBatch:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = fn(v)
            elif isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
                v = [fn(t) for t in v]
            out[f.name] = v
        return EpisodeBatch(**out)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> EpisodeBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> EpisodeBatch:
        """Called by the DataLoader's pin-memory thread (``pin_memory=True``)."""
        return self._map(lambda t: t.pin_memory())

    def validate(self) -> None:
        """Assert the shapes and ranges of the contract in docs/architecture.md."""
        b, n = self.query.shape[0], self.support.shape[0]
        assert self.query.dtype == torch.uint8 and self.query.ndim == 4 and self.query.shape[1] == 3, (
            f"query must be uint8 (B, 3, S, S), got {self.query.dtype} {tuple(self.query.shape)}"
        )
        assert self.support.dtype == torch.uint8 and self.support.ndim == 5 and self.support.shape[2] == 3, (
            f"support must be uint8 (N, K, 3, Ss, Ss), got {self.support.dtype} {tuple(self.support.shape)}"
        )
        assert len(self.boxes) == len(self.labels) == len(self.base_labels) == len(self.video_ids) == b
        assert tuple(self.class_ids.shape) == (b,) and tuple(self.letterbox.shape) == (b, 3)
        assert len(self.support_video_ids) == n and len(self.support_variant) == n
        assert int(self.class_ids.min()) >= 0 and int(self.class_ids.max()) < n, f"class_ids out of [0, {n})"
        for bx, lab in zip(self.boxes, self.labels):
            assert bx.ndim == 2 and bx.shape[1] == 4 and lab.shape == (bx.shape[0],), f"boxes {tuple(bx.shape)}"
            assert bool(((lab >= 0) & (lab < n)).all()), f"episode labels must be in [0, {n}), got {lab.tolist()}"
            assert bool(((bx[:, 2] > bx[:, 0]) & (bx[:, 3] > bx[:, 1])).all()), "a box with w or h <= 0"


COLOUR_PERMS = ((0, 1, 2), (1, 2, 0), (2, 0, 1), (0, 2, 1), (2, 1, 0), (1, 0, 2))
GOLDEN_ANGLE = 137.50776405003785  # degrees: hue angles of successive variants stay spread out


def joint_colour_matrix(variant: int) -> torch.Tensor:
    """The 3x3 RGB matrix of joint colour variant ``variant``: channel permutation ``variant % 6``, and from
    variant 6 on also a hue rotation (about the grey axis, so greys and brightness stay) by a multiple of the
    golden angle. Variant 0 is the identity; 1-5 are the pure permutations."""
    m = torch.eye(3)[list(COLOUR_PERMS[variant % len(COLOUR_PERMS)])]  # rows pick the source channel
    if variant >= len(COLOUR_PERMS):
        theta = torch.tensor((variant // len(COLOUR_PERMS)) * GOLDEN_ANGLE % 360.0).deg2rad()
        k = torch.full((3,), 3**-0.5)
        cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
        rot = theta.cos() * torch.eye(3) + theta.sin() * cross + (1 - theta.cos()) * torch.outer(k, k)
        m = rot @ m
    return m


def apply_colour(img: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> uint8, each pixel's RGB multiplied by ``matrix`` (clipped to 0..255)."""
    if torch.equal(matrix, matrix.round()) and bool((matrix.sum(dim=1) == 1).all()):  # a permutation: exact
        return img[..., matrix.argmax(dim=1).tolist(), :, :]
    out = torch.einsum("ij,...jhw->...ihw", matrix, img.float())
    return out.round_().clamp_(0, 255).to(torch.uint8)


class EpisodeDataset:
    """Map-style dataset over ``EpisodeSpec``s: ``dataset[spec] -> EpisodeBatch``.

    Training (``train=True`` and ``data_cfg.augment``) augments queries with the spec's per-query seeds and the
    support by ``support_variant``; validation applies no augmentation, so the same spec gives the same batch.
    References are read once per video (per process), letterboxed to ``support_size`` and kept.
    """

    def __init__(
        self,
        layout: Any,
        source: FrameSource,
        video_ids: Sequence[str],
        data_cfg: Any,
        *,
        train: bool,
        base_classes: Sequence[str],
        query_aug: QueryAugConfig | None = None,
        support_aug: SupportAugConfig | None = None,
    ):
        unknown = [v for v in video_ids if v not in layout.videos]
        assert not unknown, f"videos not in the layout: {unknown}"
        self.layout, self.source, self.video_ids = layout, source, list(video_ids)
        self.cfg, self.train = data_cfg, train
        self.augment = bool(train and data_cfg.augment)
        self.base_index = {name: i for i, name in enumerate(base_classes)}
        self.query_aug = query_aug or QueryAugConfig()
        self.support_aug = support_aug or SupportAugConfig()
        self._refs: dict[str, torch.Tensor] = {}
        # (video, variant) -> augmented references; bounded by videos x support_variants (K x 3 x Ss x Ss each)
        self._fixed_variants: dict[tuple[str, int], torch.Tensor] = {}

    def references(self, video_id: str) -> torch.Tensor:
        """The first ``k_shot`` reference images of ``video_id`` (repeated when fewer): uint8 (K, 3, Ss, Ss)."""
        refs = self._refs.get(video_id)
        if refs is None:
            paths = self.layout.videos[video_id].reference_paths
            assert paths, f"video {video_id!r} has no reference images"
            k, size = self.cfg.k_shot, self.cfg.support_size
            imgs = [letterbox(read_image_rgb(paths[i % len(paths)]), size)[0] for i in range(k)]
            refs = self._refs[video_id] = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
        return refs

    def colour_transform(self, spec: EpisodeSpec, c: int) -> torch.Tensor | None:
        """The joint colour transform of episode video ``c`` (``joint_colour_matrix``), applied to its references
        and to its query frames alike, so every video also trains as new instances of the same shape: the
        model must match the references' colours instead of remembering which colours were targets.

        Tied to the support variant (so cached support features stay right); variant 0 is the identity.
        """
        if not (self.augment and getattr(self.cfg, "joint_colour", False)):
            return None
        variant = spec.support_variant[c]
        return joint_colour_matrix(variant if variant >= 0 else mix_seed(spec.seed, "colour", c) % 360)

    def support_images(self, video_id: str, variant: int) -> torch.Tensor:
        """One video's references in one fixed augmentation variant (a support-cache entry): (1, K, 3, S, S)."""
        return self._support(EpisodeSpec(0, 0, (video_id,), (0,), (0,), (0,), (0,), (variant,), 0))

    def _support(self, spec: EpisodeSpec) -> torch.Tensor:
        out = []
        for c, vid in enumerate(spec.videos):
            variant = spec.support_variant[c]
            fixed = self.augment and variant >= 0  # a fixed variant is the same images every time: made once
            refs = self._fixed_variants.get((vid, variant)) if fixed else None
            if refs is None:
                refs = self._support_images(spec, c, vid, variant)
                if fixed:
                    self._fixed_variants[(vid, variant)] = refs
            out.append(refs)
        return torch.stack(out)  # (N, K, 3, Ss, Ss)

    def _support_images(self, spec: EpisodeSpec, c: int, vid: str, variant: int) -> torch.Tensor:
        """Episode video ``c``'s references: joint colour, then the support augmentation of ``variant``."""
        refs = self.references(vid)
        colour = self.colour_transform(spec, c)
        if colour is not None:
            refs = apply_colour(refs, colour)
        if not self.augment or variant == 0:
            return refs
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(spec.seed, "support", c))  # a one-off draw when variant == -1
            return torch.stack(
                [
                    augment_support(r, variant, mix_seed(self.cfg.split_seed, vid, k), self.support_aug)
                    for k, r in enumerate(refs)
                ]
            )

    def _query(self, vid: str, frame: int, c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple]:
        """(img (3, S, S) uint8, boxes (n, 4) letterbox px, labels (n, 2) [episode class, base class], lb)."""
        img, lb = self.source.get(vid, frame)
        rec = self.layout.videos[vid]
        native = rec.boxes_by_frame.get(int(frame), np.zeros((0, 4), np.float32))
        boxes = torch.from_numpy(lb.to_letterbox(native))
        base = self.base_index.get(rec.base_class, -1)
        labels = torch.tensor([[c, base]] * len(boxes), dtype=torch.long).reshape(-1, 2)
        return torch.from_numpy(img).permute(2, 0, 1).contiguous(), boxes, labels, lb.as_tuple()

    def _paste(self, spec: EpisodeSpec, i: int, item: tuple) -> tuple:
        """With probability ``paste_share``, query ``i`` also shows another episode video's target, cut from one of
        that video's frames (in its joint colour) and labelled with its class: the same frame then holds a target
        for each of two reference sets, so what is found has to follow the references, not the scene."""
        rng = np.random.default_rng(mix_seed(spec.query_seed[i], "paste"))
        if rng.random() >= self.cfg.paste_share:
            return item
        c = spec.query_class[i]
        o = int(rng.choice([k for k in range(len(spec.videos)) if k != c]))
        frames = self.layout.videos[spec.videos[o]].annotated_frames
        if not frames:
            return item
        donor, donor_boxes, donor_labels, _ = self._query(spec.videos[o], int(rng.choice(frames)), o)
        colour = self.colour_transform(spec, o)
        if colour is not None:
            donor = apply_colour(donor, colour)
        img, boxes, labels, lb = item
        img, boxes, labels = paste_object(img, boxes, labels, donor, donor_boxes[0], donor_labels[0], rng)
        return img, boxes, labels, lb

    def __getitem__(self, spec: EpisodeSpec) -> EpisodeBatch:
        assert isinstance(spec, EpisodeSpec), f"index an EpisodeDataset with an EpisodeSpec, got {type(spec)}"
        items = [self._query(spec.videos[c], f, c) for c, f in zip(spec.query_class, spec.query_frame)]
        if self.cfg.train_window:
            items = [
                crop_window(*item, size=self.cfg.train_window, seed=mix_seed(spec.query_seed[i], "crop"))
                for i, item in enumerate(items)
            ]
        for i, c in enumerate(spec.query_class):
            colour = self.colour_transform(spec, c)
            if colour is not None:
                items[i] = (apply_colour(items[i][0], colour), *items[i][1:])
        if self.augment and self.cfg.paste_share > 0 and len(spec.videos) > 1:
            items = [self._paste(spec, i, item) for i, item in enumerate(items)]
        imgs, boxes, labels = [], [], []
        for i, (img, bx, lab, _) in enumerate(items):
            if self.augment:
                others = [items[j][:3] for j in range(len(items)) if j != i][:3]
                img, bx, lab = augment_query(img, bx, lab, seed=spec.query_seed[i], cfg=self.query_aug, extra=others)
            imgs.append(img)
            boxes.append(bx.float())
            labels.append(lab)
        batch = EpisodeBatch(
            query=torch.stack(imgs),
            support=self._support(spec),
            boxes=boxes,
            labels=[lab[:, 0].contiguous() for lab in labels],
            base_labels=[lab[:, 1].contiguous() for lab in labels],
            class_ids=torch.tensor(spec.query_class, dtype=torch.long),
            video_ids=[spec.videos[c] for c in spec.query_class],
            support_video_ids=list(spec.videos),
            support_variant=tuple(spec.support_variant) if self.augment else (0,) * len(spec.videos),
            frame_indices=torch.tensor(spec.query_frame, dtype=torch.long),
            letterbox=torch.tensor([it[3] for it in items], dtype=torch.float32),
        )
        batch.validate()
        return batch


def crop_window(
    img: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, lb: tuple, *, size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple]:
    """A ``size`` window of a letterboxed frame (``data.train_window``): objects keep their frame scale.

    img (3, F, F) uint8 with boxes (n, 4) px and labels (n, 2); lb = (scale, pad_x, pad_y) of the frame. The
    window lies inside the frame, covers as much picture (not padding) as it can and, when there are boxes,
    contains the first one whole at a random place (seeded). Boxes are shifted and clipped; a box keeping less
    than half its area is dropped with its label. Returns the same four with lb's pads shifted by the offset,
    so ``native * scale + pad`` still maps native pixels into the window.
    """
    frame = img.shape[-1]
    if frame <= size:
        return img, boxes, labels, lb
    rng = np.random.default_rng(seed)
    scale, pad_x, pad_y = lb
    origin = []
    for axis, pad in ((0, pad_x), (1, pad_y)):
        lo_pic, hi_pic = pad, frame - pad  # the picture's extent on this axis (it is centred)
        lo = min(max(lo_pic, 0.0), frame - size)  # windows that stay on the picture where it is wide enough
        hi = max(min(hi_pic - size, frame - size), lo)
        if hi_pic - lo_pic < size:
            lo = hi = min(max((lo_pic + hi_pic - size) / 2, 0.0), frame - size)
        if len(boxes):
            b0, b1 = float(boxes[0, axis]), float(boxes[0, axis + 2])
            lo, hi = max(lo, b1 - size), min(hi, b0)  # the first box whole inside
            if lo > hi:  # a box larger than the window: centre it
                lo = hi = min(max((b0 + b1 - size) / 2, 0.0), frame - size)
        origin.append(int(round(rng.uniform(lo, hi))))
    x0, y0 = origin
    img = img[:, y0 : y0 + size, x0 : x0 + size].contiguous()
    if len(boxes):
        shifted = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
        clipped = shifted.clamp(0, size)
        area = lambda b: (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)  # noqa: E731
        keep = area(clipped) >= 0.5 * area(shifted).clamp_min(1e-6)
        boxes, labels = clipped[keep], labels[keep]
    return img, boxes, labels, (scale, pad_x - x0, pad_y - y0)


def make_source(layout: Any, cfg: RefDetConfig, *, progress: bool = False) -> FrameSource:
    """The frame source ``cfg.data.loader`` names: the frame store (built or reused) or the seek reader."""
    d = cfg.data
    if d.loader == "seek":
        return SeekReader(layout, d.img_size)

    return store_from_config(layout, cfg, progress=progress)


def make_sampler(
    layout: Any,
    source: FrameSource,
    video_ids: Sequence[str],
    cfg: RefDetConfig,
    *,
    train: bool,
    episodes: int | None = None,
    seed: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> EpisodeSampler:
    """The episode sampler of ``cfg``: ``n_way`` capped at the number of videos; validation draws one variant.

    A training epoch is ``episodes_per_epoch * num_aug`` episodes: each frame's ``num_aug`` variants all come up
    in one epoch (the per-video cycles hand out every (frame, variant) pair before repeating one), instead of
    the variants thinning out frame coverage in an epoch of fixed length.
    """
    d = cfg.data
    variants = cfg.speed.support_variants if (train and d.augment and cfg.speed.support_cache) else 0
    num_aug = d.num_aug if train else 1
    return EpisodeSampler(
        video_ids,
        min(d.n_way, len(video_ids)),
        d.n_query,
        (episodes or d.episodes_per_epoch) * num_aug,
        cfg.train.random_seed if seed is None else seed,
        rank,
        world_size,
        frames=frame_pools(layout, source, video_ids, d.store_bg_share),
        bg_share=d.bg_share,
        num_aug=num_aug,
        support_variants=variants,
    )


def make_loader(
    layout: Any,
    source: FrameSource,
    video_ids: Sequence[str],
    cfg: RefDetConfig,
    *,
    train: bool,
    base_classes: Sequence[str],
    episodes: int | None = None,
    seed: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    prefetch_factor: int = 2,
) -> DataLoader:
    """A DataLoader of whole ``EpisodeBatch``es (``batch_size=None``; the sampler yields specs).

    Call ``loader.sampler.set_epoch(e)`` each epoch; workers, pinning and persistence come from ``cfg.data``.
    """
    d = cfg.data
    dataset = EpisodeDataset(layout, source, video_ids, d, train=train, base_classes=base_classes)
    sampler = make_sampler(
        layout, source, video_ids, cfg, train=train, episodes=episodes, seed=seed, rank=rank, world_size=world_size
    )
    workers = d.num_workers
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=d.pin_memory,
        persistent_workers=d.persistent_workers and workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
    )


def load_fixed_episode(
    layout: Any,
    source: FrameSource,
    video_ids: Sequence[str],
    cfg: RefDetConfig,
    *,
    base_classes: Sequence[str],
    train: bool = False,
    seed: int = 0,
) -> EpisodeBatch:
    """One episode, the same every call (for overfitting tests and notebook figures)."""
    dataset = EpisodeDataset(layout, source, video_ids, cfg.data, train=train, base_classes=base_classes)
    sampler = make_sampler(layout, source, video_ids, cfg, train=train, episodes=1, seed=seed)
    return dataset[next(iter(sampler))]
