"""Human-readable views of a results dict (the `--out` JSON schema)."""

from __future__ import annotations

from itertools import groupby

BEST_PER_METHOD = 5


def _pct(value: float | None) -> str:
    return "   -  " if value is None else f"{100 * value:6.2f}"


def _subset(templates: list[int]) -> str:
    return "{" + ",".join(str(t + 1) for t in templates) + "}"


def format_summary(results: dict, best: int = BEST_PER_METHOD) -> str:
    """Single-template table, then the best template subsets of each ensemble method (1-based indices)."""
    head = (
        f"{results['dataset']}/{results['split']}: {results['num_images']} images, {len(results['classes'])} "
        f"classes; {results['model']} ({results['pretrained']}, {results['precision']}, {results['device']})"
    )
    lines = [head, "", f"{'#':>3}  {'acc1':>6}  {'acc5':>6}  {'mpcr':>6}  template"]
    for i, row in enumerate(results["single"], 1):
        lines.append(
            f"{i:>3}  {_pct(row['acc1'])}  {_pct(row['acc5'])}  {_pct(row['mean_per_class_recall'])}  {row['template']}"
        )
    swept = len({tuple(e["templates"]) for e in results["ensembles"]}) > 1
    title = f"best {best} template subsets per method (by acc1)" if swept else "ensembles of all templates"
    lines += ["", f"{'method':<10} {'acc1':>6}  {'acc5':>6}  {'mpcr':>6}  templates   ({title})"]
    for method, group in groupby(results["ensembles"], key=lambda e: e["method"]):
        rows = list(group)
        for row in sorted(rows, key=lambda e: -e["acc1"])[:best] if swept else rows:
            lines.append(
                f"{method:<10} {_pct(row['acc1'])}  {_pct(row['acc5'])}  "
                f"{_pct(row['mean_per_class_recall'])}  {_subset(row['templates'])}"
            )
    lines += [
        "",
        "accuracies in %; mpcr = mean per-class recall; seconds: "
        + ", ".join(f"{k} {v:.1f}" for k, v in results["seconds"].items()),
    ]
    return "\n".join(lines)
