"""The `clipzs` command: argument parsing and wiring only; the work is done by package functions."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .cache import FeatureCache, describe_size
from .classifier import CLASSIFIER_METHODS, NAMED_CLASSES, ZeroShotClassifier, predict_files
from .datasets import CLASSNAME_STYLES, DATASETS, ImageSet, load_dataset
from .ensemble import METHODS
from .errors import ClipzsError
from .models import PRECISIONS, available_models
from .pipeline import compare, evaluate, select
from .prompts import BUILTIN_TEMPLATES, load_templates
from .report import format_comparison, format_selection, format_summary, write_report

PRESETS = {
    "seed": {
        "dataset": "cifar100",
        "split": "test",
        "model": "ViT-B/32",
        "pretrained": "openai",
        "templates": "seed",
        "classnames": "raw",
        "ensemble": "all",
        "sweep": True,
    },
}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_model_options(p: argparse.ArgumentParser, model_default: str | None = None) -> None:
    p.add_argument(
        "--model",
        default=model_default,
        help="OpenAI name (ViT-B/32, RN50, ...), open_clip name, or model config .json",
    )
    p.add_argument("--pretrained", help="openai, an open_clip tag, a checkpoint file, or 'random'")
    p.add_argument("--cache-dir", help="where OpenAI checkpoints are kept (default $CLIPZS_CACHE or ~/.cache/clip)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default cuda when available)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), help="default fp32 on CPU, fp16 on CUDA")
    p.add_argument("--batch-size", type=_positive_int, help="images per batch (default 32 on CPU, 256 on CUDA)")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="top-k labels with probabilities for image files and folders",
        description="Classify images (files, or folders searched recursively) zero-shot. An "
        "unreadable file is reported and skipped; the exit status is 1 if any was.",
    )
    p.add_argument("paths", nargs="+", metavar="IMAGE_OR_DIR")
    names = p.add_mutually_exclusive_group(required=True)
    names.add_argument("--labels", help='comma-separated class names, e.g. "cat,dog,car"')
    names.add_argument("--classes", choices=NAMED_CLASSES, help="the class names of a dataset")
    p.add_argument("--classnames", choices=CLASSNAME_STYLES, default="clip", help="style of --classes names")
    p.add_argument("--templates", default="seed", help="seed, cifar, imagenet80, or a template file")
    p.add_argument("--ensemble", default="embedding", choices=CLASSIFIER_METHODS)
    p.add_argument("--topk", type=_positive_int, default=5, help="labels per image (default 5)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    _add_model_options(p, model_default="ViT-B/32")


def run_predict(args: argparse.Namespace) -> int:
    classifier = ZeroShotClassifier(
        args.model,
        classnames=args.classes or args.labels.split(","),
        templates=args.templates,
        ensemble=args.ensemble,
        classname_style=args.classnames,
        pretrained=args.pretrained,
        device=args.device,
        precision=args.precision,
        cache_dir=args.cache_dir,
    )
    results = predict_files(args.paths, classifier, topk=args.topk, batch_size=args.batch_size)
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"clipzs: cannot read {r['path']}: {r['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "top" in r:
                print(f"{r['path']}: " + ", ".join(f"{t['label']} {100 * t['prob']:.1f}%" for t in r["top"]))
    return 1 if failed else 0


def _add_setup_options(p: argparse.ArgumentParser) -> None:
    """Options naming the data, model and prompts (fields of `pipeline.Setup`), shared by eval/select/compare."""
    p.add_argument("--dataset", choices=DATASETS, help="default cifar100")
    p.add_argument(
        "--data-root", help="CIFAR: folder holding cifar-*-python (default ~/.cache); folder: <root>/<class>/"
    )
    p.add_argument("--split", help="train or test (default test)")
    _add_model_options(p)
    p.add_argument(
        "--templates",
        help="seed (default), cifar, imagenet80, a file with one template per line "
        "containing {}, or a .json mapping each class to its own sentences (CuPL format)",
    )
    p.add_argument(
        "--classnames", choices=CLASSNAME_STYLES, help="raw (as stored) or clip (default: underscores as spaces)"
    )
    p.add_argument("--limit", type=_positive_int, help="use only the first N images")
    p.add_argument(
        "--workers", type=int, help="DataLoader processes for image decoding (default 0 on CPU, up to 8 on CUDA)"
    )
    p.add_argument(
        "--feature-cache", help="feature cache folder (default $CLIPZS_FEATURE_CACHE or ~/.cache/clipzs/features)"
    )
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    p.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="compile the image tower with torch.compile (pays off only for large image sets)",
    )
    p.add_argument("--out", type=Path, help="write the results JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _setup(args: argparse.Namespace, preset: dict | None = None) -> dict:
    """`pipeline.Setup` fields from the options: given ones first, then the preset's, then the defaults."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    setup = {**(preset or {}), **given}
    fields = (
        "dataset",
        "data_root",
        "split",
        "model",
        "pretrained",
        "cache_dir",
        "templates",
        "batch_size",
        "device",
        "precision",
        "workers",
        "limit",
        "feature_cache",
    )
    return {
        **{f: setup[f] for f in fields if f in setup},
        "classname_style": setup.get("classnames", "clip"),
        "use_cache": not args.no_cache,
        "progress": not args.quiet,
    }


def _write_json(results: dict, out: Path | None) -> None:
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="zero-shot evaluation of templates and their ensembles",
        description="Encode every image once and every prompt once, then score single "
        "templates and ensembles (optionally every template subset).",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="'seed': the original experiment (CIFAR-100 test, ViT-B/32 openai, 5 seed templates, "
        "raw class names, every method, full sweep); other options override it",
    )
    _add_setup_options(p)
    p.add_argument("--ensemble", help=f"'all' (default) or a comma list of {', '.join(METHODS)}")
    p.add_argument("--sweep", action="store_true", default=None, help="every non-empty template subset (<= 12)")
    p.add_argument(
        "--balance",
        action="store_true",
        help="also each score method rebalanced to a uniform class marginal, without labels (+balanced)",
    )
    p.add_argument("--report", type=Path, metavar="DIR", help="write results.json/.csv, summary.md, plots, report.html")


def run_eval(args: argparse.Namespace) -> int:
    preset = PRESETS.get(args.preset, {})
    results = evaluate(
        ensemble=args.ensemble or preset.get("ensemble", "all"),
        sweep=bool(args.sweep or preset.get("sweep")),
        balance=args.balance,
        **_setup(args, preset),
    )
    _write_json(results, args.out)
    print(format_summary(results))
    if args.report:
        _write_report(results, args.report)
    return 0


def _add_select(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "select",
        help="choose templates on held-out labelled images, report them on the test set",
        description="Greedy forward selection and best subset (<= 12 templates) on labelled images "
        "disjoint from the evaluation images (for CIFAR, part of the train split), then "
        "the chosen subsets' accuracy on the evaluation split.",
    )
    _add_setup_options(p)
    p.add_argument("--ensemble", default="embedding", help="method(s) to select for (comma list; default embedding)")
    p.add_argument(
        "--select-split",
        help="split to choose on (default: train for CIFAR, else a held-out part of the evaluation split)",
    )
    p.add_argument("--select-size", type=_positive_int, default=5000, help="images to choose on (default 5000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw of those images (default 0)")


def run_select(args: argparse.Namespace) -> int:
    results = select(
        ensemble=args.ensemble,
        select_split=args.select_split,
        select_size=args.select_size,
        seed=args.seed,
        **_setup(args),
    )
    _write_json(results, args.out)
    print(format_selection(results))
    return 0


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="exact McNemar test between two methods or template subsets",
        description="A and B: METHOD (all templates), METHOD:1+3 (1-based templates) or template:N.",
    )
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    _add_setup_options(p)


def run_compare(args: argparse.Namespace) -> int:
    results = compare(args.a, args.b, **_setup(args))
    _write_json(results, args.out)
    print(format_comparison(results))
    return 0


def _evaluated_images(results: dict) -> ImageSet | None:
    """The images a results dict was computed on, for the report's examples; None (with a note) if unreadable."""
    try:
        images = load_dataset(results["dataset"], results.get("data_root"), results["split"], download=False)
    except ClipzsError as e:
        print(f"clipzs: note: report without example images ({e})", file=sys.stderr)
        return None
    return images.subset(range(min(results["num_images"], len(images))))


def _write_report(results: dict, out_dir: Path) -> None:
    written = write_report(results, out_dir, _evaluated_images(results))
    print(f"report: {written['html']}")


def run_report(args: argparse.Namespace) -> int:
    try:
        results = json.loads(args.results.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ClipzsError(f"cannot read results {args.results}: {e}") from e
    _write_report(results, args.out or args.results.with_name(f"{args.results.stem}-report"))
    return 0


def run_cache(args: argparse.Namespace) -> int:
    cache = FeatureCache(args.feature_cache)
    if args.action == "clear":
        freed = cache.clear(model=args.model)
        print(f"removed {describe_size(freed)} from {cache.root}")
        return 0
    entries = [e for e in cache.entries() if args.model in (None, e.key.get("model"))]
    print(f"{'kind':<7} {'model':<24} {'precision':<9} {'data':<24} {'items':>13} {'size':>10}")
    for e in entries:
        data = f"{e.key.get('dataset', '')}/{e.key.get('split', '')}" if e.kind == "images" else "prompts"
        items = f"{e.items}/{e.total}" if e.total is not None else str(e.items)
        print(
            f"{e.kind:<7} {e.key.get('model', '?'):<24} {e.key.get('precision', ''):<9} {data:<24} "
            f"{items:>13} {describe_size(e.size_bytes):>10}"
        )
    print(f"{len(entries)} entries, {describe_size(sum(e.size_bytes for e in entries))} in {cache.root}")
    return 0


def run_templates(args: argparse.Namespace) -> int:
    if args.action == "list":
        for name in BUILTIN_TEMPLATES:
            templates = load_templates(name)
            print(f"{name:<11} {len(templates):>3} templates, e.g. {templates[0]!r}")
        return 0
    if not args.name:
        raise ClipzsError("templates show needs a set name or a template file")
    for i, template in enumerate(load_templates(args.name), 1):
        print(f"{i:>3}  {template}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    rows = available_models(args.cache_dir)
    print(f"{'model':<28} {'pretrained':<36} {'source':<10} cached")
    for row in rows:
        print(f"{row['model']:<28} {row['pretrained']:<36} {row['source']:<10} {'yes' if row['cached'] else ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipzs", description="Zero-shot CLIP classification and prompt ensembling.")
    parser.add_argument("--version", action="version", version=f"clipzs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_eval(sub)
    _add_select(sub)
    _add_compare(sub)
    _add_predict(sub)

    p = sub.add_parser("report", help="write the report (CSV, markdown, plots, HTML) of a results JSON")
    p.add_argument("results", type=Path, help="a results JSON written by `clipzs eval --out`")
    p.add_argument("--out", type=Path, metavar="DIR", help="report folder (default <results>-report beside it)")

    p = sub.add_parser("cache", help="list or clear the feature cache")
    p.add_argument("action", choices=("list", "clear"))
    p.add_argument("--model", help="only entries of this model (as named to `clipzs eval --model`)")
    p.add_argument("--feature-cache", help="cache folder (default $CLIPZS_FEATURE_CACHE or ~/.cache/clipzs/features)")

    p = sub.add_parser("templates", help="list the built-in template sets or show one")
    p.add_argument("action", choices=("list", "show"))
    p.add_argument("name", nargs="?", help="set name (seed, cifar, imagenet80) or template file, for show")

    p = sub.add_parser("models", help="list model names and pretrained weights, and which are cached")
    p.add_argument("action", choices=("list",))
    p.add_argument("--cache-dir", help="OpenAI checkpoint folder (default $CLIPZS_CACHE or ~/.cache/clip)")
    return parser


COMMANDS = {
    "eval": run_eval,
    "select": run_select,
    "compare": run_compare,
    "predict": run_predict,
    "report": run_report,
    "cache": run_cache,
    "templates": run_templates,
    "models": run_models,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ClipzsError as e:
        print(f"clipzs: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clipzs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
