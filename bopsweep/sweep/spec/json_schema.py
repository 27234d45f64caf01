"""The JSON Schema of a sweep spec, for editors: generated from the same pydantic
model ``bopsweep plan`` validates with (:class:`~bopsweep.sweep.spec.schema.SweepSpec`),
with the registries' names as choices (``bopsweep schema``, ``sweeps/schema.json``)."""

from __future__ import annotations

import re
from typing import Any

from bopsweep.sweep.spec.schema import (
    EPOCH_METRICS,
    LAYER_METRIC_PREFIX,
    SweepSpec,
    swept_keys,
)
from bopsweep.sweep.spec.vocabulary import RAY_FORMS

SCHEMA_FILE = "sweeps/schema.json"


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec, for editors (``bopsweep schema``, ``sweeps/schema.json``).

    Pydantic's schema of :class:`SweepSpec`, with the registries' names as the
    choices of ``train.model``, ``dataset``, ``preprocess_fn`` and ``hparams_set``,
    and the keys of ``train.hparams`` and ``parameters`` (dotted, or ``hparams`` as
    a nested block), so an editor completes them and flags unknown ones as
    ``bopsweep plan`` does."""
    from bopsweep.bnn.models import model_names
    from bopsweep.data import DATASETS, PREPROCESS_FNS
    from bopsweep.hparams import HPARAM_SETS, HParams

    schema = SweepSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "bopsweep sweep spec"
    # W&B's name is optional: bopsweep takes the file's.
    schema["required"] = [r for r in schema.get("required", []) if r != "name"]
    train = schema["$defs"]["TrainConfig"]["properties"]
    train["model"]["enum"] = model_names()
    train["dataset"]["enum"] = sorted(DATASETS)
    train["preprocess_fn"]["enum"] = sorted(PREPROCESS_FNS)
    train["hparams_set"]["enum"] = sorted({name for sets in HPARAM_SETS.values() for name in sets})
    hparams = HParams.model_json_schema()
    train["hparams"] = {
        "type": "object",
        "description": "overrides of the hparams set",
        "properties": hparams["properties"],
        "additionalProperties": False,
    }
    # Metric names trials report (the layer flip ratios by their prefix).
    metric = schema["$defs"]["MetricSpec"]["properties"]["name"]
    metric["anyOf"] = [
        {"enum": list(EPOCH_METRICS)},
        {"type": "string", "pattern": f"^{re.escape(LAYER_METRIC_PREFIX)}"},
    ]
    schema["properties"]["metric"] = {
        "anyOf": [{"$ref": "#/$defs/MetricSpec"}, {"enum": list(EPOCH_METRICS)}],
        "description": "the metric, or (Ray Tune) its name with mode: beside it",
    }
    # A parameter: its own fields, a bare constant (Ray Tune), or a nested block.
    parameter = {"$ref": "#/$defs/ParameterSpec"}
    nested = {
        "type": "object",
        "properties": {"parameters": {"type": "object", "additionalProperties": parameter}},
        "required": ["parameters"],
        "additionalProperties": False,
    }
    names = swept_keys()
    schema["properties"]["parameters"]["propertyNames"] = {"enum": [*names, "hparams"]}
    schema["properties"]["parameters"]["additionalProperties"] = {
        "anyOf": [parameter, nested, {"type": ["string", "number", "boolean"]}]
    }
    spec = schema["$defs"]["ParameterSpec"]
    spec["description"] += " Ray Tune's forms: " + ", ".join(RAY_FORMS) + "."
    return schema


def json_schema_text() -> str:
    import json

    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
