import os
import pickle
import random
import re
import warnings
from pathlib import Path

import helpers
import hf_helpers
import open_clip
import pytest
import torch
from huggingface_hub import constants

from clipzs import download, models
from clipzs.checkpoints import read_state_dict
from clipzs.download import file_digest
from clipzs.errors import ClipzsError, ClipzsWarning
from clipzs.models import OPENAI_MODELS, describe_model, load_model, resolve
from clipzs.preprocess import split_preprocess

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
    with pytest.raises(ClipzsError, match="needs pretrained: "):
        resolve("ViT-H-14", None)


@pytest.fixture
def served_openai_model(monkeypatch, tiny_config, tiny_checkpoint):
    """A fake OpenAI registry entry whose URL points at a local server holding the tiny checkpoint."""
    body = tiny_checkpoint.read_bytes()
    sha = file_digest(tiny_checkpoint, "sha256")
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
    assert file_digest(tmp_path / "tiny.pt", "sha256") == sha


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


@pytest.mark.parametrize("fmt", ["safetensors", "state_dict"])
def test_integer_tensors_where_the_model_has_floats_are_named(tmp_path, tiny_config, tiny_state, fmt):
    state = {k: v.to(torch.int32) if k == "ln_final.weight" else v for k, v in tiny_state.items()}
    save = helpers.save_safetensors if fmt == "safetensors" else helpers.save_state_dict
    path = save(state, tmp_path / ("int.safetensors" if fmt == "safetensors" else "int.pt"))
    with pytest.raises(ClipzsError, match=r"1 mis-typed keys: ln_final\.weight int32 \(model wants floating point\)"):
        load_model(str(tiny_config), str(path))


def test_pickled_objects_are_refused(tmp_path, tiny_config, tiny_state):
    torch.save({"state_dict": tiny_state, "args": Path("anything")}, tmp_path / "pickled.pt")
    with pytest.raises(ClipzsError, match=r"objects other than tensors \(pathlib\.\w*Path\); refusing"):
        load_model(str(tiny_config), str(tmp_path / "pickled.pt"))


@pytest.mark.parametrize(
    "content",
    [random.Random(0).randbytes(4096), pickle.dumps({"x": 1}, protocol=5), b"hello\n"],
    ids=["random-bytes", "pickle-protocol-5", "text"],
)
def test_non_checkpoints_are_named_so_and_torch_stays_quiet(tmp_path, tiny_config, content):
    (tmp_path / "bad.pt").write_bytes(content)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ClipzsError) as error:
            load_model(str(tiny_config), str(tmp_path / "bad.pt"))
    assert f"cannot read checkpoint {tmp_path / 'bad.pt'}: truncated or not a checkpoint" in str(error.value)
    assert "objects other than tensors" not in str(error.value) and "\n" not in str(error.value)
    assert not caught  # torch's weights_only and pickle-protocol warnings included


def test_a_directory_is_not_a_checkpoint(tmp_path, tiny_config):
    (tmp_path / "folder").mkdir()
    with pytest.raises(ClipzsError, match="is a directory, not a checkpoint file"):
        load_model(str(tiny_config), str(tmp_path / "folder"))
    with pytest.raises(ClipzsError, match="is a directory, not a file"):
        read_state_dict(tmp_path / "folder")


@pytest.mark.parametrize("device", ["tpu", "gpu", "meta", "cuda:x", "cpu:zero"])
def test_bad_devices_name_the_parameter_and_the_valid_forms(tiny_config, device):
    with pytest.raises(ClipzsError) as error:
        describe_model(str(tiny_config), "random", device=device)
    assert str(error.value) == f"device {device!r} is not valid: use cpu, cuda or cuda:N"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(tiny_config):
    with pytest.raises(ClipzsError, match="device 'cuda:1' was asked for but CUDA is not available"):
        load_model(str(tiny_config), "random", device="cuda:1")


def test_fp16_on_a_cpu_works_and_says_once_that_it_is_slow(tiny_config, tiny_checkpoint):
    with pytest.warns(ClipzsWarning, match="fp16 on a CPU is about 4x slower than fp32") as caught:
        clip = load_model(str(tiny_config), str(tiny_checkpoint), device="cpu", precision="fp16")
    assert len([w for w in caught if issubclass(w.category, ClipzsWarning)]) == 1
    assert clip.dtype == torch.float16
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClipzsWarning)
        load_model(str(tiny_config), str(tiny_checkpoint), device="cpu", precision="bf16")


def test_failed_download_removes_only_the_folders_it_created(tmp_path, monkeypatch, tiny_config):
    url = helpers.refused_url("cd" * 32 + "/tiny.pt")
    monkeypatch.setitem(OPENAI_MODELS, "Tiny/16", {"config": tiny_config.stem, "url": url})
    with pytest.raises(ClipzsError, match="could not be downloaded"):
        load_model("Tiny/16", cache_dir=tmp_path / "new" / "clip")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    with pytest.raises(ClipzsError, match="could not be downloaded"):
        load_model("Tiny/16", cache_dir=tmp_path / "kept")
    assert list(tmp_path.iterdir()) == [tmp_path / "kept"]


def test_missing_checkpoint_file_is_named(tiny_config, tmp_path):
    with pytest.raises(ClipzsError, match="checkpoint file not found"):
        load_model(str(tiny_config), str(tmp_path / "nope.pt"))


def test_no_model_named_means_vit_b_32_unless_the_weights_say():
    assert models.describe_model(None, "random").name == "ViT-B/32"


def test_unknown_model_and_tag_are_clear_errors(tiny_config):
    with pytest.raises(ClipzsError, match="unknown model 'ViT-Q/99'"):
        load_model("ViT-Q/99")
    with pytest.raises(ClipzsError, match="unknown pretrained tag 'nonsense'"):
        load_model("ViT-B-32", "nonsense")
    with pytest.raises(ClipzsError, match="pretrained must be unset for model hf-hub:org/name"):
        load_model("hf-hub:org/name", "random")


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_precision_casts_the_whole_model_and_keeps_the_exact_logit_scale(
    tiny_config, tiny_checkpoint, precision, dtype
):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClipzsWarning)  # fp16 on a CPU
        clip = load_model(str(tiny_config), str(tiny_checkpoint), precision=precision)
    assert {p.dtype for p in clip.model.parameters()} == {dtype}
    fp32 = load_model(str(tiny_config), str(tiny_checkpoint), precision="fp32")
    assert clip.logit_scale == fp32.logit_scale == pytest.approx(100.0, rel=1e-3)
    assert clip.precision == precision and clip.dtype == dtype


def test_default_precision_follows_the_device():
    assert models.default_precision("cpu") == "fp32"
    assert models.default_precision("cuda") == "fp16"


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "no such config file"),
        ("{", r"not a JSON config \(Expecting"),
        ("[]", "lacks embed_dim and vision_cfg and text_cfg"),
        ('{"embed_dim": 16, "vision_cfg": {}}', "lacks text_cfg"),
    ],
)
def test_a_model_config_json_is_read_and_checked_before_use(tmp_path, text, message):
    path = tmp_path / "model.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ClipzsError, match=rf"^model {re.escape(str(path))}:? .*{message}") as error:
        load_model(str(path))
    assert error.value.parameter == "model"


def test_a_checkpoint_folder_that_is_a_file_is_one_error(tmp_path, tiny_config, tiny_checkpoint, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ClipzsError, match=rf"^cache_dir {re.escape(str(blocker))} is a file, not a folder$") as e:
        describe_model(str(tiny_config), str(tiny_checkpoint), cache_dir=blocker)
    assert e.value.parameter == "cache_dir"
    monkeypatch.setenv("CLIPZS_CACHE", str(blocker))
    with pytest.raises(ClipzsError, match=r"^the checkpoint folder \(\$CLIPZS_CACHE or ~/.cache/clip\) .* is a file"):
        describe_model("ViT-B/32")


def test_describe_model_reads_no_weights_and_hashes_a_file_once(tmp_path, monkeypatch, tiny_config, tiny_state):
    path = helpers.save_safetensors(tiny_state, tmp_path / "tiny.safetensors")
    hashed = []
    monkeypatch.setattr(download, "file_digest", lambda p, a: hashed.append(p) or file_digest(p, a))
    monkeypatch.setattr(models, "read_state_dict", None)  # describing must not read the weights
    monkeypatch.setattr(open_clip, "create_model", None)  # nor build the model
    spec = describe_model(str(tiny_config), str(path), cache_dir=tmp_path / "cache")
    assert spec.checkpoint == "sha256:" + file_digest(path, "sha256") and len(hashed) == 1
    assert (spec.name, spec.config, spec.pretrained) == (str(tiny_config), "clipzs-tiny-vit", str(path))
    assert (spec.precision, spec.device, spec.source, spec.weights) == ("fp32", torch.device("cpu"), "file", path)
    assert describe_model(str(tiny_config), str(path), cache_dir=tmp_path / "cache") == spec and len(hashed) == 1
    assert (tmp_path / "cache" / models.DIGESTS).is_file()
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))  # a changed file is hashed again
    assert describe_model(str(tiny_config), str(path), cache_dir=tmp_path / "cache") == spec and len(hashed) == 2
    assert hash(spec) == hash(describe_model(str(tiny_config), str(path), cache_dir=tmp_path / "cache"))


def test_load_model_from_a_spec_is_load_model(tiny_config, tiny_checkpoint):
    spec = describe_model(str(tiny_config), str(tiny_checkpoint))
    clip = load_model(spec=spec)
    direct = load_model(str(tiny_config), str(tiny_checkpoint))
    assert clip.spec == direct.spec == spec
    assert (clip.name, clip.config, clip.pretrained, clip.checkpoint) == (
        spec.name,
        spec.config,
        spec.pretrained,
        spec.checkpoint,
    )
    assert split_preprocess(clip.preprocess).description == spec.preprocess
    assert all(torch.equal(a, b) for a, b in zip(_features(clip), _features(direct), strict=True))


def _open_clip_description(config: str, tag: str | None = None) -> str:
    """The description of the transform open_clip itself builds (model on the meta device: no weights, no init)."""
    with torch.device("meta"):
        _, _, transform = open_clip.create_model_and_transforms(
            config, pretrained=tag, load_weights=False, pretrained_text=False, device="meta"
        )
    return split_preprocess(transform).description


@pytest.mark.parametrize("name", ["tiny", "ViT-B/32", "RN50", "ViT-L/14@336px", "ViT-B-16-SigLIP"])
def test_preprocessing_is_described_from_the_config_alone(tiny_config, name):
    name = str(tiny_config) if name == "tiny" else name
    spec = describe_model(name, "random")
    assert spec.preprocess == _open_clip_description(spec.config)


@pytest.mark.parametrize(
    "config, tag, words",
    [("ViT-L-14", "laion2b_s32b_b82k", "mean=(0.5, 0.5, 0.5)"), ("ViT-L-14-CLIPA", "datacomp1b", "bilinear")],
)
def test_pretrained_tags_use_the_hub_cache_and_their_preprocessing(tmp_path, monkeypatch, config, tag, words):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    repo = open_clip.get_pretrained_cfg(config, tag)["hf_hub"].strip("/")
    with pytest.raises(ClipzsError, match=f"{repo} is not in the Hugging Face cache and HF_HUB_OFFLINE is set"):
        describe_model(config, tag)
    snapshot = hf_helpers.hub_cache(tmp_path, repo, {"open_clip_model.safetensors": b"never read"})
    spec = describe_model(config, tag)
    assert (spec.checkpoint, spec.weights) == (f"open_clip:{tag}", snapshot / "open_clip_model.safetensors")
    assert words in spec.preprocess
    assert spec.preprocess == _open_clip_description(config, tag)


def test_text_tower_alone_gives_the_same_text_features(tiny_config, tiny_checkpoint):
    full = load_model(str(tiny_config), str(tiny_checkpoint))
    text = load_model(str(tiny_config), str(tiny_checkpoint), towers={"text"})
    tokens = full.tokenizer(["a photo of a cat", "wow look at aquarium_fish!"])
    with torch.inference_mode():
        assert torch.equal(text.model.encode_text(tokens), full.model.encode_text(tokens))
    assert isinstance(text.model.visual, models.NotLoaded)
    assert not any(name.startswith("visual.") for name in text.model.state_dict())
    assert text.logit_scale == full.logit_scale and text.spec == full.spec
    with pytest.raises(ClipzsError, match="image tower was not loaded"):
        text.model.encode_image(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ClipzsError, match="towers \\['audio'\\] is not valid"):
        load_model(str(tiny_config), str(tiny_checkpoint), towers={"audio"})
