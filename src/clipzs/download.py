"""Verified downloads and file digests: URLs streamed to disk with a progress bar, Hugging Face Hub files
taken from the local hub cache first, and SHA256 digests remembered so large checkpoints are hashed once."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .errors import ClipzsError

CHUNK = 1 << 20
TIMEOUT_S = 30


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of a file, read in chunks so large checkpoints never sit in memory twice."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def sha256(path: Path, table: Path, known: str | None = None) -> str:
    """SHA256 of `path`, remembered in the JSON file `table` under (absolute path, size, mtime_ns).

    An unchanged file is not read again, so a 350 MB checkpoint costs a stat on later runs. `known` records
    a digest just verified elsewhere (a finished download). The table is rewritten atomically; when it
    cannot be written the digest is simply computed again next time.
    """
    path = path.resolve()
    stat = path.stat()
    try:
        entries = json.loads(table.read_text())
    except (OSError, ValueError):
        entries = {}
    stamp = [stat.st_size, stat.st_mtime_ns]
    entry = entries.get(str(path)) if isinstance(entries, dict) else None
    if (
        known is None
        and isinstance(entry, dict)
        and entry.get("stat") == stamp
        and isinstance(entry.get("sha256"), str)
    ):
        return entry["sha256"]
    digest = known or file_digest(path, "sha256")
    entries = {k: v for k, v in entries.items() if os.path.exists(k)} if isinstance(entries, dict) else {}
    entries[str(path)] = {"stat": stamp, "sha256": digest}  # entries of deleted files are dropped above
    part = table.with_name(f"{table.name}.part-{os.getpid()}")
    try:
        table.parent.mkdir(parents=True, exist_ok=True)
        part.write_text(json.dumps(entries, indent=0))
        os.replace(part, table)
    except OSError:
        part.unlink(missing_ok=True)
    return digest


def _created_folders(folder: Path) -> list[Path]:
    """`folder` and its missing parents, deepest first: what `mkdir(parents=True)` is about to create."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing


def fetch(url: str, dest: Path, algorithm: str, expected: str, what: str) -> Path:
    """Download `url` to `dest` and verify its `algorithm` digest equals `expected`.

    The file is written beside `dest` under a temporary name and renamed only once verified, so an
    interrupted or corrupt download never leaves a file that looks complete, and folders created for it
    are removed again when it fails. Without a network this fails at once (no retries) with a message
    naming the URL, the path and the expected digest.
    """
    created = _created_folders(dest.parent)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.part-{os.getpid()}")
    hint = f"download it by hand and place it at {dest} ({algorithm} {expected})"
    digest = hashlib.new(algorithm)
    done = False
    try:
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(part, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name) as bar:
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise ClipzsError(f"{what} is missing and could not be downloaded from {url} ({reason}); {hint}") from e
        if digest.hexdigest() != expected:
            raise ClipzsError(
                f"{what} downloaded from {url} has {algorithm} {digest.hexdigest()}, expected {expected}; {hint}"
            )
        os.replace(part, dest)
        done = True
    finally:
        part.unlink(missing_ok=True)
        for folder in [] if done else created:
            try:
                folder.rmdir()
            except OSError:  # something else was put there meanwhile: leave it
                break
    return dest


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type when empty): errors stay one line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def hub_files(repo_id: str, wanted: list[tuple[str, ...]]) -> list[Path]:
    """One local path per entry of `wanted` (alternative file names, preferred first) from Hugging Face
    Hub repo `repo_id`.

    Files already in the hub cache (`HF_HUB_CACHE`, by `refs/main`) are used without any network call;
    missing ones are downloaded with `huggingface_hub` unless `HF_HUB_OFFLINE` is set, in which case the
    error names the repo, the files expected and the cache folder looked in.
    """
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.file_download import repo_folder_name

    folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    expected = " and ".join(" or ".join(names) for names in wanted)
    paths = []
    for names in wanted:
        cached = [try_to_load_from_cache(repo_id, name) for name in names]
        found = next((Path(p) for p in cached if isinstance(p, str)), None)
        if found is None and constants.HF_HUB_OFFLINE:
            raise ClipzsError(
                f"{repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: expected {expected} "
                f"in {folder}/snapshots/<revision>/ (the revision named by refs/main)"
            )
        paths.append(found or _hub_download(repo_id, names, folder))
    return paths


def _hub_download(repo_id: str, names: tuple[str, ...], folder: Path) -> Path:
    """The first of `names` that repo `repo_id` holds, downloaded into the hub cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    for name in names:
        try:
            return Path(hf_hub_download(repo_id, name))
        except Exception as e:  # unreachable Hub, unknown or gated repository: huggingface_hub raises many types
            if isinstance(e, EntryNotFoundError) and not isinstance(e, LocalEntryNotFoundError):
                continue  # the repository has no file of this name: try the next one
            raise ClipzsError(
                f"cannot download {name} of {repo_id} from the Hugging Face Hub ({first_line(e)}); "
                f"it is not in the cache {folder} either"
            ) from e
    raise ClipzsError(f"{repo_id} on the Hugging Face Hub holds none of {', '.join(names)}")
