"""CLIP_benchmark's webdataset layout: `<root>/<split>/nshards.txt` and shards `<root>/<split>/0.tar`, `1.tar`, ...,
with `classnames.txt` and `zeroshot_classification_templates.txt` beside the split folders; each sample is a
`<key>.webp|png|jpg|jpeg` image and a `<key>.cls` label (the class index as text).

The root is a folder or anything webdataset's `gopen` opens (`https://`, `file://`, `pipe:...`), or a brace pattern
of shards (`.../test/{0..7}.tar`) whose folder's parent holds the text files. Labels come from an index pass that
reads only the `.cls` members (images are skipped unread); images are then streamed shard by shard and only the
wanted samples are decoded, so a stream never holds more than one image at a time.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
from PIL import Image
from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from ..errors import ClipzsError
from .base import ImageSource, UnreadableImage, decode, one_line, sha256_text

IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")  # what CLIP_benchmark reads as the image
CLASSNAMES, TEMPLATES = "classnames.txt", "zeroshot_classification_templates.txt"
SHARDS = re.compile(r"([^/\s]+)/[^/\s]*\.tar(?=\s|$)")  # `<split>/<shard or brace pattern>.tar` ending a URL
STREAM_ERRORS = (OSError, EOFError, ValueError, tarfile.TarError)  # what gopen and tarfile raise for bad input


def is_local(url: str) -> bool:
    return urlparse(url).scheme in ("", "file")


def resolve(url: str) -> str:
    """A local path or `file:` URL as an absolute path; any other URL as it is (for `gopen`)."""
    if not is_local(url):
        return url
    return os.path.abspath(url2pathname(urlparse(url).path) if url.startswith("file:") else os.path.expanduser(url))


def reason(e: BaseException) -> str:
    """Why a stream failed, on one line; for a `pipe:` or `curl` stream its exit status, not gopen's argument dump."""
    status = re.search(r": exit (-?\d+) \(read\)", str(e))
    if status:
        return f"{'curl' if 'curl' in str(e) else 'the command'} exited with status {status.group(1)}"
    return one_line(e)


def shard_error(url: str, e: BaseException) -> ClipzsError:
    return ClipzsError(f"cannot read shard {url}: {reason(e)}")


def read_text(url: str, required: bool) -> str | None:
    """A small text file read through `gopen`; None if it cannot be read and is not `required` (a local file that
    is there must be readable, though: only its absence means there is none)."""
    try:
        with gopen(resolve(url)) as f:
            return f.read().decode("utf-8")
    except (OSError, ValueError, UnicodeDecodeError) as e:
        if required or os.path.lexists(resolve(url)):
            raise ClipzsError(f"cannot read {url}: {reason(e)}") from e
        return None


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.rstrip().splitlines()]


def hub_url(root: str) -> str:
    """A Hugging Face dataset's browsing link (`.../tree/main`, as CLIP_benchmark's docs give it) as its file link."""
    return re.sub(r"^(https://huggingface\.co/datasets/[^/]+/[^/]+)/tree/", r"\1/resolve/", root)


def _shard_order(path: Path) -> tuple[bool, int, str]:
    return (not path.stem.isdigit(), int(path.stem) if path.stem.isdigit() else 0, path.name)


def locate(root: str, split: str | None) -> tuple[str, list[str], tuple[str, str]]:
    """The split, its shard URLs, and (prefix, suffix) that put a text file's name beside the split folders."""
    if re.search(r"\.tar(\s|::|$)", root):  # a shard pattern: `<root>/<split>/{0..7}.tar`, maybe several joined by `::`
        first = root.split("::")[0]
        found = list(SHARDS.finditer(first))
        if not found:
            raise ClipzsError(f"{root}: expected shards as <root>/<split>/<shard>.tar (braces allowed: {{0..7}}.tar)")
        last = found[-1]
        return last.group(1), expand_urls(root), (first[: last.start()], first[last.end() :])
    base, split = root.rstrip("/"), split or "test"
    nshards = f"{base}/{split}/nshards.txt"
    if is_local(base) and not os.path.isfile(resolve(nshards)):  # a local split may just hold its shards
        shards = [str(p) for p in sorted(Path(resolve(base), split).glob("*.tar"), key=_shard_order)]
        if not shards:
            raise ClipzsError(f"webdataset split {split!r} not found: expected {nshards} and 0.tar, ... beside it")
    else:
        text = str(read_text(nshards, required=True)).strip()
        if not text.isdigit() or int(text) < 1:
            raise ClipzsError(f"{nshards} must hold a positive number of shards, not {text!r}")
        shards = [f"{base}/{split}/{i}.tar" for i in range(int(text))]
    return split, shards, (base + "/", "")


def index_shard(url: str) -> tuple[list[str], list[int]]:
    """Keys and labels of one shard's samples, in order, read from their `.cls` members alone."""
    every: dict[str, None] = {}  # each sample's key in order, whatever its members

    def labels_only(fname: str) -> bool:
        key, ext = base_plus_ext(fname)
        if key is None:
            return False
        every.setdefault(key)
        return ext.lower() == "cls"

    keys, labels = [], []
    try:
        with gopen(url) as stream:
            for member in tar_file_iterator(stream, select_files=labels_only):
                key, text = base_plus_ext(member["fname"])[0], member["data"].decode("utf-8", "replace").strip()
                if not text.isdigit():
                    raise ClipzsError(f"sample {key} in {url}: label {text!r} is not a class index")
                keys.append(key)
                labels.append(int(text))
    except STREAM_ERRORS as e:
        raise shard_error(url, e) from e
    if len(set(keys)) < len(keys):
        raise ClipzsError(f"{url} holds a sample key twice: keys must be unique within a shard")
    labelled = set(keys)
    unlabelled = [key for key in every if key not in labelled]
    if unlabelled:
        raise ClipzsError(f"sample {unlabelled[0]} in {url} has no .cls label ({len(unlabelled)} such samples)")
    return keys, labels


class WdsSource(ImageSource):
    """A webdataset split read as a stream: labels [N] from the index pass, images decoded when read.

    `shards` are the shard URLs (or paths) and sample i is member `keys[i]` of `shards[shard_of[i]]`, so another
    engine (Ray's `read_webdataset`) can read the same samples. `templates` are the dataset's own (`{}` for the
    class name), or None when it has none.
    """

    random_access = False

    def __init__(
        self,
        name: str,
        split: str,
        classes: Sequence[str],
        templates: Sequence[str] | None,
        shards: Sequence[str],
        shard_of: np.ndarray,
        keys: Sequence[str],
        labels: np.ndarray,
    ):
        assert len(shard_of) == len(keys) == len(labels), (len(shard_of), len(keys), len(labels))
        self.name, self.split, self.classes = name, split, tuple(classes)
        self.templates = tuple(templates) if templates is not None else None
        self.shards, self.shard_of, self.keys = tuple(shards), np.asarray(shard_of, np.int64), tuple(keys)
        self.labels = np.asarray(labels, dtype=np.int64)

    def sample(self, i: int) -> tuple[str, str]:
        """Sample i's shard URL and key."""
        return self.shards[self.shard_of[i]], self.keys[i]

    def item_name(self, i: int) -> str:
        shard, key = self.sample(i)
        return f"{key} in {shard}"

    def fingerprint(self) -> str:
        identities = []
        for shard in self.shards:  # local: path, size, mtime; remote: the URL (the index below covers its content)
            try:
                stat = os.stat(shard) if is_local(shard) else None
            except OSError:
                stat = None
            identities.append(f"{shard}\0{stat.st_size}\0{stat.st_mtime_ns}" if stat else shard)
        return sha256_text(*identities, self.shard_of.tobytes(), "\0".join(self.keys), self.labels.tobytes())

    def read(self, indices: Sequence[int]) -> Iterator[tuple[int, Image.Image | UnreadableImage]]:
        """The samples at `indices` (increasing). Each call opens the shards again and reads up to its samples, so
        read all the wanted samples in one call rather than one call per chunk."""
        wanted = np.asarray(indices, dtype=np.int64)
        if len(wanted) > 1 and not bool((np.diff(wanted) > 0).all()):
            raise ValueError("a stream is read at increasing indices")
        shard_of = self.shard_of[wanted]  # non-decreasing, as the indices increase
        for chosen in np.split(wanted, np.flatnonzero(np.diff(shard_of)) + 1) if len(wanted) else []:
            yield from self._read_shard(int(self.shard_of[chosen[0]]), chosen.tolist())

    def _read_shard(self, shard: int, chosen: list[int]) -> Iterator[tuple[int, Image.Image | UnreadableImage]]:
        """The `chosen` samples of one shard, in order, each from its first image member; the others are skipped
        undecoded, and reading stops after the last one chosen."""
        url, position = self.shards[shard], {self.keys[i]: i for i in chosen}
        pending = iter(chosen)

        def missing(i: int) -> tuple[int, UnreadableImage]:
            position.pop(self.keys[i], None)
            return i, UnreadableImage(self.item_name(i), "the sample has no .webp, .png, .jpg or .jpeg image")

        def wanted_image(fname: str) -> bool:
            key, ext = base_plus_ext(fname)
            return key in position and ext is not None and ext.lower() in IMAGE_EXTENSIONS

        finished = False
        try:
            stream = gopen(url)
        except STREAM_ERRORS as e:
            raise shard_error(url, e) from e
        try:
            for member in tar_file_iterator(stream, select_files=wanted_image):
                i = position.pop(base_plus_ext(member["fname"])[0], None)
                if i is None:  # a second image of a sample already read
                    continue
                yield from (missing(j) for j in iter(pending.__next__, i))
                try:
                    yield i, decode(member["data"], self.item_name(i))
                except UnreadableImage as e:
                    yield i, e
                if not position:
                    break
            else:
                finished = True
        except STREAM_ERRORS as e:
            raise shard_error(url, e) from e
        finally:
            try:
                stream.close()
            except OSError:  # a pipe's writer dies of SIGPIPE when reading stops early: only a full read must succeed
                if finished:
                    raise
        yield from (missing(j) for j in pending)


def load_wds(root: str | Path, split: str | None = None, name: str = "wds") -> WdsSource:
    """The CLIP_benchmark webdataset split at `root` (a folder or URL; or a brace pattern of shards, whose folder
    names the split)."""
    root = hub_url(str(root))
    split, shards, (prefix, suffix) = locate(root, split)
    shards = [resolve(url) for url in shards]
    classnames = read_text(prefix + CLASSNAMES + suffix, required=True)
    templates = read_text(prefix + TEMPLATES + suffix, required=False)
    shard_of, keys, labels = [], [], []
    for n, url in enumerate(shards):
        shard_keys, shard_labels = index_shard(url)
        shard_of += [n] * len(shard_keys)
        keys += shard_keys
        labels += shard_labels
    if not keys:
        raise ClipzsError(f"no labelled samples in the shards of {root} ({len(shards)} shards)")
    classes = lines(classnames)
    if not all(classes):
        raise ClipzsError(f"{prefix + CLASSNAMES + suffix} must name one class per line, without blank lines")
    bad = next((i for i, label in enumerate(labels) if label >= len(classes)), None)
    if bad is not None:
        raise ClipzsError(
            f"sample {keys[bad]} in {shards[shard_of[bad]]}: label {labels[bad]} is not below the "
            f"{len(classes)} classes of {prefix + CLASSNAMES + suffix}"
        )
    templates = [t.replace("{c}", "{}") for t in lines(templates) if t] if templates else None
    return WdsSource(name, split, classes, templates, shards, np.asarray(shard_of), keys, np.asarray(labels))


def open_wds(dataset: str, data_root: str | Path | None, split: str | None, download: bool = True) -> WdsSource:
    """The `sources` registry's entry point for `--dataset wds`."""
    if data_root is None:
        raise ClipzsError(
            "dataset wds needs --data-root: a folder or URL holding <split>/nshards.txt, <split>/0.tar, "
            "... and classnames.txt, or a shard pattern such as DIR/test/{0..7}.tar"
        )
    return load_wds(data_root, split, dataset)
