"""The base of the strategies that train on images (the metric strategies, clip-ft): everything but
the model and its loss.

It holds out 15% of the identities for an inner validation split, decodes every training image once
(through the face crop when asked), trains on P x K identity batches with augmentation, AdamW and
a warm-up + cosine schedule in toolkit.training.loop's train_until (deadline, mixed precision on
CUDA, best checkpoint by the inner validation score), and estimates its cost from a short probe.
A subclass gives `own_defaults`, build() (a TrainingSetup) and finish() (the Fitted encoder).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader

from strategies.base import Fitted, RaceContext, Strategy, WeightsStatus, WeightsUnavailable, default_device
from strategies.zero_shot.cnn_zs import as_bool
from toolkit.data.split import ValidationSplit, make_validation_split
from toolkit.machine.console import warn
from toolkit.models.faces import DEFAULT_CHAIN, FaceCrop, chain_models
from toolkit.models.faces import detector_chain as face_detector_chain
from toolkit.models.faces import weights_status as face_crop_status
from toolkit.models.transforms import normalisation_of, training_transform
from toolkit.training.freezing import Trainee
from toolkit.training.images import ImagePreparer, PreparedImages, TrainingImages, ValidationImages, prepare_images
from toolkit.training.loop import (IdentityBatchSampler, TrainingResult, seconds_per_step, seed_everything,
                                   train_until, warmup_cosine)

INNER_VALIDATION_FRACTION = 0.15
UNFREEZE_CHOICES = ("all", "last", "head")
CROP_PCT = 0.875                # prepared images keep a shorter side of image_size / CROP_PCT
MAX_WARMUP_STEPS = 100

# Options every TrainedImageStrategy takes, with their defaults.
TRAINING_DEFAULTS: dict[str, Any] = {
    "steps": 300, "lr": 1e-4, "head_lr": 1e-3, "weight_decay": 1e-4, "unfreeze": "last",
    "unfreeze_blocks": 1, "identities_per_batch": 8, "images_per_identity": 4, "augment": True,
    "face_crop": False, "freeze_batchnorm": True, "evaluate_every": 50, "evaluate_at_start": True,
    "seed": 0, "device": None,
    "num_workers": None,
}
# Options that change nothing but where and how fast the work runs: left out of fingerprints.
RUNTIME_OPTIONS = ("device", "num_workers")


@dataclass
class TrainingSetup:
    """What a subclass builds; the base trains it."""

    trainee: Trainee                                            # on the device
    embed: Callable[[torch.Tensor], torch.Tensor]               # images -> embeddings (inference)
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images, labels) on the device -> loss
    parameter_groups: list[dict]                                # AdamW groups ({"params", "lr"})
    eval_transform: Any                                         # PIL -> tensor, no face crop
    image_size: int
    extras: dict = field(default_factory=dict)                  # anything finish() needs


@dataclass
class TrainingData:
    dataset: TrainingImages
    sampler: IdentityBatchSampler
    validation: ValidationImages | None
    face_crop: FaceCrop | None
    prepared: PreparedImages


class TrainedImageStrategy(Strategy):
    """The base of trained strategies: inner split, data, AdamW + warm-up/cosine, train_until,
    the estimate probe. Subclasses give `own_defaults`, build() and finish().

    Options (TRAINING_DEFAULTS): steps (300; fewer when the deadline comes first), lr and head_lr
    (AdamW, backbone 1e-4 and heads 1e-3), weight_decay (1e-4), unfreeze ("last": the last
    `unfreeze_blocks` (1) blocks of the backbone and all after them, plus the heads; "all"; "head"),
    identities_per_batch x images_per_identity (P x K, 8 x 4), augment (random resized crop, flip,
    colour jitter, random grayscale), face_crop (dlib detection + 5-point alignment in front of the
    model, at training and embedding time; the whole image when no face is found), freeze_batchnorm
    (True: BatchNorm layers keep their running statistics while their affine weights train),
    evaluate_every (50), evaluate_at_start (True: the untrained weights compete too), seed, device,
    num_workers (training data loader; 0 on CPU, the race's on CUDA).
    """

    trains = True
    own_defaults: ClassVar[dict[str, Any]] = {}       # DEFAULTS: TRAINING_DEFAULTS and these
    CHOICES = {"unfreeze": UNFREEZE_CHOICES}
    HINTS = {"batch_size": "the batch is identities_per_batch x images_per_identity"}
    # evaluations of the inner validation split that finish() runs after training
    final_evaluations: ClassVar[int] = 0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.DEFAULTS = {**TRAINING_DEFAULTS, **cls.own_defaults}

    def __init__(self, **options: Any):
        super().__init__(**options)
        settings = self.settings
        for key in ("steps", "unfreeze_blocks", "identities_per_batch", "images_per_identity", "evaluate_every"):
            settings[key] = int(settings[key])
        for key in ("lr", "head_lr", "weight_decay"):
            settings[key] = float(settings[key])
        for key in ("augment", "face_crop", "freeze_batchnorm", "evaluate_at_start"):
            settings[key] = as_bool(settings[key])
        settings["seed"] = int(settings["seed"])
        if settings["steps"] < 0 or settings["unfreeze_blocks"] < 0:
            raise ValueError(f"{self.name}: steps and unfreeze_blocks must be >= 0")
        if settings["identities_per_batch"] < 2 or settings["images_per_identity"] < 2:
            raise ValueError(f"{self.name}: a metric-learning batch needs identities_per_batch >= 2 and "
                             "images_per_identity >= 2 (positives and negatives in every batch)")
        self.face_crop_chain()          # a face_crop chain it does not know fails here, before any race

    # -- for subclasses

    def build(self, classes: list[str], device: torch.device) -> TrainingSetup:
        raise NotImplementedError

    def finish(self, setup: TrainingSetup, result: TrainingResult, data: TrainingData,
               device: torch.device) -> Fitted:
        raise NotImplementedError

    # -- shared

    @property
    def device(self) -> torch.device:
        return torch.device(self.settings["device"]) if self.settings["device"] else default_device()

    def data_workers(self, device: torch.device, context: RaceContext) -> int:
        chosen = self.settings["num_workers"]
        if chosen is None:
            chosen = context.num_workers if device.type == "cuda" else 0
        if chosen is None:
            chosen = min(8, max(1, (os.cpu_count() or 2) - 1))
        return int(chosen)

    def fingerprint_settings(self) -> dict[str, Any]:
        return {key: value for key, value in sorted(self.settings.items()) if key not in RUNTIME_OPTIONS}

    def inner_split(self, training: Sequence, context: RaceContext) -> ValidationSplit | None:
        try:
            return make_validation_split(training, INNER_VALIDATION_FRACTION, seed=self.settings["seed"],
                                         gallery_pattern=context.gallery_pattern)
        except ValueError:
            return None

    def face_crop_chain(self) -> tuple[str, ...] | None:
        """The face crop's detector chain, None without face_crop. face_crop takes a chain of
        toolkit.models.faces.DETECTOR_CHAINS too ("hog", the crop of face_crop=True, or "hog+cnn")."""
        if not self.settings["face_crop"]:
            return None
        chosen = self.options.get("face_crop")
        plain = not isinstance(chosen, str) or chosen.strip().lower() in ("true", "yes", "on", "1")
        return face_detector_chain(DEFAULT_CHAIN if plain else chosen,
                                   f"{self.name}: face_crop (True, False or a detector chain)")

    def make_face_crop(self, image_size: int) -> FaceCrop | None:
        """The face crop, or None without face_crop."""
        chain = self.face_crop_chain()
        if chain is None:
            return None
        status = face_crop_status(("predictor", *chain_models(chain)))
        if not status.available_offline:
            raise WeightsUnavailable(f"{self.name}: face_crop needs dlib and its models: {status.detail}")
        return FaceCrop(size=round(image_size / CROP_PCT), detectors=chain)

    def optimizer(self, setup: TrainingSetup) -> torch.optim.Optimizer:
        groups = [group for group in setup.parameter_groups if group["params"]]
        if not groups:
            raise ValueError(f"{self.name}: nothing to train with these options (unfreeze="
                             f"{self.settings['unfreeze']}, no trainable head)")
        return torch.optim.AdamW(groups, weight_decay=self.settings["weight_decay"])

    def step_function(self, setup: TrainingSetup, device: torch.device) -> Callable:
        def step(batch):
            images, labels = batch
            return setup.loss(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
        return step

    def batch_sampler(self, labels: Sequence[int]) -> IdentityBatchSampler:
        settings = self.settings
        return IdentityBatchSampler(labels, settings["identities_per_batch"], settings["images_per_identity"],
                                    seed=settings["seed"])

    def with_face_crop_status(self, status: WeightsStatus) -> WeightsStatus:
        """The model's weights status, unavailable when face_crop is on and dlib's models are not."""
        if status.available_offline and self.settings["face_crop"]:
            faces = face_crop_status()
            if not faces.available_offline:
                return WeightsStatus(False, f"face_crop: {faces.detail}")
        return status

    def _start(self, training: Sequence, context: RaceContext, device: torch.device) -> "_Start":
        """What fit() and the estimate probe both begin with, seeded: the inner split, the model the
        subclass builds, the face crop, the image preparer and the training transform."""
        settings = self.settings
        seed_everything(settings["seed"])
        split = self.inner_split(training, context)
        fit_items = list(split.fit) if split is not None else list(training)
        if not fit_items:
            raise ValueError(f"{self.name}: no training images to fit on")
        classes = sorted({item.label for item in fit_items})
        setup = self.build(classes, device)
        setup.trainee.freeze_batchnorm = settings["freeze_batchnorm"]
        face_crop = self.make_face_crop(setup.image_size)
        preparer = ImagePreparer(round(setup.image_size / CROP_PCT), face_crop.crop if face_crop else None)
        mean, std = normalisation_of(setup.eval_transform)
        transform = (training_transform(setup.image_size, mean, std) if settings["augment"]
                     else setup.eval_transform)
        class_index = {label: number for number, label in enumerate(classes)}
        return _Start(split, fit_items, class_index, setup, face_crop, preparer, transform)

    def fit(self, training: Sequence, context: RaceContext | None = None,
            deadline: float | None = None) -> Fitted:
        context = context or RaceContext()
        settings = self.settings
        device = self.device
        start = self._start(training, context, device)
        setup, fit_items = start.setup, start.fit_items
        workers = self.data_workers(device, context)
        prepared = prepare_images([item.path for item in fit_items], start.preparer, workers)
        for index, problem in sorted(prepared.problems.items())[:10]:
            warn(f"{self.name}: skipped unreadable training image {fit_items[index].path}: {problem}")
        keep = [index for index, array in enumerate(prepared.arrays) if array is not None]
        if not keep:
            raise ValueError(f"{self.name}: none of the {len(fit_items)} training images could be read")
        labels = [start.class_index[fit_items[index].label] for index in keep]
        dataset = TrainingImages([prepared.arrays[index] for index in keep], labels, start.transform)
        sampler = self.batch_sampler(labels)
        validation = (ValidationImages.from_split(start.split, start.preparer, setup.eval_transform, workers)
                      if start.split is not None else None)
        data = TrainingData(dataset, sampler, validation, start.face_crop, prepared)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                            pin_memory=device.type == "cuda", persistent_workers=False)

        optimizer = self.optimizer(setup)
        steps = settings["steps"]
        scheduler = warmup_cosine(optimizer, min(MAX_WARMUP_STEPS, max(1, steps // 10)), max(1, steps))
        evaluate = None
        training_deadline = deadline
        if validation is not None:
            def evaluate() -> float:
                return validation.score(setup.embed, device)
            if deadline is not None:
                # stop training early enough for finish()'s evaluations (clip-ft's WiSE-FT mix) and
                # one more; train_until itself skips its final evaluation once its deadline has passed
                setup.trainee.eval()
                started = time.monotonic()
                evaluate()
                reserve = 1.5 * (1 + self.final_evaluations) * (time.monotonic() - started)
                training_deadline = deadline - reserve
        result = train_until(setup.trainee, self.step_function(setup, device), loader, optimizer,
                             max_steps=steps, deadline=training_deadline, evaluate=evaluate,
                             evaluate_every=settings["evaluate_every"], scheduler=scheduler,
                             evaluate_at_start=settings["evaluate_at_start"] and evaluate is not None)
        del loader
        return self.finish(setup, result, data, device)

    def estimate(self, training: Sequence, context: RaceContext) -> float:
        """Seconds to fit on `training` and embed what the race embeds afterwards, from a probe:
        build the model, decode two batches, time two training steps and one inference batch."""
        settings = self.settings
        device = self.device
        started = time.monotonic()
        start = self._start(training, context, device)
        setup, fit_items, split = start.setup, start.fit_items, start.split
        build_seconds = time.monotonic() - started

        labels = [start.class_index[item.label] for item in fit_items]
        sampler = iter(self.batch_sampler(labels))
        rows = [next(sampler) for _ in range(2)]
        wanted = sorted({row for batch in rows for row in batch})
        prepared = prepare_images([fit_items[row].path for row in wanted], start.preparer, 0)
        prepare_per_image = prepared.seconds / max(1, len(wanted))
        arrays = {row: array for row, array in zip(wanted, prepared.arrays)}
        batches = []
        for batch in rows:
            readable = [row for row in batch if arrays[row] is not None] or [row for row in wanted if arrays[row] is not None]
            if not readable:
                raise ValueError(f"{self.name}: the probe could not read any training image")
            batches.append((torch.stack([start.transform(Image.fromarray(arrays[row])) for row in readable]),
                            torch.tensor([labels[row] for row in readable])))
        optimizer = self.optimizer(setup)
        step_seconds = seconds_per_step(setup.trainee, self.step_function(setup, device), batches, optimizer, steps=2)

        setup.trainee.eval()
        images = batches[0][0].to(device)
        with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.float16,
                                                    enabled=device.type == "cuda"):
            setup.embed(images)
            began = time.perf_counter()
            setup.embed(images)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            forward_per_image = (time.perf_counter() - began) / len(images)
        validation_count = len(split.queries) + len(split.gallery) if split is not None else 0
        evaluations = (settings["steps"] // max(1, settings["evaluate_every"]) + 1
                       + int(settings["evaluate_at_start"]) + self.final_evaluations)
        embed_per_image = forward_per_image + prepare_per_image / max(1, self.data_workers(device, context))
        del start, setup, optimizer, batches, images
        if device.type == "cuda":
            torch.cuda.empty_cache()
        per_fit = (prepare_per_image * len(training) + step_seconds * settings["steps"]
                   + forward_per_image * evaluations * validation_count)
        return build_seconds + max(1, context.fits) * per_fit + embed_per_image * context.images_after_fit


@dataclass
class _Start:
    split: ValidationSplit | None
    fit_items: list
    class_index: dict[str, int]         # identity -> class number (the classes sorted)
    setup: TrainingSetup
    face_crop: FaceCrop | None
    preparer: ImagePreparer
    transform: Any                      # the training transform (augmentation, or the eval one)


def training_report(result: TrainingResult, data: TrainingData) -> str:
    parts = [f"trained {result.steps} steps (stopped by {result.stopped_by}) in {result.seconds:.0f}s"]
    if result.best_score is not None:
        parts.append(f"kept step {result.best_step} (inner validation {result.best_score:.0f})")
    faces = data.prepared.faces_found + data.prepared.faces_missed
    if data.face_crop is not None and faces:
        parts.append(f"face crop: no face in {data.prepared.faces_missed} of {faces} training images")
    return "; ".join(parts)
