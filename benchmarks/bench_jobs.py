"""The jobs `bench_eval.py` measures, each in a fresh process: `python bench_jobs.py KIND SPEC.json`.

They live apart from the driver so that the driver never imports torch: Linux starts a child's peak RSS
(`ru_maxrss`) at the RSS of the process that spawned it, so a heavy driver would inflate every job's.
Every job loads the model through clipzs's own loader, so all of them run on identical fp32 (or bf16)
weights and the same preprocessing; only the algorithm differs. A job writes its result JSON to the
spec's `out`.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import helpers  # noqa: E402  (the tests' fixtures: random weights in OpenAI's format, CIFAR-format data)

from clipzs.encode import TEXT_BATCH, encode_text
from clipzs.models import ClipModel, load_model
from clipzs.prompts import build_prompts, load_templates
from clipzs.sources import ImageSource
from clipzs.sources.cifar import load_cifar

MODEL = "ViT-B/32"
OPEN_CLIP_CONFIG = "ViT-B-32-quickgelu"
SEED = 0
TEXT_REPEATS = 2


# ---------------------------------------------------------------- setup: synthetic checkpoint and data


def job_setup(spec: dict) -> dict:
    """Write the checkpoint and the data set; report what torch sees of the machine."""
    helpers.save_torchscript_fp16(helpers.random_state_dict(OPEN_CLIP_CONFIG, SEED), Path(spec["checkpoint"]), 224)
    helpers.write_cifar100(Path(spec["data_root"]), n_test=spec["images"], n_train=None, seed=SEED)
    return {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_autocast_dtype": str(torch.get_autocast_dtype("cpu")),
        "torch_config": torch.__config__.parallel_info(),
    }


# ---------------------------------------------------------------- measured jobs


def load_inputs(spec: dict) -> tuple[ClipModel, ImageSource]:
    """The model at the spec's precision, through clipzs's loader, and the first `images` test images."""
    clip = load_model(MODEL, spec["checkpoint"], device=spec["device"], precision=spec.get("precision", "fp32"))
    images = load_cifar("cifar100", spec["data_root"], "test", download=False)
    return clip, images.subset(range(min(spec["images"], len(images))))


def original_predict(clip: ClipModel, image, templates: list[str], classes: list[str]) -> int:
    """The original script for one image: per template, encode 100 prompts and the image, argmax; then vote."""
    preds = []
    for template in templates:
        with torch.no_grad():
            text = clip.tokenizer([template.format(c) for c in classes]).to(clip.device)
            text_features = clip.model.encode_text(text)
            image_features = clip.model.encode_image(clip.preprocess(image).unsqueeze(0).to(clip.device, clip.dtype))
        image_features /= image_features.norm(dim=-1, keepdim=True)
        text_features /= text_features.norm(dim=-1, keepdim=True)
        probs = (100.0 * image_features @ text_features.T).softmax(dim=-1)
        preds.append(int(probs.argmax()))
    return max(set(preds), key=preds.count)


def job_original(spec: dict) -> dict:
    """Per-image timings of the original loop; the first image is a warm-up, left out of the rate."""
    clip, images = load_inputs(spec)
    templates, classes = load_templates("seed"), list(images.classes)
    times, preds = [], []
    for i in range(len(images)):
        start = time.perf_counter()
        preds.append(original_predict(clip, images.load(i), templates, classes))
        times.append(time.perf_counter() - start)
    return {
        "images": len(images),
        "images_per_s": (len(times) - 1) / sum(times[1:]),
        "text_s": None,
        "acc1": float(np.mean(np.asarray(preds) == images.labels)),
        "vote_seed_pred": preds,
        "image_seconds": [round(t, 3) for t in times],
        "prompts_encoded_per_image": len(templates) * len(classes),
        "threads": torch.get_num_threads(),
    }


class LabelledImages(Dataset):
    """(preprocess(PIL image), label) pairs with a `classes` list, as CLIP_benchmark's datasets yield."""

    def __init__(self, images: ImageSource, transform: Callable):
        self.images, self.transform, self.classes = images, transform, list(images.classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images.load(i)), int(self.images.labels[i])


def recorded(fn: Callable, store: dict, key: str) -> Callable:
    """`fn`, keeping its run time in `store[key + "_s"]` and its return value in `store[key]`."""

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        store[key] = fn(*args, **kwargs)
        store[f"{key}_s"] = time.perf_counter() - start
        return store[key]

    return wrapper


def scalar_safe_accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1,)) -> list[float]:
    """CLIP_benchmark's `accuracy`, unchanged but for `float()` of a 0-d tensor.

    Its own calls `float()` on a 1-element array, which NumPy >= 2.4 refuses (LAION-AI/CLIP_benchmark#147).
    It runs after everything timed, on the logits, so swapping it in changes no measurement.
    """
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [float(correct[:k].reshape(-1).float().sum()) / len(target) for k in topk]


def job_clip_benchmark(spec: dict) -> dict:
    """CLIP_benchmark's `evaluate` on the fp32 model, its two steps (text classifier, images) timed by wrapping.

    CLIP_benchmark fills templates with `str.format(c=classname)`, so the seed templates' `{}` become `{c}`.
    No `amp` in the spec means CLIP_benchmark's own default.
    """
    from clip_benchmark.metrics import zeroshot_classification as zs

    clip, images = load_inputs(spec)
    loader = DataLoader(LabelledImages(images, clip.preprocess), batch_size=spec["batch_size"], num_workers=0)
    templates = [t.replace("{}", "{c}") for t in load_templates("seed")]
    amp = spec.get("amp", inspect.signature(zs.evaluate).parameters["amp"].default)
    store: dict = {}
    zs.zero_shot_classifier = recorded(zs.zero_shot_classifier, store, "text")
    zs.run_classification = recorded(zs.run_classification, store, "classify")
    zs.accuracy = scalar_safe_accuracy
    metrics = recorded(zs.evaluate, store, "evaluate")(
        clip.model, loader, clip.tokenizer, list(images.classes), templates, spec["device"], amp=amp
    )
    logits, _ = store["classify"]
    return {
        "images": len(images),
        "images_per_s": len(images) / store["classify_s"],
        "text_s": store["text_s"],
        "acc1": metrics["acc1"],
        "pred": logits.argmax(dim=1).tolist(),
        "evaluate_s": store["evaluate_s"],
        "amp": amp,
        "autocast_dtype": str(torch.get_autocast_dtype(clip.device.type)) if amp else None,
        "batch_size": spec["batch_size"],
        "workers": 0,
        "threads": torch.get_num_threads(),
    }


@torch.inference_mode()
def plain_encode_text(clip: ClipModel, prompts: list[str], batch_size: int = TEXT_BATCH) -> torch.Tensor:
    """Unit-norm features [P, D] from `model.encode_text` on full 77-token rows: the untrimmed reference."""
    tokens = clip.tokenizer(prompts).to(clip.device)
    chunks = [clip.model.encode_text(tokens[s : s + batch_size]).float() for s in range(0, len(prompts), batch_size)]
    return F.normalize(torch.cat(chunks), dim=-1).cpu()


def best_time(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    """Fastest of `repeats` timed calls (the first doubles as warm-up), and the last output."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def job_text(spec: dict) -> dict:
    """Text throughput on the 500 seed prompts: clipzs's trimmed `encode_text` against 77-token `encode_text`.

    Both include tokenisation and normalisation and use the same batch size (clipzs's `TEXT_BATCH`).
    """
    clip, images = load_inputs(spec)
    prompts = [p for row in build_prompts(load_templates("seed"), list(images.classes)) for p in row]
    trimmed_s, trimmed = best_time(lambda: encode_text(clip, prompts).features, TEXT_REPEATS)
    plain_s, plain = best_time(lambda: plain_encode_text(clip, prompts), TEXT_REPEATS)
    return {
        "precision": clip.precision,
        "prompts": len(prompts),
        "trimmed_s": trimmed_s,
        "plain_s": plain_s,
        "trimmed_prompts_per_s": len(prompts) / trimmed_s,
        "plain_prompts_per_s": len(prompts) / plain_s,
        "speedup": plain_s / trimmed_s,
        "max_abs_diff": float((trimmed - plain).abs().max()),
        "repeats": TEXT_REPEATS,
        "batch_size": TEXT_BATCH,
        "threads": torch.get_num_threads(),
    }


JOBS: dict[str, Callable[[dict], dict]] = {
    "setup": job_setup,
    "original": job_original,
    "clip-benchmark": job_clip_benchmark,
    "text": job_text,
}


def main(argv: list[str]) -> int:
    """Run job `argv[0]` with the spec JSON file `argv[1]`; write its result to the spec's `out`."""
    kind, spec_path = argv
    spec = json.loads(Path(spec_path).read_text())
    result = JOBS[kind](spec)
    Path(spec["out"]).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
