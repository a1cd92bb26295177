"""What each Ray node must have before it runs the image tower, checked by a task on every node.

Apart from engines/ray.py, which imports torch: the check is the first task of a run, and on a node whose workers
are fresh, a worker that imported torch (and what unpickling a `ModelSpec` brings) would cost seconds before any
work. Here it imports Ray and this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..download import file_digest
from ..errors import ClipzsError

PROBE = ".ray-probe-"  # a file the driver leaves beside the cache entries for the workers to find


@dataclass(frozen=True)
class NodeNeeds:
    """What the image tower needs on a node: the checkpoint's files at the driver's paths, holding the driver's
    weights (`checkpoint`, as in `ModelSpec`), and, where the workers write the cache, the driver's probe file."""

    weights: Path | None
    config_file: Path | None
    checkpoint: str
    probe: Path | None


def node_problem(needs: NodeNeeds) -> str | None:
    """Why this node cannot run the image tower, or None: the driver's probe file is not in the cache folder here
    (so the cache is not shared), or the checkpoint's files are missing, or its weights are not the file the driver
    described (the cache keys features by the driver's SHA256: another file would store wrong features under it)."""
    import ray

    where = f"node {ray.util.get_node_ip_address()}"
    if needs.probe is not None and not needs.probe.exists():
        return (
            f"the feature cache {needs.probe.parent.parent} is not the driver's on {where}: the workers write it, so "
            "it must be a folder every node shares; or use ray_collect to have the driver write it"
        )
    for path in (p for p in (needs.weights, needs.config_file) if p is not None):
        if not Path(path).is_file():
            return f"{path} is not on {where}: every node needs the checkpoint's files at the driver's paths"
    if needs.checkpoint.startswith("sha256:") and f"sha256:{file_digest(needs.weights, 'sha256')}" != needs.checkpoint:
        return f"checkpoint {needs.weights} on {where} is not the driver's ({needs.checkpoint})"
    return None


def check_nodes(ray: Any, needs: NodeNeeds, resource: str) -> None:
    """Run `node_problem` on every node that has `resource` (GPU or CPU), before any work: one line for the
    first problem."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    check = ray.remote(num_cpus=0)(node_problem)
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(resource)]
    pinned = [check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)) for n in nodes]
    problem = next(filter(None, ray.get([task.remote(needs) for task in pinned])), None)
    if problem:
        raise ClipzsError(problem, parameter="ray_collect")
