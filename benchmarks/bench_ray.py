"""What `--engine ray` costs against the local engine: the same `clipzs eval`, each run a fresh process.

Jobs, interleaved and repeated (`--repeats`): `local`; `ray-new`, which starts a local Ray instance itself (a
laptop without a cluster); `ray-join`, which joins a Ray instance started beforehand with `ray start --head` (a
cluster that is already up; starting and stopping it is not timed). Every job encodes `--images` CIFAR-format
images with a random ViT-B/32 (OpenAI QuickGELU config, 224 px, OpenAI-style fp16 TorchScript checkpoint) from an
empty feature cache, and the five seed templates. Reported: whole-process wall time, the image phase
(`seconds.images` of the results), their ratios to `local` (medians), the overhead per image, and whether every
run stored the same cache chunks (their file names hold their SHA256) and the same predictions.

    .venv/bin/python benchmarks/bench_ray.py --out bench-out/ray.json

This driver imports only the standard library, so the jobs' numbers are their own.
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
JOBS = ("local", "ray-new", "ray-join")


def setup(workdir: Path, images: int) -> None:
    """Write the checkpoint and the data (run in a fresh process: `bench_ray.py --setup`)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    import helpers

    helpers.save_torchscript_fp16(helpers.random_state_dict("ViT-B-32-quickgelu", 0), workdir / "vit-b-32.pt", 224)
    helpers.write_cifar100(workdir / "data", n_test=images, n_train=None, seed=0)


def eval_argv(workdir: Path, job: str, run: str, images: int, address: str | None) -> list[str]:
    engine = ["--engine", "ray"] if job != "local" else []
    join = ["--ray-address", address] if address else []
    return [
        str(BIN / "clipzs"),
        "eval",
        *("--model", "ViT-B/32", "--pretrained", str(workdir / "vit-b-32.pt"), "--data-root", str(workdir / "data")),
        *("--templates", "seed", "--classnames", "raw", "--ensemble", "embedding", "--limit", str(images)),
        *engine,
        *join,
        *("--feature-cache", str(workdir / f"{run}.features"), "--out", str(workdir / f"{run}.json"), "--quiet"),
    ]


def ray_start(workdir: Path) -> str:
    """Start a local Ray head (all CPUs) for `ray-join`; its address."""
    argv = [str(BIN / "ray"), "start", "--head", "--include-dashboard=false", "--disable-usage-stats"]
    argv += ["--temp-dir", str(workdir / "ray-tmp"), "--port", "0"]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "ray start --address=" in line:
            return line.split("--address=")[1].strip().strip("'\"")
    raise RuntimeError(f"no address in `ray start`'s output:\n{out}")


def measure(argv: list[str], env: dict[str, str]) -> dict:
    """Wall time of one fresh process, with the load average around it (the machine is shared)."""
    before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env})
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{shlex.join(argv)} failed:\n{done.stderr[-3000:]}")
    return {"wall_s": round(wall, 2), "load_before": before, "load_after": os.getloadavg()[0]}


def chunks(features: Path) -> list[str]:
    return sorted(p.name for p in features.glob("images/*/chunk-*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("bench-out/ray"))
    parser.add_argument("--out", type=Path, default=Path("bench-out/ray.json"))
    parser.add_argument("--setup", action="store_true", help=argparse.SUPPRESS)  # the setup job itself
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    if args.setup:
        return setup(workdir, args.images)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    setup_argv = [sys.executable, __file__, "--setup", "--workdir", str(workdir), "--images", str(args.images)]
    subprocess.run(setup_argv, check=True)
    runs = []
    for repeat in range(args.repeats):
        for job in JOBS:
            run = f"{job}-{repeat}"
            address = ray_start(workdir) if job == "ray-join" else None
            try:
                argv = eval_argv(workdir, job, run, args.images, address)
                env = {"RAY_AUTH_MODE": "token"} if address else {}  # `ray start` clusters require the token
                measured = measure(argv, env)
            finally:
                if address:
                    subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True)
            result = json.loads((workdir / f"{run}.json").read_text())
            runs.append(
                {
                    "job": job,
                    "run": run,
                    "command": " ".join([*(f"{k}={v}" for k, v in env.items()), shlex.join(argv)]),
                    **measured,
                    "seconds": result["seconds"],
                    "encoded": result["encoded"],
                    "chunks": chunks(workdir / f"{run}.features"),
                    "pred": result["best"]["pred"] if result.get("best") else None,
                }
            )
            print(f"{run}: {measured['wall_s']} s (images {result['seconds']['images']} s)", flush=True)
    summary = {}
    for job in JOBS:
        mine = [r for r in runs if r["job"] == job]
        summary[job] = {
            "wall_s": statistics.median(r["wall_s"] for r in mine),
            "images_s": statistics.median(r["seconds"]["images"] for r in mine),
        }
    for job in JOBS[1:]:
        extra = summary[job]["wall_s"] - summary["local"]["wall_s"]
        summary[job] |= {
            "wall_ratio": round(summary[job]["wall_s"] / summary["local"]["wall_s"], 3),
            "images_ratio": round(summary[job]["images_s"] / summary["local"]["images_s"], 3),
            "overhead_ms_per_image": round(1000 * extra / args.images, 2),
        }
    same = len({tuple(r["chunks"]) for r in runs}) == 1 and len({tuple(r["pred"] or ()) for r in runs}) == 1
    report = {
        "images": args.images,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "driver": shlex.join([sys.executable, *sys.argv]),
        "same_chunks_and_predictions": same,
        "summary": summary,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n| job | wall s (median of {args.repeats}) | images s | wall ratio | images ratio | overhead ms/image |")
    print("|---|---:|---:|---:|---:|---:|")
    for job, row in summary.items():
        ratios = [row.get(k, "") for k in ("wall_ratio", "images_ratio", "overhead_ms_per_image")]
        print(f"| {job} | {row['wall_s']} | {row['images_s']} | " + " | ".join(str(r) for r in ratios) + " |")
    print(f"\nsame cache chunks and predictions in every run: {same}")


if __name__ == "__main__":
    main()
