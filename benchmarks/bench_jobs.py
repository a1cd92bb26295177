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
import pickle
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from clipzs.datasets import ImageSet, load_dataset
from clipzs.encode import TEXT_BATCH, encode_text
from clipzs.models import ClipModel, load_model
from clipzs.prompts import build_prompts, load_templates

CIFAR100_CLASSES = (  # noqa: SIM905 (one string reads better than 100 quoted names)
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel "
    "can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
    "dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion "
    "lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree "
    "pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea "
    "seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table "
    "tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman "
    "worm"
).split()
MODEL = "ViT-B/32"
OPEN_CLIP_CONFIG = "ViT-B-32-quickgelu"
SEED = 0
TEXT_REPEATS = 2


# ---------------------------------------------------------------- setup: synthetic checkpoint and data


class _OpenAIStyle(torch.nn.Module):
    """Holds tensors under OpenAI's key names plus the extra buffers OpenAI's archives carry."""

    def __init__(self, state: dict[str, torch.Tensor], image_size: int):
        super().__init__()
        for key, value in state.items():
            module = self
            *parents, leaf = key.split(".")
            for part in parents:
                if not hasattr(module, part):
                    module.add_module(part, torch.nn.Module())
                module = getattr(module, part)
            module.register_buffer(leaf, value.clone())
        self.register_buffer("input_resolution", torch.tensor(image_size))
        self.register_buffer("context_length", torch.tensor(77))
        self.register_buffer("vocab_size", torch.tensor(49408))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.logit_scale


def random_vit_b32() -> dict[str, torch.Tensor]:
    """Seeded random ViT-B/32 weights with OpenAI's logit scale (100).

    The image tower's class and position embeddings are zeroed so that its output depends on the image
    content: plain random weights map every image to nearly the same feature and class, which would make
    the accuracy column (a cross-check between jobs, not a quality measure) say nothing.
    """
    torch.manual_seed(SEED)
    model = open_clip.create_model(OPEN_CLIP_CONFIG)
    with torch.no_grad():
        model.logit_scale.fill_(np.log(100.0))
        model.visual.class_embedding.zero_()
        model.visual.positional_embedding.zero_()
    return model.state_dict()


def save_openai_checkpoint(state: dict[str, torch.Tensor], path: Path) -> Path:
    """A TorchScript archive with fp16 weights, as OpenAI ships its `.pt` checkpoints."""
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.jit.script(_OpenAIStyle(half, image_size=224)).save(str(path))
    return path


def cifar_pixels(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[N, 3072] uint8 images (CIFAR's channel-major rows) whose colour and stripes depend on the label."""
    base = np.stack([labels * 37 % 256, labels * 91 % 256, labels * 151 % 256], axis=1)[:, :, None, None]
    noise = rng.integers(0, 64, size=(len(labels), 3, 32, 32))
    stripes = ((np.arange(32)[None, :] + labels[:, None]) % 8 < 4)[:, None, None, :] * 60
    return np.clip(base + noise + stripes, 0, 255).astype(np.uint8).reshape(len(labels), 3072)


def write_cifar100_test(root: Path, n: int) -> Path:
    """root/cifar-100-python/{test,meta} in the official pickle layout, with `n` synthetic test images."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    fine = rng.integers(0, 100, size=n)
    test = {
        "filenames": [f"test_{i}.png" for i in range(n)],
        "batch_label": "test batch",
        "fine_labels": fine.tolist(),
        "coarse_labels": (fine // 5).tolist(),
        "data": cifar_pixels(fine, rng),
    }
    meta = {"fine_label_names": CIFAR100_CLASSES, "coarse_label_names": [f"super{i}" for i in range(20)]}
    for name, content in (("test", test), ("meta", meta)):
        with open(folder / name, "wb") as f:
            pickle.dump(content, f, protocol=2)
    return root


def job_setup(spec: dict) -> dict:
    """Write the checkpoint and the data set; report what torch sees of the machine."""
    save_openai_checkpoint(random_vit_b32(), Path(spec["checkpoint"]))
    write_cifar100_test(Path(spec["data_root"]), spec["images"])
    return {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_autocast_dtype": str(torch.get_autocast_dtype("cpu")),
        "torch_config": torch.__config__.parallel_info(),
    }


# ---------------------------------------------------------------- measured jobs


def load_inputs(spec: dict) -> tuple[ClipModel, ImageSet]:
    """The model at the spec's precision, through clipzs's loader, and the first `images` test images."""
    clip = load_model(MODEL, spec["checkpoint"], device="cpu", precision=spec.get("precision", "fp32"))
    images = load_dataset("cifar100", spec["data_root"], "test")
    return clip, images.subset(range(min(spec["images"], len(images))))


def original_predict(clip: ClipModel, image, templates: list[str], classes: list[str]) -> int:
    """The original script for one image: per template, encode 100 prompts and the image, argmax; then vote."""
    preds = []
    for template in templates:
        with torch.no_grad():
            text = clip.tokenizer([template.format(c) for c in classes])
            text_features = clip.model.encode_text(text)
            image_features = clip.model.encode_image(clip.preprocess(image).unsqueeze(0))
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
        preds.append(original_predict(clip, images.image(i), templates, classes))
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

    def __init__(self, images: ImageSet, transform: Callable):
        self.images, self.transform, self.classes = images, transform, list(images.classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images.image(i)), int(self.images.labels[i])


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
        clip.model, loader, clip.tokenizer, list(images.classes), templates, "cpu", amp=amp
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
        "autocast_dtype": str(torch.get_autocast_dtype("cpu")) if amp else None,
        "batch_size": spec["batch_size"],
        "workers": 0,
        "threads": torch.get_num_threads(),
    }


@torch.inference_mode()
def plain_encode_text(clip: ClipModel, prompts: list[str], batch_size: int = TEXT_BATCH) -> torch.Tensor:
    """Unit-norm features [P, D] from `model.encode_text` on full 77-token rows: the untrimmed reference."""
    tokens = clip.tokenizer(prompts)
    chunks = [clip.model.encode_text(tokens[s : s + batch_size]).float() for s in range(0, len(prompts), batch_size)]
    return F.normalize(torch.cat(chunks), dim=-1)


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
