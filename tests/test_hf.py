import ast
import json
from pathlib import Path
from types import SimpleNamespace

import helpers
import hf_helpers
import huggingface_hub
import open_clip
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import constants
from huggingface_hub.errors import RemoteEntryNotFoundError
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

import clipzs
from clipzs import checkpoints, hf, models
from clipzs.download import file_digest
from clipzs.errors import ClipzsError
from clipzs.models import load_model
from clipzs.preprocess import split_preprocess

PROMPTS = ["a photo of a cat", "wow look at aquarium_fish!", "x"]


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face hub cache, with huggingface_hub offline."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture
def online(monkeypatch):
    """huggingface_hub online, its endpoint a local server that records every request."""
    with helpers.FileServer({}) as server:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", server.url("").rstrip("/"))
        template = server.url("{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        yield server


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> tuple[CLIPModel, Path]:
    model = hf_helpers.tiny_model(hf_helpers.tiny_config())
    return model, hf_helpers.save_folder(model, tmp_path_factory.mktemp("hf") / "tiny")


def _inputs(clip) -> tuple[torch.Tensor, torch.Tensor]:
    """The same pixel tensor for every model (OpenAI preprocessing is not under test here) and clip's tokens."""
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)), clip.tokenizer(PROMPTS)


def _features(clip, pixels, tokens) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        return F.normalize(clip.model.encode_image(pixels), dim=-1), F.normalize(clip.model.encode_text(tokens), dim=-1)


def _same_features(clip, other) -> bool:
    pixels, tokens = _inputs(clip)
    pairs = zip(_features(clip, pixels, tokens), _features(other, pixels, tokens), strict=True)
    return all(torch.equal(a, b) for a, b in pairs)


def _assert_matches_transformers(clip, model: CLIPModel) -> None:
    pixels, tokens = _inputs(clip)
    image, text = _features(clip, pixels, tokens)
    ref_image, ref_text = hf_helpers.transformers_features(model, pixels, tokens)
    assert (image - ref_image).abs().max() < 1e-5
    assert (text - ref_text).abs().max() < 1e-5
    assert clip.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))


def test_hub_id_loads_offline_and_matches_transformers(hub, tiny_hf, tiny_state):  # tiny_state: config registered
    model, folder = tiny_hf
    hf_helpers.cache_folder(hub, "org/tiny-clip", folder)
    clip = load_model(None, "org/tiny-clip")
    _assert_matches_transformers(clip, model)
    assert clip.pretrained == "org/tiny-clip" and clip.spec.source == "transformers"
    assert clip.name == clip.config == "clipzs-tiny-vit"  # the open_clip config its config.json equals
    assert clip.checkpoint == "sha256:" + file_digest(folder / "model.safetensors", "sha256")
    assert clip.precision == "fp32" and {p.dtype for p in clip.model.parameters()} == {torch.float32}


@pytest.mark.parametrize("hidden_act, fmt", [("gelu", "safetensors"), ("quick_gelu", "bin")])
def test_transformers_folders_match_transformers(tmp_path, hidden_act, fmt):
    model = hf_helpers.tiny_model(hf_helpers.tiny_config(hidden_act), seed=2)
    folder = hf_helpers.save_folder(model, tmp_path / "clip", fmt)
    clip = load_model(None, str(folder))
    _assert_matches_transformers(clip, model)
    assert clip.spec.weights.name == ("model.safetensors" if fmt == "safetensors" else "pytorch_model.bin")
    if hidden_act == "gelu":  # no open_clip config is this one: a name derived from the config
        assert clip.config.startswith("hf-") and len(clip.config) == 15


def test_hub_checkpoint_gives_the_features_of_the_openai_file(hub, tmp_path, tiny_config, tiny_state, tiny_checkpoint):
    """The same weights as transformers' CLIPModel (in a hub cache) and as OpenAI's TorchScript: identical features."""
    rounded = {k: v.half().float() for k, v in tiny_state.items()}  # what the fp16 TorchScript file holds
    model = CLIPModel(hf_helpers.tiny_config()).eval()
    model.load_state_dict(hf_helpers.open_clip_to_transformers(rounded, (2, 2)), strict=True)
    openai = load_model(str(tiny_config), str(tiny_checkpoint))
    _assert_matches_transformers(openai, model)  # the conversion used here agrees with transformers' forward
    hf_helpers.cache_folder(hub, "openai/clip-vit-tiny", hf_helpers.save_folder(model, tmp_path / "converted"))

    for name in (None, str(tiny_config)):
        clip = load_model(name, "openai/clip-vit-tiny")
        assert _same_features(clip, openai)
        assert clip.logit_scale == openai.logit_scale
        assert clip.spec.preprocess == openai.spec.preprocess
    with pytest.raises(ClipzsError, match=r"model ViT-B/32 \(ViT-B-32-quickgelu\) does not match pretrained openai/"):
        load_model("ViT-B/32", "openai/clip-vit-tiny")


B32 = {}
B16 = {"vision_config": {"patch_size": 16}}
L14 = {
    "projection_dim": 768,
    "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12},
    "vision_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
    },
}
L14_336 = {**L14, "vision_config": {**L14["vision_config"], "image_size": 336}}


@pytest.mark.parametrize(
    "kwargs, name, mapped",
    [
        (B32, "ViT-B-32-quickgelu", True),
        (B16, "ViT-B-16-quickgelu", False),
        (L14, "ViT-L-14-quickgelu", True),
        (L14_336, "ViT-L-14-336-quickgelu", False),
    ],
)
def test_openai_configs_map_onto_their_open_clip_configs(tmp_path, kwargs, name, mapped):
    """openai/clip-vit-* configs derive OpenAI's open_clip configs, and full-size weights map key for key."""
    config = CLIPConfig(**kwargs)
    config.save_pretrained(tmp_path)
    cfg = hf.open_clip_config(tmp_path / "config.json")
    assert hf.config_name(cfg) == name
    if mapped:  # every key of transformers' model finds its open_clip key and shape (meta tensors: no memory)
        with torch.device("meta"):
            state = CLIPModel(config).state_dict()
            model = open_clip.CLIP(**cfg)
        converted = hf.to_open_clip(state, cfg, "meta")
        assert checkpoints.checked_weights(model, converted, "meta").keys() == model.state_dict().keys()


def test_config_fields_are_read_as_transformers_reads_them(tmp_path):
    assert {k: getattr(CLIPTextConfig(), k) for k in hf.TEXT_DEFAULTS} == hf.TEXT_DEFAULTS
    assert {k: getattr(CLIPVisionConfig(), k) for k in hf.VISION_DEFAULTS} == hf.VISION_DEFAULTS
    assert CLIPConfig().projection_dim == hf.PROJECTION_DIM
    # older configs carry *_config_dict, which wins over *_config field by field, defaults included
    raw = {
        "model_type": "clip",
        "projection_dim": 64,
        "text_config": {"hidden_size": 256, "num_hidden_layers": 3, "max_position_embeddings": 64},
        "text_config_dict": {"hidden_size": 128, "num_attention_heads": 4},
        "vision_config": {"hidden_size": 96, "num_attention_heads": 3, "patch_size": 8, "image_size": 48},
    }
    (tmp_path / "config.json").write_text(json.dumps(raw))
    ref = CLIPConfig.from_pretrained(tmp_path)
    cfg = hf.open_clip_config(tmp_path / "config.json")
    text, vision = cfg["text_cfg"], cfg["vision_cfg"]
    assert (text["width"], text["heads"], text["layers"]) == (128, 4, 12)
    assert (text["width"], text["heads"], text["layers"]) == (
        ref.text_config.hidden_size,
        ref.text_config.num_attention_heads,
        ref.text_config.num_hidden_layers,
    )
    assert text["context_length"] == ref.text_config.max_position_embeddings
    assert int(text["width"] * text["mlp_ratio"]) == ref.text_config.intermediate_size
    assert (vision["width"], vision["width"] // vision["head_width"]) == (96, ref.vision_config.num_attention_heads)
    assert (vision["patch_size"], vision["image_size"], cfg["embed_dim"]) == (8, 48, ref.projection_dim)


def _damaged(folder: Path, tmp_path: Path, what: str) -> tuple[Path, str]:
    """A copy of a transformers folder with one defect, and the words the error must contain."""
    bad = tmp_path / what
    bad.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bad / name).write_bytes((folder / name).read_bytes())
    if what == "no-weights":
        (bad / "model.safetensors").unlink()
        return bad, f"pretrained {bad} is a directory, not a checkpoint file nor a transformers CLIP folder"
    if what == "corrupt-weights":
        (bad / "model.safetensors").write_bytes(b"\x00" * 64)
        return bad, f"cannot read checkpoint {bad / 'model.safetensors'}: truncated or not a checkpoint"
    if what == "corrupt-config":
        (bad / "config.json").write_text("{not json")
        return bad, f"cannot read {bad / 'config.json'}"
    if what == "not-clip":
        (bad / "config.json").write_text(json.dumps({"model_type": "siglip"}))
        return bad, "describes a siglip model, not a transformers CLIPModel"
    from safetensors.torch import load_file

    state = load_file(bad / "model.safetensors")
    del state["vision_model.post_layernorm.weight"]
    state["vision_model.extra.weight"] = torch.zeros(1)
    save_file(state, bad / "model.safetensors")
    return bad, "1 missing keys: vision_model.post_layernorm.weight; 1 unexpected keys: vision_model.extra.weight"


@pytest.mark.parametrize("what", ["no-weights", "corrupt-weights", "corrupt-config", "not-clip", "keys"])
def test_damaged_transformers_folders_are_one_line_errors(tmp_path, tiny_hf, what):
    folder, words = _damaged(tiny_hf[1], tmp_path, what)
    with pytest.raises(ClipzsError) as error:
        load_model(None, str(folder))
    assert words in str(error.value) and "\n" not in str(error.value)


def test_hub_id_missing_offline_names_repo_files_and_cache_folder(hub):
    with pytest.raises(ClipzsError) as error:
        models.describe_model(None, "openai/clip-vit-base-patch32")
    message = str(error.value)
    assert "openai/clip-vit-base-patch32 is not in the Hugging Face cache and HF_HUB_OFFLINE is set" in message
    assert "config.json and model.safetensors or pytorch_model.bin" in message
    assert str(hub / "models--openai--clip-vit-base-patch32") in message and "\n" not in message
    assert not list(hub.iterdir())


def test_cached_hub_files_are_used_without_network(hub, online, tiny_hf):
    hf_helpers.cache_folder(hub, "org/tiny-clip", tiny_hf[1])
    clip = load_model(None, "org/tiny-clip")
    assert online.requests == []
    _assert_matches_transformers(clip, tiny_hf[0])


def test_missing_hub_files_are_downloaded_when_online(hub, monkeypatch, tmp_path, tiny_hf):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    remote = {"org/new-clip": tiny_hf[1], "org/old-clip": hf_helpers.save_folder(tiny_hf[0], tmp_path / "old", "bin")}
    calls = []

    def fake_download(repo_id: str, filename: str) -> str:
        """What huggingface_hub does: fetch the file into the hub cache, return its snapshot path."""
        calls.append(filename)
        source = remote[repo_id] / filename
        if not source.is_file():
            raise RemoteEntryNotFoundError(f"{filename} not found", response=SimpleNamespace(headers={}, request=None))
        return str(hf_helpers.hub_cache(hub, repo_id, {filename: source}) / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    load_model(None, "org/new-clip")
    assert calls == ["config.json", "model.safetensors"]
    calls.clear()
    _assert_matches_transformers(load_model(None, "org/old-clip"), tiny_hf[0])
    assert calls == ["config.json", "model.safetensors", "pytorch_model.bin"]

    def refused(repo_id: str, filename: str) -> str:
        raise ConnectionError("connection refused")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refused)
    with pytest.raises(ClipzsError, match=r"cannot download config.json of org/other from the Hugging Face Hub \("):
        load_model(None, "org/other")


def test_open_clip_hf_hub_names_load_from_the_cache_without_network(hub, online, tmp_path, tiny_config, tiny_state):
    weights = helpers.save_safetensors(tiny_state, tmp_path / "tiny.safetensors")
    settings = {"model_cfg": helpers.TINY_VIT, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    snapshot = hf_helpers.hub_cache(
        hub,
        "org/tiny-openclip",
        {"open_clip_config.json": json.dumps(settings).encode(), "open_clip_model.safetensors": weights},
    )
    clip = load_model("hf-hub:org/tiny-openclip")
    assert online.requests == []
    reference = load_model(str(tiny_config), str(weights))
    assert _same_features(clip, reference)
    _, _, transform = open_clip.create_model_and_transforms(f"local-dir:{snapshot}", load_weights=False)
    assert clip.spec.preprocess == split_preprocess(transform).description
    assert "mean=[0.5, 0.5, 0.5]" in clip.spec.preprocess  # as open_clip writes a mean read from JSON


def test_clipzs_never_imports_transformers():
    """transformers is a test dependency only (open_clip may import it; clipzs does not)."""
    for path in Path(clipzs.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "transformers" for n in names), path
