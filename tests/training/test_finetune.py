"""Fine-tuning on real text: which of four Gutenberg books a sentence comes from.

The pretrained model is a tiny ALBERT with a SentencePiece vocabulary trained here on the books, registered in a
real embedded MLflow (SQLite under a temporary ALBERT_HOME) and fine-tuned from `models:/NAME@candidate`. The
classifier must beat the majority class clearly, be registered with lineage, and load in a fresh process that
cannot import this project. The one-line data errors are checked without training.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient

from albert_core import AlbertConfig, AlbertForPreTraining
from albert_core.checkpoint import load_classifier, load_model, save_model
from albert_core.errors import UserError
from albert_core.text import join_wrapped_lines, normalize, split_sentences
from albert_core.tokenizer import SentencePieceTokenizer
from training.finetune import (
    EVAL_ACCURACY,
    EVAL_F1_MACRO,
    TRAIN_LOSS,
    FinetuneConfig,
    accuracy_and_macro_f1,
    finetune,
    load_splits,
)
from training.finetune_run import build_classifier, classifier_from_pretrained
from training.registry import get_or_create_experiment, log_and_register, tracking_uri

REPO = Path(__file__).resolve().parents[2]
PRETRAINED = "albert-books-test"
TRAIN_PER_BOOK, EVAL_PER_BOOK, UNLABELLED_PER_BOOK = 120, 40, 1000
MIN_CHARS, MAX_CHARS = 40, 300  # very short sentences ("Yes, sir.") say nothing about their book
EPOCHS = 6

# Runs in a fresh interpreter that cannot import this project's packages: the classifier must load from the code
# it carries. Reads the eval file's texts, prints the served labels and probabilities.
LOAD_AND_PREDICT = """
import importlib.abc, json, sys

class NoProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"training", "data_jobs", "flows"}:
            raise ModuleNotFoundError(f"loading the model imported {name}")

sys.meta_path.insert(0, NoProject())
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
texts = [json.loads(line)["text"] for line in open(sys.argv[2], encoding="utf-8")]
out = model.predict(pd.DataFrame({"text": texts}))
print(json.dumps({"albert_core": sys.modules["albert_core"].__file__, "columns": list(out.columns),
                  "labels": out["label"].tolist(), "probabilities": out["probability"].tolist()}))
"""


@pytest.fixture(scope="module")
def books(corpora: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """train.jsonl / eval.jsonl (sentences labelled by book, disjoint) and a tokenizer trained on other
    sentences of the same books plus the training ones."""
    folder = tmp_path_factory.mktemp("books")
    train, evaluation, unlabelled = [], [], []
    for path in sorted((corpora / "gutenberg").glob("*.txt")):
        text = normalize(path.read_text(encoding="utf-8"))  # CRLF, NFKC
        sentences = [
            s
            for paragraph in join_wrapped_lines(text.split("\n"))
            for s in split_sentences(paragraph)
            if MIN_CHARS <= len(s) <= MAX_CHARS
        ]
        random.Random(path.stem).shuffle(sentences)
        train += [{"text": s, "label": path.stem} for s in sentences[:TRAIN_PER_BOOK]]
        evaluation += [
            {"text": s, "label": path.stem}
            for s in sentences[TRAIN_PER_BOOK : TRAIN_PER_BOOK + EVAL_PER_BOOK]
        ]
        unlabelled += sentences[TRAIN_PER_BOOK + EVAL_PER_BOOK :][:UNLABELLED_PER_BOOK]
    random.Random(0).shuffle(train)
    for name, rows in (("train", train), ("eval", evaluation)):
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    tokenizer = SentencePieceTokenizer.train(unlabelled + [row["text"] for row in train], vocab_size=2000)
    return {
        "train": folder / "train.jsonl",
        "eval": folder / "eval.jsonl",
        "tokenizer": tokenizer.save(folder / "tokenizer"),
    }


def tiny_pretrained(folder: Path, tokenizer_dir: Path) -> Path:
    torch.manual_seed(0)
    vocab_size = SentencePieceTokenizer.load(tokenizer_dir).vocab_size
    config = AlbertConfig.from_preset("tiny", vocab_size=vocab_size, num_hidden_layers=2)
    return save_model(AlbertForPreTraining(config), folder, tokenizer_dir=tokenizer_dir)


def test_finetune_classifies_books_registers_and_serves(
    mlflow_home: Path, books: dict[str, Path], tmp_path: Path
) -> None:
    # Named `model`, as training's folders are: `download_model` looks for artifacts/model (the folder's name).
    pretrained_dir = tiny_pretrained(tmp_path / "pretrained" / "model", books["tokenizer"])
    with mlflow.start_run(experiment_id=get_or_create_experiment("albert-test", mlflow_home)) as run:
        log_and_register(pretrained_dir, run_id=run.info.run_id, model_name=PRETRAINED, hf_export=False)

    cfg = FinetuneConfig(
        model_uri=f"models:/{PRETRAINED}@candidate",
        train_path=books["train"],
        eval_path=books["eval"],
        epochs=EPOCHS,
        lr=2e-3,  # a randomly initialised "pretrained" encoder: it must learn from scratch, so far above 1e-4
        max_seq_len=64,
        threads=1,  # 2 busy cores: more threads than free cores is slower (DESIGN pitfalls)
    )
    lines: list[str] = []
    result = finetune(cfg, home=mlflow_home, progress=lines.append)
    print("\n".join(lines), f"\n{result['seconds']} s")

    books_labels = ["austen-emma", "carroll-alice", "chesterton-thursday", "melville-moby_dick"]
    assert result["labels"] == books_labels
    assert (result["train_examples"], result["eval_examples"]) == (4 * TRAIN_PER_BOOK, 4 * EVAL_PER_BOOK)
    assert result["majority_baseline"] == pytest.approx(0.25)
    assert result["accuracy"] >= result["majority_baseline"] + 0.15, lines
    assert 0.3 <= result["f1_macro"] <= 1
    name = f"{PRETRAINED}-classifier"
    assert result["model_uri"] == f"models:/{name}/1" and result["model_version"] == 1
    assert result["alias_uri"] == f"models:/{name}@candidate"

    client = MlflowClient()
    run_data = client.get_run(result["run_id"]).data
    assert run_data.params["lr"] == "0.002" and run_data.params["model_uri"] == cfg.model_uri
    assert run_data.tags["pretrained_model_version"] == "1"
    for key in (TRAIN_LOSS, EVAL_ACCURACY, EVAL_F1_MACRO):
        assert [m.step for m in client.get_metric_history(result["run_id"], key)] == list(
            range(1, EPOCHS + 1)
        )
    losses = [m.value for m in client.get_metric_history(result["run_id"], TRAIN_LOSS)]
    assert losses[-1] < losses[0] - 0.3
    assert client.get_metric_history(result["run_id"], EVAL_ACCURACY)[-1].value == result["accuracy"]
    table = json.loads(
        Path(client.download_artifacts(result["run_id"], "confusion.json", str(tmp_path))).read_text()
    )
    assert table["labels"] == books_labels and sum(map(sum, table["matrix"])) == result["eval_examples"]
    assert sum(table["matrix"][i][i] for i in range(4)) == round(result["accuracy"] * result["eval_examples"])
    assert (
        client.get_experiment(client.get_run(result["run_id"]).info.experiment_id).name == "albert-finetuning"
    )

    version = client.get_model_version_by_alias(name, "candidate")
    assert int(version.version) == 1
    pretrained_sha = json.loads((pretrained_dir / "manifest.json").read_text())["files"]["model.safetensors"]
    assert version.tags["pretrained_model_uri"] == cfg.model_uri
    assert version.tags["pretrained_model_version"] == "1"
    assert version.tags["pretrained_model_sha256"] == pretrained_sha
    assert json.loads(version.tags["labels"]) == books_labels
    assert version.tags["run_id"] == result["run_id"]

    model_dir = Path(result["model_dir"])
    assert model_dir == mlflow_home / "finetune" / result["run_name"] / "model"
    classifier, head = load_classifier(model_dir)
    assert head == {"labels": books_labels, "max_seq_len": 64, "inference": {}}
    assert classifier.config.num_labels == 4

    # A fresh process serves the registered classifier from its own copy of the code, and agrees with the
    # accuracy measured in training: the same encoding on both sides.
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(mlflow_home)}
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, result["alias_uri"], str(books["eval"])],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "/code/albert_core/" in served["albert_core"] and not served["albert_core"].startswith(str(REPO))
    assert served["columns"] == ["label", "probability"]
    assert set(served["labels"]) <= set(books_labels)
    assert all(0.25 <= p <= 1 for p in served["probabilities"])  # the argmax of 4 classes
    truth = [json.loads(line)["label"] for line in books["eval"].read_text().splitlines()]
    served_accuracy = sum(a == b for a, b in zip(served["labels"], truth, strict=True)) / len(truth)
    assert served_accuracy == pytest.approx(result["accuracy"], abs=1.5 / len(truth))


# --- fast checks, no training ----------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def config(train: Path, evaluation: Path, **kwargs) -> FinetuneConfig:
    return FinetuneConfig(
        model_uri="models:/never-loaded@candidate", train_path=train, eval_path=evaluation, **kwargs
    )


TWO_CLASSES = [{"text": "a b", "label": "x"}, {"text": "c d", "label": "y"}]


@pytest.mark.parametrize(
    ("train_rows", "eval_rows", "message"),
    [
        (
            [{"text": "a", "category": "x"}],
            TWO_CLASSES,
            r"train\.jsonl:1: no field 'label' \(fields: text, category\)",
        ),
        (
            TWO_CLASSES,
            [{"text": "a", "label": "z"}],
            r"eval\.jsonl: label\(s\) 'z' in field 'label' never occur",
        ),
        (
            [{"text": "a", "label": "x"}] * 3,
            TWO_CLASSES,
            r"train\.jsonl: field 'label' has a single class \('x'\)",
        ),
        ([], TWO_CLASSES, r"train\.jsonl has no examples"),
        (TWO_CLASSES, [{"text": "a", "label": 1}], r"eval\.jsonl: field 'label' holds int labels"),
        ([{"text": None, "label": "x"}], TWO_CLASSES, r"train\.jsonl: row 1: field 'text' must be a string"),
    ],
)
def test_data_mistakes_are_one_line_errors(
    tmp_path: Path, train_rows: list[dict], eval_rows: list[dict], message: str
) -> None:
    cfg = config(
        write_jsonl(tmp_path / "train.jsonl", train_rows), write_jsonl(tmp_path / "eval.jsonl", eval_rows)
    )
    # finetune checks the data before it touches MLflow or the model (which here does not exist).
    with pytest.raises(UserError, match=message) as e:
        finetune(cfg, home=tmp_path / "home", progress=lambda _: None)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "home").exists()


def test_missing_files_and_columns_name_the_file(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", TWO_CLASSES)
    with pytest.raises(UserError, match=r"nope\.jsonl does not exist"):
        load_splits(config(tmp_path / "nope.jsonl", good))
    with pytest.raises(UserError, match=r"unknown file type '\.txt'"):
        load_splits(config(tmp_path / "data.txt", good))
    (tmp_path / "data.csv").write_text("sentence,label\nhello,1\n")
    with pytest.raises(UserError, match=r"data\.csv: no field 'text' \(fields: sentence, label\)"):
        load_splits(config(tmp_path / "data.csv", good))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UserError, match=r"empty\.csv has no examples"):
        load_splits(config(tmp_path / "empty.csv", good))
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": \n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2: not valid JSON"):
        load_splits(config(tmp_path / "bad.jsonl", good))


def test_csv_and_parquet_integer_labels_sort_numerically(tmp_path: Path) -> None:
    # The text "7" stays a string; labels 2 < 10 in numeric order, not as strings ("10" < "2").
    (tmp_path / "train.csv").write_text('text,label\n"one, with a comma",10\n7,2\nthree,10\n')
    pq.write_table(
        pa.table({"text": ["x", "y"], "label": [2, 10], "other": [0.5, 1.5]}), tmp_path / "eval.parquet"
    )
    splits = load_splits(config(tmp_path / "train.csv", tmp_path / "eval.parquet"))
    assert splits.labels == ["2", "10"]
    assert splits.train_texts == ["one, with a comma", "7", "three"]
    assert (splits.train_label_ids, splits.eval_label_ids) == ([1, 0, 1], [0, 1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"warmup_ratio": 1.0}, r"warmup_ratio must be in \[0, 1\)"),
        ({"max_seq_len": 2}, "max_seq_len must be >= 3"),
        ({"text_field": "label"}, "text_field and label_field are both 'label'"),
        ({"model_name": "../escape"}, "invalid model name"),
        ({"threads": 0}, "threads must be a positive integer"),
        ({"model_uri": "models:/name/latest"}, "the version must be a number"),
        ({"init": "scratch"}, "init must be one of pretrained, random, got 'scratch'"),
    ],
)
def test_config_nonsense_is_rejected(tmp_path: Path, kwargs: dict, message: str) -> None:
    base = {
        "model_uri": "models:/m@candidate",
        "train_path": tmp_path / "t.jsonl",
        "eval_path": tmp_path / "e.jsonl",
    }
    with pytest.raises(UserError, match=message):
        FinetuneConfig(**{**base, **kwargs})


def test_default_model_name_follows_the_pretrained_model(tmp_path: Path) -> None:
    paths = {"train_path": "t.jsonl", "eval_path": "e.jsonl"}
    assert (
        FinetuneConfig("models:/albert-tiny@champion", **paths).registered_model_name
        == "albert-tiny-classifier"
    )
    assert FinetuneConfig("models:/albert-tiny/3", **paths).registered_model_name == "albert-tiny-classifier"
    assert FinetuneConfig(str(tmp_path), **paths).registered_model_name == "albert-classifier"
    assert FinetuneConfig(str(tmp_path), **paths, model_name="mine").registered_model_name == "mine"


def test_classifier_copies_every_encoder_weight() -> None:
    torch.manual_seed(0)
    pretrained = AlbertForPreTraining(AlbertConfig.from_preset("tiny", vocab_size=100, num_hidden_layers=2))
    classifier = classifier_from_pretrained(pretrained, num_labels=3)
    source = pretrained.albert.state_dict()
    assert source.keys() == classifier.albert.state_dict().keys()
    for name, tensor in classifier.albert.state_dict().items():
        assert torch.equal(tensor, source[name]), name
    assert classifier.classifier.weight.shape == (3, 128)


def test_random_init_is_the_same_classifier_without_the_pretrained_weights() -> None:
    torch.manual_seed(1)
    pretrained = AlbertForPreTraining(AlbertConfig.from_preset("tiny", vocab_size=100, num_hidden_layers=2))
    built = {}
    for init in ("pretrained", "random"):
        torch.manual_seed(0)  # as finetune seeds before building
        built[init] = build_classifier(pretrained, 3, init)
    assert built["random"].config == built["pretrained"].config == pretrained.config.replace(num_labels=3)
    source = pretrained.albert.state_dict()
    for name, tensor in built["random"].albert.state_dict().items():
        assert torch.equal(built["pretrained"].albert.state_dict()[name], source[name]), name
        if tensor.std() > 0:  # LayerNorm weights and biases start at 1 and 0 either way
            assert not torch.equal(tensor, source[name]), name
    for name, tensor in built["random"].classifier.state_dict().items():  # the same head: the same seed
        assert torch.equal(tensor, built["pretrained"].classifier.state_dict()[name]), name


def test_accuracy_and_macro_f1_match_hand_counts() -> None:
    # Class 0: tp 2, fp 1, fn 0 -> F1 4/5; class 1: tp 1, fp 1, fn 1 -> 1/2; class 2: tp 0, fp 0, fn 1 -> 0.
    accuracy, f1 = accuracy_and_macro_f1([0, 0, 1, 1, 2], [0, 0, 1, 0, 1])
    assert accuracy == pytest.approx(3 / 5)
    assert f1 == pytest.approx((4 / 5 + 1 / 2 + 0) / 3)
    metrics = pytest.importorskip("sklearn.metrics")  # installed with mlflow, not a dependency of ours
    rng = random.Random(0)
    for _ in range(20):
        truth = [rng.randrange(4) for _ in range(30)]
        predicted = [rng.randrange(5) for _ in range(30)]  # a class never in truth counts too
        expected = metrics.f1_score(truth, predicted, average="macro", zero_division=0)
        assert accuracy_and_macro_f1(truth, predicted)[1] == pytest.approx(expected)


def test_classifier_folder_is_not_a_pretraining_model(tmp_path: Path) -> None:
    from albert_core.checkpoint import save_classifier

    torch.manual_seed(0)
    tokenizer_dir = SentencePieceTokenizer.train(
        [f"sentence number {i} about topic {i % 7}" for i in range(300)], vocab_size=40
    ).save(tmp_path / "tokenizer")
    pretrained = AlbertForPreTraining(AlbertConfig.from_preset("tiny", vocab_size=40, num_hidden_layers=1))
    classifier = classifier_from_pretrained(pretrained, num_labels=2)
    folder = save_classifier(
        classifier, tmp_path / "clf", labels=["neg", "pos"], max_seq_len=32, tokenizer_dir=tokenizer_dir
    )
    loaded, head = load_classifier(folder)
    assert head == {"labels": ["neg", "pos"], "max_seq_len": 32, "inference": {}}
    for name, tensor in classifier.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    with pytest.raises(UserError, match="unsupported model format 'albert-classifier/1'"):
        load_model(folder)
    with pytest.raises(UserError, match="2 label names for a model with num_labels=3"):
        save_classifier(
            classifier_from_pretrained(pretrained, 3), tmp_path / "x", labels=["a", "b"], max_seq_len=8,
            tokenizer_dir=tokenizer_dir,
        )  # fmt: skip
