"""What a strategy is told and what it returns: the one interface strategies plug in through.

    strategy.estimate(training, context)           -> seconds it expects to need
    strategy.fit(training, context, deadline)      -> Fitted(encoder, report, details)

`RaceContext` carries everything the race tells a strategy (validation roles, the images it will
embed afterwards, where the embedding cache is); nothing reaches a strategy any other way.
`Fitted` carries everything a strategy returns: the encoder, one line on how fitting went, and
what it measured. Strategies live in strategies/ and are created by name from its registry.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from toolkit.models.weights import WeightsStatus
from toolkit.retrieval.embed import Embeddings, embed_images, passes_to_compute
from toolkit.retrieval.encoder import Encoder


@dataclass(frozen=True)
class RaceContext:
    """What the race tells a strategy before estimate() and fit().

    gallery_pattern     training files matching it take the gallery role in validation (e.g.
                        "*_s.*" for stylised renderings); None: roles drawn at random
    pending_images      the images the race embeds once the strategy is fitted (validation and
                        test), so an estimate can leave out those already cached
    images_after_fit    forward passes the race makes after fitting (flip passes counted)
    flip_tta            the race's flip setting (None: validation decides, so mirrored images count)
    fits                how many times the race calls fit(), once per validation fold, each on
                        another part of training; estimate() counts them all (what a strategy
                        computes once and caches, such as a base's embeddings, it counts once)
    cache_dir, num_workers, show_progress   how the race embeds: a strategy that embeds images
                        itself (the adapter) shares the race's cache through `embed`
    """

    gallery_pattern: str | None = None
    pending_images: tuple[Path, ...] = ()
    images_after_fit: int = 0
    flip_tta: bool | None = None
    fits: int = 1
    cache_dir: Path | None = None
    num_workers: int | None = None
    show_progress: bool = True

    def embed(self, encoder: Encoder, paths: Sequence[Path], description: str = "embedding",
              flip_tta: bool = False, show_progress: bool | None = None, mirrored_too: bool = False) -> Embeddings:
        """embed_images with the race's cache and workers."""
        return embed_images(encoder, paths, cache_dir=self.cache_dir, flip_tta=flip_tta, mirrored_too=mirrored_too,
                            num_workers=self.num_workers, description=description,
                            show_progress=self.show_progress if show_progress is None else show_progress)

    def passes(self, encoder: Encoder, paths: Sequence[Path], flip_tta: bool | None | str = "race") -> int:
        """Model passes embedding `paths` still costs with the race's cache: plain, and mirrored
        unless flip is off (`flip_tta`, by default the race's; an encoder that cannot flip: plain)."""
        flip = self.flip_tta if flip_tta == "race" else flip_tta
        return passes_to_compute(encoder, paths, self.cache_dir, flip if encoder.flippable else False)


@dataclass
class Fitted:
    """What fit() returns: the encoder, one line for the user on how fitting went (shown in the
    race's notes), and what it measured (scores, steps, choices) for whoever wants the numbers."""

    encoder: Encoder
    report: str = ""
    details: dict[str, Any] = field(default_factory=dict)


class Strategy(ABC):
    """A way of producing an Encoder for a competition, created by name from the registry.

    Class attributes: `name` (registry key), `summary` (one line for `invoke strategies`),
    `images_per_second_cpu` (nominal throughput used to estimate cost before a probe exists),
    `trains` (whether fit() trains: such strategies run after the zero-shot ones), `uses_gpu`.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    images_per_second_cpu: ClassVar[float] = 10.0
    trains: ClassVar[bool] = False
    uses_gpu: ClassVar[bool] = True       # its model runs on a GPU when there is one (dlib's does not)

    def __init__(self, **options: Any):
        self.options = options

    def describe(self) -> str:
        """The name with its options, as a user would type it: clip-zs[model=ViT-B-32]."""
        if not self.options:
            return self.name
        inner = ",".join(f"{key}={value}" for key, value in sorted(self.options.items()))
        return f"{self.name}[{inner}]"

    @abstractmethod
    def weights_status(self) -> WeightsStatus:
        """Whether the weights this strategy needs are on disk now (no download attempted)."""

    def resources(self, gpus: bool, cores: int) -> dict[str, float]:
        """What one run asks of a Ray cluster (toolkit.race.cluster) whose machines have at least
        `cores` cores: a GPU and a core when the cluster has GPUs and the model runs on one
        (`uses_gpu`), else a whole machine's cores, which a CPU model keeps busy (two such runs on
        one machine slow each other more than they gain: torch's threads spin while they wait)."""
        if gpus and self.uses_gpu:
            return {"num_cpus": 1, "num_gpus": 1}
        return {"num_cpus": max(int(cores), 1), "num_gpus": 0}

    def estimate_seconds(self, n_images: int, context: RaceContext | None = None) -> float:
        """Rough wall-clock cost of embedding n_images on this machine, from nominal speed."""
        speed = self.images_per_second_cpu * (8.0 if torch.cuda.is_available() else 1.0)
        return n_images / speed

    def estimate(self, training: Sequence, context: RaceContext) -> float:
        """Seconds to fit on `training` (context.fits times) and embed what the race embeds
        afterwards. Zero-shot: embedding only. Trained strategies override this with a short probe."""
        return self.estimate_seconds(context.images_after_fit, context)

    @abstractmethod
    def fit(self, training: Sequence, context: RaceContext | None = None,
            deadline: float | None = None) -> Fitted:
        """The encoder for this competition. `training` is a list of LabelledImage; `deadline` a
        time.monotonic() value that a training loop must stop at; `context` None: a default one."""
