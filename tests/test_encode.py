import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from clipzs import encode
from clipzs.encode import encode_images, encode_prompts, encode_text, text_forward
from clipzs.errors import ClipzsError
from clipzs.models import load_model
from clipzs.sources.cifar import load_cifar
from clipzs.sources.folder import load_folder

PROMPTS = [
    "a",
    "A photo of a aquarium_fish",
    "How do you think about sweet_pepper?",
    "a black and white photo of the big lawn mower, which is a very long prompt indeed with many words in it.",
    "What is x?",
]


@pytest.fixture(scope="module")
def clip(tiny_config, tiny_checkpoint):
    return load_model(str(tiny_config), str(tiny_checkpoint))


def test_trimmed_text_forward_equals_full_context_encode_text(clip):
    tokens = clip.tokenizer(PROMPTS)
    with torch.inference_mode():
        full = clip.model.encode_text(tokens)
        for i in range(len(PROMPTS)):  # each prompt alone: trimmed to its own length
            torch.testing.assert_close(text_forward(clip.model, tokens[i : i + 1]), full[i : i + 1], rtol=0, atol=1e-5)
        torch.testing.assert_close(text_forward(clip.model, tokens), full, rtol=0, atol=1e-5)


def test_encode_text_restores_prompt_order_across_length_sorted_batches(clip):
    tokens = clip.tokenizer(PROMPTS)
    with torch.inference_mode():
        expected = F.normalize(clip.model.encode_text(tokens), dim=-1)
    got = encode_text(clip, PROMPTS, batch_size=2).features
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert got.norm(dim=-1).sub(1).abs().max() < 1e-5


def test_prompt_features_are_template_by_class(clip):
    text = encode_prompts(clip, ["a {}", "the {}!"], ["cat", "dog", "lawn mower"]).features
    assert text.shape == (2, 3, 16)
    torch.testing.assert_close(text[1, 2], encode_text(clip, ["the lawn mower!"]).features[0], rtol=0, atol=1e-6)


def test_batched_image_features_equal_one_at_a_time(clip, cifar_root):
    images = load_cifar("cifar100", cifar_root).subset(range(7))
    batched = encode_images(clip, images, batch_size=3, progress=False).features
    with torch.inference_mode():
        single = torch.cat([clip.model.encode_image(clip.preprocess(images.load(i))[None]) for i in range(7)])
    torch.testing.assert_close(batched, F.normalize(single, dim=-1), rtol=0, atol=1e-5)


def test_device_resize_path_gives_the_same_features_as_the_pil_path(clip, cifar_root):
    images = load_cifar("cifar100", cifar_root).subset(range(9))
    pil = encode_images(clip, images, batch_size=4, progress=False, resize_on_device=False).features
    device = encode_images(clip, images, batch_size=4, progress=False, resize_on_device=True).features
    assert torch.equal(pil, device)


def test_preprocessing_split_and_batched_resize_reproduce_the_model_transform(clip):
    import numpy as np
    from PIL import Image

    from clipzs.preprocess import resize_bicubic_like_pil, split_preprocess

    preprocessing = split_preprocess(clip.preprocess)
    assert preprocessing.square == 64
    rng = np.random.default_rng(0)
    for side in (13, 32, 64, 100):
        arrays = rng.integers(0, 256, size=(5, side, side, 3), dtype=np.uint8)
        expected = torch.stack([clip.preprocess(Image.fromarray(a)) for a in arrays])
        resized = resize_bicubic_like_pil(torch.from_numpy(arrays), 64)
        assert torch.equal(preprocessing.normalize(resized, torch.float32), expected), side


@pytest.mark.parametrize("rgb_step", ["_convert_to_rgb", "MaybeConvertMode"])
def test_preprocessing_gives_the_transforms_pixels_and_pickles_without_open_clip(rgb_step):
    """Ray's read workers unpickle it: with open_clip's RGB step inside, each would import open_clip."""
    import pickle

    import numpy as np
    from open_clip import transform as oc
    from PIL import Image
    from torchvision import transforms as T

    from clipzs.preprocess import split_preprocess

    rgb = oc.MaybeConvertMode("RGB") if rgb_step == "MaybeConvertMode" else oc._convert_to_rgb
    resize = T.Resize(32, interpolation=T.InterpolationMode.BICUBIC)
    transform = T.Compose([resize, T.CenterCrop(32), rgb, T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)])
    preprocessing = split_preprocess(transform)
    assert preprocessing.square == 32 and b"open_clip" not in pickle.dumps(preprocessing)
    pixels = np.random.default_rng(1).integers(0, 256, size=(40, 50, 4), dtype=np.uint8)
    images = [Image.fromarray(pixels, "RGBA"), Image.fromarray(pixels[..., 0], "L"), Image.fromarray(pixels[..., :3])]
    for image in images:
        expected = np.array(T.Compose(transform.transforms[:3])(image))
        got = pickle.loads(pickle.dumps(preprocessing)).pixels(image)
        assert got.shape == (32, 32, 3) and np.array_equal(got, expected)


def with_text_tower(clip, **attributes):
    """`clip` with a copy of its model whose text tower is changed as `attributes` say."""
    model = copy.deepcopy(clip.model)
    for name, value in attributes.items():
        setattr(model, name, value)
    return dataclasses.replace(clip, model=model)


@pytest.mark.parametrize("attributes", [{"text_pool_type": "last"}, {"attn_mask": None}])
def test_a_text_tower_that_cannot_be_trimmed_is_encoded_whole(clip, attributes):
    """Pooling the last position, or attending both ways, lets the padding after end-of-text change the result:
    such towers must run on the full context."""
    untrimmable = with_text_tower(clip, **attributes)
    assert encode._trimmable(clip.model) and not encode._trimmable(untrimmable.model)
    tokens = clip.tokenizer(PROMPTS)
    with torch.inference_mode():
        full = untrimmable.model.encode_text(tokens)
        assert not torch.allclose(full, clip.model.encode_text(tokens), atol=1e-3)  # the change matters
    torch.testing.assert_close(text_forward(untrimmable.model, tokens), full, rtol=0, atol=1e-5)
    got = encode_text(untrimmable, PROMPTS, batch_size=2).features
    torch.testing.assert_close(got, F.normalize(full, dim=-1), rtol=0, atol=1e-5)


def test_trimming_a_last_token_pooled_tower_would_change_its_features(clip, monkeypatch):
    """What the test above guards against: forced to trim, a `last`-pooled tower reads end-of-text, not padding."""
    untrimmable = with_text_tower(clip, text_pool_type="last")
    tokens = clip.tokenizer(PROMPTS[:2])
    with torch.inference_mode():
        full = untrimmable.model.encode_text(tokens)
        monkeypatch.setattr(encode, "_trimmable", lambda model: True)
        assert not torch.allclose(text_forward(untrimmable.model, tokens), full, atol=1e-3)


@pytest.fixture(scope="module")
def folder_with_a_truncated_jpeg(tmp_path_factory, cifar_root):
    """Five CIFAR images as files in two class folders, the third (in file order) a JPEG cut in half."""
    root = tmp_path_factory.mktemp("folder")
    images = load_cifar("cifar100", cifar_root).subset(range(5))
    for i in range(5):
        (root / f"class{i % 2}").mkdir(exist_ok=True)
        images.load(i).save(root / f"class{i % 2}" / f"img{i}.jpg", quality=95)
    source = load_folder(root)
    broken = source.paths[2]
    with open(broken, "rb") as f:
        data = f.read()
    with open(broken, "wb") as f:
        f.write(data[: len(data) // 2])
    return load_folder(root)


def test_an_unreadable_image_gets_a_nan_row_and_its_reason(clip, folder_with_a_truncated_jpeg):
    source = folder_with_a_truncated_jpeg
    encoded = encode_images(clip, source, batch_size=2, progress=False)
    assert encoded.features.shape == (5, 16) and encoded.computed == 5
    assert list(encoded.skipped) == [2] and encoded.skipped[2] and "\n" not in encoded.skipped[2]
    assert torch.isnan(encoded.features[2]).all()
    readable = [0, 1, 3, 4]
    assert not torch.isnan(encoded.features[readable]).any()
    with torch.inference_mode():
        expected = torch.cat([clip.model.encode_image(clip.preprocess(source.load(i))[None]) for i in readable])
    torch.testing.assert_close(encoded.features[readable], F.normalize(expected, dim=-1), rtol=0, atol=1e-5)


def test_strict_stops_at_the_unreadable_image_and_names_it(clip, folder_with_a_truncated_jpeg):
    source = folder_with_a_truncated_jpeg
    with pytest.raises(ClipzsError) as error:
        encode_images(clip, source, batch_size=2, progress=False, strict=True)
    message = str(error.value)
    assert source.paths[2] in message and "\n" not in message


def test_compiled_image_tower_matches_eager(tmp_path, cifar_root):
    import helpers

    # Its own model, the smallest that still takes the whole compile path (Inductor on the frozen image tower,
    # padded last batch): one block of width 16 on 2 x 2 patches of CIFAR-sized images.
    tiny = {
        "embed_dim": 8,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
    }
    config = helpers.write_config(tmp_path, "clipzs-compile-vit", tiny)
    state = helpers.random_state_dict(config)
    clip = load_model(str(config), str(helpers.save_torchscript_fp16(state, tmp_path / "tiny.pt", image_size=32)))
    images = load_cifar("cifar100", cifar_root).subset(range(7))  # a short last batch: padded, then cut
    eager = encode_images(clip, images, batch_size=4, progress=False).features
    compiled = encode_images(clip, images, batch_size=4, progress=False, compile=True).features
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)
