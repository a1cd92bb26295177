"""The `clipzs` command: argument parsing and wiring only; the work is done by package functions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .datasets import CLASSNAME_STYLES, DATASETS
from .errors import ClipzsError
from .models import PRECISIONS
from .pipeline import evaluate
from .report import format_summary

EVAL_DEFAULTS = {
    "dataset": "cifar100",
    "data_root": None,
    "split": "test",
    "model": "ViT-B/32",
    "pretrained": None,
    "templates": "seed",
    "classnames": "clip",
    "ensemble": "all",
    "sweep": False,
}
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
    p.add_argument("--dataset", choices=DATASETS, help=f"default {EVAL_DEFAULTS['dataset']}")
    p.add_argument(
        "--data-root", help="CIFAR: folder holding cifar-*-python (default ~/.cache); folder: <root>/<class>/"
    )
    p.add_argument("--split", help="train or test (default test)")
    p.add_argument("--model", help="OpenAI name (ViT-B/32, RN50, ...), open_clip name, or model config .json")
    p.add_argument("--pretrained", help="openai, an open_clip tag, a checkpoint file, or 'random'")
    p.add_argument("--cache-dir", help="where OpenAI checkpoints are kept (default $CLIPZS_CACHE or ~/.cache/clip)")
    p.add_argument("--templates", help="seed, cifar, imagenet80, or a file with one template per line")
    p.add_argument("--classnames", choices=CLASSNAME_STYLES, help="raw (as stored) or clip (underscores as spaces)")
    p.add_argument("--ensemble", help="'all' or a comma list of vote-seed,vote,prob,logit,embedding")
    p.add_argument("--sweep", action="store_true", default=None, help="every non-empty template subset (<= 12)")
    p.add_argument("--batch-size", type=_positive_int, help="images per batch (default 64 on CPU, 256 on CUDA)")
    p.add_argument(
        "--workers", type=int, help="DataLoader processes for image decoding (default 0 on CPU, up to 8 on CUDA)"
    )
    p.add_argument(
        "--feature-cache", help="feature cache folder (default $CLIPZS_FEATURE_CACHE or ~/.cache/clipzs/features)"
    )
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    p.add_argument("--limit", type=_positive_int, help="use only the first N images")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default cuda when available)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), help="default fp32 on CPU, fp16 on CUDA")
    p.add_argument("--out", type=Path, help="write the results JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_eval(args: argparse.Namespace) -> int:
    options = {**EVAL_DEFAULTS, **PRESETS.get(args.preset, {})}
    options.update({k: v for k, v in vars(args).items() if k in EVAL_DEFAULTS and v is not None})
    results = evaluate(
        dataset=options["dataset"],
        data_root=options["data_root"],
        split=options["split"],
        model=options["model"],
        pretrained=options["pretrained"],
        cache_dir=args.cache_dir,
        templates=options["templates"],
        classname_style=options["classnames"],
        ensemble=options["ensemble"],
        sweep=options["sweep"],
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        workers=args.workers,
        limit=args.limit,
        feature_cache=args.feature_cache,
        use_cache=not args.no_cache,
        progress=not args.quiet,
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(format_summary(results))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipzs", description="Zero-shot CLIP classification and prompt ensembling.")
    parser.add_argument("--version", action="version", version=f"clipzs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_eval(sub)
    return parser


COMMANDS = {"eval": run_eval}


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


if __name__ == "__main__":
    sys.exit(main())
