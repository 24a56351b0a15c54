"""siamese, arcface, triplet: an image backbone (toolkit.models.backbones) and a projection head
fine-tuned with a metric-learning loss (toolkit.training.losses) by TrainedImageStrategy.

    create_strategy("triplet")                                            # Lite0, last stage + head
    create_strategy("arcface", backbone="cnn:resnet50", unfreeze="all", steps=1000)
    create_strategy("siamese", backbone="clip:ViT-B-32/openai", face_crop=True)

    siamese   contrastive loss over every pair of a P x K batch         margin (0.5)
    arcface   an ArcFace head over the fit identities, dropped after     margin (0.5), scale (30)
    triplet   batch-hard triplet loss                                   margin (0.2)

The encoder is backbone + head (flippable); its fingerprint hashes the trained weights, the
preprocessing (face crop included) and the options.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from strategies import register
from strategies.base import Fitted, RaceContext, TorchEncoder, WeightsStatus, fingerprint_of
from strategies.trained.image_training import TrainedImageStrategy, TrainingData, TrainingSetup, training_report
from strategies.zero_shot.clip_zs import ClipZeroShot
from strategies.zero_shot.cnn_zs import CnnZeroShot, as_bool
from strategies.zero_shot.face_zs import FaceZeroShot
from toolkit.models.backbones import Backbone, backbone_status, create_backbone, parse_backbone
from toolkit.models.cnn import POOLINGS
from toolkit.models.transforms import preceded_by
from toolkit.training.freezing import Trainee, set_trainable, state_digest, tail_parameter_names
from toolkit.training.losses import LOSS_DEFAULTS, make_loss
from toolkit.training.loop import TrainingResult


class EmbeddingModel(nn.Module):
    """backbone (images -> features) then the projection head (Linear, or none)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, embedding_dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, embedding_dim) if embedding_dim > 0 else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


class MetricLearningTrainee(Trainee):
    def __init__(self, embedder: EmbeddingModel, criterion: nn.Module):
        super().__init__()
        self.embedder = embedder
        self.criterion = criterion


class FineTunedEncoder(TorchEncoder):
    """A trained embedder (backbone + head) behind the usual TorchEncoder."""


class MetricLearningStrategy(TrainedImageStrategy):
    """A backbone + projection head trained with the loss `loss_name` names; the encoder is backbone + head.

    Options, besides TrainedImageStrategy's (steps, lr, head_lr, unfreeze, face_crop, ...):
        backbone        "cnn:NAME" (default cnn:efficientnet_lite0; a bare NAME means cnn:NAME) or
                        "clip:MODEL/PRETRAINED" (PRETRAINED empty: random init seeded by `seed`)
        pretrained      cnn backbones: ImageNet weights (True) or a seeded random init (False)
        pooling         cnn backbones: "avg" (default) or "gem"
        embedding_dim   the projection head's (Linear) width, 256; 0 = no head (backbone features)
        image_size      cnn backbones: 224 (CLIP towers use their own)
    """

    images_per_second_cpu = 20.0
    loss_name: ClassVar[str]            # a toolkit.training.losses name; its options are the strategy's
    final_evaluations = 0
    CHOICES = {**TrainedImageStrategy.CHOICES, "pooling": POOLINGS}

    def __init_subclass__(cls, **kwargs):
        cls.own_defaults = {"backbone": "cnn:efficientnet_lite0", "pretrained": True, "pooling": "avg",
                            "embedding_dim": 256, "image_size": 224, **LOSS_DEFAULTS[cls.loss_name]}
        super().__init_subclass__(**kwargs)     # DEFAULTS from own_defaults

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
        return self.with_face_crop_status(
            backbone_status(self.settings["backbone"], pretrained=self.settings["pretrained"], label=self.name))

    def estimate_seconds(self, n_images: int, context: RaceContext | None = None) -> float:
        """Nominal embedding cost: the zero-shot speed of the backbone's family, slowed by the face crop."""
        kind = parse_backbone(self.settings["backbone"])[0]
        speed = (CnnZeroShot if kind == "cnn" else ClipZeroShot).images_per_second_cpu
        speed *= 8.0 if torch.cuda.is_available() else 1.0
        seconds_per_image = 1.0 / speed
        if self.settings["face_crop"]:
            seconds_per_image += 1.0 / FaceZeroShot.images_per_second_cpu  # detection runs on the CPU
        return n_images * seconds_per_image

    def criterion(self, embedding_dim: int, class_count: int) -> nn.Module:
        """The loss, with the strategy's options for it (ArcFace's class centres train too)."""
        options = {key: self.settings[key] for key in LOSS_DEFAULTS[self.loss_name]}
        return make_loss(self.loss_name, embedding_dim=embedding_dim, num_classes=class_count, **options)

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
        head_parameters = list(embedder.head.parameters()) + list(criterion.parameters())
        groups = [{"params": backbone_parameters, "lr": settings["lr"]},
                  {"params": head_parameters, "lr": settings["head_lr"]}]
        if not backbone_parameters and not list(embedder.head.parameters()):
            raise ValueError(f"{self.name}: unfreeze=head with embedding_dim=0 leaves nothing of the "
                             "encoder to train; give a projection head (embedding_dim > 0) or unfreeze more")

        def loss(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            embeddings = embedder(images)
            with torch.autocast(device_type=device.type, enabled=False):  # losses in float32
                return criterion(F.normalize(embeddings.float(), dim=1), labels)

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
    loss_name = "contrastive"


@register
class ArcFace(MetricLearningStrategy):
    name = "arcface"
    summary = "backbone fine-tuned with an ArcFace head over the training identities"
    loss_name = "arcface"


@register
class Triplet(MetricLearningStrategy):
    name = "triplet"
    summary = "backbone fine-tuned with a batch-hard triplet loss"
    loss_name = "triplet"
