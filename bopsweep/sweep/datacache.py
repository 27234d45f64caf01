"""One copy of a dataset per node, shared by the sweep trials running there.

Every trial loading CIFAR-10 itself costs each concurrent trial ~150 MB and seconds
of unpickling. Instead the sweep's driver starts one small actor per node, named
after the sweep and the node; the first trial on a node that asks for a dataset
makes that actor load it once and put its arrays in Ray's object store, and every
trial on the node maps them from there without a copy (read-only; training only
ever indexes them). Anything that goes wrong here (a node that joined after the
start, an actor that died, files that fail to load) makes the trial load the data
itself, which reports real errors with the usual message.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import ray

from bopsweep.config import TrainConfig
from bopsweep.data import SHAREABLE_DATASETS

if TYPE_CHECKING:
    from bopsweep.data import InMemoryDataset


def actor_name(sweep_id: str, node_id: str) -> str:
    return f"bopsweep-data:{sweep_id}:{node_id}"


@ray.remote(num_cpus=0)
class NodeDatasets:
    """Holds the object-store copies of the datasets trials on its node asked for.

    Ray runs one call at a time on an actor, so concurrent first requests wait for a
    single load instead of each loading."""

    def __init__(self) -> None:
        self.shared: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {}

    def get(self, name: str, data_dir: str, download: bool):
        key = (name, data_dir)
        if key not in self.shared:
            # torch only where data is loaded: the driver, which starts these actors,
            # never imports it.
            from bopsweep.data import TENSOR_FIELDS, load_dataset

            data = load_dataset(name, data_dir, download)
            meta = {"name": data.name, "num_classes": data.num_classes, "pixel_max": data.pixel_max}
            refs = {field: ray.put(getattr(data, field).numpy()) for field in TENSOR_FIELDS}
            self.shared[key] = (meta, refs)
        return self.shared[key]


def start(sweep_id: str, datasets: set[str]) -> list:
    """From the driver: one actor per alive node, if any trial's dataset is worth
    sharing. The actors live as long as the driver (or until :func:`stop`)."""
    if not datasets & SHAREABLE_DATASETS:
        return []
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actors = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        actors.append(
            NodeDatasets.options(
                name=actor_name(sweep_id, node["NodeID"]),
                scheduling_strategy=strategy,
                get_if_exists=True,
            ).remote()
        )
    return actors


def stop(actors: list) -> None:
    """Free the object-store copies once the sweep's trials are done."""
    for actor in actors:
        ray.kill(actor)


def shared_dataset(sweep_id: str, config: TrainConfig) -> InMemoryDataset | None:
    """From a trial: its node's shared copy of ``config.dataset``, or None when there
    is none to be had (the trial then loads the data itself)."""
    if config.dataset not in SHAREABLE_DATASETS or not ray.is_initialized():
        return None
    import numpy as np
    import torch

    from bopsweep.data import TENSOR_FIELDS, InMemoryDataset

    node_id = ray.get_runtime_context().get_node_id()
    try:
        actor = ray.get_actor(actor_name(sweep_id, node_id))
        meta, refs = ray.get(actor.get.remote(config.dataset, config.data_dir, config.download))
        arrays = ray.get([refs[field] for field in TENSOR_FIELDS])
    except Exception:  # no actor on this node, or it failed: load locally
        return None
    with warnings.catch_warnings():
        # The arrays are read-only views of the object store; nothing writes to them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = {
            field: torch.from_numpy(np.asarray(a))
            for field, a in zip(TENSOR_FIELDS, arrays, strict=True)
        }
    return InMemoryDataset(
        meta["name"], **tensors, num_classes=meta["num_classes"], pixel_max=meta["pixel_max"]
    )
