import numpy as np
import pytest
import torch
from helpers import CIFAR10_CLASSES, CIFAR100_CLASSES
from PIL import Image

from clipzs.classifier import CLASSIFIER_METHODS, ZeroShotClassifier, named_classes, predict_files
from clipzs.encode import encode_images, encode_prompts
from clipzs.ensemble import METHODS, VOTE_METHODS
from clipzs.errors import ClipzsError
from clipzs.models import load_model
from clipzs.scoring import Features, Scores, predictions
from clipzs.scoring import compute_scores as scores
from clipzs.sources import ArraySource

LABELS = ["red", "green", "blue", "striped", "dark"]
TEMPLATES = ["a photo of a {}", "a {} thing", "what is {}?", "{}!"]
ATOL = 1e-5  # probabilities of one image encoded in different batches: float sums differ, x100 by logit_scale


def arrays(n: int, size: int = 40, seed: int = 0) -> np.ndarray:
    """[n, size, size, 3] uint8 images of differing colour and stripes, so the random model tells them apart."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n, 1, 1, 3))
    stripes = ((np.arange(size)[None, :, None, None] + np.arange(n)[:, None, None, None] * 3) % 10 < 5) * 90
    noise = rng.integers(0, 40, size=(n, size, size, 3))
    return np.clip(base + stripes + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def clip(tiny_config, tiny_checkpoint):
    return load_model(str(tiny_config), str(tiny_checkpoint))


@pytest.fixture(scope="module")
def classifiers(clip):
    return {m: ZeroShotClassifier(clip, classnames=LABELS, templates=TEMPLATES, ensemble=m) for m in CLASSIFIER_METHODS}


@pytest.fixture(scope="module")
def pil_images():
    return [Image.fromarray(a) for a in arrays(12)]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Every image mode the CLI must read, a nested folder, two damaged files and a non-image file.

    Returns the folder and, per good file name, the 8-bit RGB image its decoding must give.
    """
    root = tmp_path_factory.mktemp("images")
    (root / "nested" / "deeper").mkdir(parents=True)
    a = arrays(8, seed=1)
    expected = {}
    Image.fromarray(a[0]).save(root / "rgb.jpg", quality=95)
    expected["rgb.jpg"] = Image.open(root / "rgb.jpg").convert("RGB")
    Image.fromarray(a[1]).save(root / "rgb.png")
    expected["rgb.png"] = Image.fromarray(a[1])
    Image.fromarray(a[2]).save(root / "lossless.webp", lossless=True)
    expected["lossless.webp"] = Image.fromarray(a[2])
    gray = a[3, :, :, 0]
    Image.fromarray(gray, mode="L").save(root / "gray.png")
    expected["gray.png"] = Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))
    rgba = np.concatenate([a[4], np.full((40, 40, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(root / "rgba.png")
    expected["rgba.png"] = Image.fromarray(a[4])
    palette = Image.fromarray(a[5]).quantize(16)
    palette.save(root / "palette.png")
    expected["palette.png"] = palette.convert("RGB")
    deep = a[6, :, :, 0].astype(np.uint16) * 257 + 100  # 16-bit grey; 8-bit is round(v / 257)
    Image.fromarray(deep).save(root / "nested" / "deep16.png")
    expected["nested/deep16.png"] = Image.fromarray(np.repeat(np.round(deep / 257).astype(np.uint8)[:, :, None], 3, 2))
    Image.fromarray(a[7]).save(root / "nested" / "deeper" / "lossy.webp", quality=80)
    expected["nested/deeper/lossy.webp"] = Image.open(root / "nested" / "deeper" / "lossy.webp").convert("RGB")
    (root / "corrupt.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    png = (root / "rgb.png").read_bytes()
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "notes.txt").write_text("not an image")
    assert Image.open(root / "nested" / "deep16.png").mode.startswith("I")
    assert Image.open(root / "palette.png").mode == "P"
    return root, expected


def test_every_image_mode_is_decoded_and_damaged_files_are_reported_and_skipped(classifiers, image_dir):
    root, expected = image_dir
    clf = classifiers["embedding"]
    results = predict_files([root], clf, topk=3, batch_size=3)
    names = [*expected, "corrupt.jpg", "truncated.png"]  # notes.txt is not an image
    assert [r["path"] for r in results] == sorted(str(root / n) for n in names)
    errors = {r["path"]: r["error"] for r in results if "error" in r}
    assert set(errors) == {str(root / "corrupt.jpg"), str(root / "truncated.png")}
    for path, error in errors.items():
        assert error and "\n" not in error and not error.startswith("cannot read image"), error
        assert "top" not in next(r for r in results if r["path"] == path)
    good = {r["path"]: r["top"] for r in results if "error" not in r}
    want = clf.predict_proba([expected[n] for n in expected])
    for name, proba in zip(expected, want, strict=True):
        top = good[str(root / name)]
        assert [t["label"] for t in top] == [LABELS[i] for i in np.argsort(-proba, kind="stable")[:3]], name
        np.testing.assert_allclose([t["prob"] for t in top], np.sort(proba)[::-1][:3], rtol=0, atol=ATOL)
    modes = ["gray.png", "rgba.png", "palette.png"]  # an opened image classifies as its file does
    opened = clf.predict_proba([Image.open(root / n) for n in modes])
    np.testing.assert_allclose(opened, clf.predict_proba([root / n for n in modes]), rtol=0, atol=ATOL)


def test_files_are_classified_in_the_order_given_and_a_missing_one_is_reported(classifiers, image_dir, tmp_path):
    root, _ = image_dir
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    paths = [root / "rgb.png", root / "missing.jpg", empty, root / "gray.png"]
    results = predict_files(paths, classifiers["logit"], topk=10)
    assert [r["path"] for r in results] == [str(p) for p in paths]
    assert ["error" in r for r in results] == [False, True, True, False]
    assert len(results[0]["top"]) == len(LABELS)  # topk above C gives every class
    assert sum(t["prob"] for t in results[0]["top"]) == pytest.approx(1, abs=1e-5)
    for method in VOTE_METHODS:  # the first label is the prediction, whose tie-break a sort by share would lose
        clf = classifiers[method]
        good = [r for r in predict_files([root], clf) if "top" in r]
        assert [r["top"][0]["label"] for r in good] == [clf.classes[i] for i in clf.predict([r["path"] for r in good])]


def test_classifier_methods_are_ensemble_methods():
    assert set(CLASSIFIER_METHODS) <= set(METHODS)


@pytest.mark.parametrize("method", CLASSIFIER_METHODS)
def test_predictions_are_those_of_evaluate_and_probabilities_sum_to_one(clip, classifiers, method):
    pixels = arrays(12)
    clf = classifiers[method]
    pred, proba = clf.classify([Image.fromarray(a) for a in pixels], batch_size=5)

    images = ArraySource("t", "test", LABELS, np.zeros(len(pixels), np.int64), pixels)
    image = encode_images(clip, images, batch_size=5, progress=False).features
    text = encode_prompts(clip, TEMPLATES, LABELS).features
    features = Features(image, text, torch.from_numpy(images.labels), clip.logit_scale)
    (expected,) = predictions(Scores(features, block=5), [(method, tuple(range(len(TEMPLATES))))])
    np.testing.assert_array_equal(pred, expected.numpy())
    assert len(set(pred.tolist())) > 1  # the model tells the images apart, so the test can fail

    assert proba.shape == (12, len(LABELS)) and (proba >= 0).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=0, atol=1e-5)
    if method in VOTE_METHODS:
        np.testing.assert_allclose(proba * len(TEMPLATES), np.round(proba * len(TEMPLATES)), atol=1e-5)
        assert (proba[np.arange(12), pred] == proba.max(axis=1)).all()
    else:
        np.testing.assert_array_equal(pred, proba.argmax(axis=1))
    np.testing.assert_array_equal(clf.predict([Image.fromarray(a) for a in pixels]), pred)


def test_score_probabilities_follow_their_definitions(classifiers, pil_images):
    image = classifiers["logit"].encode(pil_images)
    text = classifiers["logit"].text
    logits = scores(image, text, classifiers["logit"].clip.logit_scale)  # [N, T, C]
    np.testing.assert_allclose(classifiers["logit"].classify_features(image)[1], logits.mean(1).softmax(1), atol=1e-6)
    np.testing.assert_allclose(classifiers["prob"].classify_features(image)[1], logits.softmax(2).mean(1), atol=1e-6)
    mean_text = torch.nn.functional.normalize(text.mean(0), dim=-1)
    paper = (classifiers["embedding"].clip.logit_scale * image @ mean_text.T).softmax(1)
    np.testing.assert_allclose(classifiers["embedding"].classify_features(image)[1], paper, atol=1e-5)


def test_tensor_path_and_pil_inputs_give_the_same_probabilities(classifiers, pil_images, tmp_path):
    clf = classifiers["embedding"]
    from_pil = clf.predict_proba(pil_images, batch_size=5)
    tensor = torch.stack([clf.clip.preprocess(i) for i in pil_images])
    np.testing.assert_allclose(clf.predict_proba(tensor, batch_size=7), from_pil, rtol=0, atol=ATOL)
    np.testing.assert_allclose(clf.predict_proba(tensor[3]), from_pil[3:4], rtol=0, atol=ATOL)
    paths = []
    for i, image in enumerate(pil_images[:3]):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    np.testing.assert_allclose(clf.predict_proba([str(p) for p in paths]), from_pil[:3], rtol=0, atol=ATOL)
    np.testing.assert_allclose(clf.predict_proba(paths[0]), from_pil[:1], rtol=0, atol=ATOL)
    np.testing.assert_allclose(clf.predict_proba(pil_images[1]), from_pil[1:2], rtol=0, atol=ATOL)
    assert clf.predict_proba([]).shape == (0, len(LABELS)) and clf.predict([]).shape == (0,)


def test_named_class_sets_are_shipped_and_a_model_name_loads(tiny_config, tiny_checkpoint):
    assert named_classes("cifar100", "raw") == CIFAR100_CLASSES
    assert named_classes("cifar100")[1] == "aquarium fish"
    clf = ZeroShotClassifier(str(tiny_config), classnames="cifar10", pretrained=str(tiny_checkpoint))
    assert clf.classes == tuple(CIFAR10_CLASSES) and clf.text.shape == (5, 10, 16)  # seed templates
    assert clf.predict(Image.fromarray(arrays(1)[0])).shape == (1,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ensemble": "median"}, "cannot classify images one at a time"),
        ({"ensemble": "zpe"}, "cannot classify images one at a time"),  # its template weights come from the set
        ({"classnames": []}, "non-empty"),
        ({"classnames": ["cat", " "]}, "non-empty"),
        ({"classnames": ["cat", "dog", "cat"]}, "duplicate"),
        ({"classnames": "imagenet"}, "classes .imagenet. is not a catalogued dataset.*imagenet1k"),
        ({"templates": ["a photo of a {}", "a photo"]}, "no {}"),
        ({"templates": []}, "no templates"),
        ({"templates": "no-such-set"}, "neither a built-in set"),
    ],
)
def test_bad_arguments_raise_clipzs_error(clip, kwargs, message):
    with pytest.raises(ClipzsError, match=message):
        ZeroShotClassifier(clip, **{"classnames": LABELS, **kwargs})


def test_bad_images_raise_clipzs_error(classifiers, tmp_path):
    clf = classifiers["vote"]
    with pytest.raises(ClipzsError, match="float"):
        clf.predict(torch.zeros(2, 3, 32, 32))  # not the model's size
    with pytest.raises(ClipzsError, match="float"):
        clf.predict(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ClipzsError, match="PIL images or paths"):
        clf.predict([np.zeros((8, 8, 3), np.uint8)])
    deep = Image.fromarray(np.full((8, 8), 128 * 257, np.uint16))  # a 16-bit PIL image is scaled, not clipped
    grey = Image.fromarray(np.full((8, 8, 3), 128, np.uint8))
    np.testing.assert_allclose(clf.predict_proba(deep), clf.predict_proba(grey), rtol=0, atol=1e-6)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ClipzsError, match="bad.png"):
        clf.predict(tmp_path / "bad.png")
