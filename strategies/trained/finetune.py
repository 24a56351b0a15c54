"""siamese, arcface, triplet: an image backbone fine-tuned with a metric-learning objective.

    create_strategy("triplet")                                            # Lite0, last stage + head
    create_strategy("arcface", backbone="cnn:resnet50", unfreeze="all", steps=1000)
    create_strategy("siamese", backbone="clip:ViT-B-32/openai", face_crop=True)

One shared base, `TrainedImageStrategy`, owns everything but the model and the loss: the inner
validation split (toolkit.data.split, 15% of the identities it is given), decoding every training
image once (optionally through the face crop), P x K identity batches with augmentation, AdamW
with warm-up + cosine, `toolkit.training.loop.train_until` (deadline, AMP on CUDA, best checkpoint by
the inner validation score), and the short probe behind `estimate`. `MetricLearningStrategy`
adds a backbone + projection head and one loss from toolkit.training.losses; `clip_ft` builds on the same
base with open_clip's two towers.

    siamese   contrastive_pair_loss over every pair of a P x K batch (the real and stylised images
              of one identity are its positive pairs)              margin (0.5)
    arcface   ArcFaceHead over the fit identities; the head is dropped after training
                                                                   margin (0.5), scale (30)
    triplet   batch_hard_triplet_loss                              margin (0.2)

Options (all three):
    backbone            "cnn:NAME" (default cnn:efficientnet_lite0): any cnn-zs backbone, built by
                        cnn-zs with its preprocessing and `pooling`; a bare NAME means cnn:NAME.
                        "clip:MODEL/PRETRAINED": an open_clip visual tower as clip-zs loads it
                        (PRETRAINED empty = random init seeded by `seed`).
    pretrained          cnn backbones: ImageNet weights (True) or a seeded random init (False)
    pooling             cnn backbones: "avg" (default) or "gem"
    embedding_dim       projection head (Linear) size, 256; 0 = no head (backbone features)
    steps               optimizer steps, 300 (fewer when the deadline comes first)
    lr, head_lr         AdamW learning rates of the backbone (1e-4) and of the heads (1e-3)
    weight_decay        1e-4
    unfreeze            "last" (default: the last `unfreeze_blocks` blocks of the backbone and
                        everything after them, plus the head), "all", "head" (backbone frozen)
    unfreeze_blocks     1
    image_size          cnn backbones: 224 (clip towers use their own)
    identities_per_batch, images_per_identity   P x K, 8 x 4
    augment             random resized crop + flip + colour jitter + random grayscale (True)
    face_crop           dlib detection + 5-point alignment (face-zs's models) in front of the
                        backbone, at training and at embedding time; the whole image when no face
                        is found (False)
    freeze_batchnorm    every BatchNorm layer keeps its running statistics (eval mode) while its
                        affine weights train (True). Checked on an H100 with a 128-px copy of
                        lfw-style, Lite0, 300 steps: with training-mode BatchNorm, triplet and
                        arcface made the inner-validation score worse than the untrained weights
                        (344 -> 290 / 307; Lite0's BatchNorm momentum is 0.01, so the running
                        statistics lag the weights); frozen, 406 / 359, and siamese 382 -> 432.
    evaluate_every      inner-validation evaluations every N steps, 50 (and at the end)
    evaluate_at_start   the untrained weights compete for the best checkpoint too (True)
    seed, device, num_workers (training data loader; default 0 on CPU, up to 8 on CUDA)

"The last blocks" are found without knowing the architecture: the largest nn.Sequential /
nn.ModuleList with two or more children holding weights is the block stack (Lite0's 7 stages,
a ViT's residual blocks, ResNet's layer4); the parameters that still get a gradient when the
input of its last N children is detached are its last N children and everything after them
(conv head, final norm, projection). BatchNorm layers with no trainable weights always stay in
eval mode while training.

fit() returns a TorchEncoder (backbone + head, flippable) whose fingerprint hashes the trained
weights (every state_dict byte), the preprocessing and the options; report() says how training went.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from strategies import register
from strategies.base import (Encoder, Fitted, RaceContext, Strategy, TorchEncoder, WeightsStatus, WeightsUnavailable, default_device,
                             fingerprint_of, l2_normalise)
from strategies.zero_shot.cnn_zs import as_bool
from toolkit.machine.console import warn
from toolkit.data.images import UnreadableImage, load_rgb
from toolkit.models.backbones import Backbone, backbone_status, create_backbone, first_tensor, parse_backbone
from toolkit.models.faces import FaceCrop
from toolkit.models.faces import weights_status as face_crop_status
from toolkit.models.transforms import normalisation_of, preceded_by, training_transform
from toolkit.training.losses import ArcFaceHead, batch_hard_triplet_loss, contrastive_pair_loss
from toolkit.data.split import ValidationSplit, make_validation_split
from toolkit.training.loop import (IdentityBatchSampler, TrainingResult, seconds_per_step, seed_everything,
                              train_until, validation_score, warmup_cosine)

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


# ---------------------------------------------------------------- preprocessing

class ImagePreparer:
    """Path -> a decoded RGB uint8 array, face-cropped when asked, its shorter side shrunk to at
    most `shorter_side` (what every later transform starts from; decoded once per fit). Picklable."""

    def __init__(self, shorter_side: int, face_crop: FaceCrop | None = None):
        self.shorter_side = int(shorter_side)
        self.face_crop = face_crop

    def __call__(self, path) -> tuple[np.ndarray, bool | None]:
        image = load_rgb(path)
        found = None
        if self.face_crop is not None:
            image, found = self.face_crop.crop(image)
        shorter = min(image.size)
        if shorter > self.shorter_side:
            scale = self.shorter_side / shorter
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.BICUBIC)
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8)), found


class _PreparedFiles(Dataset):
    def __init__(self, paths: Sequence, preparer: ImagePreparer):
        self.paths, self.preparer = list(paths), preparer

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            array, found = self.preparer(self.paths[index])
            return index, array, found, ""
        except UnreadableImage as error:
            return index, None, None, error.reason


def _items_as_list(items):
    return items


@dataclass
class PreparedImages:
    arrays: list[np.ndarray | None]                     # one per path; None when unreadable
    problems: dict[int, str] = field(default_factory=dict)
    faces_found: int = 0
    faces_missed: int = 0
    seconds: float = 0.0


def prepare_images(paths: Sequence, preparer: ImagePreparer, num_workers: int = 0) -> PreparedImages:
    """Every path decoded (and face-cropped) once, in DataLoader workers when num_workers > 0."""
    started = time.perf_counter()
    result = PreparedImages(arrays=[None] * len(paths))
    if not paths:
        return result
    loader = DataLoader(_PreparedFiles(paths, preparer), batch_size=8, num_workers=num_workers,
                        collate_fn=_items_as_list, persistent_workers=False)
    for items in loader:
        for index, array, found, problem in items:
            result.arrays[index] = array
            if problem:
                result.problems[index] = problem
            elif found is not None:
                result.faces_found += int(found)
                result.faces_missed += int(not found)
    result.seconds = time.perf_counter() - started
    return result


class TrainingImages(Dataset):
    """Prepared arrays -> (augmented tensor, identity index)."""

    def __init__(self, arrays: Sequence[np.ndarray], labels: Sequence[int], transform: Any):
        self.arrays, self.labels, self.transform = list(arrays), list(labels), transform

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.arrays[index])), self.labels[index]


class ValidationImages:
    """The inner validation split, preprocessed once (float16 tensors), scored by any embed function."""

    def __init__(self, tensors: torch.Tensor, labels: list[str], query_count: int, batch_size: int = 64):
        self.tensors, self.labels, self.query_count, self.batch_size = tensors, labels, query_count, batch_size

    @classmethod
    def from_split(cls, split: ValidationSplit, preparer: ImagePreparer, transform: Any,
                   num_workers: int = 0, batch_size: int = 64) -> "ValidationImages | None":
        items = list(split.queries) + list(split.gallery)
        prepared = prepare_images([item.path for item in items], preparer, num_workers)
        keep = [index for index, array in enumerate(prepared.arrays) if array is not None]
        query_count = sum(1 for index in keep if index < len(split.queries))
        if not query_count or query_count == len(keep):
            return None
        tensors = torch.stack([transform(Image.fromarray(prepared.arrays[index])) for index in keep]).half()
        return cls(tensors, [items[index].label for index in keep], query_count, batch_size)

    def __len__(self) -> int:
        return len(self.labels)

    def embed(self, embed: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> np.ndarray:
        chunks = []
        with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.float16,
                                                    enabled=device.type == "cuda"):
            for batch in self.tensors.split(self.batch_size):
                chunks.append(embed(batch.to(device).float()).float().cpu())
        return l2_normalise(torch.cat(chunks).numpy())

    def score(self, embed: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> float:
        vectors = self.embed(embed, device)
        count = self.query_count
        return validation_score(vectors[:count], vectors[count:], self.labels[:count], self.labels[count:])


# ---------------------------------------------------------------- which weights train

def block_stack(module: nn.Module) -> tuple[str, nn.Module] | None:
    """(name, container) of the largest nn.Sequential / nn.ModuleList with >= 2 weighted children."""
    best: tuple[int, str, nn.Module] | None = None
    for name, container in module.named_modules():
        if not isinstance(container, (nn.Sequential, nn.ModuleList)):
            continue
        weighted = [child for child in container.children() if any(True for _ in child.parameters())]
        if len(weighted) < 2:
            continue
        count = sum(parameter.numel() for parameter in container.parameters())
        if best is None or count > best[0]:
            best = (count, name, container)
    return None if best is None else (best[1], best[2])


def tail_parameter_names(module: nn.Module, blocks: int, example: torch.Tensor) -> set[str]:
    """Names of the parameters of the last `blocks` blocks of the block stack and of everything
    the output depends on after them (found by gradient flow with the blocks' input detached);
    every parameter when there is no block stack or `blocks` covers all of it."""
    names = {name for name, _ in module.named_parameters()}
    found = block_stack(module)
    if found is None:
        return names
    _, stack = found
    weighted = [child for child in stack.children() if any(True for _ in child.parameters())]
    if blocks >= len(weighted):
        return names
    requires = {name: parameter.requires_grad for name, parameter in module.named_parameters()}
    was_training = module.training
    cut = weighted[-blocks] if blocks > 0 else None

    def detach_input(_module, args, kwargs):
        return tuple(arg.detach() if isinstance(arg, torch.Tensor) else arg for arg in args), kwargs

    def detach_output(_module, _args, output):
        return output.detach() if isinstance(output, torch.Tensor) else output

    handle = (cut.register_forward_pre_hook(detach_input, with_kwargs=True) if cut is not None
              else weighted[-1].register_forward_hook(detach_output))
    try:
        for parameter in module.parameters():
            parameter.requires_grad_(True)
            parameter.grad = None
        module.eval()
        with torch.enable_grad():
            first_tensor(module(example)).float().sum().backward()
        tail = {name for name, parameter in module.named_parameters() if parameter.grad is not None}
    finally:
        handle.remove()
        for name, parameter in module.named_parameters():
            parameter.grad = None
            parameter.requires_grad_(requires[name])
        module.train(was_training)
    return tail


def set_trainable(module: nn.Module, names: set[str] | None) -> None:
    """requires_grad on the named parameters (every one when names is None), off elsewhere."""
    for name, parameter in module.named_parameters():
        parameter.requires_grad_(names is None or name in names)


def state_digest(module: nn.Module) -> str:
    """sha1 over every state_dict entry: name, dtype, shape and bytes."""
    digest = hashlib.sha1()
    for name, value in module.state_dict().items():
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Trainee(nn.Module):
    """Every weight that trains, under one module (train_until checkpoints its state_dict).
    BatchNorm layers without trainable weights stay in eval mode when it trains, and so do all of
    them when `freeze_batchnorm` (running statistics kept, affine weights still trained)."""

    freeze_batchnorm: bool = False

    def train(self, mode: bool = True) -> "Trainee":
        super().train(mode)
        if mode:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and (self.freeze_batchnorm or not any(
                        parameter.requires_grad for parameter in module.parameters(recurse=False))):
                    module.eval()
        return self


# ---------------------------------------------------------------- the shared base

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
    the estimate probe. Subclasses give `own_defaults`, build() and finish()."""

    trains = True
    own_defaults: ClassVar[dict[str, Any]] = {}
    # evaluations of the inner validation split that finish() runs after training
    final_evaluations: ClassVar[int] = 0

    def __init__(self, **options: Any):
        known = {**TRAINING_DEFAULTS, **self.own_defaults}
        unknown = sorted(set(options) - set(known))
        if unknown:
            hint = " (the batch is identities_per_batch x images_per_identity)" if "batch_size" in unknown else ""
            raise ValueError(f"{self.name}: unknown option(s) {', '.join(unknown)}{hint}; "
                             f"known: {', '.join(sorted(known))}")
        super().__init__(**options)
        self.settings = {**known, **options}
        settings = self.settings
        for key in ("steps", "unfreeze_blocks", "identities_per_batch", "images_per_identity", "evaluate_every"):
            settings[key] = int(settings[key])
        for key in ("lr", "head_lr", "weight_decay"):
            settings[key] = float(settings[key])
        for key in ("augment", "face_crop", "freeze_batchnorm", "evaluate_at_start"):
            settings[key] = as_bool(settings[key])
        settings["seed"] = int(settings["seed"])
        if settings["unfreeze"] not in UNFREEZE_CHOICES:
            raise ValueError(f"{self.name}: unfreeze must be one of {', '.join(UNFREEZE_CHOICES)}, "
                             f"not {settings['unfreeze']!r}")
        if settings["steps"] < 0 or settings["unfreeze_blocks"] < 0:
            raise ValueError(f"{self.name}: steps and unfreeze_blocks must be >= 0")
        if settings["identities_per_batch"] < 2 or settings["images_per_identity"] < 2:
            raise ValueError(f"{self.name}: a metric-learning batch needs identities_per_batch >= 2 and "
                             "images_per_identity >= 2 (positives and negatives in every batch)")

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

    def make_face_crop(self, image_size: int) -> FaceCrop | None:
        if not self.settings["face_crop"]:
            return None
        status = face_crop_status()
        if not status.available_offline:
            raise WeightsUnavailable(f"{self.name}: face_crop needs dlib and its models: {status.detail}")
        return FaceCrop(size=round(image_size / CROP_PCT))

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

    def _labelled(self, training: Sequence, context: RaceContext) -> tuple[ValidationSplit | None, list, list[str]]:
        split = self.inner_split(training, context)
        fit_items = list(split.fit) if split is not None else list(training)
        if not fit_items:
            raise ValueError(f"{self.name}: no training images to fit on")
        classes = sorted({item.label for item in fit_items})
        return split, fit_items, classes

    def fit(self, training: Sequence, context: RaceContext | None = None,
            deadline: float | None = None) -> Fitted:
        context = context or RaceContext()
        settings = self.settings
        device = self.device
        seed_everything(settings["seed"])
        split, fit_items, classes = self._labelled(training, context)
        setup = self.build(classes, device)
        setup.trainee.freeze_batchnorm = settings["freeze_batchnorm"]
        face_crop = self.make_face_crop(setup.image_size)
        workers = self.data_workers(device, context)
        preparer = ImagePreparer(round(setup.image_size / CROP_PCT), face_crop)
        prepared = prepare_images([item.path for item in fit_items], preparer, workers)
        for index, problem in sorted(prepared.problems.items())[:10]:
            warn(f"{self.name}: skipped unreadable training image {fit_items[index].path}: {problem}")
        keep = [index for index, array in enumerate(prepared.arrays) if array is not None]
        if not keep:
            raise ValueError(f"{self.name}: none of the {len(fit_items)} training images could be read")
        class_index = {label: number for number, label in enumerate(classes)}
        labels = [class_index[fit_items[index].label] for index in keep]
        mean, std = normalisation_of(setup.eval_transform)
        transform = (training_transform(setup.image_size, mean, std) if settings["augment"]
                     else setup.eval_transform)
        dataset = TrainingImages([prepared.arrays[index] for index in keep], labels, transform)
        sampler = IdentityBatchSampler(labels, settings["identities_per_batch"], settings["images_per_identity"],
                                       seed=settings["seed"])
        validation = (ValidationImages.from_split(split, preparer, setup.eval_transform, workers)
                      if split is not None else None)
        data = TrainingData(dataset, sampler, validation, face_crop, prepared)
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
        seed_everything(settings["seed"])
        split, fit_items, classes = self._labelled(training, context)
        setup = self.build(classes, device)
        setup.trainee.freeze_batchnorm = settings["freeze_batchnorm"]
        face_crop = self.make_face_crop(setup.image_size)
        build_seconds = time.monotonic() - started

        class_index = {label: number for number, label in enumerate(classes)}
        labels = [class_index[item.label] for item in fit_items]
        sampler = iter(IdentityBatchSampler(labels, settings["identities_per_batch"],
                                            settings["images_per_identity"], seed=settings["seed"]))
        rows = [next(sampler) for _ in range(2)]
        wanted = sorted({row for batch in rows for row in batch})
        preparer = ImagePreparer(round(setup.image_size / CROP_PCT), face_crop)
        prepared = prepare_images([fit_items[row].path for row in wanted], preparer, 0)
        prepare_per_image = prepared.seconds / max(1, len(wanted))
        arrays = {row: array for row, array in zip(wanted, prepared.arrays)}
        mean, std = normalisation_of(setup.eval_transform)
        transform = (training_transform(setup.image_size, mean, std) if settings["augment"]
                     else setup.eval_transform)
        batches = []
        for batch in rows:
            readable = [row for row in batch if arrays[row] is not None] or [row for row in wanted if arrays[row] is not None]
            if not readable:
                raise ValueError(f"{self.name}: the probe could not read any training image")
            batches.append((torch.stack([transform(Image.fromarray(arrays[row])) for row in readable]),
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
        del setup, optimizer, batches, images
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return (build_seconds + prepare_per_image * len(training) + step_seconds * settings["steps"]
                + forward_per_image * evaluations * validation_count + embed_per_image * context.images_after_fit)


def training_report(result: TrainingResult, data: TrainingData) -> str:
    parts = [f"trained {result.steps} steps (stopped by {result.stopped_by}) in {result.seconds:.0f}s"]
    if result.best_score is not None:
        parts.append(f"kept step {result.best_step} (inner validation {result.best_score:.0f})")
    faces = data.prepared.faces_found + data.prepared.faces_missed
    if data.face_crop is not None and faces:
        parts.append(f"face crop: no face in {data.prepared.faces_missed} of {faces} training images")
    return "; ".join(parts)


# ---------------------------------------------------------------- metric learning

class EmbeddingModel(nn.Module):
    """backbone (images -> features) then the projection head (Linear, or none)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, embedding_dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, embedding_dim) if embedding_dim > 0 else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


class MetricLearningTrainee(Trainee):
    def __init__(self, embedder: EmbeddingModel, criterion: nn.Module | None = None):
        super().__init__()
        self.embedder = embedder
        self.criterion = criterion


class FineTunedEncoder(TorchEncoder):
    """A trained embedder (backbone + head) behind the usual TorchEncoder."""


class MetricLearningStrategy(TrainedImageStrategy):
    """A backbone + projection head trained with `objective()`; the encoder is backbone + head."""

    images_per_second_cpu = 20.0
    loss_defaults: ClassVar[dict[str, Any]] = {}
    final_evaluations = 0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.own_defaults = {"backbone": "cnn:efficientnet_lite0", "pretrained": True, "pooling": "avg",
                            "embedding_dim": 256, "image_size": 224, **cls.loss_defaults}

    def __init__(self, **options: Any):
        super().__init__(**options)
        settings = self.settings
        settings["pretrained"] = as_bool(settings["pretrained"])
        settings["embedding_dim"] = int(settings["embedding_dim"])
        settings["image_size"] = int(settings["image_size"])
        parse_backbone(settings["backbone"])  # fail early on a malformed name
        if settings["embedding_dim"] < 0:
            raise ValueError(f"{self.name}: embedding_dim must be >= 0 (0 = no projection head)")

    def weights_status(self) -> WeightsStatus:
        status = backbone_status(self.settings["backbone"], pretrained=self.settings["pretrained"], label=self.name)
        if status.available_offline and self.settings["face_crop"]:
            faces = face_crop_status()
            if not faces.available_offline:
                return WeightsStatus(False, f"face_crop: {faces.detail}")
        return status

    def estimate_seconds(self, n_images: int, context: RaceContext | None = None) -> float:
        """Nominal embedding cost: the zero-shot speed of the backbone's family, slowed by the face crop."""
        from strategies.zero_shot.clip_zs import ClipZeroShot
        from strategies.zero_shot.cnn_zs import CnnZeroShot
        from strategies.zero_shot.face_zs import FaceZeroShot

        kind = parse_backbone(self.settings["backbone"])[0]
        speed = (CnnZeroShot if kind == "cnn" else ClipZeroShot).images_per_second_cpu
        speed *= 8.0 if torch.cuda.is_available() else 1.0
        seconds_per_image = 1.0 / speed
        if self.settings["face_crop"]:
            seconds_per_image += 1.0 / FaceZeroShot.images_per_second_cpu  # detection runs on the CPU
        return n_images * seconds_per_image

    def criterion(self, embedding_dim: int, class_count: int) -> nn.Module | None:
        """A loss module with weights (ArcFace), or None."""
        return None

    def objective(self, trainee: MetricLearningTrainee, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def build(self, classes: list[str], device: torch.device) -> TrainingSetup:
        settings = self.settings
        backbone = create_backbone(settings["backbone"], pretrained=settings["pretrained"], pooling=settings["pooling"],
                                   image_size=settings["image_size"], seed=settings["seed"], label=self.name)
        backbone.module.to(device).eval()
        embedder = EmbeddingModel(backbone.module, backbone.feature_dim, settings["embedding_dim"]).to(device)
        output_dim = settings["embedding_dim"] or backbone.feature_dim
        criterion = self.criterion(output_dim, len(classes))
        trainee = MetricLearningTrainee(embedder, criterion).to(device)
        unfreeze = settings["unfreeze"]
        if unfreeze == "all":
            set_trainable(backbone.module, None)
        elif unfreeze == "head":
            set_trainable(backbone.module, set())
        else:
            example = torch.zeros(2, 3, backbone.image_size, backbone.image_size, device=device)
            set_trainable(backbone.module, tail_parameter_names(backbone.module, settings["unfreeze_blocks"], example))
        backbone_parameters = [parameter for parameter in backbone.module.parameters() if parameter.requires_grad]
        head_parameters = list(embedder.head.parameters()) + (list(criterion.parameters()) if criterion else [])
        groups = [{"params": backbone_parameters, "lr": settings["lr"]},
                  {"params": head_parameters, "lr": settings["head_lr"]}]
        if not backbone_parameters and not list(embedder.head.parameters()):
            raise ValueError(f"{self.name}: unfreeze=head with embedding_dim=0 leaves nothing of the "
                             "encoder to train; give a projection head (embedding_dim > 0) or unfreeze more")

        def loss(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            embeddings = embedder(images)
            with torch.autocast(device_type=device.type, enabled=False):  # losses in float32
                return self.objective(trainee, F.normalize(embeddings.float(), dim=1), labels)

        return TrainingSetup(trainee=trainee, embed=embedder, loss=loss, parameter_groups=groups,
                             eval_transform=backbone.transform, image_size=backbone.image_size,
                             extras={"backbone": backbone})

    def finish(self, setup: TrainingSetup, result: TrainingResult, data: TrainingData,
               device: torch.device) -> Fitted:
        embedder = setup.trainee.embedder.eval()
        backbone: Backbone = setup.extras["backbone"]
        transform = preceded_by(setup.eval_transform, data.face_crop)
        fingerprint = fingerprint_of(self.name, self.fingerprint_settings(), backbone.identity,
                                     state_digest(embedder), str(transform))
        batch_size = max(32, self.settings["identities_per_batch"] * self.settings["images_per_identity"])
        encoder = FineTunedEncoder(embedder, transform, fingerprint, device=device, batch_size=batch_size)
        return Fitted(encoder, training_report(result, data), {"training": result})


@register
class Siamese(MetricLearningStrategy):
    name = "siamese"
    summary = "backbone fine-tuned with a contrastive loss on the pairs of P x K batches"
    loss_defaults = {"margin": 0.5}

    def objective(self, trainee, embeddings, labels):
        return contrastive_pair_loss(embeddings, labels, margin=float(self.settings["margin"]))


@register
class ArcFace(MetricLearningStrategy):
    name = "arcface"
    summary = "backbone fine-tuned with an ArcFace head over the training identities"
    loss_defaults = {"margin": 0.5, "scale": 30.0}

    def criterion(self, embedding_dim: int, class_count: int) -> nn.Module:
        return ArcFaceHead(embedding_dim, class_count, scale=float(self.settings["scale"]),
                           margin=float(self.settings["margin"]))

    def objective(self, trainee, embeddings, labels):
        return trainee.criterion(embeddings, labels)


@register
class Triplet(MetricLearningStrategy):
    name = "triplet"
    summary = "backbone fine-tuned with a batch-hard triplet loss"
    loss_defaults = {"margin": 0.2}

    def objective(self, trainee, embeddings, labels):
        return batch_hard_triplet_loss(embeddings, labels, margin=float(self.settings["margin"]))
