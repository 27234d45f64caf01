"""Every model of the paper fuses: K members stacked give each member's own outputs.

The fused model is built from K models built under their own seeds; its logits for
member k must be model k's (the same arithmetic: exactly equal where the fused ops
reduce in the same order, within float rounding elsewhere), member k's state dict
must load into model k, and its gradients must be model k's.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from bopsweep.bnn.fused import fuse_models, member_cross_entropy, member_state_dict, member_view
from bopsweep.bnn.layers import QuantLinear, binary_parameters
from bopsweep.bnn.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

# The smallest inputs each model takes, to keep the test fast.
INPUTS = {
    "mlp": (1, 8, 8),
    "binarynet": (3, 32, 32),
    "binary_alexnet": (3, 67, 67),
    "xnornet": (3, 219, 219),
    "birealnet": (3, 64, 64),
}


def _models(name: str, members: int) -> list[torch.nn.Module]:
    models = []
    for seed in range(members):
        torch.manual_seed(seed)
        models.append(build_model(name, INPUTS[name], 10))
    return models


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_fused_forward_backward_and_state_match_each_member(name):
    members = 2 if name in ("xnornet", "binary_alexnet") else 3
    models = _models(name, members)
    fused = fuse_models(models)
    assert len(binary_parameters(fused)) == len(binary_parameters(models[0]))
    x = torch.randn(members, 4, *INPUTS[name], generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (members, 4), generator=torch.Generator().manual_seed(1))
    logits = fused(x)
    assert logits.shape == (members, 4, 10)
    member_cross_entropy(logits, y).sum().backward()
    fused_grads = {n: p.grad for n, p in fused.body.named_parameters()}
    for k, model in enumerate(models):
        own = model(x[k])
        torch.testing.assert_close(logits[k], own, rtol=1e-4, atol=1e-4)
        F.cross_entropy(own, y[k]).backward()
        for n, p in model.named_parameters():
            grad = member_view(fused_grads[n], members)[k]
            torch.testing.assert_close(grad, p.grad, rtol=1e-3, atol=1e-4)
        # The running statistics each member's BatchNorms collected are its own.
        state = member_state_dict(fused, k)
        for key, value in model.state_dict().items():
            torch.testing.assert_close(state[key], value)
    # Shared input, in eval mode: every member sees the same batch. (Compared with
    # the same batch given to each member, not with the unfused models: in eval mode
    # a binary network turns the first real convolution's rounding into sign flips.)
    fused.eval()
    shared = fused(x[0], shared=True)
    torch.testing.assert_close(shared, fused(x[0].expand(members, *x[0].shape)), rtol=0, atol=0)


def test_members_of_different_architectures_do_not_fuse():
    torch.manual_seed(0)
    mlp = build_model("mlp", (1, 8, 8), 10)
    other = build_model("mlp", (1, 8, 8), 3)
    with pytest.raises((ValueError, RuntimeError)):
        fuse_models([mlp, other])


@pytest.mark.parametrize("binary", [False, True])
def test_fused_dense_layers_with_bias_give_each_members_outputs_and_gradients(binary):
    members, batch = 3, 5
    torch.manual_seed(0)
    if binary:
        layers = [QuantLinear(6, 4, bias=True) for _ in range(members)]
    else:
        layers = [torch.nn.Linear(6, 4, bias=True) for _ in range(members)]
    fused = fuse_models([torch.nn.Sequential(layer) for layer in layers]).body[0]
    x = torch.randn(batch, members * 6, requires_grad=True)
    out = fused(x)
    weights = torch.randn(out.shape)
    (out * weights).sum().backward()
    for k, layer in enumerate(layers):
        own_x = x.detach()[:, 6 * k : 6 * (k + 1)].clone().requires_grad_()
        own = layer(own_x)
        (own * weights[:, 4 * k : 4 * (k + 1)]).sum().backward()
        torch.testing.assert_close(out[:, 4 * k : 4 * (k + 1)], own)
        torch.testing.assert_close(x.grad[:, 6 * k : 6 * (k + 1)], own_x.grad)
        torch.testing.assert_close(member_view(fused.weight.grad, members)[k], layer.weight.grad)
        torch.testing.assert_close(member_view(fused.bias.grad, members)[k], layer.bias.grad)


def test_fused_dense_layers_train_under_bf16_autocast():
    """As each member's own layer under autocast: bf16 products, float32 gradients
    for the float32 parameters (the backward runs under the forward's autocast)."""
    members, batch = 2, 5
    torch.manual_seed(0)
    layers = [QuantLinear(6, 4, bias=True) for _ in range(members)]
    fused = fuse_models([torch.nn.Sequential(layer) for layer in layers]).body[0]
    x = torch.randn(batch, members * 6)
    weights = torch.randn(batch, members * 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused(x)
    assert out.dtype == torch.bfloat16
    (out.float() * weights).sum().backward()
    assert fused.weight.grad.dtype == torch.float32
    for k, layer in enumerate(layers):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            own = layer(x[:, 6 * k : 6 * (k + 1)])
        (own.float() * weights[:, 4 * k : 4 * (k + 1)]).sum().backward()
        torch.testing.assert_close(out[:, 4 * k : 4 * (k + 1)], own)
        torch.testing.assert_close(member_view(fused.weight.grad, members)[k], layer.weight.grad)
        torch.testing.assert_close(member_view(fused.bias.grad, members)[k], layer.bias.grad)
