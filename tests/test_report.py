"""Reports of hand-built typed results (no model, no pipeline): the terminal summary, CSV against JSON, markdown,
plots, the self-contained HTML page (also in headless Chromium), atomic writes, the grid and wrong-kind errors."""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from clipzs.errors import ClipzsError, ClipzsWarning
from clipzs.report import (
    PLOTS,
    format_comparison,
    format_csv,
    format_grid_markdown,
    format_html,
    format_markdown,
    format_selection,
    format_summary,
    require_eval,
    write_grid,
    write_report,
)
from clipzs.report.console import MATRIX_SUBSETS
from clipzs.report.html import evaluated_positions, thumbnail_png
from clipzs.report.plots import PER_CLASS_SIDE, plot_title, shown_classes
from clipzs.report.views import ClassScore, confusions, per_class, scrub_paths, select_examples, shown_path
from clipzs.results import (
    Best,
    Bootstrap,
    Choice,
    CompareResult,
    Comparison,
    EvalResult,
    Row,
    Run,
    Selection,
    SelectionImages,
    SelectResult,
    Side,
    Skipped,
    read_result,
    to_json,
    write_result,
)
from clipzs.sources.base import ArraySource, UnreadableImage

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
TEMPLATES = ("<script>alert(1)</script> {}", "a | pipe and `tick` {}", "it costs $5: {}")
CLASSES = ("cat", "<b>bold</b>", "fish & chips", "a$b")
PER_CLASS = 3  # images per class: class c has c mistakes, so every class has a different accuracy
METHODS = ("vote", "embedding")
# 2 best and 2 worst of the 4 classes, 3 images each.
EXAMPLES = 12
MACHINE = "/home/alice"  # a machine path that must never reach a report


def subsets(n: int) -> list[tuple[int, ...]]:
    return [s for k in range(1, n + 1) for s in itertools.combinations(range(n), k)]


def make_result(
    n_templates: int = 3,
    methods: tuple[str, ...] = METHODS,
    swept: bool = True,
    reported_only: bool = False,
    seed: int = 0,
    **run: object,
) -> EvalResult:
    """A small result with distinct, full-precision accuracies; vote rows have no acc5 (as `evaluate` makes)."""
    rng = np.random.default_rng(seed)
    templates = tuple(TEMPLATES[t % len(TEMPLATES)] + " " * (t // len(TEMPLATES)) for t in range(n_templates))

    def row(method: str | None, chosen: tuple[int, ...], with_ci: bool = True) -> Row:
        acc1, acc5, mpcr = (float(v) for v in rng.uniform(0.2, 0.9, 3))
        ranks = method != "vote"
        return Row(
            method=method,
            templates=chosen,
            acc1=acc1,
            acc5=acc5 if ranks else None,
            mean_per_class_recall=mpcr,
            acc1_ci=(acc1 - 0.05, acc1 + 0.0312345678901) if with_ci else None,
            acc5_ci=(acc5 - 0.01, min(1.0, acc5 + 0.01)) if with_ci and ranks else None,
            template=templates[chosen[0]] if method is None else None,
        )

    single = tuple(row(None, (t,)) for t in range(n_templates))
    chosen = subsets(n_templates) if swept else [tuple(range(n_templates))]
    ensembles = tuple(row(m, s, not reported_only or len(s) == n_templates) for s in chosen for m in methods)
    labels = tuple(i % len(CLASSES) for i in range(len(CLASSES) * PER_CLASS))
    pred = tuple((y + 1) % len(CLASSES) if i // len(CLASSES) < y else y for i, y in enumerate(labels))
    top = max(ensembles, key=lambda r: r.acc1)
    header = {
        "dataset": "synthetic",
        "split": "test",
        "num_images": len(labels),
        "model": "ViT-B/32",
        "pretrained": "openai",
        "checkpoint": "sha256:" + "0" * 64,
        "precision": "fp32",
        "device": "cpu",
        "templates": templates,
        "classnames": "raw",
        "classes": CLASSES,
        "options": {"sweep": swept},
        "encoded": {"images": 5, "prompts": 12},
        "seconds": {"ensembles": 0.1, "total": 0.3},
        **run,
    }
    return EvalResult(
        run=Run(**header),
        methods=methods,
        single=single,
        ensembles=ensembles,
        best=Best(top.method, top.templates, top.acc1, pred),
        comparisons=(Comparison(top.label, "template 2", top.acc1, single[1].acc1, 3, 1, 0.625),),
        labels=labels,
        bootstrap=Bootstrap(resamples=1000, seed=0, level=0.95, rows="reported" if reported_only else "all"),
    )


SKIPPED = (Skipped(3, "cat/broken.jpg", "cannot identify image file"), Skipped(9, "owl/empty.png", "truncated"))


def make_images(result: EvalResult) -> ArraySource:
    """The source the result's images came from: the evaluated ones plus the skipped ones at their indices; image
    j is filled with the value j, so a thumbnail tells which image it shows."""
    n = len(result.labels) + len(result.run.skipped)
    skipped = {s.index for s in result.run.skipped}
    labels = np.zeros(n, dtype=np.int64)
    labels[[j for j in range(n) if j not in skipped]] = result.labels
    pixels = np.repeat(np.arange(n, dtype=np.uint8), 8 * 8 * 3).reshape(n, 8, 8, 3)
    return ArraySource("synthetic", "test", CLASSES, labels, pixels)


@pytest.fixture(scope="module")
def result() -> EvalResult:
    return make_result()


@pytest.fixture(scope="module")
def report(result, tmp_path_factory) -> dict[str, Path]:
    return write_report(result, tmp_path_factory.mktemp("report"), make_images(result))


def test_result_fixture_is_not_degenerate(result):
    assert len(result.ensembles) == 7 * 2 and result.swept()
    assert len({row.acc1 for row in result.ensembles}) == 14
    assert [s.correct for s in per_class(result)] == [3, 2, 1, 0]


# --- terminal summary --------------------------------------------------------------------------------------------


def test_summary_header_intervals_cache_and_seconds(result):
    text = format_summary(result)
    lines = text.splitlines()
    assert lines[0] == "synthetic/test: 12 images, 4 classes, 3 templates"
    assert lines[1] == "model ViT-B/32 (pretrained openai, fp32, cpu)"
    assert all(t in text for t in TEMPLATES)
    assert "95% intervals: percentile bootstrap over the images, 1000 resamples, seed 0" in text
    assert "encoded now: 5 of 12 images, 12 of 12 prompts (the rest came from the feature cache)" in text
    assert "seconds: ensembles 0.1, total 0.3" in text
    assert "skipped" not in text and "reported rows only" not in text


@pytest.mark.parametrize("n_templates", [3, 6])
def test_summary_prints_the_matrix_of_every_subset_up_to_six_templates(n_templates):
    text = format_summary(make_result(n_templates))
    assert "acc1 of every template subset (rows) by method (columns)" in text
    matrix = text.split("by method (columns)")[1].split("the best template subset of each method")[0]
    assert len([line for line in matrix.splitlines() if line.startswith("{")]) == 2**n_templates - 1
    assert "the best template subset of each method, chosen on these same images: optimistic" in text


def test_summary_beyond_six_templates_prints_the_best_subsets_and_says_so():
    result = make_result(7, methods=("embedding",))
    assert len(result.ensembles) == 127 > MATRIX_SUBSETS
    text = format_summary(result)
    assert "every template subset (rows)" not in text
    assert "the best 5 of the 127 template subsets of each method by acc1" in text
    best = text.split("the best 5 of the 127")[1].split("every method on all 7 templates")[0]
    rows = [line for line in best.splitlines() if line.startswith("embedding ")]
    accs = sorted((r.acc1 for r in result.ensembles), reverse=True)[:5]
    assert [float(line.split()[1]) for line in rows] == [round(100 * a, 2) for a in accs]
    full = text.split("every method on all 7 templates")[1]
    assert "  all 7" in full and "{1,2,3,4,5,6,7}" not in full  # the whole set is named, not listed


def test_summary_marks_rows_without_intervals_and_says_which_have_them():
    result = make_result(reported_only=True)
    result = replace(result, ensembles=tuple(replace(r, acc1_ci=None, acc5_ci=None) for r in result.ensembles))
    text = format_summary(result)
    assert "intervals were computed for the reported rows only (3 of 17 rows have one; '-' marks the others)" in text
    best = text.split("the best template subset of each method")[1].split("McNemar")[0]
    rows = [line.split() for line in best.splitlines() if line.startswith(METHODS)]
    assert len(rows) == len(METHODS) and all(cells[2] == "-" for cells in rows)
    assert {cells[0]: cells[3] for cells in rows}["vote"] == "-"  # vote ranks nothing: no acc5
    singles = [line for line in text.splitlines() if re.match(r"\s+\d  ", line)]
    assert len(singles) == 3 and all(re.search(r"\[\d+\.\d\d, \d+\.\d\d\]", line) for line in singles)


def test_summary_names_skipped_images_and_the_note():
    many = (*SKIPPED, *(Skipped(20 + i, f"x/{i}.jpg", "bad") for i in range(3)))
    result = make_result(note="scored over the 200 ImageNet classes it contains", skipped=many)
    lines = format_summary(result).splitlines()
    assert lines[2] == "scored over the 200 ImageNet classes it contains"
    assert lines[3] == (
        "skipped 5 unreadable images, not evaluated: cat/broken.jpg (cannot identify image file); "
        "owl/empty.png (truncated); x/0.jpg (bad); and 2 more"
    )


def test_no_machine_path_in_any_view(tmp_path):
    root = f"{MACHINE}/data/imagenet"
    result = make_result(
        data_root=root,
        pretrained=f"{MACHINE}/ckpt/ViT-B-32.pt",
        model=f"{MACHINE}/configs/tiny.json",
        classnames=f"{MACHINE}/names.txt",
        note=f"classes read from {MACHINE}/names.txt",
        skipped=(Skipped(3, f"{root}/n01/bad.jpg", f"cannot identify image file '{root}/n01/bad.jpg'"),),
    )
    summary = format_summary(result)
    assert summary.splitlines()[:2] == [
        "synthetic/test (data: imagenet): 12 images, 4 classes, 3 templates",
        "model tiny.json (pretrained ViT-B-32.pt, fp32, cpu)",
    ]
    assert "n01/bad.jpg (cannot identify image file 'n01/bad.jpg')" in summary
    paths = write_report(result, tmp_path / "r", make_images(result))
    grid = write_grid([result], tmp_path / "g")
    views = [summary, *(p.read_text() for p in (paths["csv"], paths["markdown"], paths["html"], grid["markdown"]))]
    assert all(MACHINE not in text for text in views)


def test_paths_are_shown_by_their_last_part_and_names_unchanged():
    assert [shown_path(v) for v in ("ViT-B/32", "ViT-L/14@336px", "openai", "hf-hub:timm/ViT-B-16", "random")] == [
        "ViT-B/32",
        "ViT-L/14@336px",
        "openai",
        "hf-hub:timm/ViT-B-16",
        "random",
    ]
    paths = ("/a/b/m.pt", "~/w/m.safetensors", "./m.bin", "ckpt/m.pt", "C:\\w\\m.pt", "../cfg/x.json")
    assert [shown_path(v) for v in paths] == ["m.pt", "m.safetensors", "m.bin", "m.pt", "m.pt", "x.json"]
    assert scrub_paths("cannot read '/srv/x/y.jpg': and/or 1/2", None) == "cannot read 'y.jpg': and/or 1/2"


# --- files ---------------------------------------------------------------------------------------------------------


def test_write_report_files(report, result):
    assert set(report) == {"json", "csv", "markdown", "html", *PLOTS}
    names = {"results.json", "results.csv", "summary.md", "report.html", *(f"{name}.png" for name in PLOTS)}
    assert {p.name for p in report.values()} == names
    assert {p.name for p in report["json"].parent.iterdir()} == names  # no temporary file left
    for name in PLOTS:
        assert report[name].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert read_result(report["json"]) == result


def _number(text: str) -> float | None:
    return None if text == "" else float(text)


def test_csv_agrees_with_json(report):
    data = json.loads(report["json"].read_text())
    with report["csv"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(data["single"]) + len(data["ensembles"])
    for row, want in zip(rows, [*data["single"], *data["ensembles"]], strict=True):
        single = want["method"] is None
        assert row["kind"] == ("single" if single else "ensemble")
        assert row["method"] == ("" if single else want["method"])
        assert [int(t) - 1 for t in row["templates"].split("+")] == want["templates"]
        assert row["template"] == (want["template"] if single else "")
        for metric in ("acc1", "acc5", "mean_per_class_recall"):
            assert _number(row[metric]) == want[metric], (want, metric)
        for key in ("acc1_ci", "acc5_ci"):
            got = [_number(row[f"{key}_lo"]), _number(row[f"{key}_hi"])]
            assert got == (want[key] or [None, None]), (want, key)
    assert any(row["acc5"] == "" for row in rows), "vote methods have no acc5"


def test_interval_columns_only_where_rows_have_intervals(result):
    bare = replace(
        result,
        single=tuple(replace(r, acc1_ci=None, acc5_ci=None) for r in result.single),
        ensembles=tuple(replace(r, acc1_ci=None, acc5_ci=None) for r in result.ensembles),
    )
    lo, hi = result.single[0].acc1_ci
    cell = f"{100 * lo:.2f}–{100 * hi:.2f}"
    assert "acc1 95% CI" in format_markdown(result) and cell in format_markdown(result)
    assert "acc1 95% CI" in format_html(result, {}) and cell in format_html(result, {})
    assert "acc1_ci_lo" in format_csv(result)
    assert "acc1_ci_lo" not in format_csv(bare) and "CI |" not in format_markdown(bare)


def test_markdown_tables_have_one_cell_per_column(report, result):
    text = report["markdown"].read_text()
    tables = re.findall(r"(?m)^## (.+)\n\n((?:\|.*\n)+)", text)
    assert [title.split(" (")[0] for title, _ in tables] == [
        "Single templates",
        "Best 5 template subsets per method",
        "All templates, per method",
        "Paired test",
    ]
    for title, body in tables:
        lines = body.splitlines()
        cells = [len(re.split(r"(?<!\\)\|", line)) for line in lines]
        assert len(set(cells)) == 1, title
        assert re.fullmatch(r"\|(?:---:?\|)+", lines[1]), title
    assert len(tables[1][1].splitlines()) == 2 + 5 * len(METHODS)
    for method in METHODS:
        assert f"| `{method}` | 1 |" in text
    assert "``a \\| pipe and `tick` {}``" in text  # a code span that survives the backtick and the pipe
    unswept = format_markdown(make_result(swept=False))
    assert "Best 5 template subsets" not in unswept and "## All templates, per method" in unswept


def test_html_is_escaped_and_self_contained(report):
    page = report["html"].read_text()
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "fish &amp; chips" in page
    links = re.findall(r"""\b(?:src|href)\s*=\s*("[^"]*"|'[^']*'|[^\s>]*)""", page)
    assert len(links) == len(PLOTS) + EXAMPLES + 1  # + the empty favicon
    assert all(link.strip("\"'").startswith("data:") for link in links), "every asset must be a data URI"
    assert "url(" not in page and "@import" not in page and "http" not in page


def test_html_examples_skip_the_unreadable_images():
    result = make_result(skipped=SKIPPED)
    images = make_images(result)
    positions = evaluated_positions(result, images)
    assert positions.tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12, 13]
    page = format_html(result, {}, images)
    shown = [int(positions[i]) for group in select_examples(result).values() for _, chosen in group for i in chosen]
    for j in shown:
        assert thumbnail_png(images.load(j)) in _thumbnails(page), j
    assert len(_thumbnails(page)) == EXAMPLES
    for j in (3, 9):
        assert thumbnail_png(images.load(j)) not in _thumbnails(page)


def _thumbnails(page: str) -> list[bytes]:
    import base64

    return [base64.b64decode(m) for m in re.findall(r'class=example [^>]*src="data:image/png;base64,([^"]+)"', page)]


def test_html_shows_an_image_unreadable_now_as_text(result):
    images = make_images(result)

    class Failing(ArraySource):
        def load(self, i: int):
            raise UnreadableImage(f"{MACHINE}/img/{i}.jpg", f"cannot identify image file '{MACHINE}/img/{i}.jpg'")

    broken = Failing(images.name, images.split, images.classes, images.labels, images.pixels)
    page = format_html(result, {}, broken)
    assert page.count("class=unreadable") == EXAMPLES and "class=example" not in page
    assert MACHINE not in page and "unreadable: cannot identify image file &#x27;0.jpg&#x27;" in page


def test_html_without_images_says_so(result):
    page = format_html(result, {}, None)
    assert "No example images" in page and "class=example" not in page


def test_other_images_give_a_report_without_examples_and_one_warning(result, tmp_path):
    images = make_images(result)
    short = ArraySource("s", "test", CLASSES, images.labels[:-1], images.pixels[:-1])
    shifted = ArraySource("s", "test", CLASSES, np.roll(images.labels, 1), images.pixels)
    for other in (short, shifted):
        with pytest.raises(ClipzsError, match="not the ones evaluated"):
            evaluated_positions(result, other)
        with pytest.warns(ClipzsWarning, match="report without example images: .*the data changed since"):
            written = write_report(result, tmp_path, other)
        page = written["html"].read_text()
        assert "Examples:" not in page and "Single templates" in page


def test_a_longer_source_fits_a_run_cut_by_limit(result):
    images = make_images(result)
    longer = ArraySource("s", "test", CLASSES, np.r_[images.labels, [0, 1]], np.r_[images.pixels, images.pixels[:2]])
    assert evaluated_positions(result, longer).tolist() == list(range(12))


def test_per_class_confusions_and_examples_by_hand(result):
    by_hand = replace(
        result,
        labels=(0, 0, 1, 1, 2, 2, 2, 3),
        best=replace(result.best, pred=(0, 1, 1, 1, 0, 0, 2, 1)),
        run=replace(result.run, classes=("a", "b", "c", "d")),
    )
    scores = per_class(by_hand)
    assert [(s.name, s.correct, s.total) for s in scores] == [("b", 2, 2), ("a", 1, 2), ("c", 1, 3), ("d", 0, 1)]
    assert confusions(by_hand) == [(2, 0, 2), (0, 1, 1), (3, 1, 1)]
    assert confusions(by_hand, top=1) == [(2, 0, 2)]
    chosen = select_examples(by_hand, classes=2, per_class_images=2)
    assert [(s.name, idx) for s, idx in chosen["best"]] == [("b", [2, 3]), ("a", [0, 1])]
    assert [(s.name, idx) for s, idx in chosen["worst"]] == [("d", [7]), ("c", [4, 5])]  # mistakes first
    assert [s.name for s, _ in select_examples(by_hand)["best"]] == ["b", "a"]  # few classes: half each


def test_many_classes_plot_only_the_best_and_worst(result):
    scores = [ClassScore(c, f"c{c}", 1000 - c, 1000) for c in range(1000)]
    shown = shown_classes(scores)
    assert len(shown) == 2 * PER_CLASS_SIDE and shown[0].label == 0 and shown[-1].label == 999
    assert shown_classes(scores[:40]) == scores[:40]
    many = replace(result, labels=tuple(range(1000)), best=replace(result.best, pred=tuple(range(1000))))
    assert plot_title("per_class", many).endswith(f": the best and worst {PER_CLASS_SIDE} of 1000 classes")
    assert "the best and worst" not in plot_title("per_class", result)


def test_a_failed_write_leaves_the_old_file_whole(result, tmp_path, monkeypatch):
    (tmp_path / "results.csv").write_text("old,csv\n")
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(Path(dst).name)
        if Path(dst).name == "results.csv":
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(ClipzsError, match="cannot write .*results.csv: No space left on device"):
        write_report(result, tmp_path)
    assert calls == ["results.json", "results.csv"]
    assert (tmp_path / "results.csv").read_text() == "old,csv\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.json"]  # no temporary file


def test_paired_test_and_optimistic_marker_are_in_every_view(result):
    (c,) = result.comparisons
    for text in (format_markdown(result), format_html(result, {}), format_summary(result)):
        assert "McNemar" in text and "optimistic" in text
        assert f"{c.p_value:.3g}" in text


def test_report_needs_an_eval_result(result, tmp_path):
    side = Side("embedding", "embedding{1,2,3}", 0.5, (0.4, 0.6))
    compared = CompareResult(result.run, side, replace(side, spec="template:1", label="template 1"), 3, 1, 0.62)
    path = tmp_path / "compare.json"
    write_result(compared, path)
    with pytest.raises(ClipzsError) as info:
        require_eval(read_result(path), path.name)
    assert str(info.value) == (
        "compare.json is the result of `clipzs compare` (two classifiers compared); a report needs the result of "
        "`clipzs eval` (its --out JSON)"
    )
    with pytest.raises(ClipzsError, match="^this is the result of `clipzs select` .*`clipzs eval`"):
        write_report(make_selection(result), tmp_path / "r")
    assert not (tmp_path / "r").exists()
    assert require_eval(result) is result


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda d: d.update(classes=d["classes"][:1]), "labels outside 0..0 (the 1 classes)"),
        (lambda d: d.update(labels=d["labels"][:-1]), "labels for num_images"),
        (lambda d: d.update(single=[]), "single should hold one row per template"),
        (lambda d: d["ensembles"][0].update(templates=[0, 99]), "templates [0, 99] are not a subset of 0.."),
        (lambda d: d["ensembles"][0].update(templates=[1, 0]), "templates [1, 0] are not a subset of 0.."),
        (lambda d: d["ensembles"][0].update(templates=[-1, 0]), "templates [-1, 0] are not a subset of 0.."),
        (lambda d: d["single"][0].update(acc1=5.0), "row 1 (single): an accuracy outside 0..1"),
        (lambda d: d["best"].update(pred=d["best"]["pred"][:3]), "best.pred should hold"),
    ],
)
def test_an_edited_result_whose_parts_disagree_is_one_error_naming_it(result, tmp_path, edit, words):
    data = json.loads(json.dumps(to_json(result)))
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ClipzsError, match=f"^{re.escape(str(path))}: ") as info:
        read_result(path)
    assert words in str(info.value)


def test_json_nested_too_deeply_is_one_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ClipzsError, match="its JSON is nested too deeply$"):
        read_result(path)


def make_selection(result: EvalResult) -> SelectResult:
    choice = Choice((0, 2), 0.61, (0.55, 0.66), selection_acc1=0.7)
    return SelectResult(
        run=result.run,
        selection=SelectionImages("train", 5000, 0, (1, 2)),
        evaluation_indices=tuple(range(12)),
        methods=(
            Selection(
                "embedding",
                all_templates=Choice((0, 1, 2), 0.6, (0.5, 0.7)),
                greedy=choice,
                test_set_best=Choice((1,), 0.65, (0.6, 0.7), optimistic=True),
                note="best subset: more than 12 templates",
            ),
        ),
    )


def test_selection_and_comparison_text(result):
    text = format_selection(make_selection(result))
    assert text.splitlines()[0].startswith("templates chosen on 5000 images of synthetic/train (seed 0)")
    assert re.search(r"embedding\s+greedy forward\s+\{1,3\}\s+70\.00%\s+61\.00 \[55\.00, 66\.00\]", text)
    assert "(optimistic: chosen on the evaluation images)" in text and "best subset: more than 12" in text
    side = Side("embedding", "embedding{1,2,3}", 0.5, (0.4, 0.6))
    compared = CompareResult(result.run, side, replace(side, label="template 1", acc1=0.45), 3, 1, 0.625)
    text = format_comparison(compared)
    assert "A embedding{1,2,3}" in text and "45.00 [40.00, 60.00]" in text and "p = 0.625" in text


def test_grid_files(result, tmp_path):
    grid = [
        replace(make_result(seed=s, swept=swept), run=replace(result.run, dataset=d, model=m))
        for s, (d, m, swept) in enumerate(
            [("cifar10", "ViT-B/32", True), ("cifar10", "RN50", False), ("cifar100", "ViT-B/32", True)]
        )
    ]
    paths = write_grid(grid, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"grid.csv", "grid.md", "grid.png"}
    assert paths["heatmap"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    rows = list(csv.DictReader(paths["csv"].read_text().splitlines()))
    assert [(r["dataset"], r["model"], r["best_optimistic"]) for r in rows] == [
        ("cifar10", "ViT-B/32", "True"),
        ("cifar10", "RN50", "False"),
        ("cifar100", "ViT-B/32", "True"),
    ]
    for row, r in zip(rows, grid, strict=True):
        head = r.headline()
        assert (row["headline_method"], row["headline_templates"]) == ("embedding", "1+2+3")
        assert float(row["acc1"]) == head.acc1 and float(row["best_acc1"]) == r.best.acc1
    text = paths["markdown"].read_text()
    lines = [line for line in text.splitlines() if line.startswith("| cifar")]
    assert len(lines) == 3 and "`embedding, all 3 templates`" in lines[0]
    assert lines[0].endswith("* |") and not lines[1].endswith("* |") and "optimistic" in text
    assert "optimistic" not in format_grid_markdown(grid[1:2])
    with pytest.raises(ClipzsError, match="two results for cifar10/test x ViT-B/32"):
        write_grid([grid[0], grid[0]], tmp_path)


def test_summary_imports_neither_matplotlib_nor_pil(result, tmp_path):
    """The CLI prints the summary: the report package imports matplotlib and PIL only to draw and to thumbnail."""
    path = tmp_path / "results.json"
    write_result(result, path)
    code = (
        "import sys; from clipzs.report import format_summary; from clipzs.results import read_result; "
        f"format_summary(read_result({str(path)!r})); "
        "print(sorted(m for m in sys.modules if m.startswith(('matplotlib', 'PIL'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --- the page in a real browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        if os.environ.get("CLIPZS_REQUIRE_BROWSER"):  # CI installs Chromium: there a missing browser is a failure
            pytest.fail(f"{CHROMIUM} missing: apt-get install chromium")
        pytest.skip(f"{CHROMIUM} missing: apt-get install chromium")
    from playwright import sync_api

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
    assert len(images) == len(PLOTS) + EXAMPLES
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
