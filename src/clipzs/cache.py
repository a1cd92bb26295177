"""Keyed, atomic, resumable storage of feature arrays on disk; it knows nothing about what the features mean.

Layout under the root (`~/.cache/clipzs/features`, or `$CLIPZS_FEATURE_CACHE`, or the constructor's argument):

    images/<id>/entry.json                         {"key": {...}, "kind": "images", "num_items": N}
    images/<id>/chunk-<start>-<stop>-<sha256>.npy  float32 [stop - start, D], rows start:stop of [N, D]; a row of
                                                   NaN is an image that could not be read
    images/<id>/skipped-<start>-<stop>-<sha256>.json  {"<row>": "<why it could not be read>"}, for such rows
    text/<id>/entry.json                           {"key": {...}, "kind": "text"}
    text/<id>/<sha256>.json                        {"features_sha256": "<hex>", "prompts": [...]}
    text/<id>/<sha256>.npy                         float32 [len(prompts), D], one row per prompt
    text/<id>/facts-<sha256>.json                  {"logit_scale": ...}: what scoring needs of the model itself

`<id>` hashes the canonical JSON of `entry.json`, so an entry is named by everything that determines its contents.

Every file is written once under a temporary name, fsynced and renamed into place, and never changed: a run killed
at any point leaves at worst a temporary file, which readers ignore and a later run removes once it is a day old.
Each name carries the SHA256 of the file's bytes (a text `.npy` through its `.json` record, which is committed after
it), checked on every read; a file that fails is reported with `CorruptCacheWarning`, removed, and treated as missing
so the caller recomputes it. Nothing is ever read, modified and written back, so concurrent runs need no locks: two
writers of one name write the same bytes, and a rename is atomic.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ClipzsError
from .storage import TMP_PREFIX, write_atomic

ENV = "CLIPZS_FEATURE_CACHE"
KINDS = ("images", "text")
STALE_S = 24 * 3600  # an uncommitted file this old belongs to a killed run; a younger one may be about to be renamed
_TMP = TMP_PREFIX
_CHUNK = re.compile(r"chunk-(\d{10})-(\d{10})-([0-9a-f]{64})\.npy")
_RECORD = re.compile(r"([0-9a-f]{64})\.json")
_ENTRY_NAME = re.compile(r"[0-9a-f]{32}")  # an entry folder: the first 32 hex digits of its identity's SHA256
_FACTS = re.compile(r"facts-([0-9a-f]{64})\.json")
_SKIPPED = re.compile(r"skipped-(\d{10})-(\d{10})-([0-9a-f]{64})\.json")


class CorruptCacheWarning(UserWarning):
    """A cache file failed verification and was removed; what it held will be recomputed."""


def default_root() -> Path:
    """`$CLIPZS_FEATURE_CACHE`, else `~/.cache/clipzs/features`."""
    return Path(os.environ.get(ENV) or Path.home() / ".cache" / "clipzs" / "features").expanduser()


def describe_size(n_bytes: int) -> str:
    """A human-readable size in binary units: "512 B", "12.3 MiB"."""
    if n_bytes < 0:
        raise ValueError(f"size must be non-negative, got {n_bytes}")
    if n_bytes < 1024:
        return f"{n_bytes} B"
    size = float(n_bytes)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if round(size, 1) < 1024 or unit == "TiB":
            break
    return f"{size:.1f} {unit}"


def _canonical(obj: object) -> bytes:
    """One byte string per JSON value, whatever the dict order, so equal keys hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(features: np.ndarray) -> bytes:
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be [rows, D], got shape {features.shape}")
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(features, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def _parse_npy(data: bytes, rows: int) -> np.ndarray:
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if array.dtype != np.float32 or array.ndim != 2 or array.shape[0] != rows:
        raise ValueError(f"holds {array.dtype} {array.shape}, expected float32 with {rows} rows")
    return array


def _discard(paths: list[Path], reason: object) -> None:
    warnings.warn(
        f"feature cache file {paths[0]} is invalid ({reason}); removed, so it will be recomputed",
        CorruptCacheWarning,
        stacklevel=2,
    )
    for path in paths:
        path.unlink(missing_ok=True)


def _gaps(covered: np.ndarray, chunk_size: int) -> list[tuple[int, int]]:
    """The [start, stop) ranges where `covered` is False, cut into pieces of at most `chunk_size`."""
    edges = np.flatnonzero(np.diff(np.concatenate(([True], covered, [True])).astype(np.int8))).tolist()
    return [
        (start, min(start + chunk_size, stop))
        for begin, stop in zip(edges[::2], edges[1::2], strict=True)
        for start in range(begin, stop, chunk_size)
    ]


class _Entry:
    """A directory named by the hash of `identity`, holding files that are written once and never changed."""

    def __init__(self, path: Path, identity: dict):
        self.path, self.identity = path, identity

    @property
    def key(self) -> dict:
        return self.identity["key"]

    def _ensure(self) -> None:
        """Create the directory and its `entry.json` before the first write (again, if `clear` removed them)."""
        record = self.path / "entry.json"
        if not record.exists():
            self.path.mkdir(parents=True, exist_ok=True)
            write_atomic(record, _canonical(self.identity))

    def _uncommitted(self, name: str, names: set[str]) -> bool:
        """Whether `name` was never committed: a write in progress, or one that was killed."""
        return name.startswith(_TMP)

    def _names(self) -> set[str]:
        """The entry's file names, after removing uncommitted files a day old."""
        try:
            names = set(os.listdir(self.path))
        except FileNotFoundError:
            return set()
        for name in [n for n in names if self._uncommitted(n, names)]:
            try:
                if time.time() - (self.path / name).stat().st_mtime > STALE_S:
                    (self.path / name).unlink()
                    names.discard(name)
            except FileNotFoundError:
                names.discard(name)
        return names


class ImageEntry(_Entry):
    """Features [N, D] of N images, stored as row chunks that any number of runs may write in any order."""

    def __init__(self, path: Path, identity: dict, chunk_size: int):
        super().__init__(path, identity)
        self.num_items: int = identity["num_items"]
        self.chunk_size = chunk_size

    def _chunks(self) -> list[tuple[int, int, str, Path]]:
        """(start, stop, sha256, path) of every stored chunk, by name only, in the order `load` applies them."""
        return sorted((int(m[1]), int(m[2]), m[3], self.path / m[0]) for m in map(_CHUNK.fullmatch, self._names()) if m)

    def _verified(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """(start, stop, rows) of every chunk whose bytes match its name; the others are reported and removed."""
        for start, stop, digest, path in self._chunks():
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # removed by a concurrent `clear` or verification
                continue
            try:
                if not 0 <= start < stop <= self.num_items:
                    raise ValueError(f"rows {start}:{stop} outside 0:{self.num_items}")
                if _sha256(data) != digest:
                    raise ValueError("SHA256 does not match its name")
                yield start, stop, _parse_npy(data, stop - start)
            except ValueError as e:
                _discard([path], e)

    def missing(self) -> list[tuple[int, int]]:
        """[start, stop) ranges of at most `chunk_size` rows not yet stored; reads and verifies every chunk."""
        covered = np.zeros(self.num_items, dtype=bool)
        for start, stop, _ in self._verified():
            covered[start:stop] = True
        return _gaps(covered, self.chunk_size)

    @property
    def complete(self) -> bool:
        """Whether every row is stored and verified (reads every chunk)."""
        return not self.missing()

    def write(self, start: int, features: np.ndarray, skipped: dict[int, str] | None = None) -> None:
        """Store rows start:start+len(features) as one chunk file, atomically (cast to float32), with why the
        `skipped` rows (NaN in `features`) could not be read; the reasons are committed before the chunk."""
        data = _npy_bytes(features)
        stop = start + len(features)
        if not 0 <= start < stop <= self.num_items:
            raise ValueError(f"rows {start}:{stop} are not inside 0:{self.num_items}")
        self._ensure()
        if skipped:
            record = _canonical({str(i): reason for i, reason in sorted(skipped.items())})
            write_atomic(self.path / f"skipped-{start:010d}-{stop:010d}-{_sha256(record)}.json", record)
        write_atomic(self.path / f"chunk-{start:010d}-{stop:010d}-{_sha256(data)}.npy", data)

    def skipped(self) -> dict[int, str]:
        """Why each stored NaN row could not be read, from the records beside the chunks (verified by name)."""
        reasons: dict[int, str] = {}
        for m in filter(None, map(_SKIPPED.fullmatch, self._names())):
            path = self.path / m[0]
            try:
                data = path.read_bytes()
                if _sha256(data) != m[3]:
                    raise ValueError("SHA256 does not match its name")
                reasons.update({int(k): str(v) for k, v in json.loads(data).items()})
            except FileNotFoundError:
                continue
            except ValueError as e:
                _discard([path], e)
        return reasons

    def load(self) -> np.ndarray:
        """All features [N, D] float32, verified; a ClipzsError if rows are missing: not written yet (write
        `missing()` first), or gone since (cleared by another process, or damaged and removed)."""
        out: np.ndarray | None = None
        covered = np.zeros(self.num_items, dtype=bool)
        for start, stop, rows in self._verified():
            if out is None:
                out = np.empty((self.num_items, rows.shape[1]), dtype=np.float32)
            elif rows.shape[1] != out.shape[1]:
                raise ValueError(f"{self.path}: chunk {start}:{stop} has width {rows.shape[1]}, others {out.shape[1]}")
            out[start:stop] = rows
            covered[start:stop] = True
        if out is None or not covered.all():
            raise ClipzsError(
                f"the feature cache {self.path} lacks rows {_gaps(covered, self.num_items)}: cleared or damaged "
                "while this run used it? Run again to encode them"
            )
        return out


class TextEntry(_Entry):
    """One [D] feature vector per prompt string, added in files of many prompts that are never rewritten."""

    def _uncommitted(self, name: str, names: set[str]) -> bool:
        return super()._uncommitted(name, names) or (name.endswith(".npy") and f"{name[:-4]}.json" not in names)

    def _record(self, stem: str) -> tuple[list[str], str] | None:
        """(prompts, features SHA256) of record `stem` if its bytes match its name; else report and remove it."""
        path = self.path / f"{stem}.json"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            if _sha256(data) != stem:
                raise ValueError("SHA256 does not match its name")
            record = json.loads(data)
            return list(record["prompts"]), str(record["features_sha256"])
        except (ValueError, KeyError, TypeError) as e:
            _discard([path, path.with_suffix(".npy")], e)
            return None

    def _features(self, stem: str, rows: int, digest: str) -> np.ndarray | None:
        """The features of record `stem` if their bytes match `digest`; else report and remove both files."""
        path = self.path / f"{stem}.npy"
        try:
            data = path.read_bytes()  # committed after these features, so their absence is damage, not a race
            if _sha256(data) != digest:
                raise ValueError("SHA256 does not match its record")
            return _parse_npy(data, rows)
        except (FileNotFoundError, ValueError) as e:
            _discard([path, path.with_suffix(".json")], e)
            return None

    def lookup(self, prompts: list[str]) -> dict[str, np.ndarray]:
        """Features [D] of those `prompts` already stored, verified; reads only the files that hold them."""
        wanted, found = set(prompts), {}
        for stem in sorted(m[1] for m in map(_RECORD.fullmatch, self._names()) if m):
            record = self._record(stem)
            if record is None or not (wanted - found.keys()).intersection(record[0]):
                continue
            features = self._features(stem, len(record[0]), record[1])
            for prompt, row in zip(record[0], features if features is not None else [], strict=False):
                if prompt in wanted:
                    found.setdefault(prompt, row)
        return found

    def facts(self) -> dict | None:
        """The model facts stored with `store_facts`, verified, or None."""
        for m in filter(None, map(_FACTS.fullmatch, sorted(self._names()))):
            path = self.path / m[0]
            try:
                data = path.read_bytes()
                if _sha256(data) != m[1]:
                    raise ValueError("SHA256 does not match its name")
                facts = json.loads(data)
                if isinstance(facts, dict):
                    return facts
                raise ValueError("not a JSON object")
            except FileNotFoundError:
                continue
            except ValueError as e:
                _discard([path], e)
        return None

    def store_facts(self, facts: dict) -> None:
        """Store what scoring needs of the model (its logit scale), so a run with every feature cached need not
        load the model at all."""
        record = _canonical(facts)
        self._ensure()
        write_atomic(self.path / f"facts-{_sha256(record)}.json", record)

    def store(self, prompts: list[str], features: np.ndarray) -> None:
        """Add features [P, D] of `prompts` as one new pair of files, atomically; existing files stay as they are."""
        data = _npy_bytes(features)
        if len(prompts) != len(features):
            raise ValueError(f"{len(prompts)} prompts but {len(features)} feature rows")
        if not prompts:
            return
        record = _canonical({"features_sha256": _sha256(data), "prompts": list(prompts)})
        stem = _sha256(record)
        self._ensure()
        write_atomic(self.path / f"{stem}.npy", data)
        write_atomic(self.path / f"{stem}.json", record)  # the commit: readers see features only through it


@dataclass(frozen=True)
class EntryInfo:
    """One cache entry as `clipzs cache list` shows it, from names and records only (file contents not verified)."""

    kind: str  # "images" or "text"
    key: dict  # the caller's key; {} when entry.json is unreadable
    path: Path
    size_bytes: int  # every file in the entry, temporary ones included
    items: int  # image rows stored, or distinct prompts stored
    total: int | None  # N of an image entry; None for text
    complete: bool  # all N rows stored (always True for text)


class FeatureCache:
    """Image and text feature entries under one root directory."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else default_root()

    def _path(self, identity: dict) -> Path:
        return self.root / identity["kind"] / _sha256(_canonical(identity))[:32]  # an _ENTRY_NAME

    def images(self, key: dict, num_items: int, chunk_size: int) -> ImageEntry:
        """The entry for the features [num_items, D] that `key` (a JSON-able dict) determines."""
        if num_items < 1 or chunk_size < 1:
            raise ValueError(f"num_items and chunk_size must be positive, got {num_items} and {chunk_size}")
        identity = {"key": key, "kind": "images", "num_items": num_items}
        return ImageEntry(self._path(identity), identity, chunk_size)

    def texts(self, key: dict) -> TextEntry:
        """The entry for prompt features of the model that `key` (a JSON-able dict) determines."""
        identity = {"key": key, "kind": "text"}
        return TextEntry(self._path(identity), identity)

    def entries(self) -> list[EntryInfo]:
        """Every entry under the root, images first; cheap enough for a listing (no feature file is read). Only
        folders named as entries are (32 hex digits): anything else there is not clipzs's, to list or to clear."""
        infos = []
        for kind in KINDS:
            folder = self.root / kind
            for path in sorted(folder.iterdir()) if folder.is_dir() else []:
                if not _ENTRY_NAME.fullmatch(path.name):
                    continue
                try:
                    infos.append(self._info(kind, path))
                except (FileNotFoundError, NotADirectoryError):  # removed by a concurrent `clear`, or a stray file
                    continue
        return infos

    @staticmethod
    def _info(kind: str, path: Path) -> EntryInfo:
        sizes = {}
        for name in os.listdir(path):
            try:
                sizes[name] = (path / name).stat().st_size
            except FileNotFoundError:  # a temporary file renamed meanwhile: its final name is listed or will be
                continue
        try:
            identity = json.loads((path / "entry.json").read_bytes())
        except (OSError, ValueError):
            identity = None
        if not isinstance(identity, dict) or _sha256(_canonical(identity))[:32] != path.name:
            identity = {}
        key, size = identity.get("key", {}), sum(sizes.values())
        if kind == "images":
            total = int(identity.get("num_items", 0))
            covered = np.zeros(total, dtype=bool)
            for m in filter(None, map(_CHUNK.fullmatch, sizes)):
                covered[int(m[1]) : int(m[2])] = True
            return EntryInfo(kind, key, path, size, int(covered.sum()), total, total > 0 and bool(covered.all()))
        prompts: set[str] = set()
        for name in filter(_RECORD.fullmatch, sizes):
            try:
                prompts.update(json.loads((path / name).read_bytes())["prompts"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return EntryInfo(kind, key, path, size, len(prompts), None, True)

    def clear(self, model: str | None = None) -> int:
        """Remove every entry, or only those whose key's "model" equals `model`; returns the bytes removed.

        Each entry is first renamed out of its folder, so nothing ever sees it half removed.
        """
        if model is None:  # what a killed `clear` left
            for trash in self.root.glob(".trash-*"):
                shutil.rmtree(trash, ignore_errors=True)
        removed = 0
        for info in self.entries():
            if model is None or info.key.get("model") == model:
                trash = self.root / f".trash-{secrets.token_hex(8)}"
                try:
                    os.rename(info.path, trash)
                except FileNotFoundError:  # a concurrent `clear` got there first
                    continue
                shutil.rmtree(trash, ignore_errors=True)
                removed += info.size_bytes
        return removed
