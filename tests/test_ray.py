"""The Ray engine against the local one: the same bits in the same cache chunks on a local Ray instance and on a
two-node cluster, through a killed actor, a killed driver and unreadable images; and one line where Ray is missing
(that the local engine never imports Ray is checked by the console-script test in `test_cli.py`).

Chunks of CHUNK images and batches of BATCH, so that every run has several chunks whose batches do not divide them.
One Ray instance serves the module (`instances`): a head node of 2 CPUs, which a second node joins for the cluster's
test. (The tests run last, `conftest.py`: each Ray run starts processes that import for seconds.)
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch
from wds_helpers import encode, pixels, write_class_folders, write_wds

from clipzs import cli, engines
from clipzs.cache import FeatureCache, ImageEntry
from clipzs.encode import cached_images, encode_images
from clipzs.engines import ray as engine
from clipzs.engines.nodes import PROBE, NodeNeeds, node_problem
from clipzs.errors import ClipzsError
from clipzs.models import describe_model, load_model
from clipzs.sources import ArraySource, ImageSource, open_source
from clipzs.sources.folder import load_folder

CHUNK, BATCH, N = 8, 3, 45
KEY = {"test": "ray"}
NAMESPACE = "clipzs-tests"
TESTS = Path(__file__).parent
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray Data's own settings


def cifar_arrays() -> ArraySource:
    """N CIFAR-like images, the same in every process."""
    labels = np.arange(N) % 100
    images = helpers.cifar_pixels(labels, seed=3).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return ArraySource("cifar100", "test", helpers.CIFAR100_CLASSES, labels, images)


class Gate:
    """A named Ray actor that holds back the readers of some images until the test opens it."""

    def __init__(self) -> None:
        import asyncio

        self.opened = asyncio.Event()

    async def wait(self) -> None:
        await self.opened.wait()

    async def open(self) -> None:
        self.opened.set()


class GatedArrays(ArraySource):
    """Arrays whose images marked `gated` are read only once the gate named `gate` is open (or fail after 2 min)."""

    def __init__(self, base: ArraySource, gated: np.ndarray, gate: str):
        super().__init__(base.name, base.split, base.classes, base.labels, base.pixels)
        self.gated, self.gate = gated, gate

    def load(self, i: int):
        if self.gated[i]:
            import ray

            ray.get(ray.get_actor(self.gate, namespace=NAMESPACE).wait.remote(), timeout=120)
        return super().load(i)

    def subset(self, indices) -> ImageSource:
        indices = np.asarray(indices, dtype=np.int64)
        return GatedArrays(ArraySource.subset(self, indices), self.gated[indices], self.gate)


def without_transformers() -> None:
    """Ray's workers import what a user's install would, as the tests' other child processes do
    (`helpers.AS_INSTALLED`; this function goes to them by value, `helpers` could not)."""
    sys.modules["transformers"] = None


class Instances:
    """The module's one Ray instance: a head node of 2 CPUs, joined by a second node for the cluster's test."""

    def __init__(self) -> None:
        import ray
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
        ray.init(
            address=self.cluster.address,
            logging_level=logging.ERROR,
            runtime_env={"worker_process_setup_hook": without_transformers},
        )
        self.second = None

    def nodes(self, count: int) -> None:
        import ray

        if count == 2 and self.second is None:
            self.second = self.cluster.add_node(num_cpus=2)
        elif count == 1 and self.second is not None:
            self.cluster.remove_node(self.second)
            self.second = None
        self.cluster.wait_for_nodes()
        assert sum(1 for node in ray.nodes() if node["Alive"]) == count

    def close(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def instances():
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    found = Instances()
    yield found
    found.close()


@pytest.fixture
def local_ray(instances):
    instances.nodes(1)


@pytest.fixture
def two_nodes(instances):
    instances.nodes(2)


@pytest.fixture(scope="module")
def clip(tiny_config, tiny_checkpoint):
    return load_model(spec=describe_model(str(tiny_config), str(tiny_checkpoint)))


@pytest.fixture(scope="module")
def arrays() -> ArraySource:
    return cifar_arrays()


@pytest.fixture
def gate(instances):
    """An open-able gate, named after the test; opened and removed afterwards, whatever still waits at it."""
    import ray

    name = f"gate-{os.getpid()}-{os.urandom(4).hex()}"
    handle = ray.remote(num_cpus=0)(Gate).options(name=name, namespace=NAMESPACE).remote()
    yield name, handle
    ray.get(handle.open.remote())
    ray.kill(handle)


def entry(root: Path, source: ImageSource) -> ImageEntry:
    return FeatureCache(root).images(KEY, len(source), CHUNK)


def local(clip, source: ImageSource, root: Path):
    """The local engine's features, through a cache of CHUNK-image chunks under `root`."""
    return encode_images(clip, source, batch_size=BATCH, progress=False, cache=entry(root, source))


def on_ray(clip, source: ImageSource, cache: ImageEntry | None, **options):
    return engine.encode_images(source, clip.spec, clip.preprocess, BATCH, cache, progress=False, **options)


def stored(cache: ImageEntry) -> set[str]:
    """The chunk files and unreadable-image records: their names hold their SHA256, so equal names are equal bytes."""
    return {name for name in os.listdir(cache.path) if name.startswith(("chunk-", "skipped-"))}


def assert_same(got, expected) -> None:
    """Bit for bit (NaN rows included), and the same reasons for the same images."""
    assert got.features.dtype == expected.features.dtype
    assert got.features.numpy().tobytes() == expected.features.numpy().tobytes()
    assert got.skipped == expected.skipped


def test_without_a_cache_the_driver_assembles_the_chunks_as_they_come(clip, arrays, monkeypatch):
    """The driver's side of an uncached run, without Ray: chunks arriving in any order, from two actors, fill the
    features and reasons in place. The actors' side (features returned, nothing written) is `ray_collect`'s, run
    end to end in the folder test below."""
    expected = encode_images(clip, arrays, batch_size=BATCH, progress=False)
    features = expected.features.clone()
    features[5] = torch.nan

    def encode_chunks(source, spec, preprocess, ranges, batch_size, cache, **options):
        assert source is arrays and cache is None and ranges == [(s, min(s + CHUNK, N)) for s in range(0, N, CHUNK)]
        for k, (start, stop) in enumerate(reversed(ranges)):
            skipped = {5: "broken"} if start <= 5 < stop else {}
            yield engine.EncodedChunk(start, stop, skipped, features[start:stop], "node", 100 + k % 2)

    monkeypatch.setattr(engine, "connect", lambda address: None)
    monkeypatch.setattr(engine, "chunk_ranges", lambda n: [(s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)])
    monkeypatch.setattr(engine, "encode_chunks", encode_chunks)
    got = on_ray(clip, arrays, None)
    assert got.features.numpy().tobytes() == features.numpy().tobytes()
    assert got.skipped == {5: "broken"} and got.computed == N
    assert (
        got.note == f"{N} images encoded on Ray by 2 actor process(es) on 1 node(s); features gathered to the "
        "driver (no feature cache)"
    )


def test_strict_stops_at_an_unreadable_image_and_caches_nothing_of_its_chunk(local_ray, clip, tmp_path, capfd):
    """The read task stops the run, before the image tower sees the chunk; Ray Data's log of the error is not
    printed (clipzs says it in one line)."""
    root = write_class_folders(tmp_path / "images", {"cat": 12}, suffix=".png")
    (root / "cat" / "9.png").write_bytes(b"not an image")  # the last file by name: in the second chunk
    source = load_folder(root)
    with pytest.raises(ClipzsError) as local_error:
        encode_images(
            clip, source, batch_size=BATCH, progress=False, cache=entry(tmp_path / "local", source), strict=True
        )
    cache = entry(tmp_path / "ray", source)
    with pytest.raises(ClipzsError) as ray_error:
        on_ray(clip, source, cache, strict=True)
    assert str(ray_error.value) == str(local_error.value)
    assert str(ray_error.value).startswith(f"cannot read image {root / 'cat' / '9.png'}: ")
    assert (CHUNK, len(source)) in cache.missing()
    assert "Traceback" not in capfd.readouterr().err


DRIVER = """
import json, sys
args = json.loads(sys.argv[1])
sys.path.insert(0, args["tests"])
import numpy as np, ray, test_ray
from clipzs.cache import FeatureCache
from clipzs.engines import ray as engine
from clipzs.models import describe_model, load_model

ray.cloudpickle.register_pickle_by_value(test_ray)
ray.init(address=args["address"], logging_level="ERROR")
spec = describe_model(args["config"], args["checkpoint"])
source = test_ray.GatedArrays(test_ray.cifar_arrays(), np.arange(test_ray.N) >= args["gated_from"], args["gate"])
cache = FeatureCache(args["cache"]).images(test_ray.KEY, test_ray.N, test_ray.CHUNK)
preprocess = load_model(spec=spec, towers={"text"}).preprocess
for chunk in engine.encode_chunks(source, spec, preprocess, cache.missing(), test_ray.BATCH, cache):
    print(chunk.start, flush=True)
"""


def test_after_a_killed_driver_the_rerun_encodes_only_the_missing_chunks_through_a_killed_actor(
    local_ray, clip, arrays, gate, tiny_config, tiny_checkpoint, tmp_path
):
    """Two deaths in one sequence, as every Ray run starts an actor (seconds): the driver, killed after two chunks,
    leaves them in the cache; the rerun encodes only the others, and Ray replaces the actor killed after the rerun's
    first chunk. The cache ends with the local engine's features."""
    import ray

    name, handle = gate
    args = {
        "tests": str(TESTS),
        "address": ray.get_runtime_context().gcs_address,
        "config": str(tiny_config),
        "checkpoint": str(tiny_checkpoint),
        "gate": name,
        "gated_from": 2 * CHUNK,  # two chunks get through; the driver dies while the rest wait at the gate
        "cache": str(tmp_path / "ray"),
    }
    log = tmp_path / "driver.log"
    with open(log, "w") as err:
        driver = subprocess.Popen(
            [sys.executable, "-c", helpers.AS_INSTALLED + DRIVER, json.dumps(args)], stdout=subprocess.PIPE, stderr=err
        )
    try:
        done = [driver.stdout.readline().strip() for _ in range(2)]
    finally:
        driver.kill()
        driver.wait()
        driver.stdout.close()
    assert sorted(done) == [b"0", str(CHUNK).encode()], log.read_text()[-3000:]
    cache = entry(tmp_path / "ray", arrays)
    ranges = cache.missing()
    assert ranges == [(start, min(start + CHUNK, N)) for start in range(2 * CHUNK, N, CHUNK)]
    source = GatedArrays(arrays, np.arange(N) >= 3 * CHUNK, name)  # the gate is still shut: one chunk gets through
    chunks = engine.encode_chunks(source, clip.spec, clip.preprocess, ranges, BATCH, cache)
    first = next(chunks)
    os.kill(first.pid, signal.SIGKILL)  # the actor that encoded it, with the rest of the rerun still to come
    handle.open.remote()
    rest = list(chunks)
    assert first.start == 2 * CHUNK and sorted(c.start for c in rest) == [start for start, _ in ranges[1:]]
    assert all(c.pid != first.pid for c in rest)
    assert_same(cached_images(cache), local(clip, arrays, tmp_path / "local"))


def test_a_node_without_the_checkpoint_or_the_shared_cache_is_one_line(local_ray, clip, arrays, tmp_path):
    with pytest.raises(ClipzsError, match=r"^checkpoint .* on node \S+ is not the driver's \(sha256:0+\)$"):
        list(
            engine.encode_chunks(
                arrays, replace(clip.spec, checkpoint="sha256:" + "0" * 64), clip.preprocess, [(0, CHUNK)], BATCH
            )
        )
    probe = tmp_path / "images" / f"{PROBE}absent"
    problem = node_problem(NodeNeeds(clip.spec.weights, clip.spec.config_file, clip.spec.checkpoint, probe))
    assert problem.startswith(f"the feature cache {tmp_path} is not the driver's on node ")


def test_the_node_check_imports_neither_torch_nor_open_clip():
    """It is each run's first task on every node, often in a fresh worker: importing torch would cost seconds."""
    code = "import sys, clipzs.engines.nodes; print(sorted({'torch', 'open_clip'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_eval_on_ray_gives_the_local_results_and_a_second_run_encodes_nothing(
    local_ray, tiny_config, tiny_checkpoint, tmp_path
):
    """Through the CLI, on a folder with unreadable files, the driver gathering the features and writing the cache
    (`--ray-collect`). The workers write it in the tests of a killed driver and of the cluster."""
    root = write_class_folders(tmp_path / "images", {"cat": 7, "dog": 6}, suffix=".png")
    broken = [root / "cat" / "3.png", root / "dog" / "1.png"]
    for path in broken:
        path.write_bytes(b"not an image")

    def evaluate(engine_name: str, cache: str, out: str) -> dict:
        model = ["--model", str(tiny_config), "--pretrained", str(tiny_checkpoint)]
        data = ["--dataset", "folder", "--data-root", str(root), "--templates", "seed", "--sweep"]
        engine_options = ["--engine", engine_name, *(["--ray-collect"] if engine_name == "ray" else [])]
        argv = [*model, *data, *engine_options, "--feature-cache", str(tmp_path / cache), "--quiet"]
        assert cli.main(["eval", *argv, "--out", str(tmp_path / out)]) == 0
        return json.loads((tmp_path / out).read_text())

    threads = torch.get_num_threads()
    torch.set_num_threads(engine._threads())  # an actor's: the last bits of a product can depend on its threads
    try:
        expected = evaluate("local", "local-cache", "local.json")
    finally:
        torch.set_num_threads(threads)
    first = evaluate("ray", "ray-cache", "ray.json")
    second = evaluate("ray", "ray-cache", "again.json")
    for key in ("single", "ensembles", "best", "comparisons", "labels", "skipped"):
        assert first[key] == expected[key] == second[key], key
    assert [s["name"] for s in first["skipped"]] == [str(path) for path in broken]
    assert first["encoded"] == expected["encoded"] and second["encoded"] == {"images": 0, "prompts": 0}
    assert "gathered to the driver, which wrote the feature cache" in first["note"]
    stored = [
        sorted(p.name for p in (tmp_path / cache / "images").glob("*/*-*")) for cache in ("local-cache", "ray-cache")
    ]
    assert stored[0] == stored[1] and any(name.startswith("skipped-") for name in stored[0])  # names hold SHA256s


def test_a_cluster_address_where_nothing_answers_is_one_line_at_once():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        engine._check_reachable(f"127.0.0.1:{port}")  # something answers: Ray is left to join it
        engine._check_reachable(f"ray://127.0.0.1:{port}")
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):  # closed now
        with pytest.raises(ClipzsError, match=rf"^cannot join the Ray cluster at {address}: Connection refused$"):
            engine._check_reachable(address)
    engine._check_reachable("auto")  # not host:port: Ray's to resolve


def test_without_ray_engine_ray_is_one_line(tiny_args, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ClipzsError, match=r"^engine ray needs Ray Data, which is not installed: pip install"):
        engines.require("ray")
    engines.require("local")
    assert cli.main(["eval", "--engine", "ray", "--templates", "seed", *tiny_args]) == 2
    message = "clipzs: error: --engine ray needs Ray Data, which is not installed: pip install 'clipzs[ray]'\n"
    assert capsys.readouterr().err == message


def test_webdataset_on_a_two_node_cluster(two_nodes, clip, tmp_path):
    import ray

    samples = [(f"s{i:04d}", "png", encode(pixels(i)), i % 3) for i in range(20)]
    samples[5] = ("s0005", "png", b"not an image", 2)
    samples[11] = ("s0011", "png", None, 2)  # a sample without an image
    samples[16:] = [(key, "png", b"not an image", label) for key, _, _, label in samples[16:]]  # all of chunk [16, 20)
    source = open_source("wds", write_wds(tmp_path / "wds", samples, [7, 6, 7], ["a", "b", "c"]))
    assert source.shard_of.tolist() == [0] * 7 + [1] * 6 + [2] * 7  # chunks [0, 8) and [8, 16) cross shards
    expected = local(clip, source, tmp_path / "local")
    cache = entry(tmp_path / "ray", source)
    got = on_ray(clip, source, cache)
    assert sum(1 for node in ray.nodes() if node["Alive"]) == 2
    assert got.features.numpy().tobytes() == expected.features.numpy().tobytes()
    assert unaddressed(got.skipped) == unaddressed(expected.skipped) and sorted(got.skipped) == [5, 11, 16, 17, 18, 19]
    assert "the workers wrote the features into the shared feature cache" in got.note
    assert not list((tmp_path / "ray").rglob(f"{PROBE}*"))  # the driver's probe is gone
    chunks = [{n for n in stored(c) if n.startswith("chunk-")} for c in (cache, entry(tmp_path / "local", source))]
    assert chunks[0] == chunks[1]


def unaddressed(skipped: dict[int, str]) -> dict[int, str]:
    """Reasons without object addresses: Pillow names an in-memory file by its repr (`<_io.BytesIO object at 0x..>`)."""
    return {i: re.sub(r" at 0x[0-9a-f]+", "", reason) for i, reason in skipped.items()}
