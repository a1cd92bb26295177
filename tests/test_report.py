"""Reports: files, CSV/JSON agreement, markdown, HTML escaping, and the HTML page in headless Chromium."""

from __future__ import annotations

import ast
import copy
import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import clipzs.report
from clipzs.datasets import ImageSet
from clipzs.encode import Features
from clipzs.ensemble import METHODS, all_subsets
from clipzs.errors import ClipzsError
from clipzs.pipeline import summarize
from clipzs.report import (
    PLOTS,
    confusions,
    format_csv,
    format_html,
    format_markdown,
    format_summary,
    per_class,
    select_examples,
    write_report,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Text that must be escaped in HTML and markdown and must not turn into mathtext in matplotlib.
TEMPLATES = ["a photo of a {}.", "<script>alert(1)</script> {}", "a | pipe and `tick` {}", "it costs $5: {}"]
CLASSES = ["cat", "dog", "<b>bold</b>", "fish & chips", 'quote "q"', "a$b", "owl", "emu"]
PER_CLASS = 8  # images per class
# 4 best + 4 worst of the 8 classes, 4 images each, and one image per plot.
EXPECTED_EXAMPLES = 32


def make_results(swept: bool = True, seed: int = 0) -> dict:
    """A results dict as `evaluate` returns it, from `summarize` on seeded random features (no model)."""
    g = torch.Generator().manual_seed(seed)
    n_classes, n_templates, dim = len(CLASSES), len(TEMPLATES), 16
    centres = torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=g), dim=1)
    text = torch.nn.functional.normalize(centres + 0.7 * torch.randn(n_templates, n_classes, dim, generator=g), dim=2)
    labels = torch.arange(n_classes * PER_CLASS) % n_classes
    scale = torch.linspace(0.1, 0.6, n_classes)[labels, None]  # some classes harder than others
    image = torch.nn.functional.normalize(centres[labels] + scale * torch.randn(len(labels), dim, generator=g), dim=1)
    features = Features(image=image, text=text, labels=labels, logit_scale=100.0)
    subsets = all_subsets(n_templates) if swept else [tuple(range(n_templates))]
    summary = summarize(features, METHODS, subsets, TEMPLATES)
    return {
        "dataset": "synthetic",
        "data_root": None,
        "split": "test",
        "limit": None,
        "num_images": len(labels),
        "model": "random",
        "pretrained": None,
        "checkpoint": None,
        "precision": "fp32",
        "device": "cpu",
        "templates": TEMPLATES,
        "classnames": "raw",
        "classes": CLASSES,
        "methods": list(METHODS),
        **summary,
        "labels": labels.tolist(),
        "seconds": {"ensembles": 0.1, "total": 0.2},
        "extra_key": {"tolerated": True},
    }


def make_images(labels: list[int]) -> ImageSet:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    return ImageSet("synthetic", "test", tuple(CLASSES), np.asarray(labels, dtype=np.int64), pixels=pixels)


def without_ci(results: dict) -> dict:
    """A copy without confidence intervals (as results from before they existed)."""
    out = copy.deepcopy(results)
    for row in (*out["single"], *out["ensembles"]):
        row.pop("acc1_ci", None)
        row.pop("acc5_ci", None)
    return out


@pytest.fixture(scope="module")
def results() -> dict:
    return make_results()


@pytest.fixture(scope="module")
def report(results, tmp_path_factory) -> dict[str, Path]:
    return write_report(results, tmp_path_factory.mktemp("report"), make_images(results["labels"]))


def test_results_fixture_is_not_degenerate(results):
    accs = {row["acc1"] for row in results["ensembles"]}
    assert len(accs) > 5 and 0.3 < results["best"]["acc1"] < 1.0
    assert len({s.accuracy for s in per_class(results)}) > 3


def test_write_report_files(report, results):
    assert set(report) == {"json", "csv", "markdown", "html", *PLOTS}
    assert {p.name for p in report.values()} == {
        "results.json",
        "results.csv",
        "summary.md",
        "report.html",
        *(f"{name}.png" for name in PLOTS),
    }
    for path in report.values():
        assert path.is_file() and path.stat().st_size > 0, path
    for name in PLOTS:
        assert report[name].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert json.loads(report["json"].read_text()) == results


def _number(text: str) -> float | None:
    return None if text == "" else float(text)


def test_csv_agrees_with_json(report):
    data = json.loads(report["json"].read_text())
    with report["csv"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(data["single"]) + len(data["ensembles"])
    singles, ensembles = rows[: len(data["single"])], rows[len(data["single"]) :]
    for i, (row, want) in enumerate(zip(singles, data["single"], strict=True)):
        assert (row["kind"], row["method"], row["templates"], row["template"]) == (
            "single",
            "",
            str(i + 1),
            want["template"],
        )
        for metric in ("acc1", "acc5", "mean_per_class_recall"):
            assert _number(row[metric]) == want[metric], (i, metric)
    for row, want in zip(ensembles, data["ensembles"], strict=True):
        assert (row["kind"], row["method"], row["template"]) == ("ensemble", want["method"], "")
        assert [int(t) - 1 for t in row["templates"].split("+")] == want["templates"]
        for metric in ("acc1", "acc5", "mean_per_class_recall"):
            assert _number(row[metric]) == want[metric], (want["method"], want["templates"], metric)
    assert any(row["acc5"] == "" for row in ensembles), "vote methods have no acc5"


def test_confidence_intervals_become_columns(results):
    ci, results = results, without_ci(results)
    rows = list(csv.DictReader(format_csv(ci).splitlines()))
    assert "acc1_ci_lo" in rows[0] and "acc1_ci_hi" in rows[0]
    for row, want in zip(rows, (*ci["single"], *ci["ensembles"]), strict=True):
        assert [float(row["acc1_ci_lo"]), float(row["acc1_ci_hi"])] == want["acc1_ci"]
    lo, hi = ci["single"][0]["acc1_ci"]
    cell = f"{100 * lo:.2f}–{100 * hi:.2f}"
    assert "acc1 CI" in format_markdown(ci) and cell in format_markdown(ci)
    assert "acc1 CI" in format_html(ci, {}) and cell in format_html(ci, {})
    assert "acc1_ci_lo" not in format_csv(results) and "CI" not in format_markdown(results)


def test_markdown_contains_every_template_and_method(report, results):
    text = report["markdown"].read_text()
    for template in TEMPLATES:
        assert template.replace("|", "\\|") in text, template
    for method in METHODS:
        assert f"| `{method}` | 1 |" in text, method  # best-subsets table, rank 1
    full = text.split("## All templates, per method")[1]
    assert [line.split("|")[1].strip() for line in full.splitlines() if line.startswith("| `")] == [
        f"`{m}`" for m in METHODS
    ]
    assert "``a \\| pipe and `tick` {}``" in text  # a code span that survives the backtick and the pipe


def test_markdown_without_sweep_has_no_best_subsets_table():
    text = format_markdown(make_results(swept=False))
    assert "Best 5 template subsets" not in text and "## All templates, per method" in text
    assert "Best 5 template subsets" in format_markdown(make_results())


def test_html_is_escaped_and_self_contained(report):
    page = report["html"].read_text()
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "fish &amp; chips" in page
    links = re.findall(r"""\b(?:src|href)\s*=\s*("[^"]*"|'[^']*'|[^\s>]*)""", page)
    assert len(links) == len(PLOTS) + EXPECTED_EXAMPLES + 1  # + the empty favicon
    assert all(link.strip("\"'").startswith("data:") for link in links), "every asset must be a data URI"
    assert "url(" not in page and "@import" not in page


def test_per_class_confusions_and_examples_by_hand():
    results = {
        "classes": ["a", "b", "c", "d"],
        "labels": [0, 0, 1, 1, 2, 2, 2, 3],
        "best": {"pred": [0, 1, 1, 1, 0, 0, 2, 1]},
    }
    scores = per_class(results)
    assert [(s.name, s.correct, s.total) for s in scores] == [("b", 2, 2), ("a", 1, 2), ("c", 1, 3), ("d", 0, 1)]
    assert confusions(results) == [(2, 0, 2), (0, 1, 1), (3, 1, 1)]
    assert confusions(results, top=1) == [(2, 0, 2)]
    chosen = select_examples(results, classes=2, per_class_images=2)
    assert [(s.name, idx) for s, idx in chosen["best"]] == [("b", [2, 3]), ("a", [0, 1])]
    assert [(s.name, idx) for s, idx in chosen["worst"]] == [("d", [7]), ("c", [4, 5])]  # mistakes first


def test_images_must_be_the_evaluated_ones(results, tmp_path):
    with pytest.raises(ClipzsError, match="not the ones evaluated"):
        write_report(results, tmp_path, make_images(results["labels"][:-1]))


def test_format_summary_still_works(results):
    text = format_summary(results)
    assert text.splitlines()[0].startswith("synthetic/test: 64 images, 8 classes")
    assert all(t in text for t in TEMPLATES)


def test_report_imports_matplotlib_only_inside_functions():
    """The CLI imports report.py for format_summary: no module-level matplotlib import (TYPE_CHECKING aside)."""
    tree = ast.parse(Path(clipzs.report.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = [a.name for n in top for a in n.names] + [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert names and not [n for n in names if n.startswith(("matplotlib", "PIL"))]
    assert any("matplotlib" in ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))


# --- the page in a real browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    from playwright import sync_api

    if not CHROMIUM.exists():
        if os.environ.get("CLIPZS_REQUIRE_BROWSER"):  # CI installs Chromium: there a missing browser is a failure
            pytest.fail(f"{CHROMIUM} missing: apt-get install chromium")
        pytest.skip(f"{CHROMIUM} missing: apt-get install chromium")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def load(browser, path: Path) -> tuple[list[str], list[dict]]:
    """Open `path`; return the console errors / page errors / failed requests / dialogs, and every <img>'s state."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url[:80]}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.goto(path.resolve().as_uri(), wait_until="load")
    images = page.evaluate(
        "() => Array.from(document.images, i => ({cls: i.className, complete: i.complete, width: i.naturalWidth}))"
    )
    page.close()
    return problems, images


def test_html_in_chromium_shows_every_plot_and_example(browser, report):
    problems, images = load(browser, report["html"])
    assert problems == []
    assert len(images) == len(PLOTS) + EXPECTED_EXAMPLES
    assert [i["cls"] for i in images].count("plot") == len(PLOTS)
    broken = [i for i in images if not (i["complete"] and i["width"] > 0)]
    assert broken == []
    assert {i["width"] for i in images if i["cls"] == "example"} == {96}


def test_browser_check_catches_a_broken_image_and_errors(browser, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head><body>'
        '<img src="data:image/png;base64,iVBORw0KGgo="><script>console.error("boom")</script></body></html>'
    )
    problems, images = load(browser, bad)
    assert any("boom" in p for p in problems)
    assert images[0]["width"] == 0


def test_paired_test_and_optimistic_marker_are_in_every_view(results):
    (c,) = results["comparisons"]
    for text in (format_markdown(results), format_html(results, {}), format_summary(results)):
        assert "McNemar" in text and "optimistic" in text
        assert f"{c['p_value']:.3g}" in text
