"""Speed and memory of `clipzs eval` against the original per-image loop and CLIP_benchmark's zero-shot `evaluate`.

Runs offline on synthetic inputs it makes itself (a random ViT-B/32 as an OpenAI-style fp16 TorchScript
checkpoint, a CIFAR-100-format test split). Every job runs in a fresh process, so its wall time and peak
RSS are its own; command lines are recorded. Jobs run on fewer images than `--images` (the original loop,
CLIP_benchmark) are extrapolated to it from their image throughput. Prints tables and writes JSON.

    .venv/bin/python benchmarks/bench_eval.py --images 64 --original-images 2 --clip-benchmark-images 32

This driver imports only the standard library; the jobs are in `bench_jobs.py` (see why there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
JOBS_SCRIPT = HERE / "bench_jobs.py"
MODEL = "ViT-B/32"
REFERENCE_JOB = "clipzs-embedding-fp32"
SKIPPABLE = ("original", "clip-benchmark", "head-to-head", "clipzs", "sweep", "cached", "fp32", "bf16", "text")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
DISTRIBUTIONS = ("clipzs", "torch", "open_clip_torch", "clip-benchmark", "numpy", "pillow", "scikit-learn")


@dataclass(frozen=True)
class Job:
    """One measured process: what it runs, the tags `--skip` matches, its result JSON, what to delete first."""

    name: str
    label: str
    kind: str  # "clipzs" or a job of bench_jobs.py
    tags: frozenset[str]
    argv: list[str]
    result: Path
    fresh: tuple[Path, ...] = ()


# ---------------------------------------------------------------- planning


def worker_job(name: str, label: str, kind: str, spec: dict, jobs_dir: Path, tags: frozenset[str] = frozenset()) -> Job:
    """A job running `bench_jobs.py KIND SPEC` with `spec` written next to its result."""
    result = jobs_dir / f"{name}.result.json"
    spec_path = jobs_dir / f"{name}.spec.json"
    spec_path.write_text(json.dumps({**spec, "out": str(result)}, indent=2) + "\n")
    argv = [sys.executable, str(JOBS_SCRIPT), kind, str(spec_path)]
    return Job(name, label, kind, tags | {kind}, argv, result)


def clipzs_job(name: str, label: str, flags: list[str], spec: dict, tags: frozenset[str], cache: str) -> Job:
    """A `clipzs eval` console-command job over `spec["images"]` images with its own feature cache.

    The cache folder is emptied first unless the job is a rerun of the one that filled `cache`.
    """
    jobs_dir = Path(spec["jobs_dir"])
    result, features = jobs_dir / f"{name}.result.json", jobs_dir / f"{cache}.features"
    argv = [
        str(Path(sys.executable).parent / "clipzs"),
        "eval",
        *("--model", MODEL, "--pretrained", spec["checkpoint"], "--data-root", spec["data_root"]),
        *("--templates", "seed", "--classnames", "raw", "--device", spec["device"]),
        *("--batch-size", str(spec["batch_size"]), "--limit", str(spec["images"])),
        *flags,
        *("--feature-cache", str(features), "--out", str(result), "--quiet"),
    ]
    return Job(name, label, "clipzs", tags, argv, result, () if cache != name else (features,))


def clipzs_jobs(spec: dict, precision: str) -> list[Job]:
    """`clipzs eval` with the embedding ensemble and with the full sweep of every method, from a cold cache."""
    tags = frozenset({"clipzs", precision})
    embedding, sweep = f"clipzs-embedding-{precision}", f"clipzs-sweep-{precision}"
    embedding_flags = ["--ensemble", "embedding", "--precision", precision]
    sweep_flags = ["--ensemble", "all", "--sweep", "--precision", precision]
    return [
        clipzs_job(embedding, f"clipzs embedding {precision}", embedding_flags, spec, tags, embedding),
        clipzs_job(sweep, f"clipzs --sweep all {precision}", sweep_flags, spec, tags | {"sweep"}, sweep),
    ]


def cached_rerun_job(spec: dict) -> Job:
    """The fp32 sweep again, on the feature cache its first run filled: what a repeated evaluation costs."""
    flags = ["--ensemble", "all", "--sweep", "--precision", "fp32"]
    tags = frozenset({"clipzs", "fp32", "sweep", "cached"})
    return clipzs_job(
        "clipzs-sweep-fp32-cached", "clipzs --sweep all fp32, cached", flags, spec, tags, "clipzs-sweep-fp32"
    )


def head_to_head_job(spec: dict, precision: str) -> Job:
    """`clipzs eval --ensemble embedding` on CLIP_benchmark's images: the same job, whole process against whole
    process (fp32 against its amp off, bf16 against its default amp)."""
    name = f"clipzs-{spec['images']}-{precision}"
    flags = ["--ensemble", "embedding", "--precision", precision]
    label = f"clipzs embedding {precision}, same images"
    return clipzs_job(name, label, flags, spec, frozenset({"head-to-head", precision}), name)


def text_job(common: dict, precision: str, jobs_dir: Path) -> Job:
    """Text throughput at one precision (the model is loaded at that precision)."""
    spec = {**common, "images": 1, "precision": precision}
    return worker_job(f"text-{precision}", f"text {precision}", "text", spec, jobs_dir, frozenset({precision}))


def plan(args: argparse.Namespace, checkpoint: Path, data_root: Path, jobs_dir: Path) -> list[Job]:
    """Every measured job, minus those with a tag in `--skip`."""
    common = {
        "checkpoint": str(checkpoint),
        "data_root": str(data_root),
        "batch_size": args.batch_size,
        "device": args.device,
    }
    full = {**common, "images": args.images, "jobs_dir": str(jobs_dir)}
    cb = {**common, "images": min(args.clip_benchmark_images, args.images)}
    jobs = [
        worker_job("original", "original loop fp32", "original", {**common, "images": args.original_images}, jobs_dir),
        worker_job("clip-benchmark-amp", "CLIP_benchmark default amp", "clip-benchmark", cb, jobs_dir),
        worker_job("clip-benchmark-fp32", "CLIP_benchmark amp off", "clip-benchmark", {**cb, "amp": False}, jobs_dir),
        head_to_head_job({**cb, "jobs_dir": str(jobs_dir)}, "fp32"),
        head_to_head_job({**cb, "jobs_dir": str(jobs_dir)}, "bf16"),
        *clipzs_jobs(full, "fp32"),
        *clipzs_jobs(full, "bf16"),
        cached_rerun_job(full),
        text_job(common, "fp32", jobs_dir),
        text_job(common, "bf16", jobs_dir),
    ]
    return [job for job in jobs if not job.tags & set(args.skip)]


# ---------------------------------------------------------------- measuring


def measure(job: Job, env: dict[str, str], log: Path) -> dict:
    """Run `job` as a fresh process; its wall time, its own peak RSS and CPU times (`wait4`), exit status."""
    for path in job.fresh:
        shutil.rmtree(path, ignore_errors=True)
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(job.argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "command": shlex.join(job.argv),
        "returncode": proc.returncode,
        "wall_s": round(wall, 3),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "user_s": round(usage.ru_utime, 3),
        "sys_s": round(usage.ru_stime, 3),
        "log": str(log),
    }


def clipzs_summary(results: dict) -> dict:
    """The fields every image job reports, from a `clipzs eval --out` results JSON (no image throughput when
    the feature cache supplied every image)."""
    seconds, n = results["seconds"], results["num_images"]
    everything = len(results["templates"])
    embedding = next(
        e for e in results["ensembles"] if e["method"] == "embedding" and len(e["templates"]) == everything
    )
    return {
        "images": n,
        "images_per_s": results["encoded"]["images"] / seconds["images"] if results["encoded"]["images"] else None,
        "encoded": results["encoded"],
        "text_s": seconds["text"],
        "acc1": embedding["acc1"],
        "pred": results["best"]["pred"] if len(results["ensembles"]) == 1 else None,
        "ensembles_scored": len(results["ensembles"]),
        "seconds": seconds,
    }


def run_job(job: Job, env: dict[str, str], total_images: int) -> dict:
    """Measure one job; add its result and, for image jobs, its wall time extrapolated to `total_images`."""
    log = job.result.with_name(f"{job.name}.log")
    row = {"name": job.name, "label": job.label, "kind": job.kind, "argv": job.argv, **measure(job, env, log)}
    if row["returncode"] != 0:
        return row
    result = json.loads(job.result.read_text())
    row["result"] = clipzs_summary(result) if job.kind == "clipzs" else result
    if "images" in row["result"] and job.kind != "text":
        missing = total_images - row["result"]["images"]
        row["est_wall_s"] = row["wall_s"] + (missing / row["result"]["images_per_s"] if missing else 0.0)
    return row


# ---------------------------------------------------------------- reporting


def add_agreement(rows: list[dict]) -> None:
    """Share of images on which each job's embedding-ensemble prediction equals the reference job's.

    A cross-check that the jobs compute the same thing (random weights make accuracy itself uninformative);
    the prediction lists are dropped afterwards to keep the JSON small.
    """
    ref = next((r["result"].get("pred") for r in rows if r["name"] == REFERENCE_JOB and "result" in r), None)
    for r in rows:
        pred = r.get("result", {}).pop("pred", None)
        if pred and ref:
            r["result"]["agreement"] = sum(a == b for a, b in zip(pred, ref, strict=False)) / len(pred)


def machine_facts() -> dict:
    """CPU, cores, load and library versions (what torch itself sees comes from the setup job)."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in cpuinfo.splitlines())}
    versions = {}
    for dist in DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu_model": fields.get("model name") or platform.processor(),
        "cpu_flags": sorted(set(fields.get("flags", "").split()) & set(CPU_FLAGS)),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "loadavg_start": os.getloadavg(),
    }


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for r in [headers, ["-" * w for w in widths], *rows]:
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
    return "\n".join(lines)


def jobs_table(rows: list[dict], total_images: int) -> str:
    """Image jobs: measured and extrapolated wall time, image throughput, text time, memory, time ratio."""
    ref = next((r.get("est_wall_s") for r in rows if r["name"] == REFERENCE_JOB), None)
    body = []
    for r in rows:
        if r["kind"] == "text":
            continue
        res, est = r.get("result", {}), r.get("est_wall_s")
        body.append([
            r["label"] + ("" if r["returncode"] == 0 else f" FAILED (rc {r['returncode']}, see {r['log']})"),
            fmt(res.get("images"), "d"), fmt(r["wall_s"], ".1f"), fmt(est, ".1f"),
            fmt(res.get("images_per_s"), ".2f"), fmt(res.get("text_s"), ".2f"), fmt(r["peak_rss_mib"], ".0f"),
            fmt(res.get("agreement"), ".3f"), fmt(est / ref if est and ref else None, ".2f"),
        ])  # fmt: skip
    headers = ["job", "images", "wall s", f"wall s @{total_images}", "images/s", "text s", "peak RSS MiB"]
    return table([*headers, "same pred", "time / clipzs fp32"], body)


def head_to_head_table(rows: list[dict], images: int) -> str:
    """CLIP_benchmark against clipzs on the same `images` images, whole process against whole process."""
    by_name = {r["name"]: r for r in rows if r["returncode"] == 0}
    pairs = [("clip-benchmark-fp32", f"clipzs-{images}-fp32"), ("clip-benchmark-amp", f"clipzs-{images}-bf16")]
    body = []
    for theirs, ours in pairs:
        if theirs in by_name and ours in by_name:
            a, b = by_name[theirs], by_name[ours]
            body.append([f"{a['label']} vs {b['label']}", fmt(a["result"]["images"], "d"), fmt(a["wall_s"], ".1f"),
                         fmt(b["wall_s"], ".1f"), fmt(a["wall_s"] / b["wall_s"], ".2f")])  # fmt: skip
    return table(["same job, same images", "images", "CLIP_benchmark s", "clipzs s", "clipzs faster by"], body)


def text_table(rows: list[dict]) -> str:
    """Text encoding of the 500 seed prompts: trimmed (clipzs) against plain 77-token `encode_text`."""
    body = [
        [
            r["label"], fmt(res["prompts"], "d"), fmt(res["trimmed_prompts_per_s"], ".0f"),
            fmt(res["plain_prompts_per_s"], ".0f"), fmt(res["speedup"], ".2f"), fmt(res["max_abs_diff"], ".1e"),
            fmt(r["peak_rss_mib"], ".0f"),
        ]
        for r in rows if r["kind"] == "text" and (res := r.get("result"))
    ]  # fmt: skip
    headers = ["text job", "prompts", "trimmed prompts/s", "77-token prompts/s", "speedup", "max |diff|", "RSS MiB"]
    return table(headers, body)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=10_000, help="synthetic test images; clipzs runs on all (10000)")
    p.add_argument("--original-images", type=int, default=8, help="images for the original loop, first = warm-up (8)")
    p.add_argument("--clip-benchmark-images", type=int, default=1024, help="images for CLIP_benchmark (1024)")
    p.add_argument("--batch-size", type=int, default=32, help="image batch size of clipzs and CLIP_benchmark (32)")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every job (default: unset, torch's choice)")
    p.add_argument("--device", default="cpu", help="device of every job: cpu (default) or cuda")
    p.add_argument("--skip", nargs="+", default=[], choices=SKIPPABLE, help="leave out the jobs with these tags")
    p.add_argument("--workdir", type=Path, default=REPO / "bench-out", help="generated inputs, logs (bench-out/)")
    p.add_argument("--out", type=Path, help="results JSON (default WORKDIR/bench.json)")
    args = p.parse_args(argv)
    if not 2 <= args.original_images <= args.images:
        p.error("need 2 <= --original-images <= --images (the first image is a warm-up)")
    return args


def benchmark(args: argparse.Namespace) -> int:
    """Make the inputs, run every job in its own process, print the tables, write the JSON."""
    workdir = args.workdir.resolve()
    jobs_dir = workdir / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    facts = machine_facts()
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    checkpoint, data_root = workdir / "ViT-B-32-random-fp16.pt", workdir / "data"
    setup_spec = {"checkpoint": str(checkpoint), "data_root": str(data_root), "images": args.images}
    print("making the checkpoint and data ...", file=sys.stderr, flush=True)
    setup = run_job(worker_job("setup", "setup", "setup", setup_spec, jobs_dir), env, args.images)
    if setup["returncode"] != 0:
        print(f"setup failed, see {setup['log']}", file=sys.stderr)
        return 1
    rows = []
    for job in plan(args, checkpoint, data_root, jobs_dir):
        print(f"running {job.name} ...", file=sys.stderr, flush=True)
        rows.append(run_job(job, env, args.images))
    facts["loadavg_end"] = os.getloadavg()
    add_agreement(rows)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    config["command"] = shlex.join([sys.executable, *sys.argv])
    report = {"config": config, "machine": facts, "setup": setup, "reference_job": REFERENCE_JOB, "jobs": rows}
    out = args.out or workdir / "bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    tables = [jobs_table(rows, args.images), head_to_head_table(rows, min(args.clip_benchmark_images, args.images))]
    tables += [text_table(rows)] if any(r["kind"] == "text" for r in rows) else []
    print(*tables, f"results: {out}", sep="\n\n")
    return 0 if all(r["returncode"] == 0 for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    return benchmark(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
