"""adapter: a small projection trained on the cached embeddings of a zero-shot strategy.

    create_strategy("adapter")                                        # over face-zs, ArcFace loss
    create_strategy("adapter", base="clip-zs[model=ViT-B-32,pretrained=openai]", loss="triplet")
    create_strategy("adapter", base="cnn-zs", base_options={"pretrained": False}, hidden=256)

fit() embeds the training images once with the base (through the race's embedding cache), holds
out some training identities for an inner validation split and trains the projection on the rest
with a metric-learning loss (toolkit.training.losses) over P x K identity batches. The projection
starts as the identity, the best checkpoint by inner validation is kept (step 0 included), and
`mix` interpolates between the identity and the trained weights (WiSE-FT style). The encoder is a
DerivedEncoder: it is served from the base's cached embeddings, nothing is re-embedded.
"""
from __future__ import annotations

import hashlib
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from strategies import create_strategy, parse_strategy_specs, register
from strategies.base import (DerivedEncoder, Encoder, Fitted, RaceContext, Strategy, WeightsStatus, fingerprint_of,
                             l2_normalise)
from toolkit.training.losses import LOSS_DEFAULTS, LOSS_NAMES, make_loss
from toolkit.data.split import make_validation_split
from toolkit.training.loop import (IdentityBatchSampler, seed_everything, train_until, validation_score,
                              warmup_cosine)

MIX_CHOICES = (0.0, 0.25, 0.5, 0.75, 1.0)
SECONDS_PER_STEP_CPU = 0.01    # measured over face-zs (d=128, P x K = 128): 2-10 ms a step with evaluations


class Projection(nn.Module):
    """x -> linear(x) [+ mlp(x)]: starts as the identity (or a norm-preserving map when the
    output width differs: identity padded with zeros when wider, orthonormal rows when narrower)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 0):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        with torch.no_grad():
            self.linear.bias.zero_()
            if out_dim >= in_dim:
                self.linear.weight.copy_(torch.eye(out_dim, in_dim))
            else:
                nn.init.orthogonal_(self.linear.weight)
        self.mlp = None
        if hidden > 0:
            self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        out = self.linear(vectors)
        return out if self.mlp is None else out + self.mlp(vectors)


def interpolate_states(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor],
                       mix: float) -> dict[str, torch.Tensor]:
    """(1 - mix) * start + mix * end, key by key (WiSE-FT weight-space interpolation)."""
    return {key: (1.0 - mix) * start[key] + mix * end[key] for key in end}


def project_with(projection: nn.Module, vectors: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        inputs = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        return l2_normalise(projection(inputs).numpy())


def weights_digest(projection: nn.Module) -> str:
    digest = hashlib.sha1()
    for key, value in sorted(projection.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().astype(np.float32).tobytes())
    return digest.hexdigest()[:16]


class AdapterEncoder(DerivedEncoder):
    """The base encoder's embeddings through a trained projection."""

    def __init__(self, base: Encoder, projection: Projection):
        projection = projection.cpu().eval()
        super().__init__(base, fingerprint_of("adapter", base.fingerprint, weights_digest(projection)))
        self.projection = projection

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """(n, d_base) base embeddings -> (n, d_out) L2-normalised float32."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape[0] == 0:
            return np.zeros((0, self.projection.linear.out_features), np.float32)
        return project_with(self.projection, vectors)


def _base_spec(base: str, base_options: dict | str | None) -> tuple[str, dict[str, Any]]:
    specs = parse_strategy_specs(base)
    if len(specs) != 1:
        raise ValueError(f"adapter base must name one strategy, not {base!r}")
    name, options = specs[0]
    if isinstance(base_options, str):
        base_options = parse_strategy_specs(f"{name}[{base_options.replace(';', ',')}]")[0][1] \
            if base_options.strip() else {}
    options.update(base_options or {})
    if name == "adapter":
        raise ValueError("an adapter's base must be a zero-shot strategy, not another adapter")
    return name, options


@register
class Adapter(Strategy):
    """Options: base ("face-zs"; a registry name or a spec "name[k=v,...]"), base_options ({} or
    "k=v;k=v"), loss ("arcface" | "supcon" | "triplet" | "contrastive"), temperature (SupCon, 0.1),
    margin (None: the loss's own), scale (ArcFace, 30), hidden (0: a linear map; > 0: plus a
    residual MLP starting at zero), out_dim (None: the base's width), steps (2000), lr (1e-3),
    weight_decay (1e-4), warmup (100 steps), seed (0), identities_per_batch (32),
    images_per_identity (4), mix (None: chosen on inner validation among MIX_CHOICES),
    evaluate_every (50), held_out_fraction (0.15), gallery_pattern (None; e.g. "*_s.*" gives
    stylised training files the gallery role in the inner validation split)."""

    name = "adapter"
    summary = "a projection trained with a metric-learning loss on a zero-shot strategy's cached embeddings"
    trains = True

    DEFAULTS: dict[str, Any] = {
        "base": "face-zs", "base_options": None, "loss": "arcface", "temperature": 0.1, "margin": None,
        "scale": 30.0, "hidden": 0, "out_dim": None, "steps": 2000, "lr": 1e-3, "weight_decay": 1e-4,
        "warmup": 100, "seed": 0, "identities_per_batch": 32, "images_per_identity": 4, "mix": None,
        "evaluate_every": 50, "held_out_fraction": 0.15, "gallery_pattern": None,
    }

    CHOICES = {"loss": LOSS_NAMES}

    def __init__(self, **options: Any):
        super().__init__(**options)
        mix = self.settings["mix"]
        if mix is not None and not 0.0 <= float(mix) <= 1.0:
            raise ValueError(f"adapter mix is a weight in [0, 1] (or None to choose it), not {mix!r}")
        self.base_name, self.base_options = _base_spec(str(self.settings["base"]), self.settings["base_options"])
        self.base_strategy()            # the base's options are checked now, before any race
        self._base_encoder: Encoder | None = None

    def base_strategy(self) -> Strategy:
        return create_strategy(self.base_name, **self.base_options)

    def base_encoder(self) -> Encoder:
        """The base's encoder, created once (a zero-shot base fits nothing)."""
        if self._base_encoder is None:
            self._base_encoder = self.base_strategy().fit([]).encoder
        return self._base_encoder

    def weights_status(self) -> WeightsStatus:
        status = self.base_strategy().weights_status()
        return WeightsStatus(status.available_offline, f"base {self.base_name}: {status.detail}")

    def _base_cost(self, training: Sequence, pending: Sequence, context: RaceContext) -> float:
        """The base's cost of the model passes not in its cache yet: `training` plain (the fit's
        inputs), `pending` as the race embeds them (mirrored too unless flip is off)."""
        encoder = self.base_encoder()
        passes = context.passes(encoder, training, flip_tta=False) + context.passes(encoder, pending)
        return self.base_strategy().estimate_seconds(passes, context)

    def estimate(self, training: Sequence, context: RaceContext) -> float:
        """The base's cost of embedding the training images and the race's pending images (those
        already in the base's cache cost nothing; once, however many fits share them), plus the
        training steps of every fit (cheap: the inputs are cached vectors). Without pending paths
        from the race: images_after_fit, all counted."""
        steps_cost = (SECONDS_PER_STEP_CPU * int(self.settings["steps"]) + 2.0) * max(1, context.fits)
        if not context.pending_images:
            return self.base_strategy().estimate_seconds(len(training) + context.images_after_fit) + steps_cost
        return self._base_cost([item.path for item in training], list(context.pending_images), context) + steps_cost

    def estimate_seconds(self, n_images: int, context: RaceContext | None = None) -> float:
        """Embedding after the fit is the base's embedding (projected): only uncached images cost."""
        if context is not None and context.pending_images:
            return self._base_cost([], list(context.pending_images), context)
        return self.base_strategy().estimate_seconds(n_images)

    def fit(self, training: Sequence, context: RaceContext | None = None,
            deadline: float | None = None) -> Fitted:
        context = context or RaceContext()
        settings = self.settings
        if not training:
            raise ValueError("adapter needs labelled training images to train on")
        seed_everything(int(settings["seed"]))
        base_encoder = self.base_encoder()
        embedded = context.embed(base_encoder, [item.path for item in training], show_progress=False,
                                 description=f"adapter: {self.base_name} training images")
        readable = embedded.readable_mask
        items = [item for item, ok in zip(training, readable) if ok]
        vector_of = {id(item): vector for item, vector, ok in zip(training, embedded.vectors, readable) if ok}
        split = make_validation_split(items, held_out_fraction=float(settings["held_out_fraction"]),
                                      seed=int(settings["seed"]),
                                      gallery_pattern=settings["gallery_pattern"] or context.gallery_pattern)

        def stack(part):
            return torch.from_numpy(np.stack([vector_of[id(item)] for item in part]).astype(np.float32))

        fit_vectors = stack(split.fit)
        identities = sorted({item.label for item in split.fit})
        index_of = {label: index for index, label in enumerate(identities)}
        fit_labels = torch.tensor([index_of[item.label] for item in split.fit], dtype=torch.long)
        query_vectors, gallery_vectors = stack(split.queries), stack(split.gallery)
        query_labels = [item.label for item in split.queries]
        gallery_labels = [item.label for item in split.gallery]

        in_dim = fit_vectors.shape[1]
        out_dim = int(settings["out_dim"] or in_dim)
        projection = Projection(in_dim, out_dim, int(settings["hidden"]))
        initial_state = {key: value.clone() for key, value in projection.state_dict().items()}
        loss_name = settings["loss"]
        given = {"temperature": settings["temperature"], "margin": settings["margin"], "scale": settings["scale"]}
        loss_of = make_loss(loss_name, embedding_dim=out_dim, num_classes=len(identities),
                            **{key: value for key, value in given.items() if key in LOSS_DEFAULTS[loss_name]})
        trained = nn.ModuleDict({"projection": projection, "loss": loss_of})   # ArcFace's class centres train too
        optimizer = torch.optim.AdamW(trained.parameters(), lr=float(settings["lr"]),
                                      weight_decay=float(settings["weight_decay"]))
        steps = int(settings["steps"])
        scheduler = warmup_cosine(optimizer, min(int(settings["warmup"]), steps // 10), steps)
        sampler = IdentityBatchSampler(fit_labels, int(settings["identities_per_batch"]),
                                       int(settings["images_per_identity"]), seed=int(settings["seed"]))

        def step_fn(rows: list[int]) -> torch.Tensor:
            embeddings = F.normalize(projection(fit_vectors[rows]), dim=1)
            return loss_of(embeddings, fit_labels[rows])

        mixes = MIX_CHOICES if settings["mix"] is None else (float(settings["mix"]),)
        queries_np, gallery_np = query_vectors.numpy(), gallery_vectors.numpy()

        def scores_by_mix() -> dict[float, float]:
            trained_state = {key: value.detach().clone() for key, value in projection.state_dict().items()}
            scores = {}
            try:
                for mix in mixes:
                    projection.load_state_dict(interpolate_states(initial_state, trained_state, mix))
                    scores[mix] = validation_score(project_with(projection, queries_np),
                                                   project_with(projection, gallery_np), query_labels, gallery_labels)
            finally:
                projection.load_state_dict(trained_state)
            return scores

        base_score = validation_score(l2_normalise(queries_np), l2_normalise(gallery_np), query_labels, gallery_labels)
        started = time.monotonic()
        result = train_until(trained, step_fn, sampler, optimizer, max_steps=steps, deadline=deadline,
                             evaluate=lambda: max(scores_by_mix().values()),
                             evaluate_every=int(settings["evaluate_every"]), scheduler=scheduler,
                             evaluate_at_start=True)
        by_mix = scores_by_mix()
        mix = max(by_mix, key=lambda value: (by_mix[value], -abs(value - 1.0)))  # ties: the most trained
        projection.load_state_dict(interpolate_states(initial_state, projection.state_dict(), mix))
        details = {"base_score": base_score, "score": by_mix[mix], "mix": mix, "scores_by_mix": by_mix,
                         "best_step": result.best_step, "steps": result.steps, "stopped_by": result.stopped_by,
                         "train_seconds": time.monotonic() - started, "fit_identities": len(identities),
                         "fit_images": len(split.fit), "validation_queries": len(split.queries),
                         "validation_gallery": len(split.gallery), "history": result.history}
        report = (f"inner validation {base_score:.1f} -> {by_mix[mix]:.1f} over {self.base_name} "
                  f"(step {result.best_step} of {result.steps}, mix {mix:g}, {loss_name}, "
                  f"{details['train_seconds']:.1f}s, stopped by {result.stopped_by})")
        return Fitted(AdapterEncoder(base_encoder, projection), report, details)
