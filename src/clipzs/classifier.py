"""Zero-shot classification of new images: the prompts are encoded once, then images are classified in batches.

    from clipzs.classifier import ZeroShotClassifier, predict_files

    clf = ZeroShotClassifier("ViT-B/32", classnames=["cat", "dog", "car"])  # OpenAI weights, downloaded once
    proba = clf.predict_proba(["cat.jpg", "dog.png"])  # [2, 3], each row sums to 1
    names = [clf.classes[i] for i in clf.predict(["cat.jpg", "dog.png"])]
    for row in predict_files(["photos/"], clf, topk=2):  # every image under photos/, recursively
        print(row)  # {"path": ..., "top": [{"label": ..., "prob": ...}, ...]} or {"path": ..., "error": ...}

Predictions are `ensemble.combine(...).pred` over all templates, so they agree with `clipzs eval` exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import catalogue
from .encode import default_batch_size, encode_prompts
from .ensemble import VOTE_METHODS, evaluate_block, plan
from .errors import ClipzsError
from .models import ClipModel, load_model
from .preprocess import split_preprocess
from .prompts import check_templates, load_templates
from .scoring import compute_scores
from .sources.base import IMAGE_SUFFIXES, UnreadableImage, load_rgb, to_rgb

ImageLike = Image.Image | str | Path
Images = ImageLike | Sequence[ImageLike] | torch.Tensor
# Methods whose prediction for an image depends on that image alone; label-free weighting and class balancing
# (`zpe`, `carprt`, `+balanced`) learn from the whole set of images, so a batch would change each answer.
CLASSIFIER_METHODS = ("embedding", "logit", "prob", "vote", "vote-seed")


def named_classes(name: str, style: str = "clip") -> list[str]:
    """Class names of a catalogued dataset in `style` (`raw` or `clip`); shipped, so the data need not be present."""
    if catalogue.find(name) is None:
        raise ClipzsError(
            f"classes {name!r} is not a catalogued dataset: use one of {', '.join(catalogue.names())}, or a list "
            "of class names",
            parameter="classes",
        )
    return catalogue.class_names(name, style)


def _class_list(spec: str | Sequence[str], style: str) -> tuple[str, ...]:
    names = named_classes(spec, style) if isinstance(spec, str) else [str(n).strip() for n in spec]
    if not names or not all(names):
        raise ClipzsError(f"class names must be a non-empty list of non-empty names, got {list(spec)!r}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ClipzsError(f"duplicate class names: {', '.join(duplicates)}")
    return tuple(names)


def _template_list(spec: str | Sequence[str]) -> list[str]:
    if isinstance(spec, str):
        return load_templates(spec)
    return check_templates([str(t).strip() for t in spec], "the templates given")


def read_image(path: str | Path) -> Image.Image:
    """A file as an 8-bit RGB image (any mode Pillow reads, 16-bit included); ClipzsError if it cannot be decoded."""
    return load_rgb(path)


def _rgb(image: ImageLike) -> Image.Image:
    """A path decoded, or a PIL image converted as a decoded file would be, so both classify alike."""
    return to_rgb(image) if isinstance(image, Image.Image) else read_image(image)


class ZeroShotClassifier:
    """CLIP zero-shot classifier over `classnames`, with the prompts of `templates` combined by `ensemble`.

    `model`: a model name (see `load_model`, with `pretrained`, `device`, `precision`, `cache_dir`) or a loaded
    `ClipModel`. `classnames`: a list of names, or `"cifar100"` / `"cifar10"` for those sets' names in
    `classname_style` (`clip`: "aquarium fish", `raw`: "aquarium_fish"). `templates`: a built-in set name,
    a template file, or a list of templates with `{}`. The text features [T, C, D] are computed once, here.

    Probabilities [N, C] per `ensemble` method:
      - `embedding`: softmax of the logits against each class's renormalised mean text embedding (CLIP paper);
      - `logit`: softmax of the mean logits over templates;
      - `prob`: mean over templates of the per-template softmax;
      - `vote`, `vote-seed`: the fraction of templates whose top class is that class. Ties between classes are
        broken by the method's own rule, so `predict` may pick any of the classes with the largest fraction.
    `predict` is always `ensemble.combine(ensemble, scores, text, all templates).pred`. Methods that weigh
    templates or classes from the whole image set (zpe, carprt, +balanced) are refused: see CLASSIFIER_METHODS.
    """

    def __init__(
        self,
        model: str | ClipModel = "ViT-B/32",
        *,
        classnames: str | Sequence[str],
        templates: str | Sequence[str] = "seed",
        ensemble: str = "embedding",
        classname_style: str = "clip",
        pretrained: str | None = None,
        device: str | torch.device | None = None,
        precision: str | None = None,
        cache_dir: str | Path | None = None,
    ):
        if ensemble not in CLASSIFIER_METHODS:
            raise ClipzsError(
                f"ensemble method {ensemble!r} cannot classify images one at a time: use one of "
                f"{', '.join(CLASSIFIER_METHODS)} (set-level methods such as zpe are for `clipzs eval`)"
            )
        self.ensemble = ensemble
        self.classes = _class_list(classnames, classname_style)
        self.templates = _template_list(templates)
        self.clip = (
            model if isinstance(model, ClipModel) else load_model(model, pretrained, device, precision, cache_dir)
        )
        self.preprocessing = split_preprocess(self.clip.preprocess)
        self.text = encode_prompts(self.clip, self.templates, list(self.classes)).features  # [T, C, D]
        self.plan = plan([(ensemble, tuple(range(len(self.templates))))], self.text)

    def _inputs(self, images: Images) -> torch.Tensor | list[ImageLike]:
        """A preprocessed batch [N, 3, S, S], or a list of PIL images and paths; anything else is refused."""
        if isinstance(images, torch.Tensor):
            x = images[None] if images.ndim == 3 else images
            size = self.preprocessing.square
            if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point() or (size and x.shape[2:] != (size, size)):
                raise ClipzsError(
                    f"an image tensor must be float [N, 3, H, W] as `clip.preprocess` makes it, got {x.dtype} "
                    f"{tuple(x.shape)}"
                )
            return x
        items = [images] if isinstance(images, ImageLike) else list(images)
        wrong = [type(i).__name__ for i in items if not isinstance(i, ImageLike)]
        if wrong:
            raise ClipzsError(f"images must be PIL images or paths, got {', '.join(sorted(set(wrong)))}")
        return items

    @torch.inference_mode()
    def encode(self, images: Images, batch_size: int | None = None) -> torch.Tensor:
        """Unit-norm image features [N, D] (float32, CPU).

        `images`: a PIL image, a path, a list of those, or a float tensor [N, 3, H, W] (or [3, H, W]) already
        through the model's full preprocessing (`self.clip.preprocess(image)`, normalised). PIL images and files
        take the same path as `encode_images`: PIL steps per image, scaling and normalising batched on the device.
        """
        items = self._inputs(images)
        batch_size = batch_size or default_batch_size(self.clip.device)
        if batch_size < 1:
            raise ClipzsError(f"batch size must be at least 1, got {batch_size}")
        chunks = [torch.empty(0, self.text.shape[2])]
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            if isinstance(batch, torch.Tensor):
                x = batch.to(self.clip.device, self.clip.dtype)
            else:
                pixels = torch.from_numpy(np.stack([self.preprocessing.pixels(_rgb(i)) for i in batch]))
                x = self.preprocessing.normalize(pixels.permute(0, 3, 1, 2).to(self.clip.device), self.clip.dtype)
            chunks.append(F.normalize(self.clip.model.encode_image(x).float(), dim=-1).cpu())
        return torch.cat(chunks)

    def classify_features(self, image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Predictions [N] (int64) and probabilities [N, C] (float32) from unit-norm image features [N, D]."""
        block = compute_scores(image, self.text, self.clip.logit_scale)  # [N, T, C]
        votes = self.ensemble in VOTE_METHODS
        out = evaluate_block(
            block,
            torch.zeros(len(image), dtype=torch.int64),
            self.plan,
            want_probs=frozenset() if votes else frozenset({0}),
            want_pred=True,
        )
        # votes: the share of templates whose argmax is each class; else the mean of probabilities (prob) or the
        # softmax of the class scores
        proba = F.one_hot(block.argmax(dim=2), len(self.classes)).float().mean(dim=1) if votes else out.probs[0]
        return out.pred[0].numpy(), proba.numpy()

    def classify(self, images: Images, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Predictions [N] and probabilities [N, C] of `images` (see `encode`) from one pass over them."""
        return self.classify_features(self.encode(images, batch_size))

    def predict_proba(self, images: Images, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities [N, C] (float32, rows sum to 1) of `images` (see `encode`); columns follow `classes`."""
        return self.classify(images, batch_size)[1]

    def predict(self, images: Images, batch_size: int | None = None) -> np.ndarray:
        """Predicted class indices [N] (int64) into `classes` of `images` (see `encode`)."""
        return self.classify(images, batch_size)[0]


def _expand(paths: Sequence[str | Path]) -> Iterator[tuple[str, str | None]]:
    """(file, None) per file given and per image under each directory (recursively, sorted); (dir, error) for a
    directory without images."""
    for path in map(Path, paths):
        if not path.is_dir():
            yield str(path), None
            continue
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            yield str(path), f"no images in this directory (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        yield from ((str(p), None) for p in files)


def _top(pred: int, proba: np.ndarray, classes: Sequence[str], k: int) -> list[dict]:
    """The k most probable classes, the predicted one first (it has the largest probability; for votes it breaks
    the tie)."""
    order = [pred] + [int(c) for c in np.argsort(-proba, kind="stable") if c != pred]
    return [{"label": classes[c], "prob": float(proba[c])} for c in order[:k]]


def predict_files(
    paths: Sequence[str | Path], classifier: ZeroShotClassifier, topk: int = 5, batch_size: int | None = None
) -> list[dict]:
    """Classify image files and every image under directories, in order, decoding one batch at a time.

    Returns per image `{"path", "top": [{"label", "prob"}, ...]}` (at most `topk`, most probable first,
    `top[0]` being `classifier.predict`); a file that cannot be decoded, or a directory without images, gets
    `{"path", "error"}` instead, the error a one-line reason (print it as `f"{path}: {error}"`), and the
    others are still classified.
    """
    if topk < 1:
        raise ClipzsError(f"topk must be at least 1, got {topk}")
    batch_size = batch_size or default_batch_size(classifier.clip.device)
    results: list[dict] = []
    pending: list[tuple[dict, Image.Image]] = []

    def flush() -> None:
        preds, probas = classifier.classify([image for _, image in pending], batch_size)
        for (result, _), pred, proba in zip(pending, preds, probas, strict=True):
            result["top"] = _top(int(pred), proba, classifier.classes, topk)
        pending.clear()

    for path, error in _expand(paths):
        result = {"path": path}
        results.append(result)
        if error is None:
            try:
                pending.append((result, read_image(path)))
            except ClipzsError as e:
                error = e.reason if isinstance(e, UnreadableImage) else " ".join(str(e).split())
        if error is not None:
            result["error"] = error
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return results
