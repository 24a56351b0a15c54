"""Which weights train: the last blocks of any backbone found without knowing its architecture,
requires_grad set accordingly, BatchNorm layers kept in eval mode while training, and a digest
of a module's weights for fingerprints.

"The last blocks": the largest nn.Sequential / nn.ModuleList with two or more weighted children is
the block stack (Lite0's stages, a ViT's residual blocks, ResNet's layer4); the parameters that
still get a gradient when the input of its last N children is detached are those N children and
everything after them (conv head, final norm, projection).
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn

from toolkit.models.backbones import first_tensor


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
