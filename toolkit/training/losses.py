"""Metric-learning losses from pytorch-metric-learning, set up once for L2-normalised embeddings
compared by cosine similarity, all called the same way:

    loss = make_loss("triplet", margin=0.2)
    loss = make_loss("arcface", embedding_dim=128, num_classes=500)    # has weights: train them too
    value = loss(embeddings, labels)           # (n, d) float, (n,) long -> scalar tensor
"""
from __future__ import annotations

import math
from typing import Any

import torch
from pytorch_metric_learning import distances, losses, miners, reducers
from torch import Tensor, nn

LOSS_NAMES = ("supcon", "triplet", "contrastive", "arcface")

# Each loss's options and their defaults. Margins are cosine-distance (1 - cos) margins, ArcFace's
# an angle in radians; `scale` multiplies ArcFace's logits.
LOSS_DEFAULTS: dict[str, dict[str, float]] = {
    "supcon": {"temperature": 0.1},
    "triplet": {"margin": 0.2},
    "contrastive": {"margin": 0.5},
    "arcface": {"margin": 0.5, "scale": 30.0},
}


class BatchHardTriplet(nn.Module):
    """Batch-hard triplet loss (Hermans et al. 2017): for each anchor, its hardest positive and
    hardest negative (BatchHardMiner), relu(d(a, p) - d(a, n) + margin) in cosine distance, the
    mean over the anchors that have both."""

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.miner = miners.BatchHardMiner(distance=distances.CosineSimilarity())
        self.loss = losses.TripletMarginLoss(margin=margin, distance=distances.CosineSimilarity(),
                                             reducer=reducers.MeanReducer())

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return self.loss(embeddings, labels, self.miner(embeddings, labels))


class PairContrastive(nn.Module):
    """Contrastive loss (Hadsell et al. 2006) over every pair of the batch, in cosine distance
    d = 1 - cos: positive pairs contribute d, negative ones relu(margin - d); the mean over all
    pairs (the library's pair losses, pooled rather than averaged per kind)."""

    def __init__(self, margin: float = 0.5):
        super().__init__()
        # in similarity terms: positives relu(1 - cos), negatives relu(cos - (1 - margin))
        self.loss = losses.ContrastiveLoss(pos_margin=1.0, neg_margin=1.0 - margin,
                                           distance=distances.CosineSimilarity(),
                                           reducer=reducers.DoNothingReducer())

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        parts = self.loss(embeddings, labels)
        terms = [part["losses"] for part in parts.values()
                 if isinstance(part["losses"], Tensor) and part["losses"].numel()]
        if not terms:
            return embeddings.sum() * 0.0
        return torch.cat([term.reshape(-1) for term in terms]).mean()


def _class_centres(weight: Tensor) -> None:
    """ArcFace's class centres (the library's W, dim x classes) Xavier-uniform, drawn as a
    classes x dim matrix as an nn.Linear head would be (so one seed gives the same centres)."""
    with torch.no_grad():
        weight.copy_(nn.init.xavier_uniform_(torch.empty(weight.shape[1], weight.shape[0], dtype=weight.dtype)).T)


def make_loss(name: str, embedding_dim: int | None = None, num_classes: int | None = None,
              **options: Any) -> nn.Module:
    """The loss `name` (one of LOSS_NAMES) with `options` over LOSS_DEFAULTS (None: the default).
    "arcface" holds one learned centre per class (its parameters train with the model) and needs
    `embedding_dim` and `num_classes`."""
    if name not in LOSS_DEFAULTS:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSS_NAMES)}")
    unknown = sorted(set(options) - set(LOSS_DEFAULTS[name]))
    if unknown:
        raise ValueError(f"loss {name} has no option {', '.join(unknown)}")
    settings = {key: float(value if options.get(key) is None else options[key])
                for key, value in LOSS_DEFAULTS[name].items()}
    if name == "supcon":
        return losses.SupConLoss(temperature=settings["temperature"])
    if name == "triplet":
        return BatchHardTriplet(settings["margin"])
    if name == "contrastive":
        return PairContrastive(settings["margin"])
    if embedding_dim is None or num_classes is None:
        raise ValueError("the arcface loss needs embedding_dim and num_classes")
    # the library takes ArcFace's angular margin in degrees
    return losses.ArcFaceLoss(num_classes=int(num_classes), embedding_size=int(embedding_dim),
                              margin=math.degrees(settings["margin"]), scale=settings["scale"],
                              weight_init_func=_class_centres)
