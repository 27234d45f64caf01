"""Other tools' spec forms read as bopsweep's: W&B's and Ray Tune's places for the
metric, the experiment, the method, the trial count and nested parameters, moved to
where a bopsweep spec keeps them before the spec is validated, so every later step
sees one shape."""

from __future__ import annotations

import re
from typing import Any

from bopsweep.sweep.spec.parameters import flatten_parameters
from bopsweep.sweep.spec.vocabulary import is_sampled

# W&B's keys for its agent and account: accepted so its specs load, not used.
WANDB_IGNORED = ("program", "command", "entity", "controller")


def name_from(stem: str) -> str:
    """A sweep name from a file name: the characters a results folder takes."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).lstrip("_.-")
    return name or "sweep"


def read_spec_forms(data: Any, default_name: str | None = None) -> Any:
    """W&B's and Ray Tune's places for what bopsweep keeps elsewhere, moved there:
    nested parameters -> dotted names; ``metric: NAME`` + ``mode`` -> ``metric``;
    ``project`` -> ``tracking.experiment`` (unless given); no ``method``: random when
    a parameter is drawn (as Ray Tune samples), else grid; ``run_cap`` -> the
    ``num_samples`` of a random or bayes search that gives none; no ``name``:
    ``default_name`` (the file's). Never raises: what does not fit is left for the
    validation to report."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    if "name" not in data and default_name is not None:
        data["name"] = default_name
    if isinstance(data.get("metric"), str):
        data["metric"] = {"name": data["metric"]}
    mode = data.get("mode")
    if mode is not None and isinstance(data.get("metric"), dict):
        metric = dict(data["metric"])
        if "mode" not in metric:
            metric["mode"] = mode
            del data["mode"]
        elif metric["mode"] == mode:
            del data["mode"]
        data["metric"] = metric
    if isinstance(data.get("parameters"), dict):
        data["parameters"] = flatten_parameters(data["parameters"])
    if "method" not in data:
        params = data.get("parameters")
        sampled = isinstance(params, dict) and any(is_sampled(p) for p in params.values())
        data["method"] = "random" if sampled else "grid"
    if (
        data.get("method") in ("random", "bayes")
        and "num_samples" not in data
        and data.get("run_cap") is not None
    ):
        data["num_samples"] = data["run_cap"]
    project = data.get("project")
    tracking = data.get("tracking", {})
    if project is not None and isinstance(tracking, dict) and tracking.get("experiment") is None:
        data["tracking"] = {**tracking, "experiment": project}
    return data
