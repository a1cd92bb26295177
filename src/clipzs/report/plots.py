"""The four report plots as PNG bytes, drawn with matplotlib's object API on its Agg renderer (no pyplot, no GUI
backend, no global state). matplotlib is imported inside the functions that draw, so importing this module is free.

Sized for large results: the per-class plot shows the best and worst `PER_CLASS_SIDE` classes when there are
more than twice that many, and the subset-size plot draws its points as one small-marker scatter per method.
"""

from __future__ import annotations

import io
import textwrap
from typing import TYPE_CHECKING

import numpy as np

from ..results import EvalResult
from .views import ClassScore, best_label, confusions, method_groups, per_class, template_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PLOTS = ("template_accuracy", "subset_size", "per_class", "confusions")  # also the PNG file names
PER_CLASS_SIDE = 20  # best and worst classes drawn when there are more than twice as many
MANY_POINTS = 2000  # above this many subsets per method, smaller and fainter points


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def to_png(fig: Figure) -> bytes:
    """`fig` as PNG bytes, without the software stamp (so equal plots are equal bytes)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def plain(text: str, limit: int = 60) -> str:
    """Text for a matplotlib label: `$` escaped (no mathtext), long texts cut."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def shown_classes(scores: list[ClassScore], side: int = PER_CLASS_SIDE) -> list[ClassScore]:
    """Every class, or the best and worst `side` when there are more than twice as many."""
    return scores if len(scores) <= 2 * side else scores[:side] + scores[-side:]


def plot_title(name: str, result: EvalResult) -> str:
    """Each plot's title: on the plot, and as its caption and alt text in the HTML page."""
    if name == "template_accuracy":
        return "Accuracy per template"
    if name == "subset_size":
        return "Accuracy against subset size (points: every subset; lines: mean per size)"
    if name == "per_class":
        n = len(set(result.labels))
        part = f": the best and worst {PER_CLASS_SIDE} of {n} classes" if n > 2 * PER_CLASS_SIDE else ""
        return f"Per-class accuracy of the best ensemble, {best_label(result)}{part}"
    if name == "confusions":
        return f"Most frequent confusions of the best ensemble, {best_label(result)} (true → predicted)"
    raise KeyError(name)


def _title(ax: Axes, name: str, result: EvalResult) -> None:
    """The plot's `plot_title`, wrapped to the figure's width (about 11 characters an inch at 11 points)."""
    width = int(11 * ax.figure.get_figwidth())
    ax.set_title(textwrap.fill(plain(plot_title(name, result), 240), width), fontsize=11)


def plot_template_accuracy(result: EvalResult) -> Figure:
    rows = result.single
    many = len(rows) > 40
    fig = _figure(8, 1.4 + (0.2 if many else 0.32) * len(rows))
    ax = fig.add_subplot()
    acc = np.array([100 * r.acc1 for r in rows])
    err = None
    if any(r.acc1_ci for r in rows):
        cis = np.array([r.acc1_ci or (r.acc1, r.acc1) for r in rows]) * 100
        err = np.clip([acc - cis[:, 0], cis[:, 1] - acc], 0, None)
    ys = np.arange(len(rows))
    ax.barh(ys, acc, xerr=err, color="#4c72b0", capsize=2 if many else 3)
    ax.set_yticks(ys, [plain(f"{i}. {template_text(result, r)}") for i, r in enumerate(rows, 1)])
    ax.tick_params(axis="y", labelsize=7 if many else 9)
    ax.invert_yaxis()
    if result.best:
        ax.axvline(
            100 * result.best.acc1,
            color="#c44e52",
            linestyle="--",
            label=plain(f"best ensemble ({best_label(result)})"),
        )
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("top-1 accuracy (%)")
    _title(ax, "template_accuracy", result)
    return fig


def plot_subset_size(result: EvalResult) -> Figure:
    from matplotlib import colormaps

    groups = method_groups(result)
    sizes = np.arange(1, len(result.single) + 1)
    colours = colormaps["tab10" if len(groups) <= 10 else "tab20"].colors
    width = min(0.7 / max(len(groups), 1), 0.2)  # each method's strip within a subset size
    rng = np.random.default_rng(0)  # the strips' jitter: the same picture every time
    fig = _figure(9, 4.5)
    ax = fig.add_subplot()
    for k, (method, rows) in enumerate(groups.items()):
        shift = (k - (len(groups) - 1) / 2) * width
        many = len(rows) > MANY_POINTS
        n = np.array([len(r.templates) for r in rows])
        acc = 100 * np.array([r.acc1 for r in rows])
        colour = colours[k % len(colours)]
        x = n + shift + rng.uniform(-0.4, 0.4, len(rows)) * width
        ax.scatter(x, acc, s=2 if many else 14, alpha=0.2 if many else 0.5, color=colour, linewidths=0, rasterized=True)
        counts = np.bincount(n, minlength=len(sizes) + 1)[1:]
        sums = np.bincount(n, weights=acc, minlength=len(sizes) + 1)[1:]
        present = counts > 0
        ax.plot(
            sizes[present] + shift, sums[present] / counts[present], marker="o", ms=4, color=colour, label=plain(method)
        )
    ax.axhline(100 * max(r.acc1 for r in result.single), color="grey", linestyle=":", label="best single")
    ax.set_xticks(sizes)
    ax.set_xlabel("templates in the ensemble")
    ax.set_ylabel("top-1 accuracy (%)")
    _title(ax, "subset_size", result)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), ncols=2 if len(groups) > 16 else 1)
    return fig


def plot_per_class(result: EvalResult) -> Figure:
    scores = per_class(result)
    shown = shown_classes(scores)
    fig = _figure(min(20.0, max(6.0, 1.5 + 0.16 * len(shown))), 4.5)
    ax = fig.add_subplot()
    ax.bar(range(len(shown)), [100 * s.accuracy for s in shown], color="#55a868")
    ax.set_xticks(
        range(len(shown)), [plain(s.name, 30) for s in shown], rotation=90, fontsize=7 if len(shown) > 30 else 9
    )
    if len(shown) < len(scores):
        ax.axvline(PER_CLASS_SIDE - 0.5, color="grey", linestyle=":")
    ax.axhline(100 * result.best.acc1, color="#c44e52", linestyle="--", label="overall")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_xlim(-0.6, len(shown) - 0.4)
    ax.set_ylabel("top-1 accuracy (%)")
    _title(ax, "per_class", result)
    return fig


def plot_confusions(result: EvalResult) -> Figure:
    top = confusions(result)
    classes = result.run.classes
    fig = _figure(8, 1.4 + 0.3 * max(len(top), 3))
    ax = fig.add_subplot()
    if top:
        ys = np.arange(len(top))
        ax.barh(ys, [n for _, _, n in top], color="#dd8452")
        ax.set_yticks(ys, [plain(f"{classes[t]} → {classes[p]}", 50) for t, p, _ in top])
        ax.invert_yaxis()
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("images")
    else:
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    _title(ax, "confusions", result)
    return fig


PLOTTERS = {
    "template_accuracy": plot_template_accuracy,
    "subset_size": plot_subset_size,
    "per_class": plot_per_class,
    "confusions": plot_confusions,
}


def plot_names(result: EvalResult) -> list[str]:
    """The plots `result` has data for: subset sizes need ensembles; per class and confusions a best ensemble."""
    wanted = {"subset_size": bool(result.ensembles), "per_class": result.best is not None}
    wanted["confusions"] = wanted["per_class"]
    return [name for name in PLOTS if wanted.get(name, True)]


def plot_pngs(result: EvalResult) -> dict[str, bytes]:
    """Every plot of `plot_names` as PNG bytes, by name."""
    return {name: to_png(PLOTTERS[name](result)) for name in plot_names(result)}
