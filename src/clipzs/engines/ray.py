"""The Ray engine: the local engine's chunked image encoding as Ray Data stages, filling the same cache chunks.

```
chunk ranges ─from_items─► read + PIL steps ───────────► image tower ──────────────────► driver
(the cache's missing())    CPU tasks (map_batches):      actor pool (map_batches), one   progress, unreadable images,
                           a row per chunk: the pixels   actor per GPU: `ChunkEncoder`   features when gathered
                           [n, S, S, 3] of its readable  on one chunk per call; writes   (`collect`, or no cache)
                           images, and why the others    the chunk to the shared cache
                           could not be read
```

The cache chunk is the unit of both stages. A chunk's images are read by the source's own reader and go through
the model's own PIL steps, and the actor encodes them with `ChunkEncoder.chunk`, exactly as the local engine does:
the readable images in order, in batches of `batch_size`. Every image therefore meets the same batch, the same
kernels and the same precision in both engines, and the features are the same bits (a matrix product's result
for one row can depend on the batch it is in, so no other split of a chunk would do). Ray retries a chunk whose
task or actor died; chunks already written are never encoded again (`ImageEntry.missing`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..cache import ImageEntry
from ..encode import ChunkEncoder, ImageFeatures, cached_images, chunk_ranges, keep_malloc_arenas, strict_stop
from ..errors import ClipzsError
from ..models import ModelSpec, load_model
from ..preprocess import Preprocessing, split_preprocess
from ..sources import ImageSource, Subset, UnreadableImage
from ..sources.base import one_line
from . import RAY_MISSING
from .nodes import PROBE, NodeNeeds, check_nodes, node_problem


def import_ray() -> Any:
    """The `ray` module with Ray Data, or a one-line ClipzsError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray without its [data] extra lacks what ray.data imports)
    except ImportError as e:
        raise ClipzsError(RAY_MISSING, parameter="engine") from e
    return ray


REACH_TIMEOUT_S = 10.0  # Ray itself retries an unreachable cluster for many minutes


def _check_reachable(address: str) -> None:
    """A ClipzsError now if nothing answers at a `host:port` (or `ray://host:port`) address, rather than Ray's
    retries; other forms (`auto`, `local`) are left to Ray."""
    found = re.fullmatch(r"(?:ray://)?\[?([^\[\]/]+?)\]?:(\d+)", address.strip())
    if found is None:
        return
    try:
        socket.create_connection((found[1], int(found[2])), timeout=REACH_TIMEOUT_S).close()
    except OSError as e:
        reason = e.strerror or one_line(e) or "no answer"
        raise ClipzsError(f"cannot join the Ray cluster at {address}: {reason}", parameter="ray_address") from e


def connect(address: str | None = None) -> Any:
    """Ray, joined to the cluster at `address` (default: `RAY_ADDRESS`, else a new local instance); a process
    already connected keeps its connection."""
    ray = import_ray()
    if not ray.is_initialized():
        local = address is None and not os.environ.get("RAY_ADDRESS")
        _check_reachable(address or os.environ.get("RAY_ADDRESS", ""))
        try:
            ray.init(address=address, logging_level=logging.ERROR, **({"include_dashboard": False} if local else {}))
        except (ConnectionError, RuntimeError, ValueError) as e:
            message = f"cannot join the Ray cluster at {address}: {one_line(e)}"
            raise ClipzsError(message, parameter="ray_address") from e
    return ray


@dataclass(frozen=True)
class EncodedChunk:
    """One cache chunk as the image tower finished it: which actor (node, process) encoded it, why its unreadable
    images could not be read (by image index), and its features [stop - start, D] when they go to the driver."""

    start: int
    stop: int
    skipped: dict[int, str]
    features: torch.Tensor | None
    node: str
    pid: int


@dataclass(frozen=True)
class RayImageFeatures(ImageFeatures):
    """`ImageFeatures` with a one-line note of how they were made: actors, nodes, and who wrote the cache."""

    note: str = ""


def read_groups(source: ImageSource, ranges: Sequence[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """The chunks each read task reads in one pass: one chunk per task where images load in any order; for a
    stream, the consecutive chunks that start in the same shard, so each shard is read once (plus the head of the
    next one for a chunk that crosses into it), or the whole stream in one task when it has no shards."""
    if source.random_access:
        return [[r] for r in ranges]
    shard_of = _shard_of(source)
    groups: list[list[tuple[int, int]]] = []
    for r in ranges:
        if groups and (shard_of is None or shard_of[groups[-1][0][0]] == shard_of[r[0]]):
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def _shard_of(source: ImageSource) -> np.ndarray | None:
    """The shard of each image of a webdataset source (or a subset of one), else None."""
    if isinstance(source, Subset):
        base = _shard_of(source.base)
        return None if base is None else base[source.indices]
    return getattr(source, "shard_of", None)


def part(source: ImageSource, indices: np.ndarray) -> ImageSource:
    """The images at `indices` as a source that holds only what reading them needs, to ship to a read task (a
    subset of a webdataset keeps the shard list and the wanted keys, not every key of the split)."""
    from ..sources.wds import WdsSource

    if isinstance(source, Subset):
        return part(source.base, source.indices[indices])
    if isinstance(source, WdsSource):
        keys = [source.keys[i] for i in indices.tolist()]
        return WdsSource(
            source.name, source.split, source.classes, source.templates, source.shards, source.shard_of[indices],
            keys, source.labels[indices],
        )  # fmt: skip
    return source.subset(indices)


def read_chunks(
    source: ImageSource, ranges: Sequence[tuple[int, int]], preprocessing: Preprocessing
) -> Iterator[tuple[int, int, np.ndarray, dict[int, str]]]:
    """(start, stop, pixels [n, S, S, 3] uint8 of the chunk's readable images after the PIL steps, in order,
    {position in the chunk: why it could not be read}) of each chunk, `source` holding exactly the chunks' images
    in order and read in one pass, as the local engine reads them."""
    images = source.read(range(sum(stop - start for start, stop in ranges)))
    for start, stop in ranges:
        pixels, reasons = [], {}
        for position in range(stop - start):
            _, image = next(images)
            if isinstance(image, UnreadableImage):
                reasons[position] = image.reason
            else:
                pixels.append(preprocessing.pixels(image))
        yield start, stop, np.stack(pixels) if pixels else np.zeros((0, 1, 1, 3), np.uint8), reasons


class StrictStop(Exception):
    """A strict run's read task stops at image `index`, which could not be read for `reason`."""

    def __init__(self, index: int, reason: str):
        super().__init__(index, reason)
        self.index, self.reason = index, reason

    def __reduce__(self) -> tuple:
        return StrictStop, (self.index, self.reason)  # Ray Data appends its own note to `args`


def _read_stage(
    batch: dict[str, np.ndarray],
    parts: list,
    groups: list[list[tuple[int, int]]],
    preprocessing: Preprocessing,
    strict: bool,
) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data CPU stage: each read group's chunks, one row per chunk. A strict run stops here, at a chunk's first
    unreadable image, without waiting for the image tower (which then encodes nothing of that chunk)."""
    import ray

    for group in batch["group"].tolist():
        for start, stop, pixels, reasons in read_chunks(ray.get(parts[group]), groups[group], preprocessing):
            if strict and reasons:
                raise StrictStop(start + min(reasons), reasons[min(reasons)])
            yield {
                "start": np.array([start]),
                "stop": np.array([stop]),
                "pixels": pixels[None],
                "unreadable": np.array([json.dumps(reasons)]),
            }


def _threads() -> int:
    """The CPU threads for the model in an actor: every core this process may use, as torch takes them outside
    Ray (which sets OMP_NUM_THREADS to the actor's 1 CPU)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _ImageTower:
    """Ray Data actor: one copy of the image tower, on its own GPU (Ray sets CUDA_VISIBLE_DEVICES) or on the
    node's CPU cores, encoding one chunk per call and writing it to the shared cache unless the driver does."""

    def __init__(
        self,
        spec: ModelSpec,
        batch_size: int,
        compile: bool,
        cache: ImageEntry | None,
        needs: NodeNeeds,
        returns: bool,
    ):
        import ray

        self.node, self.pid = ray.get_runtime_context().get_node_id(), os.getpid()
        problem = node_problem(needs)  # a node that joined after the driver checked them all
        if problem:
            raise ClipzsError(problem, parameter="ray_collect")
        device = torch.device("cuda") if spec.device.type == "cuda" else torch.device("cpu")
        if device.type == "cpu":
            torch.set_num_threads(_threads())
            keep_malloc_arenas()
        clip = load_model(spec=replace(spec, device=device), towers={"image"})
        self.encoder = ChunkEncoder(clip, batch_size, compile=compile)
        self.cache, self.returns = cache, returns

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start, stop, unreadable = int(batch["start"][0]), int(batch["stop"][0]), str(batch["unreadable"][0])
        reasons = {int(k): v for k, v in json.loads(unreadable).items()}
        rows = stop - start
        readable = iter(np.array(batch["pixels"][0]))  # a writable copy, as torch.from_numpy wants
        items = [
            (None, reasons[p]) if p in reasons else (torch.from_numpy(next(readable)).permute(2, 0, 1), None)
            for p in range(rows)
        ]
        features, _ = self.encoder.chunk(items, rows)
        if self.cache is not None and not self.returns:
            self.cache.write(start, features.numpy(), {start + k: v for k, v in reasons.items()})
        out = {
            "start": np.array([start]),
            "stop": np.array([stop]),
            "unreadable": np.array([unreadable]),
            "node": np.array([self.node]),
            "pid": np.array([self.pid]),
        }
        if self.returns:
            out["features"] = features.numpy()[None]
        return out


def _read_memory(preprocessing: Preprocessing, ranges: Sequence[tuple[int, int]]) -> int:
    """Bytes a read task holds: a chunk's pixels twice (the images' and the stacked copy). Declared so that Ray
    starts no more read tasks than memory holds; and, as the actors declare none, it keeps the read stage apart
    from the image tower on CPU too (Ray Data fuses map stages with equal resources into one)."""
    image = preprocessing.pixels(Image.new("RGB", (8, 8))).nbytes
    return 2 * image * max(stop - start for start, stop in ranges)


def _tower_resources(ray: Any, device: torch.device) -> tuple[int, dict[str, Any]]:
    """How many image-tower actors, and each one's Ray resources: on CUDA one per GPU of the cluster, a GPU each;
    on CPU one per node, leaving at least one CPU for the read tasks."""
    resources = ray.cluster_resources()
    cpus = int(resources.get("CPU", 0))
    if device.type == "cuda":
        gpus = int(resources.get("GPU", 0))
        if gpus < 1:
            raise ClipzsError("device cuda: the Ray cluster has no GPUs (use device cpu, or add GPU nodes)")
        count, args = gpus, {"num_gpus": 1, "num_cpus": 1}
    else:
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        count, args = max(1, min(nodes, cpus - 1)), {"num_cpus": 1}  # Ray Data spreads them over the nodes
    if cpus < count + 1:
        raise ClipzsError(
            f"the Ray cluster has {cpus} CPU(s): {count} image-tower actor(s) need one each, and reading images "
            "at least one more"
        )
    return count, args


class _QuietData:
    """Ray Data without its own progress bars, start-up lines and error logs while clipzs shows one progress bar
    (an error of a task reaches clipzs as an exception: a user's is worded in one line, any other raised)."""

    SETTINGS = dict(enable_progress_bars=False, enable_operator_progress_bars=False, print_on_execution_start=False)

    def __init__(self, ray: Any):
        self.context, self.logger = ray.data.DataContext.get_current(), logging.getLogger("ray.data")

    def __enter__(self) -> None:
        self.saved = {name: getattr(self.context, name) for name in self.SETTINGS}, self.logger.level
        for name, value in self.SETTINGS.items():
            setattr(self.context, name, value)
        self.logger.setLevel(logging.CRITICAL)

    def __exit__(self, *exc: object) -> None:
        settings, level = self.saved
        for name, value in settings.items():
            setattr(self.context, name, value)
        self.logger.setLevel(level)


def encode_chunks(
    source: ImageSource,
    spec: ModelSpec,
    preprocess: Callable,
    ranges: Sequence[tuple[int, int]],
    batch_size: int,
    cache: ImageEntry | None = None,
    *,
    collect: bool = False,
    strict: bool = False,
    compile: bool = False,
    address: str | None = None,
) -> Iterator[EncodedChunk]:
    """Encode the chunks `ranges` of `source` on Ray, yielding each as it is finished (in no fixed order).

    With a cache and not `collect`, the actors write each chunk to it (so every node must see the cache folder);
    otherwise each chunk's features come back to the driver, which stores them. `preprocess` is the model's image
    transform (`ClipModel.preprocess`). Close the iterator to stop early: Ray Data then stops its tasks.
    """
    if not ranges:
        return
    ray = connect(address)
    count, tower_args = _tower_resources(ray, spec.device)
    groups = read_groups(source, ranges)
    parts = [ray.put(part(source, np.concatenate([np.arange(a, b) for a, b in group]))) for group in groups]
    returns = cache is None or collect
    probe = None if returns else cache.path.parent / f"{PROBE}{secrets.token_hex(8)}"
    try:
        if probe is not None:
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.touch()
        needs = NodeNeeds(spec.weights, spec.config_file, spec.checkpoint, probe)
        check_nodes(ray, needs, "GPU" if spec.device.type == "cuda" else "CPU")
        with _QuietData(ray):
            ds = ray.data.from_items([{"group": g} for g in range(len(groups))], override_num_blocks=len(groups))
            preprocessing = split_preprocess(preprocess)
            read = partial(_read_stage, parts=parts, groups=groups, preprocessing=preprocessing, strict=strict)
            ds = ds.map_batches(read, batch_size=1, num_cpus=1, memory=_read_memory(preprocessing, ranges))
            tower = dict(
                spec=spec,
                batch_size=batch_size,
                compile=compile,
                cache=cache,
                needs=needs,
                returns=returns,
            )
            ds = ds.map_batches(
                _ImageTower,
                fn_constructor_kwargs=tower,
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=count),
                **tower_args,
            )
            # whole blocks as they come, none fetched ahead: a chunk reaches the driver as soon as it is encoded
            batches = iter(ds.iter_batches(batch_size=None, prefetch_batches=0, batch_format="numpy"))
            try:
                for batch in batches:
                    for k, start in enumerate(batch["start"].tolist()):
                        skipped = {start + int(i): v for i, v in json.loads(str(batch["unreadable"][k])).items()}
                        features = torch.from_numpy(np.array(batch["features"][k])) if returns else None
                        node, pid = str(batch["node"][k]), int(batch["pid"][k])
                        yield EncodedChunk(start, int(batch["stop"][k]), skipped, features, node, pid)
            except ray.exceptions.RayError as e:
                stop = next((c for c in _chain(e) if isinstance(c, StrictStop)), None)
                if stop is not None:
                    raise strict_stop(source, stop.index, stop.reason) from e
                problem = _user_error(e)
                if problem is None:
                    raise
                raise problem from e
            finally:
                close = getattr(batches, "close", None)
                if close is not None:
                    close()
    finally:
        if probe is not None:
            probe.unlink(missing_ok=True)


def _chain(e: BaseException | None) -> Iterator[BaseException]:
    """`e` and the errors inside Ray's wrapping of it (a task's error is its `cause`)."""
    while e is not None:
        yield e
        e = getattr(e, "cause", None) or e.__cause__


def _user_error(e: BaseException) -> ClipzsError | None:
    """The ClipzsError a worker raised inside Ray's wrapping (an actor that died in its constructor keeps only the
    traceback's text), as one line; None if it was not one."""
    for inner in _chain(e):
        if isinstance(inner, ClipzsError):
            return ClipzsError(str(inner).splitlines()[0], inner.parameter)
        found = re.search(r"^clipzs\.errors\.ClipzsError: (.+)$", str(inner), re.MULTILINE)
        if found:
            return ClipzsError(found[1])
    return None


def encode_images(
    source: ImageSource,
    spec: ModelSpec,
    preprocess: Callable,
    batch_size: int,
    cache: ImageEntry | None = None,
    *,
    collect: bool = False,
    strict: bool = False,
    compile: bool = False,
    progress: bool = True,
    address: str | None = None,
) -> RayImageFeatures:
    """`encode.encode_images` on Ray: the same features [N, D], NaN rows and reasons, and the same cache chunks.

    Only the chunks the cache lacks are encoded. An unreadable image gets a NaN row and its reason, unless
    `strict`, which stops at the first one a read task finds with a ClipzsError. The note says where the features went.
    """
    ranges = cache.missing() if cache else chunk_ranges(len(source))
    todo = sum(stop - start for start, stop in ranges)
    if ranges:
        connect(address)  # before the progress bar: Ray starts, or a missing Ray or a bad address is said, first
    features: torch.Tensor | None = None
    skipped: dict[int, str] = {}
    actors_seen: set[tuple[str, int]] = set()
    chunks = encode_chunks(
        source,
        spec,
        preprocess,
        ranges,
        batch_size,
        cache,
        collect=collect,
        strict=strict,
        compile=compile,
        address=address,
    )
    with tqdm(total=len(source), initial=len(source) - todo, desc="images", unit="img", disable=not progress) as bar:
        try:
            for chunk in chunks:
                skipped.update(chunk.skipped)
                if cache is not None and chunk.features is not None:
                    cache.write(chunk.start, chunk.features.numpy(), chunk.skipped)
                elif chunk.features is not None:
                    if features is None:
                        features = torch.full((len(source), chunk.features.shape[1]), torch.nan)
                    features[chunk.start : chunk.stop] = chunk.features
                actors_seen.add((chunk.node, chunk.pid))
                bar.update(chunk.stop - chunk.start)
        finally:
            chunks.close()
    note = _note(todo, actors_seen, cache, collect)
    if cache is None:
        assert features is not None, "no chunk came back"
        return RayImageFeatures(features, todo, dict(sorted(skipped.items())), note)
    try:
        stored = cached_images(cache)
    except RuntimeError as e:
        raise ClipzsError(
            f"the feature cache {cache.path.parent.parent} lacks chunks the Ray workers wrote: it must be a folder "
            "every node shares (a rerun reads what has arrived since), or use ray_collect to have the driver write it",
            parameter="ray_collect",
        ) from e
    return RayImageFeatures(stored.features, todo, stored.skipped, note)


def _note(images: int, actors: set[tuple[str, int]], cache: ImageEntry | None, collect: bool) -> str:
    """How the images were encoded, for the results: on how many actors and nodes, and who wrote the cache."""
    nodes = len({node for node, _ in actors})
    where = f"{images} images encoded on Ray by {len(actors)} actor process(es) on {nodes} node(s)"
    if cache is None:
        return f"{where}; features gathered to the driver (no feature cache)"
    root = cache.path.parent.parent
    if collect:
        return f"{where}; features gathered to the driver, which wrote the feature cache {root} (ray_collect)"
    return f"{where}; the workers wrote the features into the shared feature cache {root}"
