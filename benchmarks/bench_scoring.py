"""Scoring at scale, each job a fresh process: the sweep of 12 templates, the same numbers as the code before the
rewrite (c2b1089), ImageNet-sized scoring through the CLI, and the prompt-iteration loop on a warm feature cache.

Parts (`--parts`, default all):

- `sweep`: `pipeline.summarize` over every subset of 12 templates x 7 methods (28,665 rows with paired bootstrap
  intervals) on synthetic features of 10,000 images and 100 classes (D = 512, logit scale 100).
- `compare`: the old `pipeline.summarize` (commit c2b1089, run from `git archive` with its `src` first on
  PYTHONPATH) and the new one on identical features, every row compared; rows that differ are explained image by
  image (is the flip a float32 near-tie?). Also the old code's time and peak RSS on the same sweep.
- `imagenet`: 50,000 tiny PNGs in ImageNet's val layout (1,000 wnid folders), a tiny CLIP whose embed_dim is 512,
  the feature cache filled once (measured apart as the encoding cost), then `clipzs eval --ensemble all`,
  `clipzs select --ensemble embedding --select-split val` and `clipzs report`, each timed on the warm cache.
- `loop`: `clipzs eval --preset seed` on a warm cache (random ViT-B/32, CIFAR-100-format test set), a sixth template
  at bf16 (100 new prompts), `clipzs --version`, each repeated; the same with the old code.

    .venv/bin/python benchmarks/bench_scoring.py --small            # every part at toy sizes, a few minutes
    .venv/bin/python benchmarks/bench_scoring.py                    # the issue's sizes
    .venv/bin/python benchmarks/bench_scoring.py --parts sweep compare

The driver imports only the standard library (a child's peak RSS starts at its parent's, see bench_jobs.py); the
jobs are this same file run as `bench_scoring.py --job KIND SPEC.json`, importing torch and clipzs only then.
Prints markdown tables (for docs/benchmarks.md) and writes everything to JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OLD_COMMIT = "c2b1089"
PARTS = ("sweep", "compare", "imagenet", "loop")
METRICS = ("acc1", "acc5", "mean_per_class_recall", "acc1_ci", "acc5_ci")
SEED_TEMPLATES = (
    "A photo of a {}",
    "This is a photo of {}",
    "Wow look at {}!",
    "What is {}?",
    "How do you think about {}?",
)
SIXTH_TEMPLATE = "a blurry photo of a {}."  # the new template; its 100 prompts are new to the cache in every run
TINY_CLIP_512 = {
    "embed_dim": 512,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
GB = 1e9 / 2**20  # MiB in a (decimal) GB, as the issues' targets are written

# ---------------------------------------------------------------- the driver: standard library only


@dataclass
class Job:
    """One measured (or setup) process."""

    name: str
    part: str
    label: str
    argv: list[str]
    result: Path | None = None  # a JSON the process writes
    env: dict[str, str] = field(default_factory=dict)
    repeats: int = 1
    setup: bool = False  # fills caches or writes inputs: reported apart
    fresh: tuple[Path, ...] = ()  # removed before the first run
    before_each: list[Path] = field(default_factory=list)  # removed before every run
    restore: tuple[tuple[Path, Path], ...] = ()  # (snapshot, folder): the folder reset to the snapshot before every run
    snapshot_after: tuple[tuple[Path, Path], ...] = ()  # (folder, snapshot): kept once the (setup) job succeeded
    target_s: float | None = None
    target_mib: float | None = None
    memory_limit_gb: float | None = None  # set for every job from --memory-limit-gb


def job_argv(kind: str, spec: dict, jobs_dir: Path, name: str) -> tuple[list[str], Path]:
    """`python bench_scoring.py --job KIND SPEC` with the spec written next to its result."""
    result = jobs_dir / f"{name}.result.json"
    spec_path = jobs_dir / f"{name}.spec.json"
    spec_path.write_text(json.dumps({**spec, "out": str(result)}, indent=2) + "\n")
    return [sys.executable, str(Path(__file__).resolve()), "--job", kind, str(spec_path)], result


def clipzs_argv(old_src: Path | None, *args: str) -> list[str]:
    """The `clipzs` console command of the shared virtualenv, or the old package's CLI module."""
    if old_src is None:
        return [str(Path(sys.executable).parent / "clipzs"), *args]
    return [sys.executable, "-m", "clipzs.cli", *args]


def old_env(old_src: Path) -> dict[str, str]:
    """Put the old package's `src` first on the path (the shared venv's editable install comes after it)."""
    return {"PYTHONPATH": os.pathsep.join([str(old_src), *filter(None, [os.environ.get("PYTHONPATH")])])}


def ensure_old_source(workdir: Path) -> Path:
    """`git archive c2b1089 src/clipzs` extracted under the work dir (read-only use of the repository)."""
    root = workdir / "old"
    if not (root / "src" / "clipzs" / "pipeline.py").is_file():
        root.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", OLD_COMMIT, "src/clipzs"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root / "src"


def limit_memory(gb: float | None):
    """A `preexec_fn` capping the child's address space, so a job that outgrows it fails with MemoryError instead
    of pushing a shared machine into the OOM killer (address space, not RSS: torch maps more than it touches)."""
    if not gb:
        return None

    def apply() -> None:
        import resource

        limit = int(gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def measure_once(job: Job, env: dict[str, str], log: Path) -> dict:
    """Run the job's process once: wall time, its own peak RSS and CPU times (`wait4`), exit status."""
    for path in job.before_each:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    for snapshot, folder in job.restore:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(snapshot, folder)
    load_before = os.getloadavg()[0]
    with open(log, "a") as out:
        out.write(f"$ {shlex.join(job.argv)}\n")
        out.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(
            job.argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, **job.env},
            cwd=REPO,
            preexec_fn=limit_memory(job.memory_limit_gb),
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    run = {
        "returncode": os.waitstatus_to_exitcode(status),
        "wall_s": round(wall, 3),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "user_s": round(usage.ru_utime, 3),
        "sys_s": round(usage.ru_stime, 3),
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    if run["returncode"] == 0 and job.result is not None and job.result.is_file():
        run["result"] = json.loads(job.result.read_text())
    return run


def setup_identity(job: Job) -> str:
    """What a setup job did: its command and the spec file it read (sizes, paths)."""
    specs = [Path(a).read_text() for a in job.argv if a.endswith(".spec.json") and Path(a).is_file()]
    return "\n".join([shlex.join(job.argv), *specs])


def profile_job(job: Job, env: dict[str, str], logs: Path, top: int = 30) -> dict:
    """The job once more under cProfile (not a measurement: profiling slows it): where its time goes, by
    internal and by cumulative time, the top `top` functions each."""
    import io
    import pstats

    prof = logs / f"{job.name}.prof"
    script = job.argv[1:] if job.argv[0] == sys.executable else job.argv
    profiled = Job(**{**job.__dict__, "argv": [sys.executable, "-m", "cProfile", "-o", str(prof), *script]})
    print(f"profiling {job.name} ...", file=sys.stderr, flush=True)
    run = measure_once(profiled, env, logs / f"{job.name}.profile.log")
    listing = {}
    if run["returncode"] == 0:
        for order in ("tottime", "cumtime"):
            text = io.StringIO()
            pstats.Stats(str(prof), stream=text).sort_stats(order).print_stats(top)
            listing[order] = text.getvalue()
        (logs / f"{job.name}.profile.txt").write_text("\n".join(listing.values()))
    return {"wall_s": run["wall_s"], "returncode": run["returncode"], "listing": str(logs / f"{job.name}.profile.txt")}


def run_job(job: Job, env: dict[str, str], logs: Path) -> dict:
    """Every repetition of a job, with min / median wall time and the largest peak RSS."""
    for path in job.fresh:
        shutil.rmtree(path, ignore_errors=True)
    log = logs / f"{job.name}.log"
    log.unlink(missing_ok=True)
    print(f"running {job.name} ({job.repeats}x) ...", file=sys.stderr, flush=True)
    runs = []
    for _ in range(job.repeats):
        runs.append(measure_once(job, env, log))
        if runs[-1]["returncode"] != 0:
            break
    ok = [r for r in runs if r["returncode"] == 0]
    walls = [r["wall_s"] for r in ok]
    return {
        "name": job.name,
        "part": job.part,
        "label": job.label,
        "command": shlex.join(job.argv),
        "env": job.env,
        "setup": job.setup,
        "log": str(log),
        "ok": len(ok) == job.repeats,
        "runs": runs,
        "wall_min_s": min(walls) if walls else None,
        "wall_median_s": statistics.median(walls) if walls else None,
        "peak_rss_mib": max((r["peak_rss_mib"] for r in ok), default=None),
        "target_s": job.target_s,
        "target_mib": job.target_mib,
    }


# ---------------------------------------------------------------- planning


def plan_sweep(args, jobs_dir: Path, features: Path) -> list[Job]:
    """The sweep as `evaluate` runs it (default block), and with each `--sweep-block` passed to `summarize`."""
    t, n = args.sweep_templates, args.sweep_images
    jobs = []
    for block in [None, *args.sweep_block]:
        name = "sweep-new" if block is None else f"sweep-new-block{block}"
        spec = {"features": str(features), "templates": t, "images": n, "code": "new", "rows": None, "block": block}
        argv, result = job_argv("summarize", spec, jobs_dir, name)
        how = "default block" if block is None else f"block={block}"
        label = f"summarize, {t} templates, {n:,} images, {args.classes} classes ({how})"
        jobs.append(Job(name, "sweep", label, argv, result, target_s=60.0, target_mib=2 * GB))
    return jobs


def plan_compare(args, jobs_dir: Path, features: Path, old_src: Path) -> list[Job]:
    jobs = []
    for t, n in args.compare:
        for code in ("old", "new"):
            name = f"compare-{t}x{n}-{code}"
            rows = jobs_dir / f"{name}.rows.json"
            spec = {"features": str(features), "templates": t, "images": n, "code": code, "rows": str(rows)}
            argv, result = job_argv("summarize", spec, jobs_dir, name)
            env = old_env(old_src) if code == "old" else {}
            jobs.append(Job(name, "compare", f"summarize {t} templates x {n:,} images ({code})", argv, result, env))
    return jobs


def plan_imagenet(args, jobs_dir: Path, work: Path) -> list[Job]:
    n = 1000 * args.imagenet_per_class
    root, cache = work / f"imagenet-data-{n}", work / f"imagenet-features-{n}"
    config, ckpt = work / "clip-tiny-512.json", work / "clip-tiny-512.pt"
    spec = {"root": str(root), "per_class": args.imagenet_per_class, "config": str(config), "checkpoint": str(ckpt)}
    argv, result = job_argv("imagenet-setup", spec, jobs_dir, "imagenet-setup")
    common = [
        "--dataset",
        "imagenet1k",
        "--data-root",
        str(root),
        "--model",
        str(config),
        "--pretrained",
        str(ckpt),
        "--templates",
        "imagenet80",
        "--feature-cache",
        str(cache),
        "--quiet",
    ]
    r_json, s_json, report = work / "imagenet-eval.json", work / "imagenet-select.json", work / "imagenet-report"
    select_size = max(1, n // 10)
    return [
        Job("imagenet-setup", "imagenet", f"write {n:,} PNGs, tiny CLIP (embed_dim 512)", argv, result, setup=True),
        Job(
            "imagenet-encode",
            "imagenet",
            f"clipzs encode: fill the feature cache ({n:,} images, 80,000 prompts)",
            clipzs_argv(None, "encode", *common),
            setup=True,
            fresh=(cache,),
        ),
        Job(
            "imagenet-eval",
            "imagenet",
            "clipzs eval --ensemble all (no sweep), warm cache",
            clipzs_argv(None, "eval", *common, "--ensemble", "all", "--out", str(r_json)),
            r_json,
            repeats=args.repeats_heavy,
            target_s=120.0,
            target_mib=4 * GB,
        ),
        Job(
            "imagenet-select",
            "imagenet",
            f"clipzs select --ensemble embedding --select-split val --select-size {select_size:,}",
            clipzs_argv(
                None,
                "select",
                *common,
                "--ensemble",
                "embedding",
                "--select-split",
                "val",
                "--select-size",
                str(select_size),
                "--out",
                str(s_json),
            ),
            s_json,
            repeats=args.repeats_heavy,
            target_s=120.0,
            target_mib=4 * GB,
        ),
        Job(
            "imagenet-report",
            "imagenet",
            "clipzs report r.json",
            clipzs_argv(None, "report", str(r_json), "--out", str(report)),
            repeats=args.repeats_heavy,
            before_each=[report],
            target_s=120.0,
            target_mib=4 * GB,
        ),
    ]


def plan_loop(args, jobs_dir: Path, work: Path, old_src: Path | None) -> list[Job]:
    root, ckpt = work / f"cifar-data-{args.loop_images}", work / "ViT-B-32-random-fp16.pt"
    new_cache, old_cache = work / f"loop-features-{args.loop_images}", work / f"loop-features-old-{args.loop_images}"
    spec = {"root": str(root), "images": args.loop_images, "checkpoint": str(ckpt)}
    argv, result = job_argv("loop-setup", spec, jobs_dir, "loop-setup")
    six_file = work / "six-templates.txt"
    six_file.write_text("\n".join([*SEED_TEMPLATES, SIXTH_TEMPLATE]) + "\n")
    snapshot, old_snapshot = work / f"loop-text-{args.loop_images}", work / f"loop-text-old-{args.loop_images}"
    seed = ["--preset", "seed", "--pretrained", str(ckpt), "--data-root", str(root), "--quiet"]
    six = ["--templates", str(six_file), "--precision", "bf16"]
    jobs = [
        Job(
            "loop-setup",
            "loop",
            f"write {args.loop_images:,} CIFAR-100-format images, random ViT-B/32",
            argv,
            result,
            setup=True,
        ),
        Job(
            "loop-fill-fp32",
            "loop",
            "clipzs eval --preset seed, cold cache (fills it, fp32)",
            clipzs_argv(None, "eval", *seed, "--feature-cache", str(new_cache), "--out", str(work / "fill-fp32.json")),
            work / "fill-fp32.json",
            setup=True,
            fresh=(new_cache,),
        ),
        Job(
            "loop-fill-bf16",
            "loop",
            "clipzs encode --precision bf16 (fills the bf16 cache: images, seed prompts)",
            clipzs_argv(
                None,
                "encode",
                "--dataset",
                "cifar100",
                "--data-root",
                str(root),
                "--model",
                "ViT-B/32",
                "--pretrained",
                str(ckpt),
                "--templates",
                "seed",
                "--classnames",
                "raw",
                "--precision",
                "bf16",
                "--feature-cache",
                str(new_cache),
                "--quiet",
            ),
            setup=True,
            snapshot_after=((new_cache / "text", snapshot),),
        ),
        Job(
            "loop-warm",
            "loop",
            "clipzs eval --preset seed, warm cache (fp32)",
            clipzs_argv(None, "eval", *seed, "--feature-cache", str(new_cache), "--out", str(work / "warm.json")),
            work / "warm.json",
            repeats=args.repeats,
            target_s=3.0,
        ),
        Job(
            "loop-sixth",
            "loop",
            "a sixth template, --precision bf16 (100 new prompts, images cached)",
            clipzs_argv(
                None, "eval", *seed, *six, "--feature-cache", str(new_cache), "--out", str(work / "sixth.json")
            ),
            work / "sixth.json",
            repeats=args.repeats,
            target_s=5.0,
            restore=((snapshot, new_cache / "text"),),
        ),
        Job(
            "loop-version",
            "loop",
            "clipzs --version",
            clipzs_argv(None, "--version"),
            repeats=args.repeats,
            target_s=0.3,
        ),
    ]
    if old_src is None:
        return jobs
    env = old_env(old_src)
    spec = {
        "root": str(root),
        "checkpoint": str(ckpt),
        "new_cache": str(new_cache),
        "old_cache": str(old_cache),
        "images": args.loop_images,
    }
    argv, result = job_argv("old-cache", spec, jobs_dir, "loop-old-cache")
    jobs += [
        Job(
            "loop-old-cache",
            "loop",
            f"the old code's cache ({OLD_COMMIT}): image features copied from the new "
            "cache, prompts encoded by the old code",
            argv,
            result,
            env,
            setup=True,
            fresh=(old_cache,),
            snapshot_after=((old_cache / "text", old_snapshot),),
        ),
        Job(
            "loop-old-warm",
            "loop",
            f"{OLD_COMMIT}: eval --preset seed, warm cache (fp32)",
            clipzs_argv(
                old_src, "eval", *seed, "--feature-cache", str(old_cache), "--out", str(work / "old-warm.json")
            ),
            work / "old-warm.json",
            env,
            repeats=args.repeats,
        ),
        Job(
            "loop-old-sixth",
            "loop",
            f"{OLD_COMMIT}: a sixth template, --precision bf16",
            clipzs_argv(
                old_src, "eval", *seed, *six, "--feature-cache", str(old_cache), "--out", str(work / "old-sixth.json")
            ),
            work / "old-sixth.json",
            env,
            repeats=args.repeats,
            restore=((old_snapshot, old_cache / "text"),),
        ),
        Job(
            "loop-old-version",
            "loop",
            f"{OLD_COMMIT}: clipzs --version",
            clipzs_argv(old_src, "--version"),
            env=env,
            repeats=args.repeats,
        ),
    ]
    return jobs


# ---------------------------------------------------------------- comparing rows (standard library)


def compare_rows(old: dict, new: dict, n: int) -> dict:
    """Every row's metrics, old against new: how many rows are identical, and each difference."""
    assert len(old["rows"]) == len(new["rows"]), (len(old["rows"]), len(new["rows"]))
    differing = []
    for o, w in zip(old["rows"], new["rows"], strict=True):
        assert (o["method"], o["templates"]) == (w["method"], w["templates"]), (o, w)
        fields = {k: (o.get(k), w.get(k)) for k in METRICS if o.get(k) != w.get(k)}
        if fields:
            differing.append({"method": o["method"], "templates": o["templates"], "fields": fields})
    best_same = {k: old["best"][k] == new["best"][k] for k in ("method", "templates", "acc1")}
    return {
        "rows": len(new["rows"]),
        "identical": len(new["rows"]) - len(differing),
        "differing": differing,
        "differing_by_field": {k: sum(k in d["fields"] for d in differing) for k in METRICS},
        "best": {
            "old": old["best"],
            "new": new["best"],
            "same": best_same,
            "pred_differs": old.get("best_pred_sha256") != new.get("best_pred_sha256"),
        },
        "images": n,
    }


# ---------------------------------------------------------------- reporting (markdown)


def fmt(value, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def md_table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    return "\n".join("| " + " | ".join(r) + " |" for r in [headers, sep, *rows])


def met(value: float | None, target: float | None) -> str:
    if target is None or value is None:
        return ""
    return "yes" if value <= target else "**no**"


def sweep_table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        res = (r["runs"][0].get("result") or {}) if r["runs"] else {}
        body.append(
            [
                r["label"],
                fmt(res.get("rows"), ",d"),
                fmt(res.get("summarize_s"), ".1f"),
                fmt(res.get("summarize_cpu_s"), ".1f"),
                met(res.get("summarize_s"), r["target_s"]),
                fmt(res.get("rss_before_mib"), ".0f"),
                fmt(r["peak_rss_mib"], ".0f"),
                met(r["peak_rss_mib"], r["target_mib"]),
                fmt(r["wall_min_s"], ".1f"),
            ]
        )
    headers = ["job", "rows", "ensemble step s", "its CPU s", "≤ 60 s", "RSS before it MiB", "peak RSS MiB", "≤ 2 GB"]
    return md_table([*headers, "whole process s"], body)


def compare_tables(rows: list[dict], comparisons: list[dict]) -> str:
    by_name = {r["name"]: r for r in rows}
    body, details = [], []
    for c in comparisons:
        t, n = c["templates"], c["images"]
        old, new = by_name.get(f"compare-{t}x{n}-old"), by_name.get(f"compare-{t}x{n}-new")
        res = [((x["runs"][0].get("result") or {}) if x and x["runs"] else {}) for x in (old, new)]
        cmp = c.get("comparison")
        body.append(
            [
                f"{t} templates × {n:,} images",
                fmt(cmp and cmp["rows"], ",d"),
                fmt(cmp and cmp["identical"], ",d"),
                ", ".join(f"{k} {v}" for k, v in cmp["differing_by_field"].items() if v) if cmp else "–",
                "yes" if cmp and all(cmp["best"]["same"].values()) and not cmp["best"]["pred_differs"] else "no",
                f"{fmt(res[0].get('summarize_s'))} ({fmt(res[0].get('summarize_cpu_s'))})",
                f"{fmt(res[1].get('summarize_s'))} ({fmt(res[1].get('summarize_cpu_s'))})",
                fmt(old and old["peak_rss_mib"], ".0f"),
                fmt(new and new["peak_rss_mib"], ".0f"),
            ]
        )
        for d in (c.get("analysis") or {}).get("rows", []):
            details.append(
                [
                    f"{t}×{n:,}",
                    f"{d['method'] or 'single'}{{{','.join(str(x + 1) for x in d['templates'])}}}",
                    "; ".join(f"{k}: {_short(o)} → {_short(w)}" for k, (o, w) in d["fields"].items()),
                    fmt(d["hit1_flips"], "d"),
                    fmt(d["hit5_flips"], "d"),
                    d["why"],
                ]
            )
    headers = [
        "sweep",
        "rows",
        "identical",
        "differing (by metric)",
        "same best (+ preds)",
        "old s (CPU s)",
        "new s (CPU s)",
        "old peak RSS MiB",
        "new peak RSS MiB",
    ]
    out = md_table(headers, body)
    if details:
        out += "\n\n" + md_table(["sweep", "row", "old → new", "top-1 flips", "top-5 flips", "why"], details, "lllrrl")
    return out


def _short(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:.6g}" for v in value) + "]"
    return "–" if value is None else f"{value:.6g}"


def cli_table(rows: list[dict], part: str) -> str:
    """One line per job: wall time (min, median over runs) of the whole process, what its results JSON reports,
    CPU time, peak RSS, what it encoded, and the target (whole-process median wall time and peak RSS)."""
    body = []
    for r in rows:
        if r["part"] != part:
            continue
        ok = [run for run in r["runs"] if run["returncode"] == 0]
        seconds = [(run.get("result") or {}).get("seconds", {}) for run in ok]
        reported = [s["total"] for s in seconds if s.get("total") is not None]
        scoring = [s.get("ensembles", s.get("select")) for s in seconds]
        scoring = [s for s in scoring if s is not None]
        cpu = [run["user_s"] + run["sys_s"] for run in ok]
        encoded = (ok[0].get("result") or {}).get("encoded") if ok else None
        targets = []
        if r["target_s"]:
            targets.append(f"≤ {r['target_s']:g} s: {met(r['wall_median_s'], r['target_s'])}")
        if r["target_mib"]:
            targets.append(f"≤ {r['target_mib'] / GB:g} GB: {met(r['peak_rss_mib'], r['target_mib'])}")
        failed = "" if r["ok"] else f" FAILED (see {Path(r['log']).name})"
        body.append(
            [
                r["label"] + failed + (" (setup)" if r["setup"] else ""),
                str(len(r["runs"])),
                fmt(r["wall_min_s"], ".2f"),
                fmt(r["wall_median_s"], ".2f"),
                fmt(min(cpu) if cpu else None, ".2f"),
                fmt(min(reported) if reported else None, ".2f"),
                fmt(min(scoring) if scoring else None, ".2f"),
                fmt(r["peak_rss_mib"], ".0f"),
                f"{encoded['images']:,} / {encoded['prompts']:,}" if isinstance(encoded, dict) else "–",
                ", ".join(targets),
            ]
        )
    headers = ["job", "runs", "wall min s", "wall median s", "CPU s (min)", "JSON seconds.total", "scoring s"]
    return md_table([*headers, "peak RSS MiB", "encoded images / prompts", "target (median, peak) met"], body)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to run (default: all)")
    p.add_argument("--small", action="store_true", help="toy sizes for a quick check of every part")
    p.add_argument("--sweep-images", type=int, help="images of the sweep (10000)")
    p.add_argument("--sweep-templates", type=int, help="templates of the sweep (12)")
    p.add_argument("--classes", type=int, default=100, help="classes of the synthetic features (100)")
    p.add_argument("--compare", nargs="+", metavar="TxN", help="old-vs-new sweeps, templates x images (8x10000 12x300)")
    p.add_argument("--imagenet-per-class", type=int, help="images per class of the ImageNet layout (50)")
    p.add_argument("--loop-images", type=int, help="CIFAR-100-format test images of the loop (10000)")
    p.add_argument("--repeats", type=int, help="runs of each warm loop job (5)")
    p.add_argument("--repeats-heavy", type=int, default=1, help="runs of each ImageNet job (1)")
    p.add_argument("--no-old", action="store_true", help="leave out the old code's loop jobs")
    p.add_argument(
        "--reuse-setup",
        action="store_true",
        help="skip setup jobs (inputs, cache fills) that finished in an earlier run with the same work dir and sizes",
    )
    p.add_argument("--profile", nargs="*", default=[], metavar="JOB", help="rerun these jobs under cProfile after")
    p.add_argument("--sweep-block", nargs="*", type=int, default=[], help="also the sweep with summarize(block=B)")
    p.add_argument(
        "--memory-limit-gb",
        type=float,
        default=16.0,
        help="address-space cap of every job, GiB (16; 0: none): a job past it fails instead of swamping the machine",
    )
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every job (default: unset, torch's choice)")
    p.add_argument("--workdir", type=Path, default=REPO / "bench-out" / "scoring", help="inputs, caches, logs")
    p.add_argument("--out", type=Path, help="results JSON (default WORKDIR/bench-scoring.json)")
    args = p.parse_args(argv)
    small = args.small
    args.sweep_images = args.sweep_images or (1000 if small else 10_000)
    args.sweep_templates = args.sweep_templates or (6 if small else 12)
    compare = args.compare or (["5x500", "6x200"] if small else ["8x10000", "12x300"])
    args.compare = [tuple(int(x) for x in c.lower().split("x")) for c in compare]
    args.imagenet_per_class = args.imagenet_per_class or (2 if small else 50)
    args.loop_images = args.loop_images or (64 if small else 10_000)
    args.repeats = args.repeats or (2 if small else 5)
    return args


def benchmark(args: argparse.Namespace) -> int:
    work = args.workdir.resolve()
    jobs_dir, logs = work / "jobs", work / "logs"
    for d in (jobs_dir, logs):
        d.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    from bench_eval import machine_facts  # standard library only

    facts = machine_facts()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    old_src = ensure_old_source(work) if {"compare", "loop"} & set(args.parts) else None
    jobs: list[Job] = []
    features = None
    if {"sweep", "compare"} & set(args.parts):
        t = max([args.sweep_templates] * ("sweep" in args.parts) + [t for t, _ in args.compare])
        n = max([args.sweep_images] * ("sweep" in args.parts) + [n for _, n in args.compare])
        features = work / f"features-{t}x{n}x{args.classes}"
        spec = {"dir": str(features), "templates": t, "images": n, "classes": args.classes, "dim": 512, "seed": 0}
        argv, result = job_argv("features", spec, jobs_dir, "features")
        label = f"synthetic features: {n:,} images, {t} templates, {args.classes} classes, D 512"
        jobs.append(Job("features", "features", label, argv, result, setup=True))
    if "sweep" in args.parts:
        jobs += plan_sweep(args, jobs_dir, features)
    if "compare" in args.parts:
        jobs += plan_compare(args, jobs_dir, features, old_src)
    if "imagenet" in args.parts:
        jobs += plan_imagenet(args, jobs_dir, work)
    if "loop" in args.parts:
        jobs += plan_loop(args, jobs_dir, work, None if args.no_old else old_src)

    rows = []
    for job in jobs:
        job.memory_limit_gb = args.memory_limit_gb or None
        done = jobs_dir / f"{job.name}.done.json"
        identity = setup_identity(job)
        if job.setup and args.reuse_setup and done.is_file():
            row = json.loads(done.read_text())
            if row.get("identity") == identity:
                print(f"reusing {job.name} (a finished setup job: {done})", file=sys.stderr, flush=True)
                rows.append({**row, "reused": True})
                continue
        done.unlink(missing_ok=True)
        row = run_job(job, env, logs)
        for folder, snapshot in job.snapshot_after if row["ok"] else ():
            shutil.rmtree(snapshot, ignore_errors=True)
            shutil.copytree(folder, snapshot)
        if job.setup and row["ok"]:
            done.write_text(json.dumps({**row, "identity": identity}, indent=2) + "\n")
        rows.append(row)
        if job.setup and not row["ok"]:
            print(f"setup job {job.name} failed, see {row['log']}; stopping", file=sys.stderr)
            break

    by_name = {j.name: j for j in jobs}
    profiles = {name: profile_job(by_name[name], env, logs) for name in args.profile if name in by_name}

    comparisons = []
    if "compare" in args.parts:
        comparisons = analyse_comparisons(args, rows, jobs_dir, features, old_src, env, logs)
    facts["loadavg_end"] = os.getloadavg()
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    config["command"] = shlex.join([sys.executable, *sys.argv])
    report = {
        "config": config,
        "machine": facts,
        "jobs": rows,
        "comparisons": comparisons,
        "profiles": profiles,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    out = args.out or work / "bench-scoring.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    sections = []
    if "sweep" in args.parts:
        sections.append("### Sweep (issue 8)\n\n" + sweep_table([r for r in rows if r["part"] == "sweep"]))
    if comparisons:
        sections.append(f"### Old ({OLD_COMMIT}) against new\n\n" + compare_tables(rows, comparisons))
    if "imagenet" in args.parts:
        sections.append("### ImageNet-sized scoring (issue 9)\n\n" + cli_table(rows, "imagenet"))
    if "loop" in args.parts:
        sections.append("### Prompt-iteration loop (issue 8)\n\n" + cli_table(rows, "loop"))
    load = f"load average {facts['loadavg_start'][0]:.2f} at the start, {facts['loadavg_end'][0]:.2f} at the end"
    print(*sections, f"{report['date']}, {load}; results: {out}", sep="\n\n")
    return 0 if all(r["ok"] for r in rows) and all(c.get("ok", True) for c in comparisons) else 1


def analyse_comparisons(args, rows, jobs_dir: Path, features: Path, old_src: Path, env, logs: Path) -> list[dict]:
    """Compare the old and new rows of each sweep; explain each differing row in an `analyse` job."""
    by_name = {r["name"]: r for r in rows}
    out = []
    for t, n in args.compare:
        entry = {"templates": t, "images": n, "ok": False}
        pair = [by_name.get(f"compare-{t}x{n}-{code}") for code in ("old", "new")]
        if not all(p and p["ok"] for p in pair):
            out.append(entry)
            continue
        old, new = (json.loads(Path(p["runs"][0]["result"]["rows_file"]).read_text()) for p in pair)
        cmp = compare_rows(old, new, n)
        entry["comparison"] = cmp
        spec = {
            "features": str(features),
            "templates": t,
            "images": n,
            "old_src": str(old_src),
            "rows": [[d["method"], d["templates"], d["fields"]] for d in cmp["differing"]],
            "best": [old["best"], new["best"]],
        }
        argv, result = job_argv("analyse", spec, jobs_dir, f"analyse-{t}x{n}")
        analysis = run_job(Job(f"analyse-{t}x{n}", "compare", "analyse", argv, result), env, logs)
        entry["analysis_job"] = {k: v for k, v in analysis.items() if k != "runs"}
        entry["analysis"] = analysis["runs"][0].get("result") if analysis["ok"] else None
        entry["ok"] = analysis["ok"]
        out.append(entry)
    return out


# ---------------------------------------------------------------- the jobs (run in a fresh process each)


def _vm(field_name: str) -> float:
    """A /proc/self/status field (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def job_features(spec: dict) -> dict:
    """Synthetic unit-norm features with label signal: images near their class's prototype, each template's
    text a noisy copy of the prototypes (noise growing with the template index) plus a template offset, so
    single templates score 10-50 % and ensembles beat them, as real prompts do."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    n, t, c, d = spec["images"], spec["templates"], spec["classes"], spec["dim"]
    g = torch.Generator().manual_seed(spec["seed"])
    proto = F.normalize(torch.randn(c, d, generator=g), dim=-1)
    labels = torch.randint(c, (n,), generator=g)
    image = F.normalize(0.14 * proto[labels] + torch.randn(n, d, generator=g) / d**0.5, dim=-1)
    noise = torch.linspace(0.8, 2.0, t)[:, None, None] * torch.randn(t, c, d, generator=g) / d**0.5
    offset = 0.3 * F.normalize(torch.randn(t, 1, d, generator=g), dim=-1)
    text = F.normalize(proto[None] + noise + offset, dim=-1)
    folder = Path(spec["dir"])
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "image.npy", image.numpy())
    np.save(folder / "text.npy", text.numpy())
    np.save(folder / "labels.npy", labels.numpy())
    (folder / "meta.json").write_text(json.dumps({"logit_scale": 100.0, **spec}))
    return {"dir": str(folder), "image": list(image.shape), "text": list(text.shape)}


def load_features(spec: dict):
    """(image [n, D], text [t, C, D], labels [n], logit scale) as torch tensors: the first `templates` templates
    and `images` images of the saved set."""
    import numpy as np
    import torch

    folder = Path(spec["features"])
    n, t = spec["images"], spec["templates"]
    image = torch.from_numpy(np.ascontiguousarray(np.load(folder / "image.npy")[:n]))
    text = torch.from_numpy(np.ascontiguousarray(np.load(folder / "text.npy")[:t]))
    labels = torch.from_numpy(np.ascontiguousarray(np.load(folder / "labels.npy")[:n]))
    scale = json.loads((folder / "meta.json").read_text())["logit_scale"]
    assert len(image) == n and len(text) == t, (image.shape, text.shape)
    return image, text, labels, scale


def _row(method, templates, r: dict) -> dict:
    return {"method": method, "templates": list(templates), **{k: r.get(k) for k in METRICS}}


def job_summarize(spec: dict) -> dict:
    """`pipeline.summarize` of whichever clipzs is first on the path (new, or the old one with its old API) over
    every subset of the first `templates` templates, 7 methods: its wall time, and every row to a file."""
    import hashlib

    import torch

    import clipzs
    from clipzs.ensemble import METHODS, all_subsets

    image, text, labels, scale = load_features(spec)
    names = [f"template {i + 1}" for i in range(len(text))]
    subsets = all_subsets(len(text))
    if spec["code"] == "old":
        from clipzs.encode import Features
        from clipzs.pipeline import summarize
    else:
        from clipzs.pipeline import summarize
        from clipzs.scoring import Features
    features = Features(image=image, text=text, labels=labels, logit_scale=scale)
    rss_before = _vm("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    out = summarize(features, METHODS, subsets, names, **({"block": spec["block"]} if spec.get("block") else {}))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if spec["code"] == "old":
        rows = [_row(None, [i], r) for i, r in enumerate(out["single"])]
        rows += [_row(r["method"], r["templates"], r) for r in out["ensembles"]]
        best = {k: out["best"][k] for k in ("method", "templates", "acc1")}
        pred = out["best"]["pred"]
    else:
        single, ensembles, chosen, _, _ = out
        rows = [_row(r.method, r.templates, r.__dict__) for r in (*single, *ensembles)]
        rows = [{**r, **{k: list(v) if isinstance(v, tuple) else v for k, v in r.items()}} for r in rows]
        best = {"method": chosen.method, "templates": list(chosen.templates), "acc1": chosen.acc1}
        pred = list(chosen.pred)
    digest = hashlib.sha256(json.dumps(pred).encode()).hexdigest()
    result = {
        "code": spec["code"],
        "clipzs_file": clipzs.__file__,
        "summarize_s": round(seconds, 3),
        "summarize_cpu_s": round(cpu, 3),
        "rows": len(rows),
        "images": len(labels),
        "templates": len(text),
        "classes": text.shape[1],
        "rss_before_mib": round(rss_before, 1),
        "rss_after_mib": round(_vm("VmRSS"), 1),
        "hwm_mib": round(_vm("VmHWM"), 1),
        "threads": torch.get_num_threads(),
        "block": spec.get("block"),
        "best": best,
    }
    if spec.get("rows"):
        Path(spec["rows"]).write_text(
            json.dumps({"rows": rows, "best": best, "best_pred_sha256": digest, "best_pred": pred}) + "\n"
        )
        result["rows_file"] = spec["rows"]
    else:
        result["best_pred_sha256"] = digest
        result["acc1_range"] = [min(r["acc1"] for r in rows), max(r["acc1"] for r in rows)]
    return result


def _import_old(old_src: str):
    """The old package under the name `clipzs_old` (its imports are relative), beside the new `clipzs`."""
    import importlib.util

    folder = Path(old_src) / "clipzs"
    spec = importlib.util.spec_from_file_location(
        "clipzs_old", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["clipzs_old"] = module
    spec.loader.exec_module(module)
    import clipzs_old.ensemble  # noqa: F401  (loads the submodule)

    return module


def _ulps(gap, at):
    """`gap` in units of the float32 spacing at `at` (one ULP of the larger score)."""
    import numpy as np

    return float(np.abs(np.float64(gap)) / np.spacing(np.abs(np.float32(at))))


def job_analyse(spec: dict) -> dict:
    """For every row that differs between old and new: the images whose top-1 (or top-5) hit flips, and for each
    the gap between the two classes that swap, in each code's own class scores, in float32 ULPs."""
    import torch

    import clipzs.ensemble as new_ensemble
    from clipzs.scoring import Features, Scores, compute_scores, predictions

    old = _import_old(spec["old_src"])
    image, text, labels, scale = load_features(spec)
    old_scores = old.ensemble.scores(image, text, scale)
    new_scores = compute_scores(image, text, scale)
    differ = old_scores != new_scores
    scores_check = {
        "entries": differ.numel(),
        "entries_differing": int(differ.sum()),
        "max_abs_diff": float((old_scores - new_scores).abs().max()),
    }
    features = Features(image, text, labels, scale)
    held = Scores(features)
    captured: list[torch.Tensor] = []
    real = new_ensemble.label_ranks

    def capture(class_scores, labels_, ranked=True):
        captured.append(class_scores[0].clone())
        return real(class_scores, labels_, ranked)

    out_rows = []
    for method, subset, fields in spec["rows"]:
        subset = tuple(subset)
        captured.clear()
        new_ensemble.label_ranks = capture
        try:
            new_pred = predictions(held, [(method, subset)])[0]
        finally:
            new_ensemble.label_ranks = real
        new_cs = torch.cat(captured) if captured else None
        if method is None:
            old_pred, old_cs = old_scores[:, subset[0]].argmax(dim=1), old_scores[:, subset[0]]
        else:
            o = old.ensemble.combine(method, old_scores, text, subset)
            old_pred, old_cs = o.pred, o.scores
            if method == "vote":  # old `vote` returns no scores: its masked probability sums, as it computed them
                logits = old_scores[:, list(subset)]
                counts = torch.zeros(len(labels), text.shape[1], dtype=torch.int64).scatter_add_(
                    1, logits.argmax(dim=2), torch.ones(logits.shape[:2], dtype=torch.int64)
                )
                tied = counts == counts.max(dim=1, keepdim=True).values
                old_cs = logits.softmax(dim=2).sum(dim=1).masked_fill(~tied, -torch.inf)
        flips1 = ((old_pred == labels) != (new_pred == labels)).nonzero().flatten().tolist()
        images = []
        for i in flips1:
            a, b = int(old_pred[i]), int(new_pred[i])
            item = {"image": i, "label": int(labels[i]), "old_pred": a, "new_pred": b}
            if old_cs is not None and new_cs is not None:
                item["old_gap_ulps"] = _ulps(old_cs[i, a] - old_cs[i, b], old_cs[i, a])
                item["new_gap_ulps"] = _ulps(new_cs[i, b] - new_cs[i, a], new_cs[i, b])
            if method in ("vote", "vote-seed"):
                item["template_flips"] = _template_flips(old_scores, new_scores, i, subset)
            images.append(item)
        flips5 = []
        if old_cs is not None and new_cs is not None and "acc5" in fields or "acc5_ci" in fields:
            flips5 = _top5_flips(old_cs, new_cs, labels)
        out_rows.append(
            {
                "method": method,
                "templates": list(subset),
                "fields": fields,
                "hit1_flips": len(flips1),
                "hit5_flips": len(flips5),
                "images": images,
                "top5_images": flips5,
                "why": _why(images, flips5, method),
            }
        )
    return {"scores": scores_check, "rows": out_rows}


def _template_flips(old_scores, new_scores, i: int, subset) -> list[dict]:
    """Templates of the subset whose own argmax differs old/new for image i, with the gap in ULPs."""
    flips = []
    for t in subset:
        a, b = int(old_scores[i, t].argmax()), int(new_scores[i, t].argmax())
        if a != b:
            flips.append(
                {
                    "template": t,
                    "old": a,
                    "new": b,
                    "gap_ulps": _ulps(old_scores[i, t, a] - old_scores[i, t, b], old_scores[i, t, a]),
                }
            )
    return flips


def _top5_flips(old_cs, new_cs, labels) -> list[dict]:
    """Images whose label is in the top 5 under one code and not the other, with the label's gap to the class at
    rank 5 (old scores) in ULPs."""
    rows = []
    above_old = (old_cs > old_cs.gather(1, labels[:, None])).sum(dim=1)
    above_new = (new_cs > new_cs.gather(1, labels[:, None])).sum(dim=1)
    for i in ((above_old < 5) != (above_new < 5)).nonzero().flatten().tolist():
        y = int(labels[i])
        others = old_cs[i].clone()
        others[y] = -float("inf")
        fifth = others.topk(5).values[-1]
        rows.append(
            {
                "image": i,
                "above_old": int(above_old[i]),
                "above_new": int(above_new[i]),
                "gap_ulps": _ulps(old_cs[i, y] - fifth, max(abs(float(old_cs[i, y])), abs(float(fifth)))),
            }
        )
    return rows


def _why(images: list[dict], flips5: list[dict], method) -> str:
    """One line: the largest gap (ULPs) among the flipped images, per kind of flip."""
    parts = []
    gaps = [max(x.get("old_gap_ulps", 0), x.get("new_gap_ulps", 0)) for x in images if "old_gap_ulps" in x]
    if gaps:
        parts.append(f"top-1: {len(images)} image(s), classes within {max(gaps):.0f} ULP")
    tgaps = [f["gap_ulps"] for x in images for f in x.get("template_flips", [])]
    if tgaps:
        parts.append(f"a template's own argmax flips (within {max(tgaps):.0f} ULP)")
    elif method in ("vote", "vote-seed") and images:
        parts.append("no template's argmax flips")
    if flips5:
        parts.append(f"top-5: {len(flips5)} image(s), label vs 5th within {max(f['gap_ulps'] for f in flips5):.0f} ULP")
    return "; ".join(parts) or "–"


def job_imagenet_setup(spec: dict) -> dict:
    """ImageNet val layout of tiny PNGs (`per_class` per wnid folder), and a tiny CLIP (embed_dim 512) saved as an
    OpenAI-style fp16 TorchScript archive with its open_clip config."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(REPO / "tests"))
    import helpers

    from clipzs.catalogue import get

    root = Path(spec["root"]) / "imagenet" / "val"
    wnids = get("imagenet1k").wnids
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for label, wnid in enumerate(wnids):
        folder = root / wnid
        folder.mkdir(parents=True, exist_ok=True)
        base = np.array([label * 37 % 256, label * 91 % 256, label * 151 % 256], dtype=np.int64)
        pixels = np.clip(base + rng.integers(0, 64, size=(spec["per_class"], 16, 16, 3)), 0, 255).astype(np.uint8)
        for k, array in enumerate(pixels):
            Image.fromarray(array).save(folder / f"ILSVRC2012_val_{label * spec['per_class'] + k + 1:08d}.png")
    written = time.perf_counter() - start
    config = Path(spec["config"])
    config.write_text(json.dumps(TINY_CLIP_512))
    helpers.save_torchscript_fp16(helpers.random_state_dict(config), Path(spec["checkpoint"]), 32)
    return {"images": len(wnids) * spec["per_class"], "write_s": round(written, 1), "root": str(root)}


def job_loop_setup(spec: dict) -> dict:
    """CIFAR-100-format test data and a random ViT-B/32 in OpenAI's TorchScript fp16 format, as bench_eval makes."""
    sys.path.insert(0, str(REPO / "tests"))
    import helpers

    helpers.write_cifar100(Path(spec["root"]), n_test=spec["images"], n_train=None, seed=0)
    helpers.save_torchscript_fp16(helpers.random_state_dict("ViT-B-32-quickgelu", 0), Path(spec["checkpoint"]), 224)
    return {"images": spec["images"]}


def job_old_cache(spec: dict) -> dict:
    """Fill the old code's feature cache without an hour of encoding: its image entries (fp32, bf16) get the
    image features the new code cached for the same model and images (a warm run's time does not depend on the
    values), and its text entries the seed prompts, encoded by the old code itself."""
    import numpy as np
    import torch

    import clipzs
    from clipzs.cache import FeatureCache
    from clipzs.encode import CHUNK, encode_prompt_matrix
    from clipzs.models import load_model
    from clipzs.pipeline import Setup, feature_keys, load_images
    from clipzs.prompts import prompt_set, read_prompts

    assert "old" in clipzs.__file__, clipzs.__file__
    new_root = Path(spec["new_cache"]) / "images"
    filled = {}
    for precision in ("fp32", "bf16"):
        setup = Setup(
            dataset="cifar100",
            data_root=spec["root"],
            split="test",
            model="ViT-B/32",
            pretrained=spec["checkpoint"],
            templates="seed",
            classname_style="raw",
            precision=precision,
        )
        images = load_images(setup)
        clip = load_model(setup.model, setup.pretrained, "cpu", precision)
        text_key, image_key = feature_keys(clip, images)
        features = _new_cache_images(new_root, precision, len(images))
        cache = FeatureCache(spec["old_cache"])
        entry = cache.images(image_key, len(images), CHUNK)
        for start in range(0, len(images), CHUNK):
            entry.write(start, features[start : start + CHUNK])
        names = [c for c in images.classes]
        encode_prompt_matrix(clip, prompt_set(read_prompts("seed"), names).prompts, cache=cache.texts(text_key))
        filled[precision] = {"images": len(images), "complete": entry.complete, "threads": torch.get_num_threads()}
        assert np.isfinite(features).all()
    return filled


def _new_cache_images(root: Path, precision: str, n: int):
    """The new cache's image features [n, D] of the CIFAR-100 entry at `precision`, from its chunk files
    (`images/<id>/entry.json` holds the key; chunks are `chunk-<start>-<stop>-<sha256>.npy`)."""
    import numpy as np

    for entry in sorted(p for p in root.iterdir() if p.is_dir()):
        key = json.loads((entry / "entry.json").read_text())["key"]
        if key.get("precision") == precision and key.get("dataset") == "cifar100":
            parts = {int(p.name.split("-")[1]): np.load(p) for p in entry.glob("chunk-*.npy")}
            features = np.concatenate([parts[s] for s in sorted(parts)])
            assert len(features) == n, (features.shape, n)
            return features
    raise SystemExit(f"no {precision} cifar100 image entry in {root}")


JOBS = {
    "features": job_features,
    "summarize": job_summarize,
    "analyse": job_analyse,
    "imagenet-setup": job_imagenet_setup,
    "loop-setup": job_loop_setup,
    "old-cache": job_old_cache,
}


def run_worker(kind: str, spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    result = JOBS[kind](spec)
    Path(spec["out"]).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--job"]:
        return run_worker(argv[1], argv[2])
    return benchmark(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
