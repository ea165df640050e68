"""`albert finetune --task qa` on a SQuAD-format set built from WikiText-2 (`tests/squad_builder.py`), from the
pretrained test model: it trains over document-stride windows, scores exact match and F1 as the SQuAD script
does, logs and registers a pyfunc that answers with character offsets, and exports a folder that
`transformers.AlbertForQuestionAnswering` and `AlbertTokenizer` load and read the same way.

transformers 5 removed `pipeline("question-answering")` (it points to text generation instead), so the test runs
what that pipeline did, by hand, on the exported folder: tokenize the pair with offsets, take the best span of the
context, cut it out by the offsets."""

import dataclasses
import json
import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from albert_core.checkpoint import load_classifier
from albert_core.extractive import question_pieces, windows
from albert_core.model import AlbertForQuestionAnswering
from albert_core.tokenizer import SentencePieceTokenizer
from flows.cli import main
from tests.serving import mlflow_models_serve, post
from tests.squad_builder import YEAR, build_squad, write_squad
from training.qa import held_out, read_squad, squad_scores

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("uses_ray")]  # the pretrained model: Ray Train

EPOCHS, LR, SHARE = 2, 1e-3, 0.2
SETTINGS = ["--max-seq-len", "96", "--max-query-len", "32", "--doc-stride", "48"]
NAME = "albert-qa-test"


@pytest.fixture(scope="module")
def reader(pretrained_en: tuple[Path, dict, str], corpora: Path, tmp_path_factory: pytest.TempPathFactory,
           albert_json):  # fmt: skip
    """(home, the SQuAD file, --json result) of one `albert finetune --task qa` on the built set."""
    home, summary, _ = pretrained_en
    squad = write_squad(tmp_path_factory.mktemp("squad") / "train.json",
                        build_squad(corpora / "wikitext2-valid.raw.txt", questions=300))  # fmt: skip
    yield home, squad, albert_json(["finetune", "--task", "qa", "--model", summary["model_uri"], "--train", str(squad),
                                    "--eval-share", str(SHARE), "--epochs", str(EPOCHS), "--lr", str(LR), *SETTINGS,
                                    "--threads", "2", "--model-name", NAME, "--home", str(home)])  # fmt: skip
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def _artifact(result: dict, name: str) -> dict:
    path = mlflow.artifacts.download_artifacts(run_id=result["run_id"], artifact_path=name,
                                               tracking_uri=result["tracking_uri"])  # fmt: skip
    return json.loads(Path(path).read_text())


def test_qa_trains_over_windows_scores_and_registers(reader) -> None:
    home, squad, result = reader
    questions = read_squad(squad)
    evaluation = [q for q in questions if held_out(q, SHARE)]
    assert result["eval_questions"] == len(evaluation) and result["train_questions"] + len(evaluation) == len(
        questions
    )
    assert result["train_windows"] > result["train_questions"]  # long paragraphs: the stride is exercised
    client = MlflowClient(result["tracking_uri"], registry_uri=result["tracking_uri"])
    run = client.get_run(result["run_id"])
    assert run.data.params["task"] == "qa" and run.data.params["doc_stride"] == "48"
    assert run.data.tags["squad_version"] == "1.1"
    losses = [m.value for m in client.get_metric_history(result["run_id"], "train_loss")]
    assert len(losses) == EPOCHS and losses[-1] < losses[0]
    em = client.get_metric_history(result["run_id"], "eval_exact_match")
    assert [m.step for m in em] == list(range(1, EPOCHS + 1)) and em[-1].value == pytest.approx(
        result["exact_match"]
    )

    # The logged predictions are the answers scored: the SQuAD script's figures recomputed from them agree.
    predicted = _artifact(result, "predictions.json")
    assert set(predicted) == {q.id for q in evaluation}
    scores = squad_scores(evaluation, [predicted[q.id] for q in evaluation])
    assert scores == _artifact(result, "squad_scores.json")
    assert (
        scores["exact_match"] == pytest.approx(result["exact_match"])
        and scores["f1"] >= scores["exact_match"]
    )
    # Every answer is a span of its own context; the reader has learnt what kind of span answers "what year".
    assert all(predicted[q.id] in q.context for q in evaluation)
    years = sum(bool(YEAR.fullmatch(predicted[q.id].strip())) for q in evaluation)
    assert years >= 0.7 * len(evaluation) and result["exact_match"] > 0.1, (years, result)
    assert client.get_model_version_by_alias(NAME, "candidate").tags["task"] == "qa"


def test_the_registered_reader_answers_as_evaluated(reader) -> None:
    home, squad, result = reader
    mlflow.set_tracking_uri(result["tracking_uri"])
    mlflow.set_registry_uri(result["tracking_uri"])
    served = mlflow.pyfunc.load_model(f"models:/{NAME}@candidate")
    evaluation = [q for q in read_squad(squad) if held_out(q, SHARE)][:40]
    out = served.predict(pd.DataFrame({"question": [q.question for q in evaluation],
                                       "context": [q.context for q in evaluation]}))  # fmt: skip
    assert list(out.columns) == ["answer", "score", "start", "end", "truncated"]
    predicted = _artifact(result, "predictions.json")
    same = 0
    for q, row in zip(evaluation, out.itertuples(), strict=True):
        assert q.context[row.start : row.end] == row.answer and 0 < row.score <= 1
        same += row.answer == predicted[q.id]
    assert same >= 0.9 * len(evaluation)  # the same windows and span rule (padding may flip a near tie)
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"missing inputs \['question', 'context'\]"):
        served.predict(pd.DataFrame({"text": ["x"]}))


def test_the_reader_exports_to_transformers(reader, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import transformers

    home, squad, result = reader
    model, head = load_classifier(result["model_dir"])
    assert isinstance(model, AlbertForQuestionAnswering) and head["inference"]["doc_stride"] == 48
    outdir = tmp_path / "hf"
    assert main(["export-hf", f"models:/{NAME}@candidate", str(outdir), "--home", str(home), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert exported["class"] == "AlbertForQuestionAnswering" and exported["tokenizer"] is True
    hf, info = transformers.AlbertForQuestionAnswering.from_pretrained(outdir, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    hf_tokenizer = transformers.AlbertTokenizer.from_pretrained(outdir)
    ours = SentencePieceTokenizer.load(Path(result["model_dir"]) / "tokenizer")
    served = mlflow.pyfunc.load_model(f"models:/{NAME}@candidate")

    # contexts that fit one window: each answer with about 80 characters either side, cut at spaces
    short = []
    for q in read_squad(squad)[:40]:
        start, end = q.answers[0].start, q.context.find(" ", q.answers[0].start + 80)
        text = q.context[q.context.rfind(" ", 0, max(start - 80, 0)) + 1 : end if end >= 0 else None]
        if len(ours.encode_one(q.question)) <= 32 and len(ours.encode_one(text)) + 35 <= 96:
            short.append(dataclasses.replace(q, context=text))
    assert len(short) >= 5, "the built set has questions whose neighbourhood fits one window"
    answers = served.predict(pd.DataFrame({"question": [q.question for q in short],
                                           "context": [q.context for q in short]}))["answer"]  # fmt: skip
    for q, ours_answer in zip(short, answers, strict=True):
        encoded = hf_tokenizer(q.question, q.context, return_tensors="pt", return_offsets_mapping=True,
                               return_token_type_ids=True)  # fmt: skip
        offsets = encoded.pop("offset_mapping")[0]
        question_ids, _ = question_pieces(ours, q.question, 32)
        (window,) = windows(ours, question_ids, ours.encode_one(q.context), 96, 48)
        assert encoded["input_ids"][0].tolist() == window.input_ids.tolist()  # same pieces, same pair layout
        assert encoded["token_type_ids"][0].tolist() == window.token_type_ids.tolist()
        with torch.no_grad():
            theirs = hf.eval()(**encoded)
            mine = model.eval()(encoded["input_ids"], encoded["token_type_ids"], encoded["attention_mask"])
        torch.testing.assert_close(theirs.start_logits, mine.start_logits)
        torch.testing.assert_close(theirs.end_logits, mine.end_logits)
        # what pipeline("question-answering") did: the best context span (at most 30 pieces), cut by offsets
        context = torch.tensor([i == 1 for i in encoded.sequence_ids(0)])
        start = theirs.start_logits[0].masked_fill(~context, -1e9)
        end = theirs.end_logits[0].masked_fill(~context, -1e9)
        band = torch.ones(len(start), len(start), dtype=torch.bool).triu().tril(29)
        pairs = (start[:, None] + end[None, :]).masked_fill(~band, -torch.inf)
        s, e = divmod(int(pairs.argmax()), pairs.shape[1])
        hf_answer = q.context[int(offsets[s][0]) : int(offsets[e][1])]
        assert re.sub(r"\s", "", hf_answer) == re.sub(r"\s", "", ours_answer), (hf_answer, ours_answer)


def test_the_reader_answers_over_http(reader, tmp_path: Path, uses_servers: None) -> None:
    """`mlflow models serve` on the registered reader: an answer with its offsets, "no answer" for a context with
    nothing in it (null offsets, never NaN), and a one-line 400 for a missing column."""
    home, squad, result = reader
    q = read_squad(squad)[0]
    with mlflow_models_serve(
        f"models:/{NAME}@candidate", result["tracking_uri"], tmp_path / "serve.log"
    ) as url:
        records = [
            {"question": q.question, "context": q.context},
            {"question": "In what year ?", "context": " "},
        ]
        status, body = post(url, {"dataframe_records": records})
        assert status == 200, body
        answer, nothing = body["predictions"]
        assert (
            q.context[answer["start"] : answer["end"]] == answer["answer"] != "" and 0 < answer["score"] <= 1
        )
        assert nothing["answer"] == "" and nothing["start"] is None and nothing["end"] is None
        pieces = len(
            SentencePieceTokenizer.load(Path(result["model_dir"]) / "tokenizer").encode_one(q.question)
        )
        assert answer["truncated"] is (pieces > 32) and nothing["truncated"] is False  # --max-query-len 32
        status, body = post(url, {"dataframe_records": [{"question": "When ?"}]})
        assert status == 400 and "context" in body["message"] and "stack_trace" not in body, body
