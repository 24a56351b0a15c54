"""toolkit/training/losses.py: the pytorch-metric-learning losses as configured here (cosine
distance, margins, ArcFace's radians), the batch-hard miner, convergence on separable clusters."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from toolkit.training.losses import LOSS_DEFAULTS, LOSS_NAMES, BatchHardTriplet, make_loss


def unit(*angles_degrees: float) -> torch.Tensor:
    radians = torch.tensor(angles_degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([torch.cos(radians), torch.sin(radians)], dim=1)


# Four points in 2-D: identity 0 at 0 and 60 degrees, identity 1 at 90 and 180 degrees.
POINTS = unit(0, 60, 90, 180)
LABELS = torch.tensor([0, 0, 1, 1])
COS = POINTS @ POINTS.T


def test_supcon_by_hand():
    temperature = 0.5
    expected = []
    for anchor, positive in ((0, 1), (1, 0), (2, 3), (3, 2)):
        others = [j for j in range(4) if j != anchor]
        denominator = sum(math.exp(COS[anchor, j] / temperature) for j in others)
        expected.append(-(COS[anchor, positive] / temperature - math.log(denominator)))
    value = make_loss("supcon", temperature=temperature)(POINTS, LABELS)
    assert value.item() == pytest.approx(float(sum(expected)) / 4, rel=1e-9)


def test_supcon_ignores_anchors_without_positive():
    points, labels = unit(0, 60, 90), torch.tensor([0, 0, 1])
    temperature = 0.1
    both = make_loss("supcon", temperature=temperature)(points, labels)
    denominator = math.exp(math.cos(math.radians(60)) / temperature) + math.exp(math.cos(math.radians(90)) / temperature)
    anchor0 = -(math.cos(math.radians(60)) / temperature - math.log(denominator))
    denominator = math.exp(math.cos(math.radians(60)) / temperature) + math.exp(math.cos(math.radians(30)) / temperature)
    anchor1 = -(math.cos(math.radians(60)) / temperature - math.log(denominator))
    assert both.item() == pytest.approx((anchor0 + anchor1) / 2, rel=1e-9)
    assert make_loss("supcon")(unit(0, 90), torch.tensor([0, 1])).item() == 0.0


def test_the_miner_picks_the_hardest_positive_and_negative():
    # anchor 0 at 0 degrees: positives at 10 and 50 (the farther, 50, is the hardest), negatives at
    # 70 and 120 (the nearer, 70, is the hardest)
    points = unit(0, 10, 50, 70, 120)
    labels = torch.tensor([0, 0, 0, 1, 1])
    anchors, positives, negatives = BatchHardTriplet().miner(points, labels)
    hardest = {int(a): (int(p), int(n)) for a, p, n in zip(anchors, positives, negatives)}
    assert hardest[0] == (2, 3)
    assert hardest[1] == (2, 3)           # 10 deg: positives 0 (d 10) and 50 (d 40); negatives 70, 120
    assert hardest[3] == (4, 2)           # 70 deg: its one positive, 120; the nearest negative, 50
    assert hardest[4] == (3, 2)


def test_triplet_by_hand():
    # distances 1 - cos: d(0,60)=0.5, d(0,90)=1, d(0,180)=2, d(60,90)=1-cos30, d(60,180)=1.5, d(90,180)=1
    margin = 0.2
    d = 1 - COS
    per_anchor = [max(0.0, d[0, 1] - min(d[0, 2], d[0, 3]) + margin),
                  max(0.0, d[1, 0] - min(d[1, 2], d[1, 3]) + margin),
                  max(0.0, d[2, 3] - min(d[2, 0], d[2, 1]) + margin),
                  max(0.0, d[3, 2] - min(d[3, 0], d[3, 1]) + margin)]
    value = make_loss("triplet", margin=margin)(POINTS, LABELS)
    assert value.item() == pytest.approx(float(sum(per_anchor)) / 4, rel=1e-9)
    # anchor 2 (90 deg): positive at 180 (d=1), hardest negative at 60 (d=1-cos30): positive term
    assert per_anchor[2] == pytest.approx(1 - (1 - math.cos(math.radians(30))) + margin)


def test_triplet_ignores_anchors_without_positive():
    points, labels = unit(0, 10, 90), torch.tensor([0, 0, 1])
    d01, d02, d12 = 1 - math.cos(math.radians(10)), 1.0, 1 - math.cos(math.radians(80))
    expected = (max(0, d01 - d02 + 0.2) + max(0, d01 - d12 + 0.2)) / 2
    assert make_loss("triplet", margin=0.2)(points, labels).item() == pytest.approx(expected, rel=1e-9)


def test_contrastive_by_hand():
    margin = 0.5
    d = 1 - COS
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    terms = [d[i, j] if LABELS[i] == LABELS[j] else max(0.0, margin - d[i, j]) for i, j in pairs]
    value = make_loss("contrastive", margin=margin)(POINTS, LABELS)
    assert value.item() == pytest.approx(float(sum(terms)) / 6, rel=1e-9)


def test_arcface_by_hand_with_its_margin_in_radians():
    head = make_loss("arcface", embedding_dim=2, num_classes=2, scale=10.0, margin=0.3).double()
    # the library takes the margin in degrees (it was handed 17.19) and keeps it in radians
    assert head.margin == pytest.approx(0.3)
    with torch.no_grad():
        head.W.copy_(unit(30, 135).T)                         # (dim, classes): one centre per column
    theta = torch.acos((POINTS @ unit(30, 135).T).clamp(-1, 1))
    logits = 10.0 * torch.cos(theta)
    for row, label in enumerate(LABELS.tolist()):
        logits[row, label] = 10.0 * math.cos(theta[row, label].item() + 0.3)
    expected = F.cross_entropy(logits, LABELS)
    assert head(POINTS, LABELS).item() == pytest.approx(expected.item(), rel=1e-6)


def test_arcface_centres_are_seeded_like_a_linear_head():
    torch.manual_seed(5)
    first = make_loss("arcface", embedding_dim=8, num_classes=3).W.detach().clone()
    torch.manual_seed(5)
    expected = torch.nn.init.xavier_uniform_(torch.empty(3, 8)).T
    assert first.shape == (8, 3) and torch.equal(first, expected)


def test_options_are_checked():
    assert set(LOSS_NAMES) == set(LOSS_DEFAULTS)
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("hinge")
    with pytest.raises(ValueError, match="no option temperature"):
        make_loss("triplet", temperature=0.1)
    with pytest.raises(ValueError, match="embedding_dim and num_classes"):
        make_loss("arcface")
    assert make_loss("triplet", margin=None).loss.margin == pytest.approx(LOSS_DEFAULTS["triplet"]["margin"])


def clusters(classes: int = 4, per_class: int = 4, dim: int = 8, spread: float = 0.0) -> tuple:
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(dim)[:classes]
    labels = torch.arange(classes).repeat_interleave(per_class)
    points = centres[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    return F.normalize(points, dim=1), labels


@pytest.mark.parametrize("name", ["supcon", "triplet", "contrastive"])
def test_losses_near_zero_on_separated_clusters_and_gradients_finite(name):
    points, labels = clusters()  # identical points per class, classes orthogonal
    if name == "supcon":
        # the lower bound of SupCon is log(positives per anchor); with a cold temperature it is reached
        value = make_loss(name, temperature=0.01)(points, labels)
        assert value.item() == pytest.approx(math.log(3), abs=1e-5)
    else:
        assert make_loss(name)(points, labels).item() == pytest.approx(0.0, abs=1e-6)
    noisy, labels = clusters(spread=0.5)
    noisy = noisy.clone().requires_grad_(True)
    make_loss(name)(noisy, labels).backward()
    assert torch.isfinite(noisy.grad).all() and noisy.grad.abs().sum() > 0


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_training_drives_each_loss_down(name):
    torch.manual_seed(0)
    points, labels = clusters(classes=4, per_class=6, dim=8, spread=0.4)
    projection = torch.nn.Linear(8, 8)
    options = {"scale": 16.0, "margin": 0.2} if name == "arcface" else {}
    loss_fn = make_loss(name, embedding_dim=8, num_classes=4, **options)
    optimizer = torch.optim.Adam(list(projection.parameters()) + list(loss_fn.parameters()), lr=0.01)
    first = None
    for _ in range(200):
        loss = loss_fn(F.normalize(projection(points), dim=1), labels)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    assert loss.item() < 0.5 * first
    if name == "triplet":
        assert loss.item() < 0.01  # separable: every hardest negative is beyond the margin
