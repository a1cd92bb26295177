import runpy
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_api_example_runs_offline(tiny_config, tiny_checkpoint, monkeypatch, capsys):
    """Run as a script would be (`__main__`, its own argv), in this process: the suite is offline (conftest). With the
    tiny model for speed; without options it runs the same code on a random ViT-B/32."""
    script = str(EXAMPLES / "api.py")
    monkeypatch.setattr(sys, "argv", [script, "--model", str(tiny_config), "--pretrained", str(tiny_checkpoint)])
    runpy.run_path(script, run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("probabilities: [[") and lines[1].startswith("labels: [")
    assert len([line for line in lines if line.startswith("{'path'")]) == 2
