"""The SentencePiece job on real text (WikiText-2 valid): a deterministic sample read with Ray Data, a recorded,
reproducible model, and one-line errors for what a user can get wrong."""

import json
import time
from pathlib import Path

import pytest
import ray

from albert_core.errors import UserError
from albert_core.storage import sha256_file
from albert_core.tokenizer import SentencePieceTokenizer
from data_jobs import tokenizer_job
from data_jobs.corpus import resolve_version
from data_jobs.tokenizer_job import (
    TokenizerJobConfig,
    estimate_training_memory,
    load_tokenizer,
    sample_sentences,
    train_tokenizer,
)
from flows.cli import main
from tests.corpus_helpers import publish, wikitext_documents

pytestmark = pytest.mark.usefixtures("uses_ray")

VOCAB = 4000
SAMPLE = 5000


@pytest.fixture(scope="module")
def docs(corpora: Path) -> dict[str, list[str]]:
    return wikitext_documents(corpora / "wikitext2-valid.raw.txt")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, docs: dict[str, list[str]]) -> Path:
    home = tmp_path_factory.mktemp("albert_home")
    publish(home, "wiki", docs, files=4)
    publish(home, "wiki-one-file", docs, files=1)
    return home


@pytest.fixture(scope="module")
def trained(home: Path) -> dict:
    return train_tokenizer(
        "wiki", home=home, cfg=TokenizerJobConfig(vocab_size=VOCAB, sample_sentences=SAMPLE)
    )


def test_sample_depends_on_seed_not_on_layout(home: Path, docs: dict[str, list[str]]) -> None:

    cfg = TokenizerJobConfig(sample_sentences=SAMPLE)
    four, total = sample_sentences(resolve_version(home, "wiki"), cfg)
    one, total_one = sample_sentences(resolve_version(home, "wiki-one-file"), cfg)
    assert four == one  # same sentences in the same order, whatever the files and blocks
    assert total == total_one == sum(len(s) for s in docs.values())
    assert len(four) == SAMPLE
    everything = [s for doc_id in sorted(docs) for s in docs[doc_id]]
    assert set(four) <= set(everything)
    other, _ = sample_sentences(
        resolve_version(home, "wiki"), TokenizerJobConfig(sample_sentences=SAMPLE, seed=1)
    )
    assert len(set(other) ^ set(four)) > SAMPLE // 10
    whole, _ = sample_sentences(resolve_version(home, "wiki"), TokenizerJobConfig(sample_sentences=10**9))
    assert whole == [s for s in everything if s]


def test_training_is_reproducible_and_recorded(home: Path, trained: dict) -> None:
    again = train_tokenizer(
        "wiki-one-file",
        home=home,
        name="again",
        cfg=TokenizerJobConfig(vocab_size=VOCAB, sample_sentences=SAMPLE),
    )
    assert again["sha256"] == trained["sha256"]
    assert trained["name"] == "wiki" and trained["corpus"] == "wiki/v1" and trained["vocab_size"] == VOCAB
    assert trained["sentences_sampled"] == SAMPLE

    folder = Path(trained["path"])
    assert folder == home / "tokenizers" / "wiki"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["corpus"] == "wiki/v1"
    assert manifest["corpus_manifest_sha256"] == sha256_file(
        home / "corpora" / "wiki" / "v1" / "manifest.json"
    )
    assert manifest["sample"] == {"sentences": SAMPLE, "corpus_sentences": trained["corpus_sentences"]}
    assert manifest["parameters"] == {
        "vocab_size": VOCAB,
        "lowercase": True,
        "sample_sentences": SAMPLE,
        "seed": 0,
    }
    assert manifest["sha256"] == sha256_file(folder / "spiece.model") == trained["sha256"]
    assert manifest["files"]["spiece.model"] == trained["sha256"]
    assert manifest["created"].endswith("+00:00")

    tokenizer, loaded = load_tokenizer(home, "wiki")
    assert tokenizer.sha256 == trained["sha256"] and tokenizer.lowercase
    assert loaded["path"] == str(folder)
    pieces = tokenizer.encode_as_pieces("The ship was launched in 1889 .")
    assert pieces[0] == "▁the" and len(pieces) < 12


def test_retraining_replaces_atomically(home: Path, trained: dict) -> None:
    cfg = TokenizerJobConfig(vocab_size=VOCAB, sample_sentences=SAMPLE, lowercase=False)
    cased = train_tokenizer("wiki", home=home, name="replaced", cfg=cfg)
    replaced = train_tokenizer("wiki", home=home, name="replaced", cfg=TokenizerJobConfig(vocab_size=VOCAB))
    assert cased["sha256"] != replaced["sha256"]
    tokenizer, manifest = load_tokenizer(home, "replaced")
    assert tokenizer.sha256 == replaced["sha256"] == manifest["sha256"]
    assert not [
        p for p in (home / "tokenizers").iterdir() if p.name.startswith(".")
    ]  # no temporary folders left


def test_cli_json(home: Path, trained: dict, capsys: pytest.CaptureFixture) -> None:
    argv = ["tokenizer", "train", "--corpus", "wiki", "--name", "cli", "--vocab-size", str(VOCAB),
            "--sample-sentences", str(SAMPLE), "--home", str(home), "--json"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["name"] == "cli" and result["sha256"] == trained["sha256"]
    assert result["path"] == str(home / "tokenizers" / "cli")


def test_too_large_vocab_is_one_line(home: Path, capsys: pytest.CaptureFixture) -> None:
    argv = [
        "tokenizer",
        "train",
        "--corpus",
        "wiki",
        "--name",
        "huge",
        "--vocab-size",
        "200000",
        "--home",
        str(home),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("albert: error: vocab_size 200000 is too large")
    assert not (home / "tokenizers" / "huge").exists()


def test_user_errors(home: Path, albert_home: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_tokenizer(home, "nope")
    with pytest.raises(UserError, match="invalid tokenizer name"):
        train_tokenizer("wiki", home=home, name="../escape")
    with pytest.raises(UserError, match="has no versions"):
        train_tokenizer("missing", home=albert_home)
    with pytest.raises(UserError, match="no version 7"):
        train_tokenizer("wiki", home=home, version=7)
    (home / "tokenizers" / "foreign").mkdir(parents=True)
    (home / "tokenizers" / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a trained tokenizer"):
        train_tokenizer("wiki", home=home, name="foreign")
    bad_configs = (
        {"vocab_size": "big"},
        {"sample_sentences": 0},
        {"lowercase": "yes"},
        {"seed": -1},
        {"max_memory_gb": 0},
        {"max_memory_gb": "8"},
    )
    for bad in bad_configs:
        with pytest.raises(UserError):
            TokenizerJobConfig(**bad)


def test_sample_streamed_from_a_file_gives_the_in_memory_model(home: Path, trained: dict) -> None:
    """The job writes the sample to a file and trains from it in a Ray task; the model is the one `train` builds
    from the sample as a Python list (what the job did before)."""
    sentences, _ = sample_sentences(
        resolve_version(home, "wiki"), TokenizerJobConfig(sample_sentences=SAMPLE)
    )
    in_memory = SentencePieceTokenizer.train(sentences, vocab_size=VOCAB, lowercase=True)
    assert in_memory.sha256 == trained["sha256"]

    memory = json.loads((Path(trained["path"]) / "manifest.json").read_text())["memory"]
    assert memory == trained["memory"]
    assert memory["trainer_node"] in {n["NodeID"] for n in ray.nodes()}  # trained in a Ray task
    assert memory["capped"] is False and memory["max_memory_gb"] is None
    expected = estimate_training_memory(memory["sample_bytes"], SAMPLE)
    assert memory["estimated_bytes"] == expected <= memory["budget_bytes"]
    assert memory["trainer_peak_rss_bytes"] > 0


def test_sample_is_capped_to_the_memory_budget(home: Path, capsys: pytest.CaptureFixture) -> None:
    # a budget that holds about half the sample (sentences here are ~120 bytes)
    budget = estimate_training_memory(SAMPLE // 2 * 120, SAMPLE // 2)
    cfg = TokenizerJobConfig(vocab_size=2000, sample_sentences=SAMPLE, max_memory_gb=budget / 1e9)
    capped = train_tokenizer("wiki", home=home, name="capped", cfg=cfg)
    err = capsys.readouterr().err.strip().splitlines()
    fits = capped["sentences_sampled"]
    assert SAMPLE // 4 < fits < SAMPLE
    assert len(err) == 1 and err[0].startswith(
        f"tokenizer: sample capped at {fits:,} of {SAMPLE:,} sentences"
    )
    assert "pass --max-memory-gb to change" in err[0]
    memory = capped["memory"]
    assert memory["capped"] is True and memory["max_memory_gb"] == budget / 1e9
    assert memory["estimated_bytes"] <= memory["budget_bytes"] == int(budget)
    # the cap keeps the smallest keys, so it is the sample that sample_sentences=fits chooses: same model
    plain = train_tokenizer(
        "wiki-one-file",
        home=home,
        name="plain",
        cfg=TokenizerJobConfig(vocab_size=2000, sample_sentences=fits),
    )
    assert plain["sha256"] == capped["sha256"] and plain["memory"]["capped"] is False


def test_memory_no_node_has_fails_fast_in_one_line(
    home: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokenizer_job, "SPM_FIXED_BYTES", 10**15)  # the trainer "needs" a petabyte
    argv = ["tokenizer", "train", "--corpus", "wiki", "--name", "too-big", "--max-memory-gb", "10000000",
            "--home", str(home)]  # fmt: skip
    started = time.monotonic()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("albert: error: tokenizer training asks for 1 worker with")
    assert err[0].endswith("pass a smaller --max-memory-gb or --sample-sentences")
    assert time.monotonic() - started < 60  # no waiting for a node that will never come
    assert not (home / "tokenizers" / "too-big").exists()
    with pytest.raises(UserError, match="not enough to train on even one sentence"):
        train_tokenizer("wiki", home=home, name="tiny", cfg=TokenizerJobConfig(max_memory_gb=0.001))
