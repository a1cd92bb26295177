"""Tables of labelled images: a CSV or parquet file with exactly the columns `path` and `label`, one row per image.

Relative paths are resolved against the table's folder. A label is a class index (an integer, or text of digits
only) or a class name: with indices
the classes are `classnames.txt` beside the table (one per line) or `0`..`K-1`; with names, the classes are
`classnames.txt` in its order when it exists (every name must be in it), else the sorted unique names. A row's
missing image file is, like a damaged one, an `UnreadableImage` when read (reported by its path), not an error
when the table is loaded; only a table none of whose files exist is refused outright.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from pathlib import Path

import numpy as np

from ..errors import ClipzsError, ClipzsWarning
from .base import PathSource, one_line

COLUMNS = ("path", "label")
CLASSNAMES = "classnames.txt"
INDEX = re.compile(r"\d+")
MAX_CLASSES = 1_000_000  # class indices without class names: far beyond any dataset, and still a list that fits


def read_csv(path: Path) -> tuple[list[str], list[object]]:
    """Paths and labels (str) of a CSV table, with a header row naming the columns."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [name.strip() for name in next(reader, [])]
            check_columns(header, path)
            at = [header.index(c) for c in COLUMNS]
            rows = []
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise ClipzsError(f"{path}, line {reader.line_num}: {len(row)} fields, expected {len(header)}")
                rows.append([row[i].strip() for i in at])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ClipzsError(f"cannot read table {path}: {one_line(e)}") from e
    return [r[0] for r in rows], [r[1] for r in rows]


def read_parquet(path: Path) -> tuple[list[str], list[object]]:
    """Paths and labels (int or str, as stored) of a parquet table, read with pyarrow."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ClipzsError(f"reading parquet tables needs pyarrow: pip install 'clipzs[parquet]' ({path})") from e
    import pyarrow as pa

    try:
        check_columns(pq.read_schema(path).names, path)
        table = pq.read_table(path, columns=list(COLUMNS))
    except (OSError, pa.ArrowException) as e:
        raise ClipzsError(f"cannot read table {path}: {one_line(e)}") from e
    label, path_type = table.schema.field("label").type, table.schema.field("path").type
    if pa.types.is_dictionary(label):
        label = label.value_type
    if not (pa.types.is_integer(label) or pa.types.is_string(label) or pa.types.is_large_string(label)):
        raise ClipzsError(f"{path}: column label holds {label}; expected integer class indices or class names")
    if not (pa.types.is_string(path_type) or pa.types.is_large_string(path_type)):
        raise ClipzsError(f"{path}: column path holds {path_type}; expected strings")
    return table.column("path").to_pylist(), table.column("label").to_pylist()


def check_columns(names: list[str], path: Path) -> None:
    if sorted(names) != sorted(COLUMNS):
        found = ", ".join(names) or "none"
        raise ClipzsError(f"{path} must have exactly the columns path and label (found: {found})")


def read_classnames(folder: Path) -> list[str] | None:
    """The class names in `folder/classnames.txt`, one per line, or None when there is no such file."""
    file = folder / CLASSNAMES
    if not file.is_file():
        return None
    try:
        names = [line.strip() for line in file.read_text(encoding="utf-8").strip().splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise ClipzsError(f"cannot read {file}: {one_line(e)}") from e
    if not names or not all(names) or len(set(names)) < len(names):
        raise ClipzsError(f"{file} must list each class once, one name per line, without blank lines")
    return names


def to_labels(values: list[object], classnames: list[str] | None, path: Path) -> tuple[list[str], np.ndarray]:
    """Classes and labels [N] from a table's label column (class indices or class names)."""
    bad = next((n for n, v in enumerate(values) if v is None or v == ""), None)
    if bad is not None:
        raise ClipzsError(f"{path}, row {bad + 1}: no label")
    if all(isinstance(v, int) or (isinstance(v, str) and INDEX.fullmatch(v)) for v in values):
        indices = [int(v) for v in values]
        bound = len(classnames) if classnames else MAX_CLASSES
        n = next((n for n, k in enumerate(indices) if not 0 <= k < bound), None)
        if n is not None:
            hint = "" if classnames else f" (without {CLASSNAMES} beside the table, classes are 0..the largest label)"
            raise ClipzsError(f"{path}, row {n + 1}: label {indices[n]} is not a class index below {bound}{hint}")
        labels = np.asarray(indices, dtype=np.int64)
        return classnames or [str(k) for k in range(int(labels.max()) + 1)], labels
    names = [str(v) for v in values]
    classes = classnames or sorted(set(names))
    position = {name: k for k, name in enumerate(classes)}
    unknown = next((n for n, name in enumerate(names) if name not in position), None)
    if unknown is not None:
        raise ClipzsError(f"{path}, row {unknown + 1}: label {names[unknown]!r} is not in {path.parent / CLASSNAMES}")
    return classes, np.asarray([position[name] for name in names], dtype=np.int64)


def load_table(path: str | Path, fmt: str, split: str | None = None) -> PathSource:
    """The images listed in the table at `path`, a `csv` or `parquet` file (`fmt`)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ClipzsError(f"table not found: {path} (--dataset {fmt} needs --data-root FILE, a .{fmt} table)")
    paths, values = (read_parquet if fmt == "parquet" else read_csv)(path)
    if not paths:
        raise ClipzsError(f"{path} has no rows")
    empty = next((n for n, p in enumerate(paths) if not p), None)
    if empty is not None:
        raise ClipzsError(f"{path}, row {empty + 1}: no path")
    classes, labels = to_labels(values, read_classnames(path.parent), path)
    files = [str(path.parent / os.path.expanduser(p)) for p in paths]
    absent = [f for f in files if not os.path.isfile(f)]
    if len(absent) == len(files):
        raise ClipzsError(f"none of the {len(files)} image files in {path} exist as files (e.g. {absent[0]})")
    if absent:
        warnings.warn(
            f"{len(absent)} of the {len(files)} image files in {path} do not exist as files (e.g. {absent[0]}); "
            "they will be reported as unreadable",
            ClipzsWarning,
            stacklevel=2,
        )
    return PathSource(fmt, split or "", classes, labels, files)


def open_table(dataset: str, data_root: str | Path | None, split: str | None, download: bool = True) -> PathSource:
    """The `sources` registry's entry point for `--dataset csv` and `--dataset parquet`."""
    if data_root is None:
        raise ClipzsError(f"dataset {dataset} needs --data-root FILE: a {dataset} table with columns path and label")
    return load_table(data_root, dataset, split)
