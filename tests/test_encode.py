import pytest
import torch
import torch.nn.functional as F

from clipzs.datasets import load_cifar
from clipzs.encode import encode_images, encode_prompts, encode_text, text_forward
from clipzs.models import load_model

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
        single = torch.cat([clip.model.encode_image(clip.preprocess(images.image(i))[None]) for i in range(7)])
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


def test_compiled_image_tower_matches_eager(clip, cifar_root):
    images = load_cifar("cifar100", cifar_root).subset(range(7))  # a short last batch: padded, then cut
    eager = encode_images(clip, images, batch_size=4, progress=False).features
    compiled = encode_images(clip, images, batch_size=4, progress=False, compile=True).features
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)
