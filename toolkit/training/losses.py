"""Small composable metric-learning losses with one call shape (the pytorch-metric-learning habit).

Every loss takes L2-normalised embeddings (n, d) float and integer labels (n,) long and returns a
scalar tensor:

    loss = LOSSES["supcon"](embeddings, labels)
    loss = ArcFaceHead(embedding_dim, num_classes)(embeddings, labels)   # "arcface" has weights

Similarities are cosines (inner products of unit rows); distances are 1 - cosine.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _pair_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(positives, negatives): boolean (n, n) masks; a row is never its own positive."""
    same = labels.view(-1, 1) == labels.view(1, -1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def supervised_contrastive_loss(embeddings: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """SupCon (Khosla et al. 2020, the L_out form): for each anchor, the mean over its positives of
    -log softmax(cos / temperature) taken over every other row. Anchors without a positive are
    ignored; a batch with no positive pair gives 0 (still attached to the graph)."""
    positives, _ = _pair_masks(labels)
    logits = embeddings @ embeddings.T / temperature
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_probability = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive_counts = positives.sum(dim=1)
    has_positive = positive_counts > 0
    if not has_positive.any():
        return embeddings.sum() * 0.0
    per_anchor = -(log_probability.masked_fill(~positives, 0.0)).sum(dim=1) / positive_counts.clamp(min=1)
    return per_anchor[has_positive].mean()


def batch_hard_triplet_loss(embeddings: Tensor, labels: Tensor, margin: float = 0.2) -> Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) in cosine distance: for each anchor,
    relu(d(hardest positive) - d(hardest negative) + margin). Anchors without a positive or a
    negative are ignored; 0 when there are none."""
    positives, negatives = _pair_masks(labels)
    distances = 1.0 - embeddings @ embeddings.T
    hardest_positive = distances.masked_fill(~positives, float("-inf")).max(dim=1).values
    hardest_negative = distances.masked_fill(~negatives, float("inf")).min(dim=1).values
    valid = positives.any(dim=1) & negatives.any(dim=1)
    if not valid.any():
        return embeddings.sum() * 0.0
    return F.relu(hardest_positive[valid] - hardest_negative[valid] + margin).mean()


def contrastive_pair_loss(embeddings: Tensor, labels: Tensor, margin: float = 0.5) -> Tensor:
    """Siamese contrastive loss (Hadsell et al. 2006) in cosine distance over every pair i < j:
    positives contribute d, negatives relu(margin - d); the mean over all pairs."""
    n = len(labels)
    if n < 2:
        return embeddings.sum() * 0.0
    distances = 1.0 - embeddings @ embeddings.T
    same = labels.view(-1, 1) == labels.view(1, -1)
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=labels.device), diagonal=1)
    per_pair = torch.where(same, distances, F.relu(margin - distances))
    return per_pair[upper].mean()


class ArcFaceHead(nn.Module):
    """Additive angular margin softmax (Deng et al. 2019): logits s*cos(theta + m) for the true
    class and s*cos(theta) for the others, with one learned unit centre per class. Call it as a
    loss: head(embeddings, labels) -> cross-entropy. Uses the easy-margin-free form with the usual
    fallback cos(theta) - m*sin(m) when theta + m would pass pi."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.5):
        super().__init__()
        self.scale = scale
        self.margin = margin
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)

    def logits(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        cosine = F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))
        cosine = cosine.clamp(-1.0 + 1e-7, 1.0 - 1e-7)
        sine = torch.sqrt(1.0 - cosine * cosine)
        cos_m, sin_m = math.cos(self.margin), math.sin(self.margin)
        with_margin = cosine * cos_m - sine * sin_m  # cos(theta + m)
        threshold, fallback = math.cos(math.pi - self.margin), math.sin(math.pi - self.margin) * self.margin
        with_margin = torch.where(cosine > threshold, with_margin, cosine - fallback)
        target = F.one_hot(labels, num_classes=self.weight.shape[0]).bool()
        return self.scale * torch.where(target, with_margin, cosine)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(self.logits(embeddings, labels), labels)


LossFunction = Callable[[Tensor, Tensor], Tensor]

# Name -> loss function; "arcface" is not here because it has weights: use ArcFaceHead.
LOSSES: dict[str, LossFunction] = {
    "supcon": supervised_contrastive_loss,
    "triplet": batch_hard_triplet_loss,
    "contrastive": contrastive_pair_loss,
}

LOSS_NAMES = (*LOSSES, "arcface")
