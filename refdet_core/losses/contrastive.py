"""Contrastive losses over anchor embeddings and reference prototypes.

- SupCon (Khosla et al. 2020, the "L_out" form): positive-anchor embeddings with the same episode class
  attract, others repel.
- CPE (contrastive proposal encoding, after FSCE, Sun et al. 2021): each positive-anchor embedding is
  classified among the N prototypes by cosine / temperature, i.e. an N-way cross-entropy.
- Triplet: reference prototype (anchor) vs an object-anchor embedding (positive) vs the hardest
  background-anchor embedding (negative), cosine distance with a margin.

Inputs are L2-normalised in fp32; log-probabilities come from ``log_softmax`` (no ``log(p + eps)``). A batch
without the pairs a loss needs gives a zero that stays connected to the graph, so gradients are zero rather
than missing and no parameter silently drops out of the backward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NORM_FLOOR = 1e-3  # floor on the norm in L2 normalisation; bounds its gradient near zero vectors (fp16-safe)


def l2_normalize(x: Tensor) -> Tensor:
    """(..., D) -> (..., D) fp32 unit vectors (zero vectors stay zero)."""
    return F.normalize(x.float(), dim=-1, eps=NORM_FLOOR)


def graph_zero(*tensors: Tensor) -> Tensor:
    """A scalar 0 that depends on ``tensors`` (fp32), so the backward pass still reaches them."""
    return sum(t.float().sum() * 0.0 for t in tensors)


def supcon_loss(embeddings: Tensor, labels: Tensor, *, temperature: float = 0.1) -> Tensor:
    """Supervised contrastive loss.

    Args:
        embeddings: (M, D) positive-anchor embeddings.
        labels: (M,) episode-local class of each embedding.
        temperature: softmax temperature.
    Returns:
        () loss averaged over the embeddings that have at least one same-class partner; a graph-connected
        zero when none has.
    """
    m = embeddings.shape[0]
    if m < 2:
        return graph_zero(embeddings)
    z = l2_normalize(embeddings)
    self_mask = torch.eye(m, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))  # (M, M)
    log_prob = F.log_softmax(logits, dim=1)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask  # (M, M)
    n_pos = pos.sum(1)
    has_pos = (n_pos > 0).float()  # (M,); masked means instead of a host-side "any" and a boolean index
    mean_log_prob = torch.where(pos, log_prob, 0.0).sum(1) / n_pos.clamp(min=1)  # (M,)
    return -(mean_log_prob * has_pos).sum() / has_pos.sum().clamp(min=1.0)


def cpe_loss(embeddings: Tensor, labels: Tensor, prototypes: Tensor, *, temperature: float = 0.1) -> Tensor:
    """N-way cross-entropy of positive-anchor embeddings against the prototypes.

    Args:
        embeddings: (M, D) positive-anchor embeddings.
        labels: (M,) episode-local class in [0, N).
        prototypes: (N, D) reference prototypes.
        temperature: softmax temperature.
    Returns:
        () mean cross-entropy; a graph-connected zero when M = 0.
    """
    if embeddings.shape[0] == 0:
        return graph_zero(embeddings, prototypes)
    logits = l2_normalize(embeddings) @ l2_normalize(prototypes).T / temperature  # (M, N)
    return F.cross_entropy(logits, labels)


def triplet_loss(
    prototypes: Tensor, pos_embeddings: Tensor, pos_labels: Tensor, neg_embeddings: Tensor, *, margin: float = 0.3
) -> Tensor:
    """Reference-prototype triplet loss with the hardest background negative per prototype.

    ``relu(d(p_c, z_i) - d(p_c, z_neg(c)) + margin)`` with cosine distance ``d = 1 - cos``; ``z_neg(c)`` is the
    background embedding closest to prototype c.

    Args:
        prototypes: (N, D) reference prototypes (triplet anchors).
        pos_embeddings: (M, D) object-anchor embeddings (positives).
        pos_labels: (M,) class of each positive in [0, N).
        neg_embeddings: (K, D) background-anchor embeddings (negative pool).
        margin: cosine-distance margin.
    Returns:
        () mean over positives; a graph-connected zero when M = 0 or K = 0.
    """
    if pos_embeddings.shape[0] == 0 or neg_embeddings.shape[0] == 0:
        return graph_zero(prototypes, pos_embeddings, neg_embeddings)
    p = l2_normalize(prototypes)  # (N, D)
    cos_pos = (l2_normalize(pos_embeddings) * p[pos_labels]).sum(-1)  # (M,)
    cos_neg = (l2_normalize(neg_embeddings) @ p.T).amax(0)  # (N,) hardest negative per prototype
    return F.relu(cos_neg[pos_labels] - cos_pos + margin).mean()
