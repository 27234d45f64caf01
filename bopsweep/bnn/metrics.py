"""Flip metrics and accuracy.

Per-batch counts (:func:`topk_correct`) stay on the device and work on logits with
any leading dimensions, so a trainer that stacks several models' logits as
``[K, B, C]`` counts all of them in one call.

The flip ratio is the fraction of binary weights that flipped per step, averaged
over the steps of an epoch (Larq's ``FlipRatio``). The paper's Figure 1 plots its
log form ``pi = log(ratio + e^-9)``, floored at -9 when nothing flips.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

LOG_FLIP_FLOOR = -9.0


# Top-5 accuracy (the original code's ``top_k_categorical_accuracy``) is reported for
# datasets with more classes than this.
TOP5 = 5


def topk_correct(logits: Tensor, targets: Tensor, k: int) -> Tensor:
    """How many samples have their target among the ``k`` largest logits.

    ``logits`` is ``[..., B, C]`` and ``targets`` ``[B]`` (or ``[..., B]``); the count
    is an int64 tensor of shape ``[...]``, on the logits' device (no host sync).
    """
    top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
    hits = (top == targets.unsqueeze(-1)).any(-1)
    return hits.sum(-1)


def log_flip_ratio(ratio: float) -> float:
    """The paper's ``pi = log(ratio + e^-9)``."""
    return math.log(ratio + math.exp(LOG_FLIP_FLOOR))


def flip_metrics(
    flips: list[tuple[Tensor, Tensor, int]], layer_names: Mapping[Tensor, str]
) -> dict[str, float]:
    """Turn an optimizer's ``read_flips()`` into metrics, with one host sync.

    Returns ``flip_ratio`` and ``log_flip_ratio`` over all binary weights and
    ``flip_ratio/<layer>`` per binary layer. Empty when nothing was counted.
    """
    if not flips:
        return {}
    totals = torch.stack([total.to("cpu", torch.float64) for _, total, _ in flips]).tolist()
    metrics: dict[str, float] = {}
    flipped_all = weights_all = 0.0
    for (param, _, steps), total in zip(flips, totals, strict=True):
        weight_steps = param.numel() * steps
        metrics[f"flip_ratio/{layer_names[param]}"] = total / weight_steps
        flipped_all += total
        weights_all += weight_steps
    ratio = flipped_all / weights_all
    metrics["flip_ratio"] = ratio
    metrics["log_flip_ratio"] = log_flip_ratio(ratio)
    return metrics
