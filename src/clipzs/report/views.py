"""What every view of an `EvalResult` shares, each in one place: the run described without machine paths, the
interval lines, rows grouped and ranked per method, and the best ensemble's per-class accuracy, confusions and
example images.

Pure functions of the typed results; numpy only (no plotting, no image decoding).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath

import numpy as np

from ..results import EvalResult, Row, Run, row_label

BEST_PER_METHOD = 5  # best subsets of each method shown when there are too many to show them all
SKIPPED_SHOWN = 3  # unreadable images named in the header (the rest counted)
TOP_CONFUSIONS = 15
EXAMPLE_CLASSES = 4  # best classes shown, and as many worst classes
EXAMPLES_PER_CLASS = 4
FILE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".json", ".txt", ".csv", ".tar", ".gz"})
# An absolute path inside a message (`cannot identify image file '/home/me/x.jpg'`); group 1: its last part.
PATH_IN_TEXT = re.compile(r"(?<![\w.:/\\~-])(?:~|[A-Za-z]:)?[/\\](?:[^\s'\"/\\]+[/\\])*([^\s'\"/\\]+)")


def _last_part(value: str) -> str:
    windows = "\\" in value or bool(PureWindowsPath(value).drive)
    return (PureWindowsPath(value) if windows else PurePosixPath(value)).name or value


def shown_path(value: str) -> str:
    """A value that may be a path (a checkpoint, a model config, a class-name file), as a report shows it: a path
    by its file name only, so no folder of the machine appears; names such as `ViT-B/32` or `openai` unchanged."""
    posix = PurePosixPath(value)
    is_path = (
        posix.is_absolute()
        or bool(PureWindowsPath(value).drive)
        or "\\" in value
        or value.startswith(("~", "./", "../"))
        or ("/" in value and posix.suffix.lower() in FILE_SUFFIXES)
    )
    return _last_part(value) if is_path else value


def scrub_paths(text: str, data_root: str | None = None) -> str:
    """`text` with paths under an absolute `data_root` made relative to it and any other absolute path cut to its
    last part."""
    if data_root and (PurePosixPath(data_root).is_absolute() or PureWindowsPath(data_root).is_absolute()):
        root = data_root.rstrip("/\\")
        text = text.replace(root + "/", "").replace(root + "\\", "")
    return PATH_IN_TEXT.sub(lambda m: m.group(1), text)


def skipped_line(run: Run, shown: int = SKIPPED_SHOWN) -> str:
    """How many images were left out as unreadable, the first few by name with the reason."""
    named = "; ".join(
        f"{scrub_paths(s.name, run.data_root)} ({scrub_paths(s.reason, run.data_root)})" for s in run.skipped[:shown]
    )
    more = f"; and {len(run.skipped) - shown} more" if len(run.skipped) > shown else ""
    plural = "image" if len(run.skipped) == 1 else "images"
    return f"skipped {len(run.skipped)} unreadable {plural}, not evaluated: {named}{more}"


def run_notes(run: Run) -> list[str]:
    """How the dataset is scored, where that needs saying, and which images were skipped."""
    notes = [scrub_paths(run.note, run.data_root)] if run.note else []
    return notes + ([skipped_line(run)] if run.skipped else [])


def run_lines(run: Run) -> list[str]:
    """The header of every view: data, model, `run_notes`. No absolute paths."""
    data = f" (data: {_last_part(run.data_root)})" if run.data_root else ""
    return [
        f"{run.dataset}/{run.split}{data}: {run.num_images} images, {len(run.classes)} classes, "
        f"{len(run.templates)} templates",
        f"model {shown_path(run.model)} (pretrained {shown_path(run.pretrained)}, {run.precision}, {run.device})",
        *run_notes(run),
    ]


def all_rows(result: EvalResult) -> tuple[Row, ...]:
    """The single-template rows, then the ensembles."""
    return (*result.single, *result.ensembles)


def level_label(result: EvalResult) -> str:
    """`95%`: the intervals' confidence level."""
    return f"{100 * result.bootstrap.level:g}%"


def interval_lines(result: EvalResult) -> list[str]:
    """How the intervals were drawn and, when only some rows have one, which."""
    b = result.bootstrap
    if not any(r.acc1_ci or r.acc5_ci for r in all_rows(result)):
        return ["no intervals were computed"]
    lines = [
        f"{level_label(result)} intervals: percentile bootstrap over the images, {b.resamples} resamples, seed "
        f"{b.seed}, the same resamples for every row (paired)"
    ]
    if b.rows == "reported":
        everything = all_rows(result)
        have = sum(r.acc1_ci is not None for r in everything)
        lines.append(
            f"intervals were computed for the reported rows only ({have} of {len(everything)} rows have one; "
            "'-' marks the others)"
        )
    return lines


def best_line(result: EvalResult) -> str | None:
    """The best ensemble and its acc1, marked optimistic when it was chosen among swept subsets."""
    best = result.best
    if best is None:
        return None
    optimistic = " (chosen on these same images: optimistic)" if result.swept() else ""
    return f"best ensemble: {best_label(result)}, acc1 {100 * best.acc1:.2f}%{optimistic}"


def best_label(result: EvalResult) -> str:
    """`embedding{1,3}`: the best ensemble's name, or `-` when there is none."""
    return "-" if result.best is None else row_label(result.best.method, result.best.templates)


def subsets(result: EvalResult) -> list[tuple[int, ...]]:
    """The template subsets of the ensembles, in order of first appearance."""
    return list(dict.fromkeys(e.templates for e in result.ensembles))


def method_groups(result: EvalResult) -> dict[str, list[Row]]:
    """Ensemble rows by method, methods in order of first appearance."""
    groups: dict[str, list[Row]] = {}
    for row in result.ensembles:
        groups.setdefault(row.method or "", []).append(row)
    return groups


def best_per_method(result: EvalResult, best: int = BEST_PER_METHOD) -> dict[str, list[Row]]:
    """The `best` most accurate rows of each method by acc1 (ties keep the results' order)."""
    return {m: sorted(group, key=lambda r: -r.acc1)[:best] for m, group in method_groups(result).items()}


def all_template_rows(result: EvalResult) -> dict[str, Row]:
    """Each method's ensemble of every template, where it was computed."""
    everything = tuple(range(len(result.single)))
    return {row.method or "": row for row in result.ensembles if row.templates == everything}


def template_text(result: EvalResult, row: Row) -> str:
    """The template of a single-template row."""
    return row.template if row.template is not None else result.run.templates[row.templates[0]]


@dataclass(frozen=True)
class ClassScore:
    """Top-1 accuracy of the best ensemble on one class that has images."""

    label: int
    name: str
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total


def _labels_and_pred(result: EvalResult) -> tuple[np.ndarray, np.ndarray]:
    if result.best is None:
        raise ValueError("the result has no best ensemble")
    return np.asarray(result.labels, dtype=np.int64), np.asarray(result.best.pred, dtype=np.int64)


def per_class(result: EvalResult) -> list[ClassScore]:
    """Accuracy of the best ensemble on each class with images, best first (ties: more images, then class index)."""
    labels, pred = _labels_and_pred(result)
    classes = result.run.classes
    total = np.bincount(labels, minlength=len(classes))
    correct = np.bincount(labels[labels == pred], minlength=len(classes))
    scores = [ClassScore(int(c), classes[c], int(correct[c]), int(total[c])) for c in np.flatnonzero(total)]
    return sorted(scores, key=lambda s: (-s.accuracy, -s.total, s.label))


def confusions(result: EvalResult, top: int = TOP_CONFUSIONS) -> list[tuple[int, int, int]]:
    """The `top` most frequent (true, predicted, count) mistakes of the best ensemble (ties: lower indices)."""
    labels, pred = _labels_and_pred(result)
    n, wrong = len(result.run.classes), labels != pred
    pairs, counts = np.unique(labels[wrong] * n + pred[wrong], return_counts=True)
    order = np.lexsort((pairs, -counts))[:top]  # most frequent first, then by (true, predicted)
    return [(int(pairs[i] // n), int(pairs[i] % n), int(counts[i])) for i in order]


def select_examples(
    result: EvalResult, classes: int = EXAMPLE_CLASSES, per_class_images: int = EXAMPLES_PER_CLASS
) -> dict[str, list[tuple[ClassScore, list[int]]]]:
    """Positions (in `result.labels`) of images to show for up to `classes` best and as many worst classes, no
    class in both (with few classes, half each): correct predictions first for the best classes, mistakes first
    for the worst, then in order."""
    ranked = per_class(result)
    best = ranked[: min(classes, (len(ranked) + 1) // 2)]
    worst = ranked[len(best) :][::-1][:classes]
    labels, pred = _labels_and_pred(result)

    def positions(score: ClassScore, mistakes_first: bool) -> list[int]:
        mine = np.flatnonzero(labels == score.label)
        right = pred[mine] == score.label
        return mine[np.argsort(right if mistakes_first else ~right, kind="stable")][:per_class_images].tolist()

    return {"best": [(s, positions(s, False)) for s in best], "worst": [(s, positions(s, True)) for s in worst]}
