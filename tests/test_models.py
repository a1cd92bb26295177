from pathlib import Path

import helpers
import open_clip
import pytest
import torch

from clipzs import models
from clipzs.errors import ClipzsError
from clipzs.models import OPENAI_MODELS, load_model, read_state_dict, resolve

OPENAI_IMAGE_SIZES = {
    "RN50": 224,
    "RN101": 224,
    "RN50x4": 288,
    "RN50x16": 384,
    "RN50x64": 448,
    "ViT-B/32": 224,
    "ViT-B/16": 224,
    "ViT-L/14": 224,
    "ViT-L/14@336px": 336,
}


def _features(clip) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    images = torch.randn(3, 3, 64, 64)
    tokens = clip.tokenizer(["a photo of a cat", "wow look at aquarium_fish!"])
    with torch.inference_mode():
        return clip.model.encode_image(images), clip.model.encode_text(tokens)


def _fp16_rounded(state):
    return {k: v.half().float() if v.is_floating_point() else v for k, v in state.items()}


def test_all_checkpoint_formats_load_to_identical_features(tmp_path, tiny_config, tiny_state):
    state = _fp16_rounded(tiny_state)
    files = [
        helpers.save_torchscript_fp16(tiny_state, tmp_path / "openai.pt"),
        helpers.save_state_dict(state, tmp_path / "state.pt"),
        helpers.save_state_dict({k: v.half() for k, v in state.items()}, tmp_path / "state.bin"),
        helpers.save_safetensors(state, tmp_path / "state.safetensors"),
        helpers.save_state_dict(
            {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "open_clip_training.pt"
        ),
    ]
    reference = _features(load_model(str(tiny_config), str(files[0])))
    for path in files[1:]:
        image, text = _features(load_model(str(tiny_config), str(path)))
        assert torch.equal(image, reference[0]), path.name
        assert torch.equal(text, reference[1]), path.name
    random_image, _ = _features(load_model(str(tiny_config), "random"))
    assert not torch.allclose(random_image, reference[0])


def test_torchscript_archive_extra_keys_are_ignored(tiny_checkpoint, tiny_config):
    state = read_state_dict(tiny_checkpoint)
    assert {"input_resolution", "context_length", "vocab_size"} <= state.keys()
    assert state["visual.conv1.weight"].dtype == torch.float16
    clip = load_model(str(tiny_config), str(tiny_checkpoint))
    assert clip.checkpoint.startswith("sha256:")


@pytest.mark.parametrize("name", sorted(OPENAI_IMAGE_SIZES))
def test_openai_names_use_quickgelu_configs(name):
    config, pretrained = resolve(name, None)
    assert pretrained == "openai"
    cfg = open_clip.get_model_config(config)
    assert cfg["quick_gelu"] is True
    assert cfg["vision_cfg"]["image_size"] == OPENAI_IMAGE_SIZES[name]
    assert OPENAI_MODELS[name]["url"].endswith(".pt")
    assert len(models.openai_sha256(name)) == 64


def test_open_clip_names_resolve_to_openai_or_pass_through():
    assert resolve("ViT-B-32", None) == ("ViT-B-32-quickgelu", "openai")
    assert resolve("ViT-B-32", "openai") == ("ViT-B-32-quickgelu", "openai")
    assert resolve("ViT-B-32", "laion2b_s34b_b79k") == ("ViT-B-32", "laion2b_s34b_b79k")
    with pytest.raises(ClipzsError, match="needs --pretrained"):
        resolve("ViT-H-14", None)


@pytest.fixture
def served_openai_model(monkeypatch, tiny_config, tiny_checkpoint):
    """A fake OpenAI registry entry whose URL points at a local server holding the tiny checkpoint."""
    body = tiny_checkpoint.read_bytes()
    sha = models.file_digest(tiny_checkpoint, "sha256")
    with helpers.FileServer({"tiny.pt": body}) as server:
        entry = {"config": tiny_config.stem, "url": server.url(f"{sha}/tiny.pt")}
        monkeypatch.setitem(OPENAI_MODELS, "Tiny/16", entry)
        yield server, sha


def test_openai_checkpoint_is_downloaded_verified_and_reused(tmp_path, served_openai_model):
    server, sha = served_openai_model
    clip = load_model("Tiny/16", cache_dir=tmp_path)
    assert clip.checkpoint == f"sha256:{sha}"
    assert (tmp_path / "tiny.pt").is_file()
    assert not list(tmp_path.glob("*.part-*"))
    load_model("Tiny/16", cache_dir=tmp_path)
    assert server.requests == ["tiny.pt"]


def test_cached_checkpoint_with_wrong_sha256_is_downloaded_again(tmp_path, served_openai_model):
    server, sha = served_openai_model
    (tmp_path / "tiny.pt").write_bytes(b"not the checkpoint")
    load_model("Tiny/16", cache_dir=tmp_path)
    assert server.requests == ["tiny.pt"]
    assert models.file_digest(tmp_path / "tiny.pt", "sha256") == sha


def test_download_with_wrong_sha256_is_refused(tmp_path, monkeypatch, tiny_config):
    with helpers.FileServer({"tiny.pt": b"corrupted bytes"}) as server:
        monkeypatch.setitem(
            OPENAI_MODELS, "Tiny/16", {"config": tiny_config.stem, "url": server.url("ab" * 32 + "/tiny.pt")}
        )
        with pytest.raises(ClipzsError, match="expected " + "ab" * 32):
            load_model("Tiny/16", cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_missing_checkpoint_without_network_names_url_path_and_sha256(tmp_path, monkeypatch, tiny_config):
    url = helpers.refused_url("cd" * 32 + "/tiny.pt")
    monkeypatch.setitem(OPENAI_MODELS, "Tiny/16", {"config": tiny_config.stem, "url": url})
    with pytest.raises(ClipzsError) as error:
        load_model("Tiny/16", cache_dir=tmp_path)
    message = str(error.value)
    assert url in message and str(tmp_path / "tiny.pt") in message and "cd" * 32 in message
    assert "\n" not in message


@pytest.mark.parametrize("fmt", ["torchscript", "state_dict", "safetensors"])
def test_truncated_checkpoint_is_a_clear_error(tmp_path, tiny_config, tiny_state, fmt):
    save = {
        "torchscript": helpers.save_torchscript_fp16,
        "state_dict": helpers.save_state_dict,
        "safetensors": helpers.save_safetensors,
    }[fmt]
    path = save(tiny_state, tmp_path / ("tiny.safetensors" if fmt == "safetensors" else "tiny.pt"))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ClipzsError, match="truncated or not a checkpoint"):
        load_model(str(tiny_config), str(path))


def test_missing_and_misshaped_keys_are_named(tmp_path, tiny_config, tiny_state):
    state = dict(tiny_state)
    del state["ln_final.weight"]
    state["text_projection"] = torch.zeros(3, 3)
    state["visual.extra_head.weight"] = torch.zeros(2)
    helpers.save_state_dict(state, tmp_path / "bad.pt")
    with pytest.raises(ClipzsError) as error:
        load_model(str(tiny_config), str(tmp_path / "bad.pt"))
    message = str(error.value)
    assert "1 missing keys: ln_final.weight" in message
    assert "text_projection (3, 3)" in message
    assert "visual.extra_head.weight" in message


def test_pickled_objects_are_refused(tmp_path, tiny_config, tiny_state):
    torch.save({"state_dict": tiny_state, "args": Path("anything")}, tmp_path / "pickled.pt")
    with pytest.raises(ClipzsError, match="objects other than tensors"):
        load_model(str(tiny_config), str(tmp_path / "pickled.pt"))


def test_missing_checkpoint_file_is_named(tiny_config, tmp_path):
    with pytest.raises(ClipzsError, match="checkpoint file not found"):
        load_model(str(tiny_config), str(tmp_path / "nope.pt"))


def test_unknown_model_and_tag_are_clear_errors(tiny_config):
    with pytest.raises(ClipzsError, match="unknown model 'ViT-Q/99'"):
        load_model("ViT-Q/99")
    with pytest.raises(ClipzsError, match="unknown pretrained tag 'nonsense'"):
        load_model("ViT-B-32", "nonsense")


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_precision_casts_the_whole_model_and_keeps_the_exact_logit_scale(
    tiny_config, tiny_checkpoint, precision, dtype
):
    clip = load_model(str(tiny_config), str(tiny_checkpoint), precision=precision)
    assert {p.dtype for p in clip.model.parameters()} == {dtype}
    fp32 = load_model(str(tiny_config), str(tiny_checkpoint), precision="fp32")
    assert clip.logit_scale == fp32.logit_scale == pytest.approx(100.0, rel=1e-3)
    assert clip.precision == precision and clip.dtype == dtype


def test_default_precision_follows_the_device():
    assert models.default_precision("cpu") == "fp32"
    assert models.default_precision("cuda") == "fp16"


def test_config_json_must_exist(tmp_path):
    with pytest.raises(ClipzsError, match="model config file not found"):
        load_model(str(tmp_path / "missing.json"))
