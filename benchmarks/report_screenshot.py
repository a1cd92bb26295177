"""Regenerate docs/report.png: the HTML report of a real `clipzs eval` run whose accuracies mean something.

No CLIP weights or datasets can be downloaded where clipzs is developed, so this script makes both: it
trains a tiny CLIP-style model (an open_clip ViT config, from scratch, on CPU) with
a symmetric contrastive loss on captioned images of scikit-learn's bundled `load_digits` (1,797 8x8 grey
handwritten digits, 10 classes), keeps a stratified 40% test split it never trains on, saves that split as
an image folder (`digits/test/<zero..nine>/<n>.png`), the weights as safetensors and the config as JSON,
then runs the real CLI on them from inside the work dir with relative paths only (so no path of this
machine can reach the report):

    clipzs eval --dataset folder --data-root digits --model tiny-clip-digits.json
        --pretrained tiny-clip-digits.safetensors --templates templates.txt --ensemble all --sweep
        --report report --no-cache --device cpu

and screenshots `report/report.html` in headless Chromium through Playwright into docs/report.png. It
fails (exit status 1, with the reason) if training or the CLI fails, if the best single template is not
clearly above chance, or if the report's text shows an absolute or machine-specific path. It prints the
accuracies and a caption for the README.

Run from the repository root:

    .venv/bin/python benchmarks/report_screenshot.py

Needs: scikit-learn (the `bench` extra: `pip install -e '.[bench]'`), Playwright's Python package (the
`test` extra; no browser download) and Debian's Chromium at /usr/bin/chromium (`apt-get install -y
chromium`; elsewhere pass `--chromium PATH`). Work files go to bench-out/report-screenshot/ (git-ignored;
`--workdir`), the screenshot to docs/report.png (`--png`). Everything is seeded (`--seed`): the same
machine and thread count give the same weights and numbers.

Time: training is 300 steps of 128 images (36 epochs), about 0.2 s a step on 2 lightly loaded cores, so one to
two minutes; `clipzs eval` and the screenshot add well under a minute. On shared cores it takes far longer
(20 minutes at a load average of 6 on 2 cores); the script prints the load average and, when the machine was
busy, leaves the training time out of the caption. `--reuse` skips
training when the work dir holds a checkpoint trained with the same settings (to redo only the CLI run and the
screenshot, e.g. after a change to the report).
"""

from __future__ import annotations

import argparse
import getpass
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
NAME = "tiny-clip-digits"  # the config's stem: the model name open_clip registers and the report shows
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
UPSCALE = 4  # 8x8 digits -> 32x32 images (nearest), the model's input size: preprocessing changes no pixel
TRAIN_TEMPLATES = (
    "a photo of the digit {}.",
    "a handwritten {}.",
    "the number {}.",
    "a drawing of a {}.",
)
EVAL_TEMPLATES = (  # the first three were trained on; the last two never were
    "a photo of the digit {}.",
    "a handwritten {}.",
    "the number {}.",
    "a blurry photo of the digit {}.",
    "a {} written by hand.",
)
CHANCE = 1 / len(WORDS)


def fail(message: str) -> None:
    print(f"\nreport_screenshot: FAILED: {message}", file=sys.stderr)
    raise SystemExit(1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=REPO / "bench-out" / "report-screenshot")
    p.add_argument("--png", type=Path, default=REPO / "docs" / "report.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-size", type=float, default=0.4, help="held-out fraction, stratified (default 0.4)")
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument(
        "--reuse",
        action="store_true",
        help="reuse the work dir's checkpoint if trained with the same settings (rerun the CLI and screenshot only)",
    )
    p.add_argument("--min-acc", type=float, default=0.5, help="fail below this best single-template acc1")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--width", type=int, default=1200, help="viewport width in px")
    p.add_argument("--height", type=int, default=1600, help="viewport height in px (the part screenshotted)")
    p.add_argument("--full-page", action="store_true", help="screenshot the whole page, not the viewport")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# Data


def digit_image(pixels):
    """An 8x8 `load_digits` array (0..16, 16 = ink) as a 32x32 8-bit RGB PIL image, dark ink on white."""
    import numpy as np
    from PIL import Image

    grey = np.rint(255 - pixels * (255 / 16)).astype(np.uint8)
    return Image.fromarray(grey, mode="L").resize((8 * UPSCALE, 8 * UPSCALE), Image.Resampling.NEAREST).convert("RGB")


def load_split(seed: int, test_size: float):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    return train_test_split(
        digits.images, digits.target, test_size=test_size, stratify=digits.target, random_state=seed
    )


def write_folder(root: Path, images, labels) -> None:
    """`root/<word>/<n>.png`, n the index in the test split (zero-padded, so file order is split order)."""
    if root.exists():
        shutil.rmtree(root)
    for word in WORDS:
        (root / word).mkdir(parents=True)
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        digit_image(pixels).save(root / WORDS[label] / f"{i:04d}.png")


# ---------------------------------------------------------------------------------------------------------------
# Training


def create_model(config_path: Path, seed: int):
    import logging

    import open_clip
    import torch

    open_clip.add_model_config(str(config_path))
    torch.manual_seed(seed)
    logging.disable(logging.WARNING)  # open_clip's "No pretrained weights loaded ... initialized randomly"
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(NAME)
    finally:
        logging.disable(logging.NOTSET)
    return model, preprocess, open_clip.get_tokenizer(NAME)


def train(model, preprocess, tokenizer, images, labels, args) -> dict:
    """CLIP-style training: each image paired with its digit's caption from a random template; a symmetric
    InfoNCE loss in which every same-digit pair in a batch counts as a positive (soft targets), since with 10
    classes a batch holds many captions that describe an image equally well. The 40 distinct captions are
    encoded once per step and gathered per image (the same features as encoding each image's caption)."""
    import torch

    generator = torch.Generator().manual_seed(args.seed)
    inputs = torch.stack([preprocess(digit_image(p)) for p in images])
    labels = torch.as_tensor(labels)
    n_templates = len(TRAIN_TEMPLATES)
    tokens = tokenizer([t.format(word) for word in WORDS for t in TRAIN_TEMPLATES])  # caption c * T + t
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    warmup = max(1, args.steps // 15)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return 0.5 * args.lr * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    model.train()
    load, cpu_start = os.getloadavg()[0], time.process_time()
    start, order, at, losses = time.perf_counter(), torch.randperm(len(labels), generator=generator), 0, []
    for step in range(args.steps):
        if at + args.batch_size > len(order):
            order, at = torch.randperm(len(labels), generator=generator), 0
        idx = order[at : at + args.batch_size]
        at += args.batch_size
        y = labels[idx]
        caption = y * n_templates + torch.randint(0, n_templates, (len(idx),), generator=generator)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        image_features, text_features, scale = model(inputs[idx], tokens)
        logits = scale * image_features @ text_features[caption].T
        same = (y[:, None] == y[None, :]).float()
        targets = same / same.sum(1, keepdim=True)
        loss = 0.5 * sum(torch.sum(-targets * z.log_softmax(1), 1).mean() for z in (logits, logits.T))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if step % 50 == 0 or step == args.steps - 1:
            print(f"  step {step:>4}/{args.steps}  loss {losses[-1]:.3f}  logit scale {scale.item():.1f}", flush=True)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    model.eval()
    return {
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "load": round(max(load, os.getloadavg()[0]), 2),  # the 1-minute load average, at the start or the end
        "threads": torch.get_num_threads(),
        "epochs": round(args.steps * args.batch_size / len(labels), 2),
        "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
    }


def training_stamp(args) -> dict:
    """Everything the trained weights depend on, for `--reuse`."""
    import open_clip
    import torch

    return {
        "config": CONFIG,
        "train_templates": TRAIN_TEMPLATES,
        "upscale": UPSCALE,
        **{k: getattr(args, k) for k in ("seed", "test_size", "steps", "batch_size", "lr", "weight_decay")},
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "threads": torch.get_num_threads(),
    }


def quick_accuracy(model, preprocess, tokenizer, folder: Path) -> float:
    """acc1 of template 1 on the saved test images, in process (a check that the saved files decode to what
    the model was trained on, independent of clipzs)."""
    import torch
    from PIL import Image

    paths = [(c, p) for c, w in enumerate(WORDS) for p in sorted((folder / w).glob("*.png"))]
    with torch.no_grad():
        x = torch.stack([preprocess(Image.open(p)) for _, p in paths])
        text = tokenizer([EVAL_TEMPLATES[0].format(w) for w in WORDS])
        pred = (model.encode_image(x, normalize=True) @ model.encode_text(text, normalize=True).T).argmax(1)
    return float((pred == torch.tensor([c for c, _ in paths])).float().mean())


# ---------------------------------------------------------------------------------------------------------------
# CLI run, checks, screenshot


def run_cli(workdir: Path) -> dict:
    argv = [
        sys.executable, "-m", "clipzs.cli", "eval",
        "--dataset", "folder", "--data-root", "digits", "--split", "test",
        "--model", f"{NAME}.json", "--pretrained", f"{NAME}.safetensors",
        "--templates", "templates.txt", "--ensemble", "all", "--sweep",
        "--report", "report", "--no-cache", "--device", "cpu", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    print("$ (cd " + os.path.relpath(workdir, REPO) + " && clipzs " + " ".join(argv[4:]) + ")", flush=True)
    if (workdir / "report").exists():
        shutil.rmtree(workdir / "report")
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True)
    print(done.stdout)
    if done.returncode != 0:
        fail(f"`clipzs eval` exited with status {done.returncode}; its stderr:\n{done.stderr.strip()[-4000:]}")
    if done.stderr.strip():
        print(done.stderr.strip()[-2000:], file=sys.stderr)
    for name in ("results.json", "report.html"):
        if not (workdir / "report" / name).is_file():
            fail(f"`clipzs eval --report report` exited 0 but wrote no report/{name}")
    results = json.loads((workdir / "report" / "results.json").read_text())
    results["_cli_seconds"] = time.perf_counter() - start
    return results


def machine_strings(workdir: Path) -> list[str]:
    """Substrings that must not appear in the report: this machine's paths and user name."""
    home = str(Path.home())
    found = {str(workdir.resolve()), str(REPO), home, "/tmp/", "/work/", "/root", "/home/", "/Users/", "\\Users\\"}
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 (no user name is fine)
        user = ""
    if len(user) > 2:
        found |= {f"/{user}/", f"/{user}\n", f"\\{user}\\"}
    return sorted(s for s in found if s and s != "/")


def path_findings(text: str, needles: list[str], where: str) -> list[str]:
    out = []
    for needle in needles:
        for m in re.finditer(re.escape(needle), text):
            line = text[max(0, m.start() - 80) : m.end() + 80].replace("\n", " ")
            out.append(f"{where}: {needle!r} in …{line}…")
    return out


def screenshot(html: Path, png: Path, args, needles: list[str]) -> list[str]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        fail("the Playwright Python package is missing: pip install playwright (no browser download needed)")
    if not Path(args.chromium).is_file():
        fail(f"Chromium not found at {args.chromium}: apt-get install -y chromium, or pass --chromium PATH")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(html.resolve().as_uri(), wait_until="load")
            page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
            shown = page.inner_text("body")
            height = page.evaluate("document.documentElement.scrollHeight")
            png.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(png), full_page=args.full_page)
        finally:
            browser.close()
    print(
        f"screenshot ({args.width} px wide; page {height} px tall, "
        f"{'all of it' if args.full_page else f'top {args.height} px'})"
    )
    return path_findings(shown, needles, "rendered page text")


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    total = time.perf_counter()
    try:
        import numpy as np  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError:
        fail("scikit-learn is missing: pip install scikit-learn (or pip install -e '.[bench]')")
    import torch
    from safetensors.torch import save_file

    cores = os.cpu_count() or 1
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    train_x, test_x, train_y, test_y = load_split(args.seed, args.test_size)
    print(f"digits: {len(train_y)} training images, {len(test_y)} held-out test images (stratified, seed {args.seed})")
    write_folder(workdir / "digits" / "test", test_x, test_y)
    (workdir / "templates.txt").write_text("\n".join(EVAL_TEMPLATES) + "\n")
    config_path = workdir / f"{NAME}.json"
    config_path.write_text(json.dumps(CONFIG, indent=2) + "\n")

    model, preprocess, tokenizer = create_model(config_path, args.seed)
    params = sum(p.numel() for p in model.parameters())
    vocab = model.token_embedding.weight.numel() if hasattr(model, "token_embedding") else 0
    print(
        f"model: {params / 1e6:.2f}M parameters ({vocab / 1e6:.2f}M of them the token embedding); training "
        f"{args.steps} steps of {args.batch_size} on {torch.get_num_threads()} threads",
        flush=True,
    )
    weights, stamp_path = workdir / f"{NAME}.safetensors", workdir / "training.json"
    stamp = json.loads(json.dumps(training_stamp(args)))  # as it reads back (tuples as lists)
    previous = json.loads(stamp_path.read_text()) if stamp_path.is_file() else {}
    if args.reuse and weights.is_file() and previous.get("stamp") == stamp:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(weights)))
        model.eval()
        trained = previous["trained"]
        print(f"reusing {weights.name} (trained earlier with the same settings in {trained['seconds']:.0f} s)")
    else:
        if args.reuse:
            print("--reuse: no checkpoint trained with these settings in the work dir; training")
        stamp_path.unlink(missing_ok=True)
        trained = train(model, preprocess, tokenizer, train_x, train_y, args)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
        stamp_path.write_text(json.dumps({"stamp": stamp, "trained": trained}, indent=2) + "\n")
    print(
        f"trained in {trained['seconds']:.1f} s wall, {trained['cpu_seconds']:.0f} s CPU ({trained['epochs']:.1f} "
        f"epochs, final loss {trained['final_loss']:.3f}; load average {trained['load']:.1f} on {cores} cores)"
    )
    if trained["load"] > cores + 0.5:
        print(
            f"WARNING: the machine was busy while training (load average {trained['load']:.1f} on {cores} cores), "
            "so the caption leaves the training time out; train on an idle machine to have it in",
            file=sys.stderr,
        )
    check = quick_accuracy(model, preprocess, tokenizer, workdir / "digits" / "test")
    print(f"in-process check, template 1 on the saved test PNGs: acc1 {pct(check)}")

    results = run_cli(workdir)
    try:
        single = [(row["template"], row["acc1"]) for row in results["single"]]
        ensembles = [(row["method"], row["templates"], row["acc1"]) for row in results["ensembles"]]
    except (KeyError, TypeError) as e:
        fail(f"report/results.json is not in the expected schema (single/ensembles rows with acc1): {e!r}")
    best_single = max(a for _, a in single)
    if abs(single[0][1] - check) > 0.02:
        fail(f"clipzs's acc1 for template 1 ({pct(single[0][1])}) differs from the in-process check ({pct(check)})")
    if best_single < max(args.min_acc, 2 * CHANCE):
        fail(
            f"the best single template scores {pct(best_single)} (chance {pct(CHANCE)}, required "
            f"{pct(args.min_acc)}): the model did not learn; train longer (--steps) or check the data"
        )

    html = workdir / "report" / "report.html"
    source = re.sub(r"data:[^\"')\s]+", "data:…", html.read_text(encoding="utf-8"))
    needles = machine_strings(workdir)
    problems = path_findings(source, needles, "report.html source")
    shot = workdir / "report.png"  # copied to --png only if the page passes the checks
    problems += screenshot(html, shot, args, needles)

    trained_set = set(TRAIN_TEMPLATES)
    print("\nacc1 on the held-out digits, per template:")
    for i, (template, acc) in enumerate(single, 1):
        print(f"  {i}. {pct(acc):>6}  {template}{'' if template in trained_set else '   (never seen in training)'}")
    everything = list(range(len(EVAL_TEMPLATES)))
    by_method: dict[str, tuple[float, float, list[int]]] = {}
    for method, templates, acc in ensembles:
        best, full, subset = by_method.get(method, (-1.0, float("nan"), []))
        if acc > best:
            best, subset = acc, templates
        if templates == everything:
            full = acc
        by_method[method] = (best, full, subset)
    print(f"ensembles: all {len(everything)} templates | best subset (chosen on these same images, so optimistic)")
    for method, (best, full, subset) in by_method.items():
        print(f"  {method:<12} {pct(full):>6} | {pct(best):>6} {{{','.join(str(t + 1) for t in subset)}}}")
    overall = results.get("best") or {}
    if overall:
        print(
            f"best ensemble (the report's): {overall['method']} over "
            f"{{{','.join(str(t + 1) for t in overall['templates'])}}}, acc1 {pct(overall['acc1'])}"
        )

    seconds = time.perf_counter() - total
    print(f"\ntraining {trained['seconds']:.0f} s; clipzs eval {results['_cli_seconds']:.0f} s; total {seconds:.0f} s")
    unseen = sum(t not in trained_set for t in EVAL_TEMPLATES)
    vision, text = CONFIG["vision_cfg"], CONFIG["text_cfg"]
    busy = trained["load"] > cores + 0.5  # then the time says more about the other load than about the training
    timing = "" if busy else f", {trained['seconds']:.0f} s on {trained['threads']} CPU threads"
    caption = (
        f"clipzs report of a real run, not CLIP: a tiny CLIP-style open_clip ViT ({params / 1e6:.1f}M parameters, "
        f"{vision['layers']}-layer width-{vision['width']} image and {text['layers']}-layer width-{text['width']} "
        f"text transformer) trained from scratch with a contrastive loss on {len(train_y)} of scikit-learn's 8×8 "
        f"handwritten digits (upscaled to 32×32) captioned from {len(TRAIN_TEMPLATES)} templates: {args.steps} steps "
        f"of {args.batch_size} ({trained['epochs']:.0f} epochs){timing}. Accuracies are on the "
        f"{len(test_y)} held-out test digits, never trained on, classified from {len(EVAL_TEMPLATES)} templates "
        f"({unseen} never seen in training); the 10 classes were trained on, so this is not zero-shot in "
        "CLIP's sense. Made by benchmarks/report_screenshot.py"
    )
    (workdir / "caption.txt").write_text(caption + "\n")
    print("\nREADME caption:\n" + caption)
    if problems:
        print("\nmachine-specific strings in the report:\n  " + "\n  ".join(problems), file=sys.stderr)
        fail(
            f"the report shows a path or name of this machine (above); the screenshot was left at {shot}, "
            f"not copied to {args.png}"
        )
    args.png.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, args.png)
    print(f"\nwrote {os.path.relpath(args.png.resolve(), REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
