"""Typed results of `evaluate`, `select` and `compare`, and their JSON (with a schema version).

Every stage after scoring hands these frozen dataclasses on; `to_json` writes the documented schema and
`from_json` reads it back, checking every field's type, so a report is never drawn from a truncated or foreign
file. Template indices are 0-based; accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import functools
import json
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path

from .errors import ClipzsError
from .storage import write_atomic

SCHEMA_VERSION = 2
TASK = "zeroshot_classification"  # CLIP_benchmark's task name, so `clip_benchmark build` can merge our files


def subset_label(templates: Sequence[int]) -> str:
    """`{1,3,4}`: a template subset as printed (1-based)."""
    return "{" + ",".join(str(t + 1) for t in templates) + "}"


def row_label(method: str | None, templates: Sequence[int]) -> str:
    """A row's name: `template 3` for a single template, `embedding{1,3,4}` for an ensemble (1-based)."""
    if method is None:
        return "template " + ",".join(str(t + 1) for t in templates)
    return f"{method}{subset_label(templates)}"


@dataclass(frozen=True)
class Row:
    """One classifier's metrics: a single template (`method` None) or a method over a template subset."""

    method: str | None
    templates: tuple[int, ...]
    acc1: float
    acc5: float | None  # None for the vote methods, which rank nothing, or with fewer than 5 classes
    mean_per_class_recall: float
    acc1_ci: tuple[float, float] | None = None  # None where intervals were computed for reported rows only
    acc5_ci: tuple[float, float] | None = None
    template: str | None = None  # the template (slot name) of a single-template row

    @property
    def label(self) -> str:
        return row_label(self.method, self.templates)


@dataclass(frozen=True)
class Comparison:
    """An exact McNemar test of two rows on the same images."""

    a: str
    b: str
    acc1_a: float
    acc1_b: float
    a_only: int  # images only A gets right
    b_only: int
    p_value: float


@dataclass(frozen=True)
class Best:
    """The most accurate ensemble (first on ties) and its prediction for every evaluated image."""

    method: str
    templates: tuple[int, ...]
    acc1: float
    pred: tuple[int, ...]


@dataclass(frozen=True)
class Bootstrap:
    """How the intervals were drawn: percentile bootstrap, the same resamples for every row (paired)."""

    resamples: int
    seed: int
    level: float
    rows: str  # "all", or "reported" when only the printed rows carry intervals (very large sweeps)


@dataclass(frozen=True)
class Skipped:
    """An image left out because it could not be read."""

    index: int  # in the split as read (before --limit's cut, after it: the same first N)
    name: str
    reason: str


@dataclass(frozen=True)
class Run:
    """What was evaluated, with what, and how long it took: the header of every results file."""

    dataset: str
    split: str
    num_images: int  # images evaluated (skipped ones left out)
    model: str
    pretrained: str
    checkpoint: str
    precision: str
    device: str
    templates: tuple[str, ...]  # one name per template slot
    classnames: str  # the class-name style or file
    classes: tuple[str, ...]  # the names put into the prompts
    options: dict  # every option used, by its parameter name
    data_root: str | None = None
    note: str | None = None  # how the dataset is scored, where that needs saying (e.g. a class subset)
    skipped: tuple[Skipped, ...] = ()
    encoded: dict = field(default_factory=dict)  # {"images": computed now, "prompts": computed now}
    seconds: dict = field(default_factory=dict)
    clipzs_version: str = ""


@dataclass(frozen=True)
class EvalResult:
    """`evaluate`: every single template and every (method, subset) ensemble, the best one and its test."""

    run: Run
    methods: tuple[str, ...]
    single: tuple[Row, ...]
    ensembles: tuple[Row, ...]
    best: Best | None
    comparisons: tuple[Comparison, ...]
    labels: tuple[int, ...]
    bootstrap: Bootstrap

    KIND = "eval"

    def swept(self) -> bool:
        """Whether the ensembles cover more than one template subset (so the best ones are optimistic)."""
        return len({e.templates for e in self.ensembles}) > 1

    def headline(self) -> Row:
        """The row CLIP_benchmark would report: the `embedding` ensemble of all templates, else the best row."""
        everything = tuple(range(len(self.single)))
        for row in self.ensembles:
            if row.method == "embedding" and row.templates == everything:
                return row
        return max((*self.single, *self.ensembles), key=lambda r: r.acc1)

    def extra_json(self) -> dict:
        head = self.headline()
        return {
            "task": TASK,
            "metrics": {"acc1": head.acc1, "acc5": head.acc5, "mean_per_class_recall": head.mean_per_class_recall},
            "metrics_row": head.label,
        }


@dataclass(frozen=True)
class Choice:
    """A template subset chosen one way, with its accuracy on the evaluation images."""

    templates: tuple[int, ...]
    acc1: float
    acc1_ci: tuple[float, float]
    selection_acc1: float | None = None  # its accuracy on the images it was chosen on
    optimistic: bool = False  # chosen on the evaluation images themselves
    path: tuple[tuple[tuple[int, ...], float], ...] = ()  # greedy: (subset, selection accuracy) after each step


@dataclass(frozen=True)
class Selection:
    """One method's choices: all templates, greedy forward, best subset (<= 12 templates), test-set best."""

    method: str
    all_templates: Choice
    greedy: Choice
    best_subset: Choice | None = None
    test_set_best: Choice | None = None
    note: str | None = None  # why a choice is missing


@dataclass(frozen=True)
class SelectionImages:
    """The labelled images templates were chosen on: never evaluation images."""

    split: str
    num_images: int
    seed: int
    indices: tuple[int, ...]


@dataclass(frozen=True)
class SelectResult:
    """`select`: template subsets chosen on held-out images, reported on the evaluation images."""

    run: Run
    selection: SelectionImages
    evaluation_indices: tuple[int, ...]
    methods: tuple[Selection, ...]

    KIND = "select"

    def extra_json(self) -> dict:
        return {}


@dataclass(frozen=True)
class Side:
    """One side of `compare`."""

    spec: str
    label: str
    acc1: float
    acc1_ci: tuple[float, float]


@dataclass(frozen=True)
class CompareResult:
    """`compare`: two classifiers on the same images, with the exact McNemar test."""

    run: Run
    a: Side
    b: Side
    a_only: int
    b_only: int
    p_value: float

    KIND = "compare"

    def extra_json(self) -> dict:
        return {}


Result = EvalResult | SelectResult | CompareResult
KINDS: dict[str, type] = {cls.KIND: cls for cls in (EvalResult, SelectResult, CompareResult)}


def _plain(value: object) -> object:
    """A dataclass tree as JSON values: tuples as lists, dataclasses as dicts in field order."""
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_json(result: Result) -> dict:
    """The results file's JSON: kind and schema version, the run header flat at the top, then the rest."""
    body = _plain(result)
    run = body.pop("run")
    return {"kind": result.KIND, "schema_version": SCHEMA_VERSION, **run, **result.extra_json(), **body}


def _fail(where: str, problem: str) -> ClipzsError:
    return ClipzsError(f"{where}: {problem}")


@functools.cache
def _hints(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _build(hint: object, value: object, where: str) -> object:
    """`value` (parsed JSON) as an instance of the type `hint`, or a ClipzsError naming the field `where`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _build(inner, value, where)
    if is_dataclass(hint):
        if not isinstance(value, dict):
            raise _fail(where, f"expected an object, got {type(value).__name__}")
        hints = _hints(hint)
        kwargs = {}
        for f in fields(hint):
            if f.name in value:
                kwargs[f.name] = _build(hints[f.name], value[f.name], f"{where}.{f.name}")
            elif f.default is MISSING and f.default_factory is MISSING:
                raise _fail(where, f"missing {f.name!r}")
        return hint(**kwargs)
    if origin is tuple:
        if not isinstance(value, list):
            raise _fail(where, f"expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            if args[0] is int and all(type(v) is int for v in value):  # labels and predictions: fast
                return tuple(value)
            return tuple(_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _fail(where, f"expected {len(args)} values, got {len(value)}")
        return tuple(_build(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if hint is dict:
        if not isinstance(value, dict):
            raise _fail(where, f"expected an object, got {type(value).__name__}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(where, f"expected a number, got {value!r}"[:200])
        return float(value)
    if hint in (int, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise _fail(where, f"expected {hint.__name__}, got {value!r}"[:200])
        return value
    raise TypeError(f"no JSON reader for {hint!r}")  # a bug in this module, not in the file


def from_json(data: object, source: str = "results") -> Result:
    """A result from its JSON (as `to_json` writes it); a ClipzsError naming `source` and the first problem."""
    if not isinstance(data, dict):
        raise _fail(source, f"not a clipzs results file (a JSON {type(data).__name__}, not an object)")
    kind = data.get("kind")
    if kind not in KINDS:
        raise _fail(source, "not a clipzs results file (no known 'kind': eval, select or compare)")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise _fail(source, f"schema version {version!r}; this clipzs reads version {SCHEMA_VERSION}")
    run_names = {f.name for f in fields(Run)}
    body = {k: v for k, v in data.items() if k not in run_names}
    body["run"] = {k: v for k, v in data.items() if k in run_names}
    result = _build(KINDS[kind], body, source)
    if isinstance(result, EvalResult):
        _check_eval(result, source)
    return result


def _check_eval(result: EvalResult, source: str) -> None:
    """Refuse an eval result whose parts disagree (an edited or spliced file), naming the first disagreement:
    the report indexes the classes, templates and images by these numbers."""
    classes, slots, n = len(result.run.classes), len(result.run.templates), len(result.labels)
    if n != result.run.num_images:
        raise _fail(source, f"{n} labels for num_images {result.run.num_images}")
    if any(not 0 <= label < classes for label in result.labels):
        raise _fail(source, f"labels outside 0..{classes - 1} (the {classes} classes)")
    if [row.templates for row in result.single] != [(t,) for t in range(slots)]:
        raise _fail(source, f"single should hold one row per template, templates 0..{slots - 1} in order")
    for k, row in enumerate((*result.single, *result.ensembles)):
        where = f"{source}: row {k + 1} ({row.method or 'single'})"
        if (
            list(row.templates) != sorted(set(row.templates))
            or not set(row.templates) <= set(range(slots))
            or not row.templates
        ):
            raise _fail(where, f"templates {list(row.templates)[:20]} are not a subset of 0..{slots - 1}")
        rates = [row.acc1, row.acc5, row.mean_per_class_recall, *(row.acc1_ci or ()), *(row.acc5_ci or ())]
        if not all(0 <= r <= 1 for r in rates if r is not None):
            raise _fail(where, "an accuracy outside 0..1")
    best = result.best
    if best is not None and (len(best.pred) != n or any(not 0 <= p < classes for p in best.pred)):
        raise _fail(source, f"best.pred should hold {n} predictions in 0..{classes - 1}")


def read_result(path: str | Path) -> Result:
    """A results file; one ClipzsError line naming the file if it is unreadable, truncated or not ours."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ClipzsError(f"cannot read results {path}: {e.strerror if isinstance(e, OSError) else e}") from e
    except json.JSONDecodeError as e:
        raise ClipzsError(f"{path} is not valid JSON (truncated?): {e}") from e
    except RecursionError as e:
        raise ClipzsError(f"{path} is not a clipzs results file: its JSON is nested too deeply") from e
    return from_json(data, str(path))


def write_result(result: Result, path: str | Path) -> None:
    """Write the results JSON atomically: the old file stays whole until the new one is complete."""
    write_atomic(Path(path), (json.dumps(to_json(result), indent=2) + "\n").encode())
