"""The `albert` command line as users and outside checks call it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from flows.cli import main

ALBERT = Path(sys.executable).parent / "albert"


def run_json(capsys: pytest.CaptureFixture, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_model_info_prints_published_counts(capsys: pytest.CaptureFixture) -> None:
    info = run_json(capsys, "model", "info", "--preset", "base")
    assert info["preset"] == "base" and info["parameters"] == 11_683_584
    assert info["pretraining_parameters"] > info["parameters"]
    assert info["config"]["embedding_size"] == 128


@pytest.mark.usefixtures("runs_cli")
def test_console_script_user_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    for argv, needle in [
        (["model", "info", "--preset", "huge", "--json"], "unknown preset 'huge'"),
        (["export-hf", str(tmp_path / "missing"), str(tmp_path / "out")], "is not a folder"),
        (["export-hf", "preset:nope", str(tmp_path / "out")], "unknown preset 'nope'"),
    ]:
        proc = subprocess.run([str(ALBERT), *argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"albert: error: {proc.stderr.split('error: ', 1)[1].strip()}"
        ]
        assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_export_hf_from_preset_loads_in_transformers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = run_json(capsys, "export-hf", "preset:tiny", str(tmp_path / "hf"), "--seed", "7")
    hf = transformers.AlbertForPreTraining.from_pretrained(out["outdir"]).eval()
    assert hf.config.hidden_size == 128 and hf.config.vocab_size == 30000
    ids = torch.tensor([[2, 10, 11, 3]])
    # same seed, same weights: a second export is identical
    out2 = run_json(capsys, "export-hf", "preset:tiny", str(tmp_path / "hf2"), "--seed", "7")
    hf2 = transformers.AlbertForPreTraining.from_pretrained(out2["outdir"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).sop_logits, hf2(ids).sop_logits)
