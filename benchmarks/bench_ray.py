"""What `--engine ray` costs against the local engine: the same `clipzs eval`, each run a fresh process.

Jobs, interleaved and repeated (`--repeats`): `local`; `ray-new`, which starts a local Ray instance itself (a
laptop without a cluster); `ray-join`, which joins a Ray instance started beforehand with `ray start --head` (a
cluster that is already up; starting and stopping it is not timed). Every job encodes `--images` CIFAR-format
images with a random ViT-B/32 (OpenAI QuickGELU config, 224 px, OpenAI-style fp16 TorchScript checkpoint) from an
empty feature cache, and the five seed templates. Reported: whole-process wall time, the image phase
(`seconds.images` of the results), their ratios to `local` (the fastest of the repeats: on a shared machine the
least disturbed one), the overhead per image, and whether every run stored the same cache chunks (their file names
hold their SHA256) and the same predictions.

Where a cgroup can be made (root, cgroup v1 `cpuacct` or v2), each job also runs in its own, and its CPU seconds
are reported: every process of the job counted (the Ray instance and its workers too), and unlike wall time
hardly changed by other work on the machine. For `ray-join` they include the joined instance's own processes
while the job ran.

    .venv/bin/python benchmarks/bench_ray.py --out bench-out/ray.json

This driver imports only the standard library, so the jobs' numbers are their own.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
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


def ray_start(workdir: Path, group: CpuGroup) -> str:
    """Start a local Ray head (all CPUs) for `ray-join`, in the job's group; its address."""
    argv = [str(BIN / "ray"), "start", "--head", "--include-dashboard=false", "--disable-usage-stats"]
    argv += ["--temp-dir", str(workdir / "ray-tmp"), "--port", "0"]
    out = subprocess.run(group.wrap(argv), check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "ray start --address=" in line:
            return line.split("--address=")[1].strip().strip("'\"")
    raise RuntimeError(f"no address in `ray start`'s output:\n{out}")


class CpuGroup:
    """A cgroup counting the CPU time of every process started in it (v1 `cpuacct`, or v2), if one can be made."""

    ROOTS = (
        ("/sys/fs/cgroup/cpuacct", "cpuacct.usage"),
        ("/sys/fs/cgroup/unified", "cpu.stat"),
        ("/sys/fs/cgroup", "cpu.stat"),
    )

    def __init__(self, name: str):
        self.path: Path | None = None
        for root, stat in self.ROOTS:
            try:
                path = Path(root) / name
                path.mkdir()
            except OSError:
                continue
            if (path / stat).exists():
                self.path, self.stat = path, stat
                break
            path.rmdir()

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` run inside the group."""
        if self.path is None:
            return argv
        return ["sh", "-c", f'echo $$ > {shlex.quote(str(self.path / "cgroup.procs"))} && exec "$@"', "sh", *argv]

    def seconds(self) -> float | None:
        if self.path is None:
            return None
        text = (self.path / self.stat).read_text()
        if self.stat == "cpuacct.usage":
            return int(text) / 1e9
        return int(dict(line.split() for line in text.splitlines())["usage_usec"]) / 1e6

    def remove(self) -> None:
        if self.path is not None:
            try:
                self.path.rmdir()
            except OSError:  # a process of the job still exiting: the group stays, empty once it has
                print(f"note: {self.path} left behind", file=sys.stderr)


def measure(argv: list[str], env: dict[str, str], group: CpuGroup) -> dict:
    """Wall time (and CPU time, where counted) of one fresh process, with the load average around it."""
    before, cpu = os.getloadavg()[0], group.seconds()
    start = time.perf_counter()
    done = subprocess.run(group.wrap(argv), capture_output=True, text=True, env={**os.environ, **env})
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{shlex.join(argv)} failed:\n{done.stderr[-3000:]}")
    used = group.seconds()
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(used - cpu, 2) if used is not None else None,
        "load_before": before,
        "load_after": os.getloadavg()[0],
    }


def chunks(features: Path) -> list[str]:
    return sorted(p.name for p in features.glob("images/*/chunk-*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
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
            group = CpuGroup(f"clipzs-bench-{os.getpid()}-{run}")
            address = ray_start(workdir, group) if job == "ray-join" else None
            try:
                argv = eval_argv(workdir, job, run, args.images, address)
                env = {"RAY_AUTH_MODE": "token"} if address else {}  # `ray start` clusters require the token
                measured = measure(argv, env, group)
            finally:
                if address:
                    subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True)
                group.remove()
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
            seconds = f"{measured['wall_s']} s, images {result['seconds']['images']} s, CPU {measured['cpu_s']} s"
            print(f"{run}: {seconds}, load {measured['load_before']:.1f}", flush=True)
    summary = {}
    for job in JOBS:
        mine = [r for r in runs if r["job"] == job]
        cpu = [r["cpu_s"] for r in mine if r["cpu_s"] is not None]
        summary[job] = {
            "wall_s": min(r["wall_s"] for r in mine),
            "images_s": min(r["seconds"]["images"] for r in mine),
            "cpu_s": min(cpu) if cpu else None,
            "wall_s_all": [r["wall_s"] for r in mine],
        }
    base = summary["local"]
    for job in JOBS[1:]:
        row = summary[job]
        row["wall_ratio"] = round(row["wall_s"] / base["wall_s"], 3)
        row["images_ratio"] = round(row["images_s"] / base["images_s"], 3)
        row["overhead_ms_per_image"] = round(1000 * (row["wall_s"] - base["wall_s"]) / args.images, 1)
        if row["cpu_s"] is not None and base["cpu_s"] is not None:
            row["cpu_ratio"] = round(row["cpu_s"] / base["cpu_s"], 3)
            row["cpu_overhead_ms_per_image"] = round(1000 * (row["cpu_s"] - base["cpu_s"]) / args.images, 1)
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
    print(f"\nfastest of {args.repeats} runs each; ratios to local")
    print(
        "| job | wall s | images s | CPU s | wall ratio | images ratio | CPU ratio | ms/image (wall) | ms/image (CPU) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    keys = ("wall_s", "images_s", "cpu_s", "wall_ratio", "images_ratio", "cpu_ratio")
    for job, row in summary.items():
        cells = [row.get(k) for k in (*keys, "overhead_ms_per_image", "cpu_overhead_ms_per_image")]
        print(f"| {job} | " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    print(f"\nsame cache chunks and predictions in every run: {same}")


if __name__ == "__main__":
    main()
