"""Human-readable views of a results dict (the `--out` JSON schema): a text summary, CSV, markdown, plots, HTML.

Everything but `write_report` is a pure function of the results dict. matplotlib is imported only when a plot
is drawn, so `format_summary` (which the CLI prints) costs no plotting import.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ClipzsError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .datasets import ImageSet

BEST_PER_METHOD = 5
MATRIX_SUBSETS = 63  # the printed summary shows every subset as a row up to 6 templates
METRICS = ("acc1", "acc5", "mean_per_class_recall")
METRIC_LABELS = {"acc1": "acc1", "acc5": "acc5", "mean_per_class_recall": "mpcr"}
TOP_CONFUSIONS = 15
EXAMPLE_CLASSES = 4  # best classes shown, and as many worst classes
EXAMPLES_PER_CLASS = 4
THUMBNAIL_PX = 96
TEXT_COLUMNS = ("template", "method", "templates")  # left-aligned table columns
PLOTS = ("template_accuracy", "subset_size", "per_class", "confusions")  # also the PNG file names


def _pct(value: float | None) -> str:
    return "   -  " if value is None else f"{100 * value:6.2f}"


def _subset(templates: list[int]) -> str:
    return "{" + ",".join(str(t + 1) for t in templates) + "}"


def _with_ci(row: dict) -> str:
    if "acc1_ci" not in row:
        return _pct(row["acc1"])
    low, high = row["acc1_ci"]
    return f"{100 * row['acc1']:6.2f} [{100 * low:5.2f}, {100 * high:5.2f}]"


def format_summary(results: dict, best: int = BEST_PER_METHOD) -> str:
    """Single-template table, then the best template subsets of each ensemble method (1-based indices)."""
    head = (
        f"{results['dataset']}/{results['split']}: {results['num_images']} images, {len(results['classes'])} "
        f"classes; {results['model']} ({results['pretrained']}, {results['precision']}, {results['device']})"
    )
    lines = [head, "", f"{'#':>3}  {'acc1 [95% CI]':<24} {'acc5':>6}  {'mpcr':>6}  template"]
    for i, row in enumerate(results["single"], 1):
        lines.append(
            f"{i:>3}  {_with_ci(row):<24} {_pct(row['acc5'])}  {_pct(row['mean_per_class_recall'])}  {row['template']}"
        )
    groups = method_groups(results)
    subsets = list(dict.fromkeys(tuple(e["templates"]) for e in results["ensembles"]))
    if len(subsets) > 1 and len(subsets) <= MATRIX_SUBSETS:
        lines += [
            "",
            "acc1 of every template subset (rows) by method (columns); the best of each column was "
            "chosen on these same images, so it is optimistic (see `clipzs select`)",
            "",
        ]
        lines.append(f"{'templates':<16}" + "".join(f"{m:>{max(9, len(m) + 2)}}" for m in groups))
        acc = {(m, tuple(e["templates"])): e["acc1"] for m, rows in groups.items() for e in rows}
        for subset in subsets:
            lines.append(
                f"{_subset(list(subset)):<16}"
                + "".join(f"{_pct(acc.get((m, subset))):>{max(9, len(m) + 2)}}" for m in groups)
            )
    swept = len(subsets) > 1
    if len(subsets) <= MATRIX_SUBSETS:
        best = 1  # the matrix above shows the rest
    chosen = "the best template subset of each method" if best == 1 else f"the best {best} template subsets per method"
    title = (
        f"{chosen}, chosen on these same images: optimistic, see `clipzs select`"
        if swept
        else ("ensembles of all templates")
    )
    lines += ["", title, "", f"{'method':<18} {'acc1 [95% CI]':<24} {'acc5':>6}  {'mpcr':>6}  templates"]
    for method, rows in groups.items():
        for row in sorted(rows, key=lambda e: -e["acc1"])[:best] if swept else rows:
            lines.append(
                f"{method:<18} {_with_ci(row):<24} {_pct(row['acc5'])}  "
                f"{_pct(row['mean_per_class_recall'])}  {_subset(row['templates'])}"
            )
    for c in results.get("comparisons", []):
        lines += [
            "",
            f"McNemar {c['a']} vs {c['b']}: {100 * c['acc1_a']:.2f}% vs {100 * c['acc1_b']:.2f}%, "
            f"{c['a_only']} images right only in the first, {c['b_only']} only in the second, "
            f"p = {c['p_value']:.3g}",
        ]
    if "encoded" in results:
        encoded, prompts = results["encoded"], len(results["templates"]) * len(results["classes"])
        lines += [
            "",
            f"encoded now: {encoded['images']} of {results['num_images']} images, "
            f"{encoded['prompts']} of {prompts} prompts (the rest came from the feature cache)",
        ]
    lines += [
        "",
        "accuracies in %; mpcr = mean per-class recall; seconds: "
        + ", ".join(f"{k} {v:.1f}" for k, v in results["seconds"].items()),
    ]
    return "\n".join(lines)


def format_selection(results: dict) -> str:
    """`clipzs select`: each chooser's subset, its accuracy where it was chosen, and on the evaluation images."""
    sel = results["selection"]
    lines = [
        f"templates chosen on {sel['num_images']} images of {results['dataset']}/{sel['split']} (seed {sel['seed']}), "
        f"reported on {results['num_images']} other images of {results['dataset']}/{results['split']}; "
        f"{results['model']} ({results['pretrained']}, {results['precision']})",
        "",
        f"{'method':<12} {'chooser':<15} {'templates':<22} {'chosen on':>9}  {'acc1 [95% CI] on evaluation images'}",
    ]
    for row in results["methods"]:
        for key, name in (
            ("greedy", "greedy forward"),
            ("best_subset", "best subset"),
            ("all_templates", "all templates"),
            ("test_set_best", "test-set best"),
        ):
            if key in row:
                choice = row[key]
                chosen = f"{100 * choice['selection_acc1']:8.2f}%" if "selection_acc1" in choice else " " * 9
                note = "  (optimistic: chosen on the evaluation images)" if choice.get("optimistic") else ""
                lines.append(
                    f"{row['method']:<12} {name:<15} {_subset(choice['templates']):<22} {chosen}  "
                    f"{_with_ci(choice)}{note}"
                )
    return "\n".join(lines)


def format_comparison(results: dict) -> str:
    """`clipzs compare`: both accuracies with intervals and the exact McNemar test."""
    a, b = results["a"], results["b"]
    return "\n".join(
        [
            f"{results['dataset']}/{results['split']}: {results['num_images']} images; {results['model']}",
            f"A {a['label']:<24} acc1 {_with_ci(a)}",
            f"B {b['label']:<24} acc1 {_with_ci(b)}",
            f"right only with A: {results['a_only']}, only with B: {results['b_only']}; exact McNemar p = "
            f"{results['p_value']:.3g}",
        ]
    )


# ---------------------------------------------------------------------------------------------------------------
# Derived views (pure)


def ci_keys(results: dict) -> list[str]:
    """Confidence-interval keys (`acc1_ci: [lo, hi]`, ...) present on any single or ensemble row, metrics first."""
    found = {k for row in (*results["single"], *results["ensembles"]) for k in row if k.endswith("_ci")}
    order = [f"{m}_ci" for m in METRICS]
    return [k for k in order if k in found] + sorted(found - set(order))


def _ci_label(key: str) -> str:
    metric = key.removesuffix("_ci")
    return f"{METRIC_LABELS.get(metric, metric)} CI"


def method_groups(results: dict) -> dict[str, list[dict]]:
    """Ensemble rows by method, methods in order of first appearance."""
    groups: dict[str, list[dict]] = {}
    for row in results["ensembles"]:
        groups.setdefault(row["method"], []).append(row)
    return groups


def swept(results: dict) -> bool:
    return len({tuple(e["templates"]) for e in results["ensembles"]}) > 1


def csv_rows(results: dict) -> list[dict[str, object]]:
    """One row per single template and per ensemble; templates 1-based joined by '+'; None -> ''."""
    keys = ci_keys(results)

    def row(kind: str, method: str, templates: list[int], text: str, src: dict) -> dict[str, object]:
        out: dict[str, object] = {
            "kind": kind,
            "method": method,
            "templates": "+".join(str(t + 1) for t in templates),
            "template": text,
        }
        out.update({m: src.get(m) for m in METRICS})
        for key in keys:
            lo, hi = src.get(key) or (None, None)
            out[f"{key}_lo"], out[f"{key}_hi"] = lo, hi
        return {k: "" if v is None else v for k, v in out.items()}

    rows = [row("single", "", [t], s["template"], s) for t, s in enumerate(results["single"])]
    rows += [row("ensemble", e["method"], e["templates"], "", e) for e in results["ensembles"]]
    return rows


def format_csv(results: dict) -> str:
    """The CSV text of `csv_rows` (floats written with full precision, so they parse back to the JSON values)."""
    rows = csv_rows(results)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


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


def per_class(results: dict) -> list[ClassScore]:
    """Accuracy of `best.pred` on each class with images, best first (ties: more images, then class index)."""
    correct: Counter[int] = Counter()
    total: Counter[int] = Counter()
    for label, pred in zip(results["labels"], results["best"]["pred"], strict=True):
        total[label] += 1
        correct[label] += label == pred
    scores = [ClassScore(c, results["classes"][c], correct[c], total[c]) for c in total]
    return sorted(scores, key=lambda s: (-s.accuracy, -s.total, s.label))


def confusions(results: dict, top: int = TOP_CONFUSIONS) -> list[tuple[int, int, int]]:
    """The `top` most frequent (true, predicted, count) mistakes of the best ensemble (ties: lower indices)."""
    pairs = Counter((t, p) for t, p in zip(results["labels"], results["best"]["pred"], strict=True) if t != p)
    return sorted(((t, p, n) for (t, p), n in pairs.items()), key=lambda x: (-x[2], x[0], x[1]))[:top]


def select_examples(
    results: dict, classes: int = EXAMPLE_CLASSES, per_class_images: int = EXAMPLES_PER_CLASS
) -> dict[str, list[tuple[ClassScore, list[int]]]]:
    """Image indices to show for the `classes` best and worst classes (no class in both): correct predictions
    first for the best classes, mistakes first for the worst, then dataset order."""
    ranked = per_class(results)
    best = ranked[:classes]
    worst = [s for s in reversed(ranked) if s not in best][:classes]
    labels, pred = results["labels"], results["best"]["pred"]

    def indices(score: ClassScore, mistakes_first: bool) -> list[int]:
        mine = [i for i, label in enumerate(labels) if label == score.label]
        return sorted(mine, key=lambda i: (pred[i] == labels[i]) == mistakes_first)[:per_class_images]

    return {
        "best": [(s, indices(s, False)) for s in best],
        "worst": [(s, indices(s, True)) for s in worst],
    }


@dataclass(frozen=True)
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _fmt_ci(value: list[float] | None) -> str:
    return "–" if not value else f"{100 * value[0]:.2f}–{100 * value[1]:.2f}"


def tables(results: dict, best: int = BEST_PER_METHOD) -> dict[str, Table]:
    """`single` templates; `best_subsets` of each method (only when subsets were swept); each method on
    `all_templates`. Cells are plain text, accuracies in %."""
    keys = ci_keys(results)
    metric_head = [METRIC_LABELS[m] for m in METRICS] + [_ci_label(k) for k in keys]

    def metric_cells(row: dict) -> list[str]:
        return [_fmt(row.get(m)) for m in METRICS] + [_fmt_ci(row.get(k)) for k in keys]

    out = {
        "single": Table(
            "Single templates",
            ["#", "template", *metric_head],
            [[str(i), row["template"], *metric_cells(row)] for i, row in enumerate(results["single"], 1)],
        )
    }
    groups = method_groups(results)
    if swept(results):
        rows = []
        for method, group in groups.items():
            for rank, row in enumerate(sorted(group, key=lambda e: -e["acc1"])[:best], 1):
                rows.append([method, str(rank), _subset(row["templates"]), *metric_cells(row)])
        out["best_subsets"] = Table(
            f"Best {best} template subsets per method (by acc1; chosen on these same images, so optimistic: "
            "`clipzs select` chooses on held-out images)",
            ["method", "rank", "templates", *metric_head],
            rows,
        )
    everything = list(range(len(results["templates"])))
    full = [(m, row) for m, group in groups.items() for row in group if row["templates"] == everything]
    out["all_templates"] = Table(
        "All templates, per method", ["method", *metric_head], [[m, *metric_cells(row)] for m, row in full]
    )
    if results.get("comparisons"):
        out["comparisons"] = Table(
            "Paired test (exact McNemar)",
            ["A", "B", "acc1 A", "acc1 B", "right only with A", "right only with B", "p"],
            [
                [
                    c["a"],
                    c["b"],
                    _fmt(c["acc1_a"]),
                    _fmt(c["acc1_b"]),
                    str(c["a_only"]),
                    str(c["b_only"]),
                    f"{c['p_value']:.3g}",
                ]
                for c in results["comparisons"]
            ],
        )
    return out


def _header_lines(results: dict) -> list[str]:
    best = results.get("best")
    lines = [
        f"{results['dataset']}/{results['split']}: {results['num_images']} images, {len(results['classes'])} classes, "
        f"{len(results['templates'])} templates",
        f"model {results['model']} ({results['pretrained']}, {results['precision']}, {results['device']})",
    ]
    if best:
        lines.append(
            f"best ensemble: {best['method']} over templates {_subset(best['templates'])}, acc1 {_fmt(best['acc1'])}%"
        )
    return lines


def _md_cell(text: str) -> str:
    """Text as a markdown code span inside a table cell: pipes escaped, a fence longer than any backtick run."""
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text.replace('|', chr(92) + '|')}{pad}{fence}"


def format_markdown(results: dict) -> str:
    """`summary.md`: a header, then `tables` as markdown (template texts and method names as code spans)."""
    lines = [f"# clipzs report: {results['dataset']}/{results['split']}", ""]
    lines += [f"- {line}" for line in _header_lines(results)]
    for table in tables(results).values():
        left = [h in TEXT_COLUMNS for h in table.header]
        code = [h in ("template", "method") for h in table.header]
        lines += ["", f"## {table.title}", ""]
        lines.append("| " + " | ".join(table.header) + " |")
        lines.append("|" + "|".join("---" if is_left else "---:" for is_left in left) + "|")
        for row in table.rows:
            cells = [_md_cell(c) if is_code else c for c, is_code in zip(row, code, strict=True)]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Accuracies in %; mpcr = mean per-class recall; templates are 1-based.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Plots (matplotlib's object API on its Agg renderer: no pyplot, no GUI backend, no global state)


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _plain(text: str, limit: int = 60) -> str:
    """Text for a matplotlib label: `$` escaped (no mathtext), long texts cut."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def plot_template_accuracy(results: dict) -> Figure:
    rows = results["single"]
    fig = _figure(8, 1.4 + 0.32 * len(rows))
    ax = fig.add_subplot()
    acc = [100 * r["acc1"] for r in rows]
    err = None
    if any(r.get("acc1_ci") for r in rows):
        cis = [r.get("acc1_ci") or [r["acc1"], r["acc1"]] for r in rows]
        err = [
            [a - 100 * lo for a, (lo, _) in zip(acc, cis, strict=True)],
            [100 * hi - a for a, (_, hi) in zip(acc, cis, strict=True)],
        ]
    ys = range(len(rows))
    ax.barh(ys, acc, xerr=err, color="#4c72b0", capsize=3)
    ax.set_yticks(list(ys), [_plain(f"{i}. {r['template']}") for i, r in enumerate(rows, 1)])
    ax.invert_yaxis()
    best = results.get("best")
    if best:
        ax.axvline(100 * best["acc1"], color="#c44e52", linestyle="--", label=f"best ensemble ({best['method']})")
        ax.legend(loc="lower right")
    ax.set_xlabel("top-1 accuracy (%)")
    ax.set_title("Accuracy per template")
    return fig


def plot_subset_size(results: dict) -> Figure:
    groups = method_groups(results)
    sizes = range(1, len(results["templates"]) + 1)
    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    for k, (method, rows) in enumerate(groups.items()):
        shift = (k - (len(groups) - 1) / 2) * min(0.12, 0.6 / max(len(groups), 1))
        colour = f"C{k % 10}"
        ax.scatter(
            [len(r["templates"]) + shift for r in rows], [100 * r["acc1"] for r in rows], s=12, alpha=0.35, color=colour
        )
        by_size = {n: [100 * r["acc1"] for r in rows if len(r["templates"]) == n] for n in sizes}
        means = [(n + shift, sum(v) / len(v)) for n, v in by_size.items() if v]
        ax.plot(*zip(*means, strict=True), marker="o", color=colour, label=_plain(method))
    ax.axhline(100 * max(r["acc1"] for r in results["single"]), color="grey", linestyle=":", label="best single")
    ax.set_xticks(list(sizes))
    ax.set_xlabel("templates in the ensemble")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Accuracy against subset size (points: every subset; lines: mean per size)")
    ax.legend(fontsize=8)
    return fig


def plot_per_class(results: dict) -> Figure:
    scores = per_class(results)
    best = results["best"]
    fig = _figure(min(20.0, max(6.0, 1.5 + 0.14 * len(scores))), 4.5)
    ax = fig.add_subplot()
    ax.bar(range(len(scores)), [100 * s.accuracy for s in scores], color="#55a868")
    ax.set_xticks(
        range(len(scores)), [_plain(s.name, 30) for s in scores], rotation=90, fontsize=7 if len(scores) > 40 else 9
    )
    ax.set_xlim(-0.6, len(scores) - 0.4)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(_plain(f"Per-class accuracy of the best ensemble: {best['method']} {_subset(best['templates'])}", 120))
    return fig


def plot_confusions(results: dict) -> Figure:
    top = confusions(results)
    classes = results["classes"]
    fig = _figure(8, 1.4 + 0.3 * max(len(top), 3))
    ax = fig.add_subplot()
    if top:
        ys = range(len(top))
        ax.barh(ys, [n for _, _, n in top], color="#dd8452")
        ax.set_yticks(list(ys), [_plain(f"{classes[t]} → {classes[p]}", 50) for t, p, _ in top])
        ax.invert_yaxis()
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("images")
    else:
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title("Most frequent confusions of the best ensemble (true → predicted)")
    return fig


PLOTTERS = {
    "template_accuracy": plot_template_accuracy,
    "subset_size": plot_subset_size,
    "per_class": plot_per_class,
    "confusions": plot_confusions,
}
PLOT_TITLES = {
    "template_accuracy": "Accuracy per template",
    "subset_size": "Accuracy against subset size",
    "per_class": "Per-class accuracy of the best ensemble",
    "confusions": "Most frequent confusions",
}


def plot_pngs(results: dict) -> dict[str, bytes]:
    """Every plot as PNG bytes, by name (the per-class and confusion plots need `best`)."""
    names = PLOTS if results.get("best") else PLOTS[:2]
    return {name: _png(PLOTTERS[name](results)) for name in names}


# ---------------------------------------------------------------------------------------------------------------
# HTML


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail_png(images: ImageSet, index: int, size: int = THUMBNAIL_PX) -> bytes:
    """Image `index` scaled to fit size x size (nearest when enlarging, so small images stay crisp)."""
    from PIL import Image, ImageOps

    img = images.image(index)
    method = Image.Resampling.NEAREST if max(img.size) <= size else Image.Resampling.BICUBIC
    buffer = io.BytesIO()
    ImageOps.contain(img, (size, size), method=method).save(buffer, format="PNG")
    return buffer.getvalue()


def _html_table(table: Table, beside: str = "") -> str:
    """A titled table, with `beside` (HTML, e.g. a plot) to its right where the page is wide enough."""
    text_columns = {i for i, h in enumerate(table.header) if h in TEXT_COLUMNS}
    e = html.escape

    def cells(row: list[str], tag: str) -> str:
        return "".join(f"<{tag}{'' if i in text_columns else ' class=num'}>{e(c)}</{tag}>" for i, c in enumerate(row))

    body = "\n".join(f"<tr>{cells(row, 'td')}</tr>" for row in table.rows)
    head = f"<thead><tr>{cells(table.header, 'th')}</tr></thead>"
    return (
        f"<h2>{e(table.title)}</h2>\n<div class=row>\n<table>\n{head}\n<tbody>\n{body}\n</tbody>\n</table>\n"
        f"{beside}\n</div>"
    )


def _html_plot(name: str, png: bytes) -> str:
    title = html.escape(PLOT_TITLES[name])
    img = f'<img class=plot alt="{title}" src="{_data_uri(png)}">'
    return f"<figure class=plot>{img}<figcaption>{title}</figcaption></figure>"


def _html_examples(results: dict, images: ImageSet) -> str:
    e, classes, pred = html.escape, results["classes"], results["best"]["pred"]
    parts = ["<h2>Examples: best and worst classes of the best ensemble</h2>"]
    for group, chosen in select_examples(results).items():
        parts.append(f"<h3>{group.capitalize()} classes</h3>\n<div class=groups>")
        for score, indices in chosen:
            parts.append(
                f"<div class=cls><h4>{e(score.name)}: {100 * score.accuracy:.0f}% ({score.correct}/{score.total})</h4>"
                "<div class=grid>"
            )
            for i in indices:
                ok = pred[i] == results["labels"][i]
                true, guess = e(classes[results["labels"][i]]), e(classes[pred[i]])
                src = _data_uri(thumbnail_png(images, i))
                img = f'<img class=example alt="true {true}, predicted {guess}" src="{src}">'
                parts.append(
                    f'<figure class="ex {"ok" if ok else "bad"}">{img}'
                    f"<figcaption>true: {true}<br>pred: {guess}</figcaption></figure>"
                )
            parts.append("</div></div>")
        parts.append("</div>")
    return "\n".join(parts)


STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1150px; padding: 0 16px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 28px; } h4 { margin: 8px 0 4px; }
.meta { color: #555; margin: 2px 0; }
table { border-collapse: collapse; margin: 8px 0; } th, td { padding: 3px 10px; border-bottom: 1px solid #ddd; }
th { text-align: left; background: #f4f4f4; } .num { text-align: right; font-variant-numeric: tabular-nums; }
.row { display: flex; flex-wrap: wrap; align-items: flex-start; gap: 8px 32px; }
figure.plot { margin: 8px 0; } .row figure.plot { flex: 1 1 560px; max-width: 820px; }
img.plot { max-width: 100%; height: auto; display: block; }
figcaption { color: #555; font-size: 12px; }
.groups { display: flex; flex-wrap: wrap; gap: 4px 28px; } .grid { display: flex; flex-wrap: wrap; gap: 8px; }
figure.ex { margin: 0; padding: 4px; width: 104px; border: 3px solid; border-radius: 4px; font-size: 11px; }
figure.ex.ok { border-color: #55a868; } figure.ex.bad { border-color: #c44e52; }
img.example { width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated; display: block; }
"""


def format_html(results: dict, plots: dict[str, bytes], images: ImageSet | None = None) -> str:
    """One self-contained page: header, tables, plots (PNG data URIs) and, with `images`, example images."""
    e = html.escape
    title = f"clipzs report: {results['dataset']}/{results['split']}"
    body = [f"<h1>{e(title)}</h1>", *(f"<p class=meta>{e(line)}</p>" for line in _header_lines(results))]
    found = tables(results)
    beside = {"single": "template_accuracy", "all_templates": "subset_size", "best_subsets": None, "comparisons": None}
    for key, plot in beside.items():  # the headline tables first, each with its plot beside it
        if key in found:
            body.append(_html_table(found[key], _html_plot(plot, plots[plot]) if plot in plots else ""))
    if results.get("best"):
        body.append("<h2>Best ensemble</h2>")
        body += [_html_plot(name, plots[name]) for name in ("per_class", "confusions") if name in plots]
        if images is not None:
            body.append(_html_examples(results, images))
    body.append("<p class=meta>Accuracies in %; mpcr = mean per-class recall; templates are 1-based.</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<link rel="icon" href="data:,">\n<title>{e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n'
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------------------------------------------------------
# Files


def _check_images(results: dict, images: ImageSet) -> None:
    if list(images.labels.tolist()) != list(results["labels"]):
        raise ClipzsError(
            f"the images given to the report ({len(images)}) are not the ones evaluated ({len(results['labels'])} "
            "labels): pass the same dataset, split and --limit"
        )


def write_report(results: dict, out_dir: str | Path, images: ImageSet | None = None) -> dict[str, Path]:
    """Write results.json, results.csv, summary.md, one PNG per plot and a self-contained report.html into
    `out_dir` (created if needed); return the paths by name (json, csv, markdown, html, and each plot's name)."""
    if images is not None:
        _check_images(results, images)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_pngs(results)
    texts = {
        "json": ("results.json", json.dumps(results, indent=2) + "\n"),
        "csv": ("results.csv", format_csv(results)),
        "markdown": ("summary.md", format_markdown(results)),
        "html": ("report.html", format_html(results, plots, images)),
    }
    paths: dict[str, Path] = {}
    for key, (name, text) in texts.items():
        paths[key] = out / name
        paths[key].write_text(text, encoding="utf-8")
    for name, png in plots.items():
        paths[name] = out / f"{name}.png"
        paths[name].write_bytes(png)
    return paths
