"""The demo end to end on a small slice of the builtin corpus: loss falls, the model folder reloads bit-exact,
and its Hugging Face export (model + tokenizer) loads in transformers and agrees with ours."""

import json
from pathlib import Path

import pytest
import torch
import transformers

from albert_core.checkpoint import load_model
from albert_core.hf import from_hf
from albert_core.tokenizer import SentencePieceTokenizer
from flows.cli import main
from flows.demo import DemoConfig, run_demo

SMALL = DemoConfig(
    corpus_bytes=250_000, vocab_size=2000, dupe_factor=2, steps=40, warmup_steps=4, log_every=10
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run_demo(tmp_path_factory.mktemp("home"), cfg=SMALL)


def test_demo_loss_goes_down_and_model_reloads(demo: dict) -> None:
    assert demo["loss_last"] < demo["loss_first"] - 0.5
    assert 0.0 <= demo["mlm_accuracy"] <= 1.0 and demo["eval_instances"] > 0
    model = load_model(demo["model_dir"]).eval()
    assert model.config.vocab_size == 2000
    assert SentencePieceTokenizer.load(Path(demo["model_dir"]) / "tokenizer").vocab_size == 2000


def test_exported_folder_loads_in_transformers_with_same_outputs(
    demo: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["export-hf", demo["model_dir"], str(tmp_path / "hf"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["tokenizer"] is True
    hf_model = transformers.AlbertForPreTraining.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AlbertTokenizer.from_pretrained(tmp_path / "hf")
    ours = load_model(demo["model_dir"]).eval()
    ours_tok = SentencePieceTokenizer.load(Path(demo["model_dir"]) / "tokenizer")
    text = "Return the number of items in a container. The list is sorted in place."
    ids = hf_tok(text, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == [ours_tok.cls_id, *ours_tok.encode_one(text), ours_tok.sep_id]
    with torch.no_grad():
        a, b = ours(ids), hf_model(ids)
        assert (a.prediction_logits - b.prediction_logits).abs().max() < 1e-4
        assert (a.sop_logits - b.sop_logits).abs().max() < 1e-4
        assert (from_hf(hf_model)(ids).sop_logits - a.sop_logits).abs().max() < 1e-5


def test_corrupted_model_folder_is_refused(demo: dict, tmp_path: Path) -> None:
    import shutil

    from albert_core import UserError

    copy = tmp_path / "model"
    shutil.copytree(demo["model_dir"], copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16] + bytes(16))
    with pytest.raises(UserError, match="does not match its recorded sha256"):
        load_model(copy)
