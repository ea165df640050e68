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


def _help(capsys: pytest.CaptureFixture, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_train_help_lists_every_config_field_with_its_default(capsys: pytest.CaptureFixture) -> None:
    import dataclasses

    from data_jobs.config import IngestConfig, ShardsConfig, TokenizerJobConfig
    from training.config import FinetuneConfig, TrainConfig

    for argv, cls in ((["train"], TrainConfig), (["ingest"], IngestConfig), (["finetune"], FinetuneConfig),
                      (["shards", "build"], ShardsConfig), (["tokenizer", "train"], TokenizerJobConfig)):  # fmt: skip
        text = _help(capsys, *argv)
        renamed = {"model_uri": "--model", "train_path": "--train", "eval_path": "--eval"}
        for f in dataclasses.fields(cls):
            assert renamed.get(f.name, f"--{f.name.replace('_', '-')}") in text, (argv, f.name)
    text = " ".join(_help(capsys, "train").split())
    assert "--lr LR peak learning rate (default: 0.002)" in text
    assert "--optimizer {lamb,adamw}" in text and "--compile, --no-compile" in text


def test_flags_layer_over_config_json_and_bad_values_are_one_line(
    capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.cli as cli
    from training.config import TrainConfig

    seen = {}
    monkeypatch.setattr("training.run.train", lambda cfg, **_: seen.setdefault("cfg", cfg) and {"ok": 1})
    given = TrainConfig(shards="s1", lr=1e-3, max_steps=7).to_json()
    argv = [
        "train",
        "--config-json",
        given,
        "--max-steps",
        "9",
        "--no-compile",
        "--gpu",
        "--home",
        str(tmp_path),
    ]
    assert cli.main(argv) == 0
    assert seen["cfg"] == TrainConfig(shards="s1", lr=1e-3, max_steps=9, use_gpu=True)
    for argv, needle in [
        (["train", "--home", str(tmp_path)], "--shards is required"),
        (["train", "--config-json", '{"shards": "s", "lrr": 1}'], "unknown training config keys: lrr"),
        (["train", "--config-json", "[1]"], "--config-json: not a JSON object"),
        (["train", "--shards", "s", "--batch-size", "33"], "must be divisible"),
        (["shards", "build", "--corpus", "c", "--tokenizer", "t"], "--max-seq-len is required"),
    ]:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (argv, err)


def test_human_output_shows_nested_metrics() -> None:
    from flows.cli import _human

    text = _human({"run": "r1", "metrics": {"eval_loss": 7.27912, "eval_sop_acc": 0.5}, "empty": {}})
    assert text.splitlines() == ["run: r1", "metrics.eval_loss: 7.2791", "metrics.eval_sop_acc: 0.5"]
