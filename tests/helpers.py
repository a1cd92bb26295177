"""Test fixtures as files: tiny CLIP configs, checkpoints in real formats, CIFAR-format data."""

from __future__ import annotations

import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import open_clip
import torch

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
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Prepended to the Python a test runs in a child process: the child then imports what a user's install would.
# open_clip imports the test-only transformers wherever it finds it installed (0.75 s a process here).
AS_INSTALLED = 'import sys; sys.modules["transformers"] = None\n'

TINY_VIT = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def write_config(directory: Path, name: str = "clipzs-tiny-vit", config: dict | None = None) -> Path:
    path = directory / f"{name}.json"
    path.write_text(json.dumps(config or TINY_VIT))
    return path


def random_state_dict(config: Path | str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A randomly initialised model's weights (a config .json, or an open_clip config name), with
    logit_scale set as OpenAI's (100 after exp).

    The image tower's class and position embeddings are zeroed so that its output depends on the image
    content alone: plain random weights map every image to almost the same feature (one predicted class
    for all), which would make prediction-level tests weak.
    """
    if str(config).endswith(".json"):
        open_clip.add_model_config(str(config))
        config = Path(config).stem
    torch.manual_seed(seed)
    model = open_clip.create_model(config)
    with torch.no_grad():
        model.logit_scale.fill_(np.log(100.0))
        if hasattr(model.visual, "class_embedding"):
            model.visual.class_embedding.zero_()
            model.visual.positional_embedding.zero_()
    return model.state_dict()


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


def save_torchscript_fp16(state: dict[str, torch.Tensor], path: Path, image_size: int = 64) -> Path:
    """A TorchScript archive with fp16 weights, as OpenAI ships its `.pt` checkpoints."""
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.jit.script(_OpenAIStyle(half, image_size)).save(str(path))
    return path


def save_state_dict(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(state, path)
    return path


def save_safetensors(state: dict[str, torch.Tensor], path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def cifar_pixels(labels: np.ndarray, seed: int) -> np.ndarray:
    """[N, 3072] uint8 images whose colour and pattern depend on the label, so classes differ."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    base = np.stack([labels * 37 % 256, labels * 91 % 256, labels * 151 % 256], axis=1)[:, :, None, None]
    noise = rng.integers(0, 64, size=(n, 3, 32, 32))
    stripes = ((np.arange(32)[None, :] + labels[:, None]) % 8 < 4)[:, None, None, :] * 60
    return np.clip(base + noise + stripes, 0, 255).astype(np.uint8).reshape(n, 3072)


def write_cifar100(root: Path, n_test: int = 40, n_train: int | None = 60, seed: int = 0) -> Path:
    """root/cifar-100-python/{train,test,meta} in the official pickle layout (no train file if n_train is None)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("test", n_test), ("train", n_train)):
        if n is None:
            continue
        fine = rng.integers(0, 100, size=n)
        batch = {
            "filenames": [f"{split}_{i}.png" for i in range(n)],
            "batch_label": f"{split} batch",
            "fine_labels": fine.tolist(),
            "coarse_labels": (fine // 5).tolist(),
            "data": cifar_pixels(fine, seed + n),
        }
        with open(folder / split, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump(
            {"fine_label_names": list(CIFAR100_CLASSES), "coarse_label_names": [f"super{i}" for i in range(20)]},
            f,
            protocol=2,
        )
    return folder


def write_cifar10(root: Path, n_per_batch: int = 8, seed: int = 0) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        labels = rng.integers(0, 10, size=n_per_batch)
        with open(folder / name, "wb") as f:
            pickle.dump(
                {
                    "labels": labels.tolist(),
                    "data": cifar_pixels(labels, seed + i),
                    "filenames": [f"{name}_{j}.png" for j in range(n_per_batch)],
                },
                f,
                protocol=2,
            )
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_CLASSES, "num_cases_per_batch": n_per_batch}, f, protocol=2)
    return folder


def tar_folder(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


class FileServer:
    """A local HTTP server for download tests: serves `files` (name -> bytes) and counts requests."""

    def __init__(self, files: dict[str, bytes]):
        import http.server
        import threading

        self.files, self.requests = files, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append(name)
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def refused_url(name: str) -> str:
    """A URL whose connection is refused at once: what a machine without network sees, deterministically."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


def cli_error(capsys, argv: list[str]) -> str:
    """The one line that `clipzs argv` prints for an error, checked to be one line and exit status 2."""
    from clipzs.cli import main

    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clipzs: error: "), captured.err
    return lines[0]


def cifar_image_folder(root: Path, cifar_root: Path, n: int, folder_of, suffix: str = ".png", **save) -> Path:
    """The first n images of the CIFAR-100-format test split as files `root/<folder_of(i, label)>/<i:02d><suffix>`,
    saved by Pillow with `save` options."""
    from clipzs.sources.cifar import load_cifar

    images = load_cifar("cifar100", cifar_root).subset(range(n))
    for i in range(n):
        folder = root / folder_of(i, int(images.labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        images.load(i).save(folder / f"{i:02d}{suffix}", **save)
    return root
