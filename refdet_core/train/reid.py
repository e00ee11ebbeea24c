"""Training the crop re-identification network (``models/reid.py``) on the trained detector's own proposals.

``mine_crops`` runs the detector over training videos with their references and keeps, per frame, the crops of
the target (its annotated box and the proposals on it) and of the proposals away from it: the look-alikes this
detector confuses with the target, which are the negatives that matter. ``train_reid`` then teaches the network to
rank, for each reference set of a batch, its target's crop first among every crop of the batch (the frame's
look-alikes and the other instances' targets), and each target crop to its own reference set. ``rank_share``
measures what inference needs: how often the target is the best of its frame's proposals.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou
from tqdm.auto import tqdm

from refdet_core.models.reid import CropReid, crop_squares

log = logging.getLogger(__name__)

HIT_IOU = 0.5  # a proposal is on the target at this IoU
MISS_IOU = 0.3  # and a negative below it with every target box


@dataclass
class CropSet:
    """Crops of proposals and targets. references (V, K, 3, S, S) uint8 per video; crops (M, 3, s, s) uint8 with
    per crop its ``video`` (M,) row in ``references``, ``group`` (M,) frame id (unique over videos), ``target``
    (M,) bool, ``score`` (M,) detector score (0 for an annotated box that was no proposal) and ``proposal`` (M,)
    bool (False for an annotated box)."""

    references: torch.Tensor
    crops: torch.Tensor
    video: torch.Tensor
    group: torch.Tensor
    target: torch.Tensor
    score: torch.Tensor
    proposal: torch.Tensor
    video_ids: list[str]

    def __len__(self) -> int:
        return len(self.crops)


def _frame_crops(frame, boxes, scores, gt, *, size, negatives, with_gt):
    """One letterboxed frame (3, S, S) float and its proposals -> (crops uint8, target, score, proposal)."""
    keep = scores > 0
    boxes, scores = boxes[keep], scores[keep]
    iou = box_iou(boxes, gt).amax(dim=1) if len(gt) and len(boxes) else torch.zeros(len(boxes))
    on = iou >= HIT_IOU
    neg = torch.nonzero(iou < MISS_IOU).flatten()[:negatives]
    pick = [torch.nonzero(on).flatten(), neg]
    chosen = boxes[torch.cat(pick)]
    target = torch.cat([torch.ones(int(on.sum()), dtype=torch.bool), torch.zeros(len(neg), dtype=torch.bool)])
    score = scores[torch.cat(pick)]
    proposal = torch.ones(len(chosen), dtype=torch.bool)
    if with_gt and len(gt):
        chosen = torch.cat([gt, chosen])
        target = torch.cat([torch.ones(len(gt), dtype=torch.bool), target])
        score = torch.cat([torch.zeros(len(gt)), score])
        proposal = torch.cat([torch.zeros(len(gt), dtype=torch.bool), proposal])
    if not len(chosen):
        return None
    crops = crop_squares(frame[None], [chosen], size).clamp(0, 1).mul(255).round().to(torch.uint8)
    return crops, target, score, proposal


@torch.inference_mode()
def mine_crops(
    predictor,
    layout,
    video_ids: Sequence[str],
    *,
    size: int,
    every: int = 1,
    negatives: int = 6,
    with_gt: bool = True,
    progress: bool = True,
) -> CropSet:
    """Run ``predictor`` (a VideoPredictor) over ``video_ids`` of ``layout`` (every ``every``-th frame) -> CropSet.

    ``with_gt`` adds each annotated box (training); without it only proposals are kept (measuring).
    """
    from refdet_core.eval.video import frame_batches

    refs, parts, group = [], [], 0
    for v, vid in enumerate(tqdm(video_ids, desc="mining crops", unit="video", disable=not progress)):
        rec = layout.videos[vid]
        refs.append(predictor.reference_tensor(rec.reference_paths)[0])
        predictor.set_references(rec.reference_paths)
        for fb in frame_batches(rec.video_path, predictor.img_size, predictor.batch, every=every):
            if not len(fb.frames):
                continue
            scores, boxes, _, _ = predictor.detect(fb.frames)
            x = torch.as_tensor(fb.frames).permute(0, 3, 1, 2).float() / 255.0
            for i, f in enumerate(fb.index):
                gt = rec.boxes_by_frame.get(int(f), [])
                gt = torch.as_tensor(fb.letterbox.to_letterbox(np.asarray(gt, np.float32).reshape(-1, 4)))
                out = _frame_crops(
                    x[i], torch.as_tensor(boxes[i]), torch.as_tensor(scores[i]), gt.float(),
                    size=size, negatives=negatives, with_gt=with_gt,
                )  # fmt: skip
                if out is not None:
                    parts.append((v, group, *out))
                group += 1
        predictor.model.clear_cache()
    if not parts:
        raise ValueError("no proposals in any frame: nothing to train or measure the re-ID on")
    n = [len(p[2]) for p in parts]
    return CropSet(
        references=torch.stack(refs),
        crops=torch.cat([p[2] for p in parts]),
        video=torch.repeat_interleave(torch.tensor([p[0] for p in parts]), torch.tensor(n)),
        group=torch.repeat_interleave(torch.tensor([p[1] for p in parts]), torch.tensor(n)),
        target=torch.cat([p[3] for p in parts]),
        score=torch.cat([p[4] for p in parts]),
        proposal=torch.cat([p[5] for p in parts]),
        video_ids=list(video_ids),
    )


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """uint8 (M, 3, s, s) -> float in [0, 1]: a quarter turn, a mirror and a brightness change per image."""
    x = x.float() / 255.0
    k = torch.randint(0, 4, (len(x),), generator=gen)
    flip = torch.rand(len(x), generator=gen) < 0.5
    out = torch.empty_like(x)
    for i in range(len(x)):
        xi = torch.rot90(x[i], int(k[i]), dims=(1, 2))
        out[i] = xi.flip(-1) if flip[i] else xi
    gain = torch.empty(len(x), 1, 1, 1).uniform_(0.75, 1.25, generator=gen)
    return (out * gain).clamp(0, 1)


def _batch(
    cs: CropSet,
    groups: dict[int, list[np.ndarray]],
    others: dict[int, np.ndarray],
    videos: np.ndarray,
    rng: np.random.Generator,
    negatives: int,
    elsewhere: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per picked video: one of its frames with a target, its target crop, up to ``negatives`` of the frame's other
    crops and ``elsewhere`` non-target crops of the video's other frames (those without a target too: what
    decides presence) -> (crop rows, row of each video's target)."""
    rows, pos = [], []
    for v in videos:
        g = groups[int(v)]
        members = g[int(rng.integers(len(g)))]
        tgt = members[cs.target[members].numpy()]
        neg = members[~cs.target[members].numpy()]
        pos.append(len(rows))
        rows.append(int(tgt[int(rng.integers(len(tgt)))]))
        rows += [int(r) for r in rng.permutation(neg)[:negatives]]
        far = np.setdiff1d(others[int(v)], members, assume_unique=True)
        if elsewhere and len(far):
            rows += [int(r) for r in rng.choice(far, size=min(elsewhere, len(far)), replace=False)]
    return np.asarray(rows), np.asarray(pos)


def _frames(cs: CropSet) -> list[np.ndarray]:
    """The crop rows of each frame (``group``), frame by frame."""
    group = cs.group.numpy()
    order = np.argsort(group, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(group[order])) + 1)


def _groups(cs: CropSet) -> dict[int, list[np.ndarray]]:
    """video row -> its frames with a target, each an array of crop rows."""
    out: dict[int, list[np.ndarray]] = {}
    for members in _frames(cs):
        if cs.target[members].any():
            out.setdefault(int(cs.video[members[0]]), []).append(members)
    return out


def train_reid(
    net: CropReid,
    cs: CropSet,
    *,
    steps: int,
    videos_per_step: int = 16,
    negatives: int = 4,
    elsewhere: int = 3,
    lr: float = 3e-3,
    temperature: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train ``net`` on ``cs`` for ``steps`` AdamW steps (cosine schedule) -> the loss per step.

    A step takes ``videos_per_step`` videos, one frame with a target each: its target crop, up to ``negatives``
    of its look-alikes, ``elsewhere`` proposals of the video's other frames, and the video's references. Loss:
    for each reference set, cross-entropy of its target among all crops of the step; for each target crop,
    cross-entropy of its reference set among the step's sets.
    """
    groups = _groups(cs)
    video, target = cs.video.numpy(), cs.target.numpy()
    others = {v: np.flatnonzero((video == v) & ~target) for v in groups}
    keys = np.asarray(sorted(groups))
    if len(keys) < 2:
        raise ValueError(f"the re-ID needs frames with a target in at least 2 videos, got {len(keys)}")
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    device = next(net.parameters()).device
    net.train()
    losses = []
    for _ in tqdm(range(steps), desc="re-ID", unit="step", disable=not progress):
        videos = rng.choice(keys, size=min(videos_per_step, len(keys)), replace=False)
        rows, pos = _batch(cs, groups, others, videos, rng, negatives, elsewhere)
        refs = cs.references[torch.as_tensor(videos)]  # (P, K, 3, S, S)
        p, k = refs.shape[:2]
        refs = _augment(net.resize(refs.flatten(0, 1).float()).round().to(torch.uint8), gen)
        r = net(refs.to(device)).view(p, k, -1)
        c = net(_augment(cs.crops[torch.as_tensor(rows)], gen).to(device))
        logits = net.similarity(c, r) / temperature  # (M, P)
        pos_t = torch.as_tensor(pos, device=device)
        loss = F.cross_entropy(logits.t(), pos_t) + F.cross_entropy(logits[pos_t], torch.arange(p, device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    net.eval()
    return losses


@torch.inference_mode()
def crop_similarities(net: CropReid, cs: CropSet, reference_rows: np.ndarray | None = None) -> torch.Tensor:
    """(M,) each crop's similarity with its video's references (or with ``reference_rows[video]``'s: a swap)."""
    net.eval()
    dev = next(net.parameters()).device
    refs = torch.cat([net.references(cs.references[i : i + 16].to(dev).float() / 255.0)
                      for i in range(0, len(cs.references), 16)]).cpu()  # fmt: skip
    emb = torch.cat([net(cs.crops[i : i + 256].to(dev).float() / 255.0).cpu() for i in range(0, len(cs), 256)])
    rows = cs.video.numpy() if reference_rows is None else reference_rows[cs.video.numpy()]
    return torch.einsum("md,mkd->mk", emb, refs[torch.as_tensor(rows)]).amax(dim=1)


def rank_share(cs: CropSet, value: torch.Tensor) -> Mapping[str, float]:
    """Over frames with a proposal on the target: the share whose best proposal by ``value`` is on it."""
    first, frames = 0, 0
    keep = cs.proposal.numpy()
    for members in _frames(cs):
        members = members[keep[members]]
        if not len(members) or not cs.target[members].any():
            continue
        frames += 1
        first += bool(cs.target[members[int(torch.argmax(value[members]))]])
    return {"frames": frames, "first": first / max(frames, 1)}


def fit_crop_reid(model, cfg, train_ids: Sequence[str], *, rank: int = 0, world_size: int = 1, progress: bool = True):
    """The re-ID phase of a training run, after the detector's last epoch: mine ``model``'s proposals on the
    training videos with a target (every ``reid_every``-th frame), train ``model.reid`` on them for ``reid_steps``
    steps -> a summary for the checkpoint's meta. Under DDP rank 0 trains and the others receive its weights."""
    import torch.distributed as dist

    from refdet_core.data.layout import read_layout
    from refdet_core.eval.postprocess import PostprocessConfig
    from refdet_core.eval.video import VideoPredictor

    t0, summary = time.perf_counter(), {}
    device = next(model.parameters()).device
    if rank == 0:
        layout = read_layout(cfg.data.data_root)
        ids = [v for v in train_ids if layout.videos[v].boxes_by_frame]
        data = cfg.data
        predictor = VideoPredictor(model, img_size=data.img_size, support_size=data.support_size,
                                   post=PostprocessConfig(), batch=8, device=device, k_shot=data.k_shot)  # fmt: skip
        tc = cfg.train
        cs = mine_crops(predictor, layout, ids, size=model.reid.size, every=tc.reid_every, progress=progress)
        losses = train_reid(model.reid, cs, steps=tc.reid_steps, seed=tc.random_seed, progress=progress)
        tail = max(1, len(losses) // 10)
        summary = {"videos": len(ids), "crops": len(cs), "steps": len(losses),
                   "loss_start": float(np.mean(losses[:tail])), "loss_end": float(np.mean(losses[-tail:])),
                   "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
        log.info("crop re-ID: %d crops of %d videos, %d steps, loss %.2f -> %.2f", len(cs), len(ids),
                 len(losses), summary["loss_start"], summary["loss_end"])  # fmt: skip
    if world_size > 1:
        for t in model.reid.state_dict().values():
            dist.broadcast(t, 0)
    return summary
