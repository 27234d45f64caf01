"""Flip metrics and accuracy.

Per-batch counts (:func:`topk_correct`) stay on the device and work on logits with
any leading dimensions, so a trainer that stacks several models' logits as
``[K, B, C]`` counts all of them in one call.

The flip ratio is the fraction of binary weights that flipped per step, averaged
over the steps of an epoch (Larq's ``FlipRatio``): :func:`flip_metrics` for one
model, :func:`member_flip_metrics` for each member of a fused group. The paper's
Figure 1 plots its log form ``pi = log(ratio + e^-9)``, floored at -9 when nothing
flips, per step of the last layer: :func:`step_flip_series`.
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


def member_flip_metrics(
    flips: list[tuple[Tensor, Tensor, int]], layer_names: dict[Tensor, str], members: int
) -> list[dict[str, float]]:
    """:func:`~bopsweep.bnn.metrics.flip_metrics` per member, with one host sync:
    the same keys (``flip_ratio``, ``log_flip_ratio``, ``flip_ratio/<layer>``)."""
    out: list[dict[str, float]] = [{} for _ in range(members)]
    if not flips:
        return out
    totals = torch.stack([total.to("cpu", torch.float64) for _, total, _ in flips]).tolist()
    flipped = [0.0] * members
    weighed = [0.0] * members
    for (param, _, steps), member_totals in zip(flips, totals, strict=True):
        weight_steps = param.numel() // members * steps
        for k, total in enumerate(member_totals):
            out[k][f"flip_ratio/{layer_names[param]}"] = total / weight_steps
            flipped[k] += total
            weighed[k] += weight_steps
    for k in range(members):
        ratio = flipped[k] / weighed[k] if weighed[k] else math.nan
        out[k]["flip_ratio"] = ratio
        out[k]["log_flip_ratio"] = log_flip_ratio(ratio)
    return out


def step_flip_series(
    running: list[Tensor], weights: int, last_step: int, points: int
) -> list[list[list[float]]]:
    """Per member, ``[step, log flip ratio]`` pairs from a layer's running flip counts
    after each step of an epoch (``running``: one scalar, or one per member, per step;
    ``weights``: the layer's weights per member; ``last_step``: the optimizer's step
    number of the epoch's last step). Every step up to ``points`` steps, else the
    means of equal windows of steps, each at its window's last step. One host sync."""
    totals = torch.stack(running).to("cpu", torch.float64).reshape(len(running), -1)
    counts = torch.diff(totals, dim=0, prepend=torch.zeros_like(totals[:1]))
    ratios = counts / weights  # [steps, members]
    steps = len(ratios)
    window = -(-steps // points)  # ceil
    first = last_step - steps + 1
    series: list[list[list[float]]] = [[] for _ in range(ratios.shape[1])]
    for start in range(0, steps, window):
        means = ratios[start : start + window].mean(0).tolist()
        step = first + min(start + window, steps) - 1
        for k, mean in enumerate(means):
            series[k].append([step, log_flip_ratio(mean)])
    return series
