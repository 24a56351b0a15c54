"""clip-ft: open_clip fine-tuned on the training identities, then mixed back with its zero-shot weights.

    create_strategy("clip-ft", model="ViT-B-32", pretrained="openai")
    create_strategy("clip-ft", objective="both", unfreeze="all", steps=1000)

The model is loaded as clip-zs loads it (toolkit.models.backbones), trained by TrainedImageStrategy
with a FLYP (image-text) and/or SupCon + classifier objective, and its visual weights are then
interpolated with the zero-shot ones (WiSE-FT) at the ratio the inner validation prefers.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from strategies import register
from strategies.base import Fitted, WeightsStatus, WeightsUnavailable, fingerprint_of
from strategies.trained.image_training import TrainedImageStrategy, TrainingData, TrainingSetup, training_report
from strategies.zero_shot.clip_zs import ClipImageEncoder
from toolkit.models.backbones import clip_backbone
from toolkit.models.clip import DEFAULT_MODEL, DEFAULT_PRETRAINED, clip_model_names, clip_weights_status
from toolkit.models.transforms import preceded_by
from toolkit.models.weights import first_line
from toolkit.training.freezing import Trainee, set_trainable, state_digest, tail_parameter_names
from toolkit.training.losses import make_loss
from toolkit.training.loop import TrainingResult

OBJECTIVES = ("flyp", "supcon", "both")
WISE_RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)
ENCODER_BATCH_SIZE = 32


def parse_ratios(value: Any) -> tuple[float, ...]:
    """A number, a sequence of numbers, or text like "0/0.5/1" -> sorted unique ratios in [0, 1]."""
    if isinstance(value, (int, float)):
        ratios = [float(value)]
    elif isinstance(value, str):
        ratios = [float(part) for part in re.split(r"[/;|\s]+", value.strip()) if part]
    else:
        ratios = [float(part) for part in value]
    if not ratios or any(not 0.0 <= ratio <= 1.0 for ratio in ratios):
        raise ValueError(f"clip-ft: wise_ratios must be numbers in [0, 1], not {value!r}")
    return tuple(sorted(set(ratios)))


def interpolate(zero_shot: dict[str, torch.Tensor], fine_tuned: dict[str, torch.Tensor],
                ratio: float) -> dict[str, torch.Tensor]:
    """(1 - ratio) * zero_shot + ratio * fine_tuned for floating entries; exact copies at 0 and 1."""
    if ratio == 0.0:
        return zero_shot
    if ratio == 1.0:
        return fine_tuned
    mixed = {}
    for key, tuned in fine_tuned.items():
        original = zero_shot[key]
        if tuned.is_floating_point():
            mixed[key] = ((1.0 - ratio) * original.float() + ratio * tuned.float()).to(tuned.dtype)
        else:
            mixed[key] = tuned
    return mixed


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}


class ClipTrainee(Trainee):
    def __init__(self, model: nn.Module, classifier: nn.Parameter | None):
        super().__init__()
        self.model = model
        self.classifier = classifier


class ClipFineTunedEncoder(ClipImageEncoder):
    """The CLIP image tower with the chosen WiSE-FT mix."""


@register
class ClipFineTune(TrainedImageStrategy):
    """Objectives:
        flyp     (default) fine-tune as CLIP was pre-trained: each identity's text is `prompt`
                 ("a photo of {}", underscores as spaces); the CLIP loss between the batch's images
                 and its identities' texts (image -> text, and text -> image with every image of the
                 identity a positive), at CLIP's logit scale
        supcon   SupCon (`temperature` 0.1) on the image embeddings, plus cross-entropy of a cosine
                 classifier over the fit identities initialised with their text embeddings
        both     the sum
    unfreeze: "last" (default) the last `unfreeze_blocks` (2) residual blocks of the visual tower
    and what follows them, text tower frozen; "head" only what follows the blocks; "all" both towers
    and the logit scale.
    WiSE-FT (Wortsman et al. 2022): the visual weights (1 - r) * zero-shot + r * fine-tuned for each
    r in `wise_ratios` (0, 0.25, 0.5, 0.75, 1; a number or "0/0.5/1" fixes the grid), the best r on
    inner validation kept (ties: nearest 0.5). When the kept weights are the zero-shot ones the
    encoder carries clip-zs's fingerprint (without face_crop), so the cached embeddings are shared.
    Other options: lr (1e-5), head_lr (1e-3, the classifier), steps (300), and TrainedImageStrategy's.
    """

    name = "clip-ft"
    summary = "open_clip fine-tuned on the training identities (FLYP / SupCon), WiSE-FT mixed"
    images_per_second_cpu = 6.0
    own_defaults = {"model": DEFAULT_MODEL, "pretrained": DEFAULT_PRETRAINED, "objective": "flyp",
                    "unfreeze_blocks": 2, "lr": 1e-5, "wise_ratios": WISE_RATIOS,
                    "prompt": "a photo of {}", "temperature": 0.1}
    CHOICES = {**TrainedImageStrategy.CHOICES, "objective": OBJECTIVES,
               "model": lambda options: clip_model_names(options["model"])}

    def __init__(self, **options: Any):
        super().__init__(**options)
        settings = self.settings
        settings["pretrained"] = settings["pretrained"] or None
        settings["wise_ratios"] = parse_ratios(settings["wise_ratios"])
        settings["temperature"] = float(settings["temperature"])
        if "{}" not in str(settings["prompt"]):
            raise ValueError(f"clip-ft: prompt must hold {{}} where the identity's name goes, "
                             f"not {settings['prompt']!r}")
        ratios = settings["wise_ratios"]
        self.final_evaluations = len(ratios) if len(ratios) > 1 else 0

    def weights_status(self) -> WeightsStatus:
        return self.with_face_crop_status(clip_weights_status(self.settings["model"], self.settings["pretrained"]))

    def prompts(self, classes: Sequence[str]) -> list[str]:
        return [str(self.settings["prompt"]).format(label.replace("_", " ")) for label in classes]

    def build(self, classes: list[str], device: torch.device) -> TrainingSetup:
        import open_clip

        settings = self.settings
        zero_shot = clip_backbone(settings["model"], settings["pretrained"], seed=settings["seed"], label=self.name)
        model = zero_shot.model.to(device).eval()
        try:
            tokenizer = open_clip.get_tokenizer(settings["model"])
        except Exception as error:  # an HF tokenizer that is neither cached nor downloadable
            raise WeightsUnavailable(f"clip-ft: no tokenizer for open_clip {settings['model']} "
                                     f"({first_line(error)})") from None
        tokens = tokenizer(self.prompts(classes)).to(device)
        zero_shot_visual = _cpu_copy(model.visual.state_dict())
        image_size = zero_shot.image_size

        unfreeze = settings["unfreeze"]
        train_text = unfreeze == "all"
        if train_text:
            set_trainable(model, None)
        else:
            set_trainable(model, set())
            blocks = settings["unfreeze_blocks"] if unfreeze == "last" else 0
            example = torch.zeros(2, 3, image_size, image_size, device=device)
            set_trainable(model.visual, tail_parameter_names(model.visual, blocks, example))
        with torch.no_grad():
            class_text = F.normalize(model.encode_text(tokens).float(), dim=1)
        objective = settings["objective"]
        classifier = nn.Parameter(class_text.clone()) if objective in ("supcon", "both") else None
        supcon = make_loss("supcon", temperature=settings["temperature"])
        trainee = ClipTrainee(model, classifier).to(device)
        groups = [{"params": [parameter for parameter in model.parameters() if parameter.requires_grad],
                   "lr": settings["lr"]},
                  {"params": [classifier] if classifier is not None else [], "lr": settings["head_lr"]}]

        def loss(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            image = model.encode_image(images)
            present = torch.unique(labels) if objective in ("flyp", "both") else None
            text = model.encode_text(tokens[present]) if present is not None and train_text else None
            with torch.autocast(device_type=device.type, enabled=False):  # losses in float32
                image = F.normalize(image.float(), dim=1)
                scale = model.logit_scale.float().exp().clamp(max=100.0)
                total = image.new_zeros(())
                if present is not None:
                    texts = F.normalize(text.float(), dim=1) if text is not None else class_text[present]
                    targets = torch.searchsorted(present, labels)
                    logits = scale * image @ texts.T                                   # (images, texts)
                    image_to_text = F.cross_entropy(logits, targets)
                    positives = targets.view(1, -1) == torch.arange(len(present), device=device).view(-1, 1)
                    log_probability = F.log_softmax(logits.T, dim=1)                   # (texts, images)
                    text_to_image = (-(log_probability * positives).sum(1) / positives.sum(1)).mean()
                    total = total + (image_to_text + text_to_image) / 2
                if classifier is not None:
                    total = total + supcon(image, labels)
                    total = total + F.cross_entropy(scale * image @ F.normalize(classifier, dim=1).T, labels)
            return total

        return TrainingSetup(trainee=trainee, embed=model.encode_image, loss=loss, parameter_groups=groups,
                             eval_transform=zero_shot.transform, image_size=image_size,
                             extras={"zero_shot": zero_shot, "zero_shot_visual": zero_shot_visual,
                                     "zero_shot_digest": state_digest(model.visual)})

    def choose_ratio(self, scores: dict[float, float]) -> float:
        best = max(scores.values())
        tied = [ratio for ratio, score in scores.items() if score == best]
        return min(tied, key=lambda ratio: (abs(ratio - 0.5), ratio))

    def finish(self, setup: TrainingSetup, result: TrainingResult, data: TrainingData,
               device: torch.device) -> Fitted:
        model = setup.trainee.model.eval()
        zero_shot_visual = setup.extras["zero_shot_visual"]
        fine_tuned_visual = _cpu_copy(model.visual.state_dict())
        ratios = self.settings["wise_ratios"]
        scores: dict[float, float] = {}
        if len(ratios) == 1:
            chosen = ratios[0]
        elif data.validation is None:
            chosen = min(ratios, key=lambda ratio: (abs(ratio - 0.5), ratio))
        else:
            for ratio in ratios:
                model.visual.load_state_dict(interpolate(zero_shot_visual, fine_tuned_visual, ratio))
                scores[ratio] = data.validation.score(model.encode_image, device)
            chosen = self.choose_ratio(scores)
        model.visual.load_state_dict(interpolate(zero_shot_visual, fine_tuned_visual, chosen))
        set_trainable(model, set())

        zero_shot = setup.extras["zero_shot"]
        transform = preceded_by(setup.eval_transform, data.face_crop)
        digest = state_digest(model.visual)
        if data.face_crop is None and digest == setup.extras["zero_shot_digest"]:
            fingerprint = zero_shot.identity        # clip-zs's fingerprint: the very weights and preprocessing
        else:
            fingerprint = fingerprint_of(self.name, self.fingerprint_settings(), zero_shot.identity, chosen,
                                         digest, str(transform))
        encoder = ClipFineTunedEncoder(model, transform, fingerprint, device=device, batch_size=ENCODER_BATCH_SIZE)
        mix = ", ".join(f"{ratio:g}: {score:.0f}" for ratio, score in scores.items())
        report = (training_report(result, data) + f"; WiSE-FT ratio {chosen:g}"
                  + (f" (inner validation {mix})" if mix else ""))
        return Fitted(encoder, report, {"training": result, "wise_ratio": chosen, "wise_scores": scores})
