"""Stacking K models of one architecture into one module (see :mod:`bopsweep.bnn.fused`).

Activations of the fused model keep the members side by side in the channel (or
feature) dimension, member-major: ``[B, K*C, H, W]`` for feature maps and ``[B, K*F]``
for dense activations. In that layout

* a convolution is the same convolution with ``groups`` times K: each member's
  output channels see only its own input channels;
* a BatchNorm over ``K*C`` channels normalises each member's channels with their own
  batch statistics, exactly as K BatchNorms would;
* pooling, activations, residual additions and ``Flatten`` (which keeps each member's
  ``C*H*W`` block in order) need no change;
* a dense layer is a batched matmul over the members (:class:`FusedLinear`).

Every fused parameter and buffer is its members' tensors concatenated along dim 0,
so ``tensor.unflatten(0, (K, -1))[k]`` is member ``k``'s tensor, with the shape and
name it has in the unfused model (:func:`member_state_dict`).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from bopsweep.bnn.layers import QuantLinear


def member_view(tensor: Tensor, members: int) -> Tensor:
    """``[K*n, ...] -> [K, n, ...]``, a view whatever the memory format."""
    return tensor.unflatten(0, (members, -1))


def _stacked(tensors: Sequence[Tensor | None]) -> nn.Parameter | None:
    if tensors[0] is None:
        return None
    if any(t is None or t.shape != tensors[0].shape for t in tensors):
        raise ValueError("cannot fuse models whose layers differ in shape")
    return nn.Parameter(torch.cat([t.detach() for t in tensors]), tensors[0].requires_grad)


class _FusedDense:
    """What the two fused dense layers share: the batched matmul of K members."""

    members: int
    out_features: int
    bias: nn.Parameter | None

    def _fused_linear(self, x: Tensor, kernel: Tensor) -> Tensor:
        batch, members = x.shape[0], self.members
        per_member = kernel.shape[0] // members
        # [B, K*in] -> [K, B, in] @ [K, in, out] -> [K, B, out] -> [B, K*out]
        inputs = x.view(batch, members, -1).transpose(0, 1)
        weights = kernel.view(members, per_member, -1)
        bias = None if self.bias is None else self.bias.view(members, 1, per_member)
        out = _MemberMatmul.apply(inputs, weights, bias)
        return out.transpose(0, 1).reshape(batch, members * per_member)


class _MemberMatmul(torch.autograd.Function):
    """``inputs @ weights^T (+ bias)`` per member, as ``F.linear`` computes each one.

    Autograd's own backward of ``bmm(inputs, weights.transpose(1, 2))`` makes the
    kernel's gradient as ``[K, in, out]``, the transpose of the kernel's layout, and
    copying it into place took a third of a fused MLP step (9 members on digits).
    Here it is computed as ``F.linear``'s backward does, ``grad^T @ inputs``, directly
    in the kernel's layout. The forward is unchanged: the same products in the same
    order as each member's own layer. The backward runs under the forward's autocast
    state (bf16 training), as ``torch.amp.custom_bwd`` would arrange for one device."""

    @staticmethod
    def forward(ctx, inputs: Tensor, weights: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(inputs, weights)
        ctx.has_bias = bias is not None
        device = inputs.device.type
        ctx.autocast = {
            "device_type": device,
            "dtype": torch.get_autocast_dtype(device),
            "enabled": torch.is_autocast_enabled(device),
        }
        transposed = weights.transpose(1, 2)
        if bias is None:
            return torch.bmm(inputs, transposed)
        return torch.baddbmm(bias, inputs, transposed)

    @staticmethod
    def backward(ctx, grad: Tensor):
        inputs, weights = ctx.saved_tensors
        grad_inputs = grad_weights = grad_bias = None
        with torch.autocast(**ctx.autocast):
            if ctx.needs_input_grad[0]:
                grad_inputs = torch.bmm(grad, weights)
            if ctx.needs_input_grad[1]:
                grad_weights = torch.bmm(grad.transpose(1, 2), inputs)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(1, keepdim=True)
        return grad_inputs, grad_weights, grad_bias


class FusedLinear(_FusedDense, nn.Linear):
    """K full-precision dense layers as one batched matmul; weight ``[K*out, in]``."""

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__(in_features, members * out_features, bias=bias)
        self.members = members

    def forward(self, x: Tensor) -> Tensor:
        return self._fused_linear(x, self.weight)


class FusedQuantLinear(_FusedDense, QuantLinear):
    """K binarized dense layers as one batched matmul; still marked binary, so the
    optimizer routing and the flip metrics see it as the unfused layer."""

    def __init__(self, members: int, layer: QuantLinear) -> None:
        super().__init__(
            layer.in_features,
            members * layer.out_features,
            input_quantizer=layer.input_quantizer,
            binary_kernel=layer.binary_kernel,
            kernel_quantizer=layer.kernel_quantizer,
            bias=layer.bias is not None,
        )
        self.members = members

    def forward(self, x: Tensor) -> Tensor:
        x, kernel = self._quantized(x)
        return self._fused_linear(x, kernel)


def _fuse_conv(layers: Sequence[nn.Conv2d]) -> nn.Conv2d:
    members = len(layers)
    first = layers[0]
    if first.padding_mode != "zeros":
        raise ValueError(f"cannot fuse convolutions with padding_mode={first.padding_mode!r}")
    fused = copy.copy(first)
    fused.__dict__ = dict(first.__dict__)
    fused._parameters = OrderedDict()
    fused._buffers = OrderedDict(first._buffers)
    fused._modules = OrderedDict()
    fused.in_channels = first.in_channels * members
    fused.out_channels = first.out_channels * members
    fused.groups = first.groups * members
    fused.weight = _stacked([layer.weight for layer in layers])
    fused.bias = _stacked([layer.bias for layer in layers])
    return fused


def _fuse_batch_norm(layers: Sequence[_BatchNorm]) -> _BatchNorm:
    members = len(layers)
    first = layers[0]
    fused = copy.copy(first)
    fused.__dict__ = dict(first.__dict__)
    fused._parameters = OrderedDict()
    fused._buffers = OrderedDict()
    fused._modules = OrderedDict()
    fused._non_persistent_buffers_set = set(first._non_persistent_buffers_set)
    fused.num_features = first.num_features * members
    for name, value in first._parameters.items():
        fused.register_parameter(
            name, None if value is None else _stacked([layer._parameters[name] for layer in layers])
        )
    for name, value in first._buffers.items():
        if value is None or value.dim() == 0:
            # num_batches_tracked counts the same steps for every member.
            fused.register_buffer(name, None if value is None else value.clone())
        else:
            fused.register_buffer(
                name,
                _stacked([layer._buffers[name] for layer in layers]).data,
                persistent=name not in first._non_persistent_buffers_set,
            )
    return fused


def _has_own_state(module: nn.Module) -> bool:
    return bool(module._parameters) or any(b is not None for b in module._buffers.values())


def _fuse(modules: Sequence[nn.Module], path: str) -> nn.Module:
    first = modules[0]
    if any(type(m) is not type(first) for m in modules):
        raise ValueError(f"cannot fuse {path or 'the models'}: the members differ in type")
    members = len(modules)
    if isinstance(first, QuantLinear):
        fused_dense: nn.Linear = FusedQuantLinear(members, first)
    elif type(first) is nn.Linear:
        fused_dense = FusedLinear(members, first.in_features, first.out_features, False)
    else:
        fused_dense = None
    if fused_dense is not None:
        fused_dense.weight = _stacked([m.weight for m in modules])
        fused_dense.bias = _stacked([m.bias for m in modules])
        return fused_dense
    if isinstance(first, nn.Conv2d):
        return _fuse_conv(modules)
    if isinstance(first, _BatchNorm):
        return _fuse_batch_norm(modules)
    if _has_own_state(first):
        raise ValueError(
            f"cannot fuse {path or 'the model'}: {type(first).__name__} has parameters "
            "and no fused form"
        )
    # A container, or a stateless layer (pooling, activations, Flatten): the same
    # object type with fused children.
    fused = copy.copy(first)
    fused.__dict__ = dict(first.__dict__)
    fused._parameters = OrderedDict()
    fused._buffers = OrderedDict()
    fused._modules = OrderedDict()
    for name in first._modules:
        children = [m._modules[name] for m in modules]
        if children[0] is None:
            fused._modules[name] = None
            continue
        fused._modules[name] = _fuse(children, f"{path}.{name}" if path else name)
    return fused


class FusedModel(nn.Module):
    """K members of one architecture trained side by side.

    ``forward`` takes the members' batches ``[K, B, *input]`` (or one batch
    ``[B, *input]`` that every member sees, ``shared=True``) and returns the members'
    logits ``[K, B, classes]``.
    """

    def __init__(self, body: nn.Module, members: int) -> None:
        super().__init__()
        self.body = body
        self.members = members
        self.channels_last = False

    def forward(self, x: Tensor, shared: bool = False) -> Tensor:
        members = self.members
        if shared:
            # [B, C, ...] -> [B, K*C, ...]: each member's copy of the batch.
            repeats = (1, members) + (1,) * (x.dim() - 2)
            x = x.repeat(repeats)
        else:
            # [K, B, C, ...] -> [B, K*C, ...], member-major channels.
            x = x.transpose(0, 1).flatten(1, 2)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.body(x)
        return logits.view(logits.shape[0], members, -1).transpose(0, 1)


def fuse_models(models: Sequence[nn.Module]) -> FusedModel:
    """One :class:`FusedModel` holding ``models`` (same architecture) as its members.

    The members keep their exact initial values; the inputs of the models are
    unchanged (the originals are not modified and can be discarded).
    """
    if not models:
        raise ValueError("fuse_models needs at least one model")
    return FusedModel(_fuse(models, ""), len(models))


def member_state_dict(model: FusedModel, member: int) -> dict[str, Tensor]:
    """Member ``member``'s state dict, with the keys and shapes of the unfused model
    (views of the fused tensors: clone them to keep a copy)."""
    out: dict[str, Tensor] = {}
    for name, tensor in model.body.state_dict().items():
        out[name] = tensor if tensor.dim() == 0 else member_view(tensor, model.members)[member]
    return out


def member_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Each member's mean cross-entropy, ``[K]``: ``logits [K, B, C]``, ``targets [K, B]``
    (or ``[B]`` shared by every member)."""
    if targets.dim() == 1:
        targets = targets.expand(logits.shape[0], -1)
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return losses.mean(1)
