"""Feature cache: round trips, resuming, corruption, killed and concurrent writers, listing and clearing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipzs import cache
from clipzs.cache import CorruptCacheWarning, FeatureCache, default_root, describe_size
from clipzs.errors import ClipzsError

KEY = {"model": "ViT-B/32", "checkpoint": "sha256:ab", "precision": "fp32", "dataset": "cifar100", "split": "test"}

# Workers are separate processes, as concurrent runs are. They import the package without running its __init__,
# which could import torch (seconds). They never sleep: each waits on its stdin, a pipe, until the parent says go
# (a line, or closing the pipe), so the parent decides the order of events.
WORKER = r"""
import sys, types
import numpy as np

package, mode, root, *args = sys.argv[1:]
sys.modules["clipzs"] = types.ModuleType("clipzs")
sys.modules["clipzs"].__path__ = [package]
from clipzs.cache import FeatureCache

store = FeatureCache(root)
if mode == "images":
    n, chunk, d, paced = int(args[0]), int(args[1]), int(args[2]), args[3] == "paced"
    entry = store.images({"model": "m"}, n, chunk)
    features = np.arange(n * d, dtype=np.float32).reshape(n, d) / 7
    todo = entry.missing()
else:
    tag, rounds, d = args[0], int(args[1]), int(args[2])
    entry = store.texts({"model": "m"})
print("ready", flush=True)
sys.stdin.readline()
if mode == "images":
    for start, stop in todo:
        entry.write(start, features[start:stop])
        print("wrote", start, stop, flush=True)
        if paced:
            sys.stdin.readline()  # each further chunk waits for the parent's word
else:
    for i in range(rounds):
        entry.store([f"{tag} {i}"], np.full((1, d), i, np.float32))
"""


def expected(n: int, d: int) -> np.ndarray:
    """What the image worker writes."""
    return np.arange(n * d, dtype=np.float32).reshape(n, d) / 7


def spawn(root: Path, mode: str, *args: object) -> subprocess.Popen:
    """A worker that has opened its entry (and, for images, listed what is missing) and now waits for go."""
    argv = [sys.executable, "-c", WORKER, str(Path(cache.__file__).parent), mode, str(root), *map(str, args)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    return proc


def go(*procs: subprocess.Popen) -> None:
    """Start every worker: closing their stdin ends each one's wait, paced or not."""
    for proc in procs:
        proc.stdin.close()


def step(proc: subprocess.Popen) -> tuple[int, int]:
    """Let a paced worker write one chunk; returns its rows once it is committed."""
    proc.stdin.write("\n")
    proc.stdin.flush()
    line = proc.stdout.readline().split()
    assert line[:1] == ["wrote"], line
    return int(line[1]), int(line[2])


def finish(*procs: subprocess.Popen) -> None:
    for proc in procs:
        proc.stdout.read()
        proc.stdout.close()
        assert proc.wait(timeout=60) == 0


def chunk_files(entry) -> list[Path]:
    return sorted(entry.path.glob("chunk-*.npy"))


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.delenv(cache.ENV, raising=False)
    assert default_root() == Path.home() / ".cache" / "clipzs" / "features"
    monkeypatch.setenv(cache.ENV, str(tmp_path))
    assert default_root() == tmp_path
    assert FeatureCache().root == tmp_path
    assert FeatureCache(tmp_path / "x").root == tmp_path / "x"


def test_entries_are_keyed_by_everything(tmp_path):
    store = FeatureCache(tmp_path)
    path = store.images(KEY, 10, 4).path
    assert store.images(dict(reversed(KEY.items())), 10, 4).path == path
    assert store.images(KEY, 10, 8).path == path  # chunk size only splits the work
    assert store.images(KEY, 11, 4).path != path
    assert store.images({**KEY, "precision": "fp16"}, 10, 4).path != path
    assert store.texts(KEY).path != path
    assert not path.exists()  # nothing is created until something is written


def test_write_missing_load(tmp_path):
    x = expected(10, 3)
    entry = FeatureCache(tmp_path).images(KEY, 10, 4)
    assert entry.missing() == [(0, 4), (4, 8), (8, 10)]
    entry.write(4, x[4:8])
    assert entry.missing() == [(0, 4), (8, 10)]
    assert not entry.complete
    with pytest.raises(ClipzsError, match=r"lacks rows \[\(0, 4\), \(8, 10\)\]: cleared or damaged while"):
        entry.load()
    resumed = FeatureCache(tmp_path).images(KEY, 10, 3)  # a new run with another chunk size
    assert resumed.missing() == [(0, 3), (3, 4), (8, 10)]
    for start, stop in resumed.missing():
        resumed.write(start, x[start:stop].astype(np.float64))
    assert entry.complete and entry.missing() == []
    loaded = entry.load()
    assert loaded.dtype == np.float32 and np.array_equal(loaded, x)


@pytest.mark.parametrize(("start", "rows"), [(-1, 2), (9, 2), (0, 0)])
def test_write_rejects_rows_outside_the_entry(tmp_path, start, rows):
    with pytest.raises(ValueError):
        FeatureCache(tmp_path).images(KEY, 10, 4).write(start, np.zeros((rows, 3)))


def test_leftover_temporary_files_are_ignored_then_swept(tmp_path):
    x = expected(8, 2)
    entry = FeatureCache(tmp_path).images(KEY, 8, 4)
    entry.write(0, x[:4])
    name = chunk_files(entry)[0].name
    partial = (entry.path / name).read_bytes()[:-5]
    old, young = entry.path / f".tmp-1-00000000-{name}", entry.path / f".tmp-2-00000000-{name}"
    old.write_bytes(partial)
    young.write_bytes(partial)
    os.utime(old, (time.time() - cache.STALE_S - 60,) * 2)
    assert entry.missing() == [(4, 8)]
    assert not old.exists() and young.exists()  # a young one may belong to a live writer
    entry.write(4, x[4:])
    assert np.array_equal(entry.load(), x)


def test_corrupt_chunk_is_reported_removed_and_recomputed(tmp_path):
    x = expected(8, 2)
    entry = FeatureCache(tmp_path).images(KEY, 8, 4)
    entry.write(0, x[:4])
    entry.write(4, x[4:])
    damaged = chunk_files(entry)[1]
    data = bytearray(damaged.read_bytes())
    data[-3] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.warns(CorruptCacheWarning, match=damaged.name):
        assert entry.missing() == [(4, 8)]
    assert not damaged.exists()
    entry.write(4, x[4:])
    assert np.array_equal(entry.load(), x)


def test_load_reports_a_chunk_corrupted_after_missing(tmp_path):
    entry = FeatureCache(tmp_path).images(KEY, 4, 4)
    entry.write(0, expected(4, 2))
    assert entry.complete
    chunk_files(entry)[0].write_bytes(b"\x93NUMPY truncated")
    with pytest.warns(CorruptCacheWarning), pytest.raises(ClipzsError, match="lacks rows"):
        entry.load()
    assert entry.missing() == [(0, 4)]


def test_sigkill_mid_run_then_resume(tmp_path):
    n, chunk, d = 1000, 20, 8
    proc = spawn(tmp_path, "images", n, chunk, d, "paced")
    reported = [step(proc) for _ in range(3)]
    os.kill(proc.pid, signal.SIGKILL)  # while it waits to write its fourth chunk
    assert proc.wait(timeout=60) == -signal.SIGKILL
    proc.stdin.close()
    proc.stdout.close()
    entry = FeatureCache(tmp_path).images({"model": "m"}, n, chunk)
    todo = entry.missing()
    assert todo and not set(reported) & set(todo)
    assert sorted(reported + todo) == [(start, start + chunk) for start in range(0, n, chunk)]
    for start, stop in todo:
        entry.write(start, expected(n, d)[start:stop])
    assert np.array_equal(entry.load(), expected(n, d))


def test_concurrent_writers_of_one_entry(tmp_path):
    n, chunk, d = 400, 5, 16
    procs = [spawn(tmp_path / "cache", "images", n, chunk, d, "free") for _ in range(2)]  # both plan every chunk
    go(*procs)
    finish(*procs)
    entry = FeatureCache(tmp_path / "cache").images({"model": "m"}, n, chunk)
    assert len(chunk_files(entry)) == n // chunk
    assert {p.name for p in entry.path.iterdir()} == {"entry.json", *(p.name for p in chunk_files(entry))}
    assert np.array_equal(entry.load(), expected(n, d))


def test_text_lookup_and_store(tmp_path):
    entry = FeatureCache(tmp_path).texts(KEY)
    assert entry.lookup(["a photo of a cat."]) == {}
    entry.store(["a photo of a cat.", "a photo of a dog."], np.array([[1, 0], [0, 1]], np.float32))
    found = entry.lookup(["a photo of a cat.", "a photo of a fox."])
    assert list(found) == ["a photo of a cat."] and np.array_equal(found["a photo of a cat."], [1, 0])
    entry.store(["a photo of a fox."], np.array([[0.5, 0.5]]))
    found = entry.lookup(["a photo of a dog.", "a photo of a fox.", "a photo of a cat."])
    assert {p: v.tolist() for p, v in found.items()} == {
        "a photo of a cat.": [1, 0],
        "a photo of a dog.": [0, 1],
        "a photo of a fox.": [0.5, 0.5],
    }
    assert len(list(entry.path.glob("*.npy"))) == 2
    with pytest.raises(ValueError):
        entry.store(["one"], np.zeros((2, 2)))


@pytest.mark.parametrize("suffix", [".npy", ".json"])
def test_corrupt_text_file_is_reported_and_removed(tmp_path, suffix):
    entry = FeatureCache(tmp_path).texts(KEY)
    entry.store(["kept"], np.ones((1, 2)))
    entry.store(["damaged"], np.zeros((1, 2)))
    damaged = next(p for p in entry.path.glob("*.json") if "damaged" in p.read_text()).with_suffix(suffix)
    data = bytearray(damaged.read_bytes())
    data[-2] ^= 0x01
    damaged.write_bytes(bytes(data))
    with pytest.warns(CorruptCacheWarning, match=damaged.name):
        assert list(entry.lookup(["kept", "damaged"])) == ["kept"]
    assert not damaged.with_suffix(".npy").exists() and not damaged.with_suffix(".json").exists()


def test_text_features_without_their_record_are_ignored_then_swept(tmp_path):
    entry = FeatureCache(tmp_path).texts(KEY)
    entry.store(["a"], np.ones((1, 2)))
    record = next(entry.path.glob("*.json"))
    record.unlink()  # killed between committing the features and the record
    assert entry.lookup(["a"]) == {}
    assert record.with_suffix(".npy").exists()
    os.utime(record.with_suffix(".npy"), (time.time() - cache.STALE_S - 60,) * 2)
    assert entry.lookup(["a"]) == {}
    assert not record.with_suffix(".npy").exists()


def test_concurrent_text_stores_keep_both(tmp_path):
    rounds, d = 15, 4
    procs = [spawn(tmp_path / "cache", "text", tag, rounds, d) for tag in "AB"]
    go(*procs)
    finish(*procs)
    wanted = [f"{tag} {i}" for tag in "AB" for i in range(rounds)]
    found = FeatureCache(tmp_path / "cache").texts({"model": "m"}).lookup(wanted)
    assert sorted(found) == sorted(wanted)
    assert all(np.array_equal(found[p], np.full(d, int(p.split()[1]))) for p in wanted)


def test_entries_and_clear(tmp_path):
    store = FeatureCache(tmp_path)
    a = store.images({**KEY, "model": "A"}, 10, 5)
    a.write(0, expected(5, 4))
    b = store.images({**KEY, "model": "B"}, 5, 5)
    b.write(0, expected(5, 4))
    t = store.texts({"model": "A", "precision": "fp32"})
    t.store(["x", "y"], np.zeros((2, 4)))
    t.store(["y", "z"], np.zeros((2, 4)))
    infos = {(i.kind, i.key["model"]): i for i in store.entries()}
    assert set(infos) == {("images", "A"), ("images", "B"), ("text", "A")}
    for info in infos.values():
        assert info.size_bytes == sum(p.stat().st_size for p in info.path.iterdir())
    assert (infos["images", "A"].items, infos["images", "A"].total, infos["images", "A"].complete) == (5, 10, False)
    assert (infos["images", "B"].items, infos["images", "B"].complete) == (5, True)
    assert (infos["text", "A"].items, infos["text", "A"].total) == (3, None)
    assert infos["images", "A"].key == {**KEY, "model": "A"}

    removed = store.clear(model="A")
    assert removed == infos["images", "A"].size_bytes + infos["text", "A"].size_bytes
    assert [(i.kind, i.key["model"]) for i in store.entries()] == [("images", "B")]
    assert a.missing() == [(0, 5), (5, 10)] and t.lookup(["x"]) == {}
    assert store.clear() == infos["images", "B"].size_bytes
    assert store.entries() == [] and store.clear() == 0
    a.write(0, expected(5, 4))  # an entry cleared under a live writer is recreated
    assert store.entries()[0].key["model"] == "A"


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (int(12.34 * 2**20), "12.3 MiB"), (2**20 - 1, "1.0 MiB")],
)
def test_describe_size(n, text):
    assert describe_size(n) == text


def test_clear_removes_entries_only_not_other_folders_beside_them(tmp_path):
    store = FeatureCache(tmp_path)
    store.images(KEY, 4, 4).write(0, expected(4, 2))
    for kind, folder in (("images", "album"), ("text", "drafts")):  # a user's own files, in a folder named wrongly
        (tmp_path / kind / folder).mkdir(parents=True)
        (tmp_path / kind / folder / "keep.txt").write_text("mine")
    assert [info.kind for info in store.entries()] == ["images"]
    assert store.clear() > 0
    assert (tmp_path / "images" / "album" / "keep.txt").read_text() == "mine"
    assert (tmp_path / "text" / "drafts" / "keep.txt").read_text() == "mine"
    assert store.entries() == []
