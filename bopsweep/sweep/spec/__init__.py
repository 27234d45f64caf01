"""YAML sweep specs: load safely, validate, expand into trials, as W&B and Ray Tune
users write them.

A spec is a base training config (``train:``, the keys of ``bopsweep train``), the
parameters to sweep (dot paths into ``train``), the search method, seeds, the
metric, early stopping, resources and tracking. W&B's sweep configurations carry
over with W&B's meaning (its keys, distributions, defaults, grid expansion and
hyperband cut points, per its sweep engine ``wandb/sweeps``), and so do Ray Tune's
search space forms; what bopsweep cannot run as their authors meant is refused with
the rewrite. Every problem of a spec is reported in one run, at its file and line.

* :mod:`.parameters`: one parameter in any of its forms, its draws and grid values
* :mod:`.schema`: the typed, frozen :class:`SweepSpec` and its JSON Schema
* :mod:`.loading`: YAML, ``--set`` overrides, problems at their lines, notes
* :mod:`.expansion`: the trials, in the order ``plan`` shows and ``run`` runs them

Grid and random trials are expanded up front, so ``bopsweep plan`` shows exactly
what ``bopsweep run`` will run; a bayes search's values are proposed while it runs
(:mod:`bopsweep.sweep.search`).
"""

from bopsweep.sweep.spec.expansion import (
    MAX_TRIALS,
    count_trials,
    expand,
    fixed,
    make_trial,
    max_epochs,
    planned,
    searched,
)
from bopsweep.sweep.spec.json_schema import SCHEMA_FILE, json_schema, json_schema_text
from bopsweep.sweep.spec.loading import (
    MAX_SPEC_BYTES,
    MAX_YAML_NODES,
    LoadedSpec,
    SpecLoader,
    apply_override,
    load_spec,
    parse_override,
)
from bopsweep.sweep.spec.parameters import ParameterSpec
from bopsweep.sweep.spec.schema import (
    EPOCH_METRICS,
    GOALS,
    CheckpointSpec,
    MetricSpec,
    ResourcesSpec,
    SweepSpec,
    TrackingSpec,
    Trial,
)
from bopsweep.sweep.spec.stopping import (
    EarlyTerminateSpec,
    SchedulerSpec,
    WandbHyperbandSpec,
    stopping_summary,
    wandb_cut_points,
)
from bopsweep.sweep.spec.vocabulary import DISTRIBUTIONS, RAY_FORMS

__all__ = [
    "DISTRIBUTIONS",
    "EPOCH_METRICS",
    "GOALS",
    "MAX_SPEC_BYTES",
    "MAX_TRIALS",
    "MAX_YAML_NODES",
    "RAY_FORMS",
    "SCHEMA_FILE",
    "CheckpointSpec",
    "EarlyTerminateSpec",
    "LoadedSpec",
    "MetricSpec",
    "ParameterSpec",
    "ResourcesSpec",
    "SchedulerSpec",
    "SpecLoader",
    "SweepSpec",
    "TrackingSpec",
    "Trial",
    "WandbHyperbandSpec",
    "apply_override",
    "count_trials",
    "expand",
    "fixed",
    "json_schema",
    "json_schema_text",
    "load_spec",
    "make_trial",
    "max_epochs",
    "parse_override",
    "planned",
    "searched",
    "stopping_summary",
    "wandb_cut_points",
]
