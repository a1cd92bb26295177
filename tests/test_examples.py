import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_api_example_runs_offline(tiny_config, tiny_checkpoint):
    """With the tiny model for speed; without options it runs the same code on a random ViT-B/32."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "api.py"), "--model", str(tiny_config), "--pretrained", str(tiny_checkpoint)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("probabilities: [[") and lines[1].startswith("labels: [")
    assert len([line for line in lines if line.startswith("{'path'")]) == 2
