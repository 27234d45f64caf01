"""Where in a spec's YAML a problem is: the line of a key path (through nested
parameter blocks, with a nearby key for one that is missing), and the guard that
counts the YAML graph's nodes as if its aliases were expanded."""

from __future__ import annotations

from typing import Any

import yaml

from bopsweep.errors import UserError

# The most nodes a spec's YAML may have with its aliases expanded: an alias
# "billion laughs" is refused before anything walks it.
MAX_YAML_NODES = 100_000


def count_nodes(node: yaml.Node, budget: list[int]) -> None:
    # Aliases share nodes in the graph; counting them as expanded is what a consumer
    # walking the data would pay, so that is what is limited.
    budget[0] -= 1
    if budget[0] < 0:
        raise UserError(
            f"YAML too large once aliases are expanded (over {MAX_YAML_NODES} nodes): "
            "refusing a possible alias bomb"
        )
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            count_nodes(child, budget)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            count_nodes(key, budget)
            count_nodes(value, budget)


def _child(node: yaml.Node, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if getattr(k, "value", None) == key:
            return v
    return None


def _parameter_node(node: yaml.Node, name: str) -> yaml.Node | None:
    """``name`` (dotted) under a ``parameters`` mapping: as a key, or through nested
    blocks (W&B's ``parameters:``, Ray Tune's dicts)."""
    direct = _child(node, name)
    if direct is not None:
        return direct
    parts = name.split(".")
    for cut in range(1, len(parts)):
        head = _child(node, ".".join(parts[:cut]))
        if head is None:
            continue
        inner = _child(head, "parameters") or head
        found = _parameter_node(inner, ".".join(parts[cut:]))
        if found is not None:
            return found
    return None


# Where a problem about a key that is not in the file is shown instead.
_FALLBACK = {
    "num_samples": ("method", "parameters"),
    "method": ("parameters",),
    "mode": ("metric",),
}


def line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The line of the deepest node of ``loc`` found in the file."""
    if root is None:
        return None
    node, line = root, None
    for i, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            child = _child(node, str(part))
            if child is None and i > 0 and loc[i - 1] == "parameters":
                child = _parameter_node(node, str(part))
            if child is None:
                if i == 0:
                    for other in _FALLBACK.get(str(part), ()):
                        found = line_of(root, (other,))
                        if found:
                            return found
                break
            node = child
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line
