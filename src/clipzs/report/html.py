"""`report.html`: one self-contained page (no external resource: plots and thumbnails are PNG data URIs) with the
header, the tables, the plots and example images of the best and worst classes. No machine path appears on it.
"""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ClipzsError
from ..results import EvalResult
from .plots import plot_title
from .tables import FOOTER, TEXT_COLUMNS, Table, header_lines, tables
from .views import scrub_paths, select_examples

if TYPE_CHECKING:
    from PIL import Image

    from ..sources.base import ImageSource

THUMBNAIL_PX = 96
BESIDE = {"single": "template_accuracy", "all_templates": "subset_size", "best_subsets": None, "comparisons": None}
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
.unreadable { width: 96px; height: 96px; overflow: hidden; color: #c44e52; }
"""


def evaluated_positions(result: EvalResult, images: ImageSource) -> np.ndarray:
    """The index in `images` of each evaluated image: the source's images in order minus `run.skipped`, the first
    `len(result.labels)` of them (so the whole split also fits a run cut by --limit). ClipzsError if the labels
    there are not the evaluated ones."""
    labels = np.asarray(result.labels, dtype=np.int64)
    keep = np.ones(len(images), dtype=bool)
    keep[[s.index for s in result.run.skipped if s.index < len(images)]] = False
    positions = np.flatnonzero(keep)[: len(labels)]
    if len(positions) != len(labels) or not np.array_equal(np.asarray(images.labels)[positions], labels):
        raise ClipzsError(
            f"the images found now ({len(images)}, {len(result.run.skipped)} of them unreadable when evaluated) are "
            f"not the ones evaluated ({len(labels)} images with other labels): the data changed since"
        )
    return positions


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail_png(image: Image.Image, size: int = THUMBNAIL_PX) -> bytes:
    """`image` scaled to fit size x size (nearest when enlarging, so small images stay crisp), as PNG."""
    from PIL import Image, ImageOps

    method = Image.Resampling.NEAREST if max(image.size) <= size else Image.Resampling.BICUBIC
    buffer = io.BytesIO()
    ImageOps.contain(image, (size, size), method=method).save(buffer, format="PNG")
    return buffer.getvalue()


def _table(table: Table, beside: str = "") -> str:
    """A titled table, with `beside` (HTML, e.g. a plot) to its right where the page is wide enough."""
    e = html.escape
    text_columns = {i for i, h in enumerate(table.header) if h in TEXT_COLUMNS}

    def cells(row: list[str], tag: str) -> str:
        return "".join(f"<{tag}{'' if i in text_columns else ' class=num'}>{e(c)}</{tag}>" for i, c in enumerate(row))

    body = "\n".join(f"<tr>{cells(row, 'td')}</tr>" for row in table.rows)
    return (
        f"<h2>{e(table.title)}</h2>\n<div class=row>\n<table>\n<thead><tr>{cells(table.header, 'th')}</tr></thead>\n"
        f"<tbody>\n{body}\n</tbody>\n</table>\n{beside}\n</div>"
    )


def _plot(name: str, png: bytes, result: EvalResult) -> str:
    title = html.escape(plot_title(name, result))
    img = f'<img class=plot alt="{title}" src="{data_uri(png)}">'
    return f"<figure class=plot>{img}<figcaption>{title}</figcaption></figure>"


def _examples(result: EvalResult, images: ImageSource) -> str:
    """The best and worst classes' example images, read from `images` in one increasing pass."""
    from ..sources.base import UnreadableImage

    e, classes, labels, pred = html.escape, result.run.classes, result.labels, result.best.pred
    chosen = select_examples(result)
    source = evaluated_positions(result, images)
    wanted = sorted({int(source[i]) for group in chosen.values() for _, positions in group for i in positions})
    read = dict(images.read(wanted))
    parts = ["<h2>Examples: best and worst classes of the best ensemble</h2>"]
    for group, classes_chosen in chosen.items():
        parts.append(f"<h3>{group.capitalize()} classes</h3>\n<div class=groups>")
        for score, positions in classes_chosen:
            parts.append(
                f"<div class=cls><h4>{e(score.name)}: {100 * score.accuracy:.0f}% ({score.correct}/{score.total})</h4>"
                "<div class=grid>"
            )
            for i in positions:
                true, guess = e(classes[labels[i]]), e(classes[pred[i]])
                image = read[int(source[i])]
                if isinstance(image, UnreadableImage):
                    shown = (
                        f"<div class=unreadable>unreadable: {e(scrub_paths(image.reason, result.run.data_root))}</div>"
                    )
                else:
                    src = data_uri(thumbnail_png(image))
                    shown = f'<img class=example alt="true {true}, predicted {guess}" src="{src}">'
                parts.append(
                    f'<figure class="ex {"ok" if pred[i] == labels[i] else "bad"}">{shown}'
                    f"<figcaption>true: {true}<br>pred: {guess}</figcaption></figure>"
                )
            parts.append("</div></div>")
        parts.append("</div>")
    return "\n".join(parts)


def format_html(result: EvalResult, plots: dict[str, bytes], images: ImageSource | None = None) -> str:
    """The page: header, tables (each with its plot beside it), the best ensemble's plots and, with `images` (the
    evaluated images' source), example images; without them, a note saying so."""
    e = html.escape
    title = f"clipzs report: {result.run.dataset}/{result.run.split}"
    body = [f"<h1>{e(title)}</h1>", *(f"<p class=meta>{e(line)}</p>" for line in header_lines(result))]
    found = tables(result)
    for key, plot in BESIDE.items():
        if key in found:
            body.append(_table(found[key], _plot(plot, plots[plot], result) if plot in plots else ""))
    if result.best is not None:
        body.append("<h2>Best ensemble</h2>")
        body += [_plot(name, plots[name], result) for name in ("per_class", "confusions") if name in plots]
        if images is not None:
            body.append(_examples(result, images))
        else:
            body.append("<p class=meta>No example images: the evaluated images were not available to the report.</p>")
    body.append(f"<p class=meta>{e(FOOTER)}</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<link rel="icon" href="data:,">\n<title>{e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n'
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
