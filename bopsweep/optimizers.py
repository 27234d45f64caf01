"""Which optimizer trains which parameter, from each member's hparams.

Binary kernels go to Bop (or Adam on latent weights for the baseline), everything
else to the full-precision optimizer, with the schedules of the hparams expressed in
optimizer steps. One member (a plain run) gets the plain optimizers of
:mod:`bopsweep.bnn.optim` and :mod:`bopsweep.bnn.case`; K > 1 members of a fused
model get the fused ones of :mod:`bopsweep.bnn.fused`, each member with its own
rates (bit-identical to K plain runs). Nothing here imports Ray or MLflow. The
optimizers run eagerly (:mod:`bopsweep.bnn.eager`): a process that trains never
imports ``torch._dynamo`` for them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bopsweep.bnn import eager
from bopsweep.bnn.case import CaseOptimizer
from bopsweep.bnn.fused import FusedBop, FusedCaseOptimizer, MemberOptimizers, SharedOptimizer
from bopsweep.bnn.layers import binary_parameters
from bopsweep.bnn.optim import Bop, Bop2ndOrder, Bop2ndOrderUnbiased
from bopsweep.hparams import HParams

PLAIN_BOPS = {"bop": Bop, "bop2": Bop2ndOrder, "bop2_unbiased": Bop2ndOrderUnbiased}


def fp_optimizer(hp: HParams, params: Sequence[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """The full-precision optimizer of ``params`` (parameters, or one member's views)."""
    # L2 on full-precision kernels only, as Keras' kernel_regularizer in the paper's
    # XNOR-Net: BatchNorm parameters and biases are not decayed.
    kernels = [p for p in params if p.dim() > 1]
    rest = [p for p in params if p.dim() <= 1]
    groups = [
        {"params": group, "weight_decay": decay}
        for group, decay in ((kernels, hp.weight_decay), (rest, 0.0))
        if group
    ]
    if hp.fp_optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    return torch.optim.Adam(groups, lr=lr, eps=hp.adam_epsilon)


def _split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    binary = binary_parameters(model)
    binary_ids = {id(p) for p in binary}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in binary_ids]
    return binary, others


def build_optimizer(
    model: nn.Module, hparams: HParams | Sequence[HParams], steps_per_epoch: int
) -> CaseOptimizer | FusedCaseOptimizer:
    """The case optimizer of ``model``: a plain model and one member's hparams, or a
    fused model (:func:`bopsweep.bnn.fused.fuse_models`) and each member's."""
    eager.install()
    members = [hparams] if isinstance(hparams, HParams) else list(hparams)
    if len(members) > 1:
        return _fused_optimizer(model, members, steps_per_epoch)
    hp = members[0]
    binary, others = _split(model)
    lr_schedule = hp.schedule("lr", steps_per_epoch)
    fp = fp_optimizer(hp, others, lr_schedule(0)) if others else None
    if hp.optimizer == "latent":
        # The baseline: the binary kernels are latent weights trained like the rest.
        latent = torch.optim.Adam(binary, lr=lr_schedule(0), eps=hp.adam_epsilon)
        return CaseOptimizer(model, latent, fp, clip_binary=True, lr_schedule=lr_schedule)
    threshold = hp.schedule("threshold", steps_per_epoch)
    gamma = hp.schedule("gamma", steps_per_epoch)
    if hp.optimizer == "bop":
        bop = Bop(binary, threshold, gamma)
    else:
        sigma = hp.schedule("sigma", steps_per_epoch)
        bop = PLAIN_BOPS[hp.optimizer](binary, threshold, gamma, sigma)
    return CaseOptimizer(model, bop, fp, lr_schedule=lr_schedule)


def _fp_settings(hp: HParams) -> tuple:
    """What a member's full-precision optimizer depends on."""
    lr = tuple((k, getattr(hp, k)) for k in sorted(HParams.model_fields) if k.startswith("lr"))
    return (hp.fp_optimizer, hp.weight_decay, hp.adam_epsilon, lr)


def _fused_optimizer(model, hparams: list[HParams], steps_per_epoch: int) -> FusedCaseOptimizer:
    members = model.members
    binary, others = _split(model)
    lr_schedules = [hp.schedule("lr", steps_per_epoch) for hp in hparams]

    def member_fp(member: int, views: list[torch.Tensor]) -> torch.optim.Optimizer:
        # Views of one member, or whole fused tensors (shared settings).
        return fp_optimizer(hparams[member], views, lr_schedules[member](0))

    if not others:
        fp = None
    elif len({_fp_settings(hp) for hp in hparams}) == 1:
        fp = SharedOptimizer(others, members, member_fp(0, others))
    else:
        fp = MemberOptimizers(others, members, member_fp)
    kind = hparams[0].optimizer
    if kind == "latent":
        latent = MemberOptimizers(
            binary,
            members,
            lambda k, views: torch.optim.Adam(
                views, lr=lr_schedules[k](0), eps=hparams[k].adam_epsilon
            ),
        )
        return FusedCaseOptimizer(model, latent, fp, clip_binary=True, lr_schedules=lr_schedules)
    thresholds = [hp.schedule("threshold", steps_per_epoch) for hp in hparams]
    gammas = [hp.schedule("gamma", steps_per_epoch) for hp in hparams]
    sigmas = [hp.schedule("sigma", steps_per_epoch) for hp in hparams] if kind == "bop2" else None
    bop = FusedBop(binary, members, thresholds, gammas, sigmas)
    return FusedCaseOptimizer(model, bop, fp, lr_schedules=lr_schedules)
