"""Verified downloads: stream a URL to a file with a progress bar, check its digest, rename atomically."""

from __future__ import annotations

import hashlib
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


def fetch(url: str, dest: Path, algorithm: str, expected: str, what: str) -> Path:
    """Download `url` to `dest` and verify its `algorithm` digest equals `expected`.

    The file is written beside `dest` under a temporary name and renamed only once verified, so an
    interrupted or corrupt download never leaves a file that looks complete. Without a network this
    fails at once (no retries) with a message naming the URL, the path and the expected digest.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.part-{os.getpid()}")
    hint = f"download it by hand and place it at {dest} ({algorithm} {expected})"
    digest = hashlib.new(algorithm)
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
    finally:
        part.unlink(missing_ok=True)
    return dest
