"""The `clipzs` command: a thin, mechanical map onto the library.

Every option's argparse `dest` is the name of a library parameter (a field of `options.Setup`, or a parameter of
`evaluate`/`select`/`compare`), and only options the user gave reach the library, so a preset's values and the
library's defaults apply to the rest. Library errors name parameters; this module words them as flags. The
library itself (and torch) is imported only when a command runs, so `--help` and `--version` start at once.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import warnings
from pathlib import Path

from ._version import __version__
from .errors import ClipzsError, ClipzsWarning
from .options import ENGINES, cached_model_name

PRECISIONS = ("fp32", "fp16", "bf16")
CLASSNAME_HELP = "raw (as the dataset stores them), clip (CLIP's names; default), or a CLIP_benchmark class-name .json"
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
SETUP_FLAGS: dict[str, str] = {}  # library parameter -> its flag, filled as the parser is built (error wording)
FALSE_FLAGS: dict[str, str] = {}  # parameter -> the flag that sets it False (`use_cache` -> `--no-cache`)


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _count(text: str) -> int:
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _option(p: argparse.ArgumentParser, flag: str, **kwargs) -> None:
    """An option whose value reaches the library only when given (its default is argparse.SUPPRESS)."""
    action = p.add_argument(flag, default=argparse.SUPPRESS, **kwargs)
    (FALSE_FLAGS if kwargs.get("action") == "store_false" else SETUP_FLAGS).setdefault(action.dest, flag)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    _option(
        p,
        "--model",
        help="OpenAI name (ViT-B/32, RN50, ...), open_clip name, or model config .json "
        "(default ViT-B/32, or what a transformers checkpoint says)",
    )
    _option(
        p,
        "--pretrained",
        help="openai, an open_clip tag, a checkpoint file, a transformers folder or "
        "Hugging Face model id (openai/clip-vit-base-patch32), or 'random'",
    )
    _option(p, "--cache-dir", help="where OpenAI checkpoints are kept (default $CLIPZS_CACHE or ~/.cache/clip)")
    _option(p, "--device", help="cpu, cuda or cuda:N (default cuda when available)")
    _option(p, "--precision", choices=PRECISIONS, help="default fp32 on CPU, fp16 on CUDA")
    _option(p, "--batch-size", type=_positive_int, help="images per batch (default 32 on CPU, 256 on CUDA)")


def _add_setup_options(p: argparse.ArgumentParser) -> None:
    """The fields of `options.Setup`, shared by eval, select, compare and encode."""
    _option(
        p,
        "--dataset",
        help="a catalogued dataset (see `clipzs datasets list`; default cifar100), or a "
        "format: folder, wds, csv, parquet",
    )
    _option(
        p,
        "--data-root",
        help="where the data is (default: the dataset's usual place, e.g. ~/.cache for "
        "CIFAR); folder: <root>/<class>/; wds: a folder or URL of CLIP_benchmark shards; csv/parquet: the file",
    )
    _option(p, "--split", help="the split to evaluate (default: the dataset's, e.g. test; val for ImageNet)")
    _add_model_options(p)
    _option(
        p,
        "--templates",
        help="dataset (the dataset's own CLIP templates; default), seed, cifar, imagenet80, "
        "a file with one template per line containing {}, or a .json of class-specific sentences",
    )
    _option(p, "--classnames", help=CLASSNAME_HELP)
    _option(p, "--limit", type=_positive_int, help="use only the first N images")
    _option(p, "--workers", type=_count, help="processes decoding images (default 0 on CPU, up to 8 on CUDA)")
    _option(p, "--strict", action="store_true", help="stop at the first unreadable image instead of leaving it out")
    _option(
        p, "--feature-cache", help="feature cache folder (default $CLIPZS_FEATURE_CACHE or ~/.cache/clipzs/features)"
    )
    _option(p, "--no-cache", dest="use_cache", action="store_false", help="neither read nor write the feature cache")
    _option(p, "--compile", action="store_true", help="compile the image tower (pays off only for large image sets)")
    _option(p, "--engine", choices=ENGINES, help="encode here (local, default) or on a Ray cluster (ray)")
    _option(p, "--ray-address", help="the Ray cluster to use (default: start or join a local one)")
    _option(
        p,
        "--ray-collect",
        action="store_true",
        help="gather features on the driver, for clusters without a shared cache folder",
    )
    _option(p, "--quiet", dest="progress", action="store_false", help="no progress bars")


def _add_scoring(p: argparse.ArgumentParser) -> None:
    _option(p, "--resamples", type=_positive_int, help="bootstrap resamples for the intervals (default 1000)")
    p.add_argument("--out", type=Path, help="write the results JSON here")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="zero-shot evaluation of templates and their ensembles",
        description="Encode every image once and every prompt once, then score single templates and ensembles "
        "(optionally every template subset). Several datasets or models (comma lists) make a grid: --out is then "
        "a folder with one results JSON per pair and a combined table.",
    )
    _option(
        p,
        "--preset",
        choices=sorted(PRESETS),
        help="'seed': the original experiment (CIFAR-100 test, "
        "ViT-B/32 openai, 5 seed templates, raw class names, every method, full sweep); any option given "
        "overrides it",
    )
    _add_setup_options(p)
    _option(
        p, "--ensemble", help="'all' (default) or a comma list of vote-seed, vote, prob, logit, embedding, zpe, carprt"
    )
    _option(p, "--sweep", action=argparse.BooleanOptionalAction, help="every non-empty template subset (<= 12)")
    _option(
        p,
        "--balance",
        action="store_true",
        help="also each score method rebalanced to a uniform class marginal, without labels (+balanced)",
    )
    _option(p, "--seed", type=_whole, help="seed of the bootstrap resamples (default 0)")
    _add_scoring(p)
    p.add_argument("--report", type=Path, metavar="DIR", help="write results.json/.csv, summary.md, plots, report.html")


def _add_select(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "select",
        help="choose templates on held-out labelled images, report them on the test set",
        description="Greedy forward selection and best subset (<= 12 templates) on labelled images disjoint from "
        "the evaluation images (the train split where the dataset has one, else a held-out part of the "
        "evaluation split), then the chosen subsets' accuracy on the evaluation images.",
    )
    _add_setup_options(p)
    _option(p, "--ensemble", help="method(s) to select for (comma list; default embedding)")
    _option(p, "--select-split", help="split to choose on (default: train, else part of the evaluation split)")
    _option(p, "--select-size", type=_positive_int, help="images to choose on (default 5000)")
    _option(p, "--seed", type=_whole, help="seed of the draw of those images and of the bootstrap (default 0)")
    _add_scoring(p)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="exact McNemar test between two methods or template subsets",
        description="A and B: METHOD (all templates), METHOD:1+3 (1-based templates) or template:N.",
    )
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    _add_setup_options(p)
    _option(p, "--seed", type=_whole, help="seed of the bootstrap resamples (default 0)")
    _add_scoring(p)


def _add_encode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode",
        help="fill the feature cache for a dataset and model, without scoring",
        description="Encode every image and prompt into the feature cache (here or on a Ray cluster), so that a "
        "later eval, select or compare on any machine that sees the cache encodes nothing.",
    )
    _add_setup_options(p)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="top-k labels with probabilities for image files and folders",
        description="Classify images (files, or folders searched recursively) zero-shot. An unreadable file is "
        "reported and skipped; the exit status is 1 if any was.",
    )
    p.add_argument("paths", nargs="+", metavar="IMAGE_OR_DIR")
    names = p.add_mutually_exclusive_group(required=True)
    names.add_argument("--labels", help='comma-separated class names, e.g. "cat,dog,car"')
    names.add_argument("--classes", help="the class names of a catalogued dataset (see `clipzs datasets list`)")
    p.add_argument("--classnames", default="clip", choices=("raw", "clip"), help="style of --classes names")
    p.add_argument("--templates", default="seed", help="seed, cifar, imagenet80, or a template file")
    p.add_argument("--ensemble", default="embedding", choices=("embedding", "logit", "prob", "vote", "vote-seed"))
    p.add_argument("--topk", type=_positive_int, default=5, help="labels per image (default 5)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    _add_model_options(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipzs", description="Zero-shot CLIP classification and prompt ensembling.")
    parser.add_argument("--version", action="version", version=f"clipzs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_eval(sub)
    _add_select(sub)
    _add_compare(sub)
    _add_encode(sub)
    _add_predict(sub)

    p = sub.add_parser("report", help="write the report (CSV, markdown, plots, HTML) of a results JSON")
    p.add_argument("results", type=Path, help="a results JSON written by `clipzs eval --out`")
    p.add_argument("--out", type=Path, metavar="DIR", help="report folder (default <results>-report beside it)")

    p = sub.add_parser("cache", help="list or clear the feature cache")
    p.add_argument("action", choices=("list", "clear"))
    p.add_argument("--model", help="only entries of this model (as named to `clipzs eval --model`)")
    p.add_argument("--feature-cache", help="cache folder (default $CLIPZS_FEATURE_CACHE or ~/.cache/clipzs/features)")

    p = sub.add_parser("datasets", help="list the catalogued datasets and which are found locally")
    p.add_argument("action", choices=("list",))
    p.add_argument("--data-root", help="look for each dataset here (default: each dataset's usual place)")

    p = sub.add_parser("templates", help="list the built-in template sets or show one")
    p.add_argument("action", choices=("list", "show"))
    p.add_argument("name", nargs="?", help="set name (seed, cifar, imagenet80), a dataset's name, or a template file")

    p = sub.add_parser("models", help="list model names and pretrained weights, and which are cached")
    p.add_argument("action", choices=("list",))
    p.add_argument("--cache-dir", help="OpenAI checkpoint folder (default $CLIPZS_CACHE or ~/.cache/clip)")
    return parser


def library_options(args: argparse.Namespace, *drop: str) -> dict:
    """The options given on the command line, by library parameter name (the preset's first, given ones over)."""
    given = {k: v for k, v in vars(args).items() if k not in {"command", "out", "report", "preset", *drop}}
    return {**PRESETS.get(getattr(args, "preset", None), {}), **given}


def _check_outputs(args: argparse.Namespace, grid: bool = False) -> None:
    """Refuse an unwritable --out or --report before any work."""
    from .storage import check_output_file, check_output_folder

    if args.out is not None:
        (check_output_folder if grid else check_output_file)(args.out, "out")
    if getattr(args, "report", None) is not None:
        check_output_folder(args.report, "report")


def _grid(options: dict) -> tuple[list[str], list[str]] | None:
    """The datasets and models of a grid run (comma lists), or None for a single run."""
    datasets = str(options.get("dataset", "")).split(",")
    models = str(options.get("model", "")).split(",")
    return (datasets, models) if len(datasets) > 1 or len(models) > 1 else None


def run_eval(args: argparse.Namespace) -> int:
    options = library_options(args)
    grid = _grid(options)
    _check_outputs(args, grid=grid is not None)
    if grid is not None:
        return _run_grid(args, options, *grid)
    from . import pipeline
    from .report import format_summary
    from .results import write_result

    result = pipeline.evaluate(**options)
    print(format_summary(result))
    if args.out:
        write_result(result, args.out)
    if args.report:
        _write_report(result, args.report)
    return 0


def _file_part(name: str) -> str:
    """`name` as part of a file name: runs of other characters than letters, digits, `_`, `.` and `-` as `_`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def _file_names(models: list[str]) -> dict[str, str]:
    """A file-name part for each model: a config file's stem, or the name itself (`ViT-B/32` as `ViT-B_32`);
    the whole path where two config files share a stem."""
    short = {m: Path(m).stem if m.endswith(".json") else m for m in models}
    taken = list(short.values())
    named = {m: m.removesuffix(".json") if taken.count(short[m]) > 1 else short[m] for m in models}
    return {m: _file_part(name) for m, name in named.items()}


def _run_grid(args: argparse.Namespace, options: dict, datasets: list[str], models: list[str]) -> int:
    if args.out is None:
        raise ClipzsError("several datasets or models need --out DIR for their results")
    if args.report is not None:
        raise ClipzsError("--report makes the report of one run; a grid's table and heat map are written to --out")
    from . import pipeline
    from .catalogue import get
    from .report import format_summary, write_grid
    from .results import write_result
    from .sources import GENERIC

    for dataset in datasets:  # a mistyped name fails now, not after the pairs before it
        if dataset not in GENERIC:
            get(dataset)
    names = _file_names(models)
    results = []
    for dataset in datasets:
        for model in models:
            result = pipeline.evaluate(**{**options, "dataset": dataset, "model": model})
            print(format_summary(result), end="\n\n")
            write_result(result, args.out / f"{_file_part(dataset)}--{names[model]}.json")
            results.append(result)
    written = write_grid(results, args.out)
    print(f"grid: {written['markdown']}")
    return 0


def _write_report(result, out_dir: Path) -> None:
    from .report import write_report
    from .sources import open_source

    try:
        images = open_source(result.run.dataset, result.run.data_root, result.run.split, download=False)
    except ClipzsError as e:
        print(f"clipzs: note: report without example images ({e})", file=sys.stderr)
        images = None
    written = write_report(result, out_dir, images)
    print(f"report: {written['html']}")


def run_select(args: argparse.Namespace) -> int:
    return _run_and_print(args, "select", "format_selection")


def run_compare(args: argparse.Namespace) -> int:
    return _run_and_print(args, "compare", "format_comparison")


def _run_and_print(args: argparse.Namespace, command: str, formatter: str) -> int:
    """A library command's result printed, then written to --out."""
    _check_outputs(args)
    from . import pipeline, report
    from .results import write_result

    result = getattr(pipeline, command)(**library_options(args))
    print(getattr(report, formatter)(result))
    if args.out:
        write_result(result, args.out)
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from . import pipeline

    run = pipeline.encode_only(**library_options(args))
    prompts = sum(len(row) for row in run.prompts.prompts)
    print(
        f"{run.source.name}/{run.source.split}: encoded {run.encoded['images']} of {len(run.source)} images and "
        f"{run.encoded['prompts']} of {prompts} prompts now (the rest were in the feature cache); "
        f"{len(run.skipped)} unreadable"
    )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from .classifier import ZeroShotClassifier, predict_files

    classifier = ZeroShotClassifier(
        getattr(args, "model", "ViT-B/32"),
        classnames=args.classes or args.labels.split(","),
        templates=args.templates,
        ensemble=args.ensemble,
        classname_style=args.classnames,
        **{k: v for k, v in vars(args).items() if k in ("pretrained", "device", "precision", "cache_dir")},
    )
    results = predict_files(args.paths, classifier, topk=args.topk, batch_size=getattr(args, "batch_size", None))
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


def run_report(args: argparse.Namespace) -> int:
    from .report import require_eval
    from .results import read_result
    from .storage import check_output_folder

    out = args.out or args.results.with_name(f"{args.results.stem}-report")
    result = require_eval(read_result(args.results), str(args.results))
    check_output_folder(out, "out")
    _write_report(result, out)
    return 0


def run_cache(args: argparse.Namespace) -> int:
    from .cache import FeatureCache, describe_size

    cache = FeatureCache(args.feature_cache)
    if cache.root.exists() and not cache.root.is_dir():
        raise ClipzsError(f"the feature cache {cache.root} is a file, not a folder")
    if args.action == "clear":
        try:
            freed = cache.clear(model=cached_model_name(args.model))
        except OSError as e:
            raise ClipzsError(f"cannot clear the feature cache {cache.root}: {e.strerror or e}") from e
        print(f"removed {describe_size(freed)} from {cache.root}")
        return 0
    wanted = cached_model_name(args.model)
    entries = [e for e in cache.entries() if wanted in (None, e.key.get("model"))]
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


def _found(where: Path) -> str:
    """Whether a dataset's data is at `where`: `yes`, `empty` (a folder with nothing in it yet), `unreadable`
    (a folder that cannot be listed), or nothing."""
    try:
        if where.is_dir():
            return "yes" if any(where.iterdir()) else "empty"
        return "yes" if where.exists() else ""
    except OSError:
        return "unreadable"


def run_datasets(args: argparse.Namespace) -> int:
    from . import catalogue

    print(f"{'dataset':<16} {'classes':>7} {'templates':>9}  {'splits':<23} {'found':<10}  expected at")
    for name in catalogue.names():
        info = catalogue.get(name)
        root = Path(args.data_root or info.default_root).expanduser()
        where = root / info.folder if info.folder else root
        print(
            f"{name:<16} {len(info.classes):>7} {len(info.templates):>9}  {','.join(info.splits):<23} "
            f"{_found(where):<10}  {where}"
        )
    print("\nformats: folder (<root>/<class>/<image>), wds (CLIP_benchmark webdataset shards), csv, parquet")
    return 0


def run_templates(args: argparse.Namespace) -> int:
    from .prompts import BUILTIN_TEMPLATES, load_templates

    if args.action == "list":
        for name in BUILTIN_TEMPLATES:
            templates = load_templates(name)
            print(f"{name:<11} {len(templates):>3} templates, e.g. {templates[0]!r}")
        print("dataset      the dataset's own CLIP templates (see `clipzs datasets list`)")
        return 0
    if not args.name:
        raise ClipzsError("templates show needs a set name, a dataset's name or a template file")
    for i, template in enumerate(load_templates(args.name, dataset=args.name), 1):
        print(f"{i:>3}  {template}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    from .models import available_models

    rows = available_models(args.cache_dir)
    print(f"{'model':<28} {'pretrained':<36} {'source':<10} cached")
    for row in rows:
        print(f"{row['model']:<28} {row['pretrained']:<36} {row['source']:<10} {'yes' if row['cached'] else ''}")
    return 0


COMMANDS = {
    "eval": run_eval,
    "select": run_select,
    "compare": run_compare,
    "encode": run_encode,
    "predict": run_predict,
    "report": run_report,
    "cache": run_cache,
    "datasets": run_datasets,
    "templates": run_templates,
    "models": run_models,
}


def flag_wording(message: object, parameter: str | None) -> str:
    """A library message on one line, with the parameter it names worded as its flag (`workers` -> `--workers`,
    `use_cache=False` -> `--no-cache`)."""
    text = " ".join(str(message).split())
    if not parameter:
        return text
    if f"{parameter}=False" in text and parameter in FALSE_FLAGS:
        return text.replace(f"{parameter}=False", FALSE_FLAGS[parameter], 1)
    flag = SETUP_FLAGS.get(parameter) or "--" + parameter.replace("_", "-")
    return re.sub(rf"(?<![\w-]){re.escape(parameter)}(?![\w-])", flag, text, count=1)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Every warning as one line, without the source line Python would print."""
    kind = "warning" if issubclass(category, ClipzsWarning | UserWarning) else category.__name__
    print(f"clipzs: {kind}: {flag_wording(message, getattr(message, 'parameter', None))}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return COMMANDS[args.command](args)
    except ClipzsError as e:
        print(f"clipzs: error: {flag_wording(e, e.parameter)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clipzs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


GC_THRESHOLD = 100_000  # new container objects between the cycle collector's youngest-generation passes


def console() -> int:
    """The `clipzs` command: `main` with the cycle collector run less often, then an exit without the interpreter's
    last garbage collections, which torch's many objects stretch to about 0.4 s here (everything is still released:
    the process ends). Importing torch and open_clip leaves about 400,000 objects for the collector to track and
    almost no garbage. At Python's default threshold (700) it runs about 1,000 times during those imports, 6 of them
    passes over every object: about 0.5 s of a 3 s start here. At 100,000 it runs 15 times."""
    gc.set_threshold(GC_THRESHOLD)
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(console())
