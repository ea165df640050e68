"""Gated promotion and rollback on a real embedded MLflow, with models evaluated on real shards.

One shard set is built per module from the WikiText-2 validation text (ingest -> tokenizer -> shards). The models
are one tiny ALBERT trained in this process with plain PyTorch for a few dozen steps, saved at several steps: the
step-0 snapshot is the random initialisation, later ones are measurably better. Each snapshot is logged and
registered once (`log_and_register`); a test registers those logged models again under its own model name, so
every test starts from an empty registry entry without uploading anything twice.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient

from albert_core import AlbertConfig, AlbertForPreTraining
from albert_core.checkpoint import save_model
from albert_core.errors import UserError
from albert_core.optim import build_optimizer
from albert_core.tokenizer import SentencePieceTokenizer
from data_jobs.ingest import ingest
from data_jobs.shards import ShardsConfig, build_shards, load_manifest, shards_dir
from data_jobs.tokenizer_job import TokenizerJobConfig, load_tokenizer, train_tokenizer
from training.batches import batch_spec, to_model_inputs
from training.promotion import (
    CHAMPION,
    DATA_FIGURES,
    EVAL_METRICS,
    EVAL_SEED,
    KEY_TAGS,
    PromotionPolicy,
    evaluate_model,
    history,
    list_models,
    promote,
    promotion_lock,
    rollback,
)
from training.registry import CANDIDATE, configure_mlflow, get_or_create_experiment, log_and_register

SNAPSHOT_STEPS = (0, 4, 8, 12, 16, 20, 26, 32)  # the race registers all eight
BATCH = 32
EVAL_N = 64  # eval rows per evaluation: enough to separate the snapshots, quick on a busy 2-core machine
POLICY = PromotionPolicy(max_sequences=EVAL_N)  # the default gate: SOP and MLM accuracy
POOL = "albert-pool"
MLFLOW_STORES = ("mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store")


@pytest.fixture(scope="module")
def home(corpora: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two cores shared with other work: more threads makes small ops far slower
    ingest([str(corpora / "wikitext2-valid.raw.txt")], "en", home=home)
    train_tokenizer("en", home=home, cfg=TokenizerJobConfig(vocab_size=2000))
    yield home
    torch.set_num_threads(threads)
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    mp.undo()


@pytest.fixture(scope="module")
def shards(home: Path) -> str:
    return build_shards("en", "en", home=home, cfg=ShardsConfig(max_seq_len=64, eval_share=0.1))["id"]


@pytest.fixture(scope="module")
def snapshots(home: Path, shards: str) -> dict[int, Path]:
    """Model folders of one tiny ALBERT (2 layers) after each of SNAPSHOT_STEPS AdamW steps on the train split."""
    tokenizer, tok_manifest = load_tokenizer(home, "en")
    spec = batch_spec(load_manifest(home, shards), tokenizer, EVAL_SEED)
    files = sorted((shards_dir(home, shards) / "train").glob("part-*.parquet"))
    table = pa.concat_tables(pq.read_table(f) for f in files)
    assert len(table) >= BATCH * SNAPSHOT_STEPS[-1]
    torch.manual_seed(0)
    model = AlbertForPreTraining(
        AlbertConfig.from_preset("tiny", vocab_size=tokenizer.vocab_size, num_hidden_layers=2)
    )
    optimizer = build_optimizer(model, "adamw", lr=2e-3)
    folders = {}
    for step in range(SNAPSHOT_STEPS[-1] + 1):
        if step in SNAPSHOT_STEPS:
            # The folder is named `model`: MLflow keeps a logged folder's name, download_model reads artifacts/model.
            folder = home / "test-models" / f"step-{step}" / "model"
            folders[step] = save_model(model, folder, tokenizer_dir=tok_manifest["path"])
        if step == SNAPSHOT_STEPS[-1]:
            break
        rows = {k: np.array(v) for k, v in table.slice(step * BATCH, BATCH).to_pydict().items()}
        model(**to_model_inputs(rows, spec)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return folders


@pytest.fixture(scope="module")
def logged(home: Path, shards: str, snapshots: dict[int, Path]) -> dict[int, dict[str, str]]:
    """Each snapshot logged and registered once (as versions of POOL): step -> {source, tags}."""
    configure_mlflow(home)
    client = MlflowClient()
    experiment_id = get_or_create_experiment("albert-promotion-tests", home)
    sha = load_manifest(home, shards)["tokenizer"]["sha256"]
    out = {}
    for step, folder in snapshots.items():
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"step-{step}") as run:
            pass
        tags = {
            "shards": shards,
            "run_name": f"step-{step}",
            "final_step": str(step),
            "tokenizer_sha256": sha,
        }
        registered = log_and_register(
            folder, run_id=run.info.run_id, model_name=POOL, tags=tags, hf_export=False
        )
        version = client.get_model_version(POOL, str(registered["model_version"]))
        out[step] = {"source": version.source, "run_id": version.run_id, "tags": dict(version.tags)}
    return out


def register(name: str, step: int, logged: dict[int, dict[str, str]]) -> int:
    """A new version of `name` holding snapshot `step`, aliased `candidate`, as `log_and_register` leaves it."""
    client = MlflowClient()
    entry = logged[step]
    version = mlflow.register_model(entry["source"], name, tags=entry["tags"]).version
    client.set_registered_model_alias(name, CANDIDATE, str(version))
    return int(version)


def champion_of(name: str) -> int | None:
    aliases = MlflowClient().get_registered_model(name).aliases
    return int(aliases[CHAMPION]) if CHAMPION in aliases else None


def version_tags(name: str, version: int) -> dict[str, str]:
    tags = MlflowClient().get_model_version(name, str(version)).tags
    return {k.removeprefix("promotion."): v for k, v in tags.items() if k.startswith("promotion.")}


@pytest.fixture
def registry(home: Path, logged: dict) -> Path:
    configure_mlflow(home)  # another module may have pointed MLflow elsewhere
    return home


# --- evaluation --------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("uses_ray")
def test_evaluate_model_is_deterministic_and_refuses_another_tokenizer(
    home: Path, shards: str, snapshots: dict[int, Path], corpora: Path, tmp_path: Path
) -> None:
    first = evaluate_model(snapshots[32], home, shards, max_sequences=EVAL_N)
    assert evaluate_model(snapshots[32], home, shards, max_sequences=EVAL_N) == first
    assert first["sequences"] == EVAL_N
    assert set(first) == {*EVAL_METRICS, *DATA_FIGURES, "sequences"}
    assert first["eval_loss"] == pytest.approx(first["eval_mlm_loss"] + first["eval_sop_loss"])
    untrained = evaluate_model(snapshots[0], home, shards, max_sequences=EVAL_N)
    assert all(first[k] == untrained[k] for k in DATA_FIGURES)  # figures of the rows, not of the model
    # The few training steps made a measurable difference.
    assert first["eval_mlm_loss"] < untrained["eval_mlm_loss"] - 0.5
    everything = evaluate_model(snapshots[0], home, shards)
    assert everything["sequences"] == load_manifest(home, shards)["statistics"]["eval"]["instances"]

    with open(corpora / "wikitext2-valid.raw.txt", encoding="utf-8") as f:
        lines = [line for line in itertools.islice(f, 3000) if line.strip()]
    other = SentencePieceTokenizer.train(lines, vocab_size=1000).save(tmp_path / "other-tokenizer")
    foreign = AlbertForPreTraining(AlbertConfig.from_preset("tiny", vocab_size=1000, num_hidden_layers=2))
    save_model(foreign, tmp_path / "foreign", tokenizer_dir=other)
    with pytest.raises(UserError, match="uses tokenizer sha256 .* shards .* were built with 'en'"):
        evaluate_model(tmp_path / "foreign", home, shards)
    tok_dir = snapshots[0] / "tokenizer"  # the right tokenizer, a model with another vocabulary size
    wider = AlbertForPreTraining(AlbertConfig.from_preset("tiny", vocab_size=2100, num_hidden_layers=2))
    save_model(wider, tmp_path / "wider", tokenizer_dir=tok_dir)
    with pytest.raises(UserError, match="vocab_size 2100"):
        evaluate_model(tmp_path / "wider", home, shards)
    with pytest.raises(UserError, match="max_sequences"):
        evaluate_model(snapshots[0], home, shards, max_sequences=0)
    with pytest.raises(UserError, match="unknown shards"):
        evaluate_model(snapshots[0], home, "0123456789abcdef")


# --- the gate (the policy's pure judgement alone: tests/training/test_gate.py) -----------------------------------


@pytest.mark.usefixtures("uses_ray")
def test_gate_promotes_a_better_candidate_and_rejects_a_worse_one(registry: Path, logged: dict) -> None:
    name = "albert-gate"
    v1 = register(name, 0, logged)
    first = promote(name, home=registry, policy=POLICY)
    assert (first["decision"], first["champion_version"]) == ("promoted", v1)
    assert first["reason"] == "first champion"
    assert first["previous_champion"] is None and first["metrics"]["champion"] == {}

    v2 = register(name, 32, logged)  # trained: the candidate alias moves to it
    better = promote(name, home=registry, policy=POLICY)
    assert better["version"] == v2 and better["decision"] == "promoted" and better["promoted"] is True
    assert (better["previous_champion"], better["champion_version"], champion_of(name)) == (v1, v2, v2)
    cand, champ = better["metrics"]["candidate"], better["metrics"]["champion"]
    assert cand["eval_sop_acc"] >= champ["eval_sop_acc"] and cand["eval_mlm_acc"] > champ["eval_mlm_acc"]
    assert better["reason"].startswith(f"against champion v{v1}: improves ")

    v3 = register(name, 0, logged)  # the random initialisation again: worse
    worse = promote(name, home=registry, version=v3, policy=POLICY)
    assert (worse["decision"], worse["promoted"], worse["champion_version"]) == ("rejected", False, v2)
    assert champion_of(name) == v2
    # "against champion v2: eval_sop_acc: candidate …, champion …; needs >= … + margin 0"
    metric = worse["reason"].split(": ")[1]
    assert metric in POLICY.metrics
    assert f"candidate {worse['metrics']['candidate'][metric]:.4f}" in worse["reason"]
    assert f"champion {worse['metrics']['champion'][metric]:.4f}" in worse["reason"]
    tags = version_tags(name, v3)
    assert tags["decision"] == "rejected" and tags["reason"] == worse["reason"]
    assert tags["eval_shards"] == worse["eval_shards"] == logged[0]["tags"]["shards"]
    assert json.loads(tags["metrics"]) == worse["metrics"] and tags["previous_champion"] == str(v2)
    assert tags["decided_at"].endswith("+00:00") and tags["forced"] == "false"
    assert tags["record"] == worse["record"]

    again = promote(name, home=registry, version=v2, policy=POLICY)  # a retried task: nothing to decide
    assert again["promoted"] is True and again["record"] is None and "already the champion" in again["reason"]
    records = history(name, home=registry)
    assert [(r["seq"], r["version"], r["decision"]) for r in records] == [
        (1, v1, "promoted"), (2, v2, "promoted"), (3, v3, "rejected")
    ]  # fmt: skip
    assert records[2]["metrics"] == worse["metrics"] and records[2]["policy"]["max_sequences"] == EVAL_N
    run = MlflowClient().get_run(records[2]["record"])
    assert run.data.metrics[f"candidate.{metric}"] == worse["metrics"]["candidate"][metric]
    assert run.data.params["policy.margin"] == "0.0"

    (listed,) = list_models(registry, name)
    assert listed["aliases"] == {CANDIDATE: v3, CHAMPION: v2}
    by_version = {v["version"]: v for v in listed["versions"]}
    assert by_version[v2]["aliases"] == [CHAMPION]
    assert by_version[v2]["last_decision"]["decision"] == "promoted"
    assert by_version[v3]["last_decision"]["decision"] == "rejected"
    assert by_version[v3]["tags"] == {k: logged[0]["tags"][k] for k in KEY_TAGS}
    assert name in {m["name"] for m in list_models(registry)}


@pytest.mark.usefixtures("uses_ray")
def test_margin_is_respected(registry: Path, logged: dict) -> None:
    name = "albert-margin"
    register(name, 0, logged)
    promote(name, home=registry, policy=POLICY)
    v2 = register(name, 32, logged)
    plain = promote(name, home=registry, policy=PromotionPolicy(max_sequences=EVAL_N, margin=1.0))
    assert plain["decision"] == "rejected" and "margin 1" in plain["reason"] and champion_of(name) != v2
    cand, champ = plain["metrics"]["candidate"], plain["metrics"]["champion"]
    smallest_gain = min(cand[m] - champ[m] for m in POLICY.metrics)
    assert smallest_gain > 0
    too_much = promote(
        name, home=registry, policy=PromotionPolicy(max_sequences=EVAL_N, margin=smallest_gain * 1.5)
    )
    assert too_much["decision"] == "rejected"
    enough = promote(
        name, home=registry, policy=PromotionPolicy(max_sequences=EVAL_N, margin=smallest_gain * 0.5)
    )
    assert enough["decision"] == "promoted" and champion_of(name) == v2
    decisions = [r["decision"] for r in history(name, home=registry) if r["version"] == v2]
    assert decisions == ["rejected", "rejected", "promoted"]


@pytest.mark.usefixtures("uses_ray")
def test_force_needs_a_reason_is_recorded_and_rolls_back(registry: Path, logged: dict) -> None:
    name = "albert-force"
    v1 = register(name, 32, logged)
    promote(name, home=registry, policy=POLICY)
    v2 = register(name, 0, logged)
    with pytest.raises(UserError, match="--force needs --reason"):
        promote(name, home=registry, policy=POLICY, force=True)
    with pytest.raises(UserError, match="--force needs --reason"):
        promote(name, home=registry, policy=POLICY, force=True, reason="  ")
    assert len(history(name, home=registry, include_unfinished=True)) == 1  # refused before anything happened
    assert promote(name, home=registry, policy=POLICY)["decision"] == "rejected"
    forced = promote(name, home=registry, policy=POLICY, force=True, reason="hotfix for the tokenizer bug")
    assert forced["decision"] == "promoted" and forced["forced"] is True and champion_of(name) == v2
    assert forced["reason"].startswith(
        "forced (hotfix for the tokenizer bug); the gate said: against champion"
    )
    tags = version_tags(name, v2)
    assert tags["forced"] == "true" and tags["decision"] == "promoted" and tags["seq"] == "3"
    decisions = [
        (r["version"], r["decision"], r["forced"], r["operator_reason"]) for r in history(name, home=registry)
    ]
    assert decisions == [
        (v1, "promoted", False, None), (v2, "rejected", False, None),
        (v2, "promoted", True, "hotfix for the tokenizer bug"),
    ]  # fmt: skip

    back = rollback(name, home=registry, reason="v2 regressed in production")
    assert (back["decision"], back["champion_version"], back["previous_champion"]) == ("rolled back", v1, v2)
    assert champion_of(name) == v1
    for version in (v1, v2):
        tags = version_tags(name, version)
        assert tags["decision"] == "rolled back"
        assert tags["reason"] == "champion v2 -> v1: v2 regressed in production"
    with pytest.raises(UserError, match="v1 is the first champion: there is no previous one"):
        rollback(name, home=registry)
    assert [r["decision"] for r in history(name, home=registry)][-1] == "rolled back"
    assert len(history(name, home=registry)) == 4


@pytest.mark.usefixtures("uses_ray")
def test_a_champion_with_another_tokenizer_is_replaced_only_when_forced(
    registry: Path, logged: dict, corpora: Path, tmp_path: Path
) -> None:
    name = "albert-retokenized"
    with open(corpora / "wikitext2-valid.raw.txt", encoding="utf-8") as f:
        lines = [line for line in itertools.islice(f, 3000) if line.strip()]
    other = SentencePieceTokenizer.train(lines, vocab_size=1000).save(tmp_path / "other-tokenizer")
    old = save_model(
        AlbertForPreTraining(AlbertConfig.from_preset("tiny", vocab_size=1000, num_hidden_layers=2)),
        tmp_path / "old" / "model",
        tokenizer_dir=other,
    )
    client = MlflowClient()
    with mlflow.start_run(experiment_id=get_or_create_experiment("albert-promotion-tests", registry)) as run:
        pass
    v1 = log_and_register(
        old, run_id=run.info.run_id, model_name=name, tags={"shards": "older"}, hf_export=False
    )
    # A champion from before the tokenizer changed, aliased by hand (no promotion recorded).
    client.set_registered_model_alias(name, CHAMPION, str(v1["model_version"]))
    v2 = register(name, 32, logged)
    rejected = promote(name, home=registry, policy=POLICY)
    assert rejected["decision"] == "rejected" and champion_of(name) == v1["model_version"]
    assert "champion v1 cannot be evaluated on shards" in rejected["reason"]
    assert "uses tokenizer" in rejected["reason"]
    forced = promote(name, home=registry, policy=POLICY, force=True, reason="new tokenizer")
    assert forced["decision"] == "promoted" and champion_of(name) == v2
    assert rollback(name, home=registry)["champion_version"] == v1["model_version"]
    with pytest.raises(UserError, match="became champion without a recorded promotion"):
        rollback(name, home=registry)


@pytest.mark.usefixtures("uses_ray")
def test_user_mistakes_are_one_line_errors(registry: Path, logged: dict) -> None:
    with pytest.raises(UserError, match="no registered model named 'albert-nonesuch'"):
        promote("albert-nonesuch", home=registry)
    with pytest.raises(UserError, match="no registered model"):
        rollback("albert-nonesuch", home=registry)
    with pytest.raises(UserError, match="no registered model"):
        list_models(registry, "albert-nonesuch")
    MlflowClient().create_registered_model("albert-bare")
    with pytest.raises(UserError, match="has no `candidate` version"):
        promote("albert-bare", home=registry)
    with pytest.raises(UserError, match="albert-bare has no champion"):
        rollback("albert-bare", home=registry)
    register("albert-bare", 0, logged)
    with pytest.raises(UserError, match="albert-bare has no version 7"):
        promote("albert-bare", home=registry, version=7)
    with pytest.raises(UserError, match="unknown shards"):
        promote("albert-bare", home=registry, policy=PromotionPolicy(eval_shards="0123456789abcdef"))
    assert history("albert-bare", home=registry, include_unfinished=True) == []


# --- concurrency -------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("uses_ray")
def test_a_decision_waits_for_the_lock(registry: Path, logged: dict) -> None:
    name = "albert-locked"
    register(name, 0, logged)
    results: list[dict] = []
    with promotion_lock(registry, name):
        busy = pytest.raises(UserError, match="another promotion or rollback of albert-locked has held")
        with busy, promotion_lock(registry, name, timeout_s=0.2):
            pass
        waiting = threading.Thread(target=lambda: results.append(promote(name, home=registry, policy=POLICY)))
        waiting.start()
        time.sleep(3)  # the evaluation is done by now (or still running): either way no decision yet
        assert waiting.is_alive() and history(name, home=registry, include_unfinished=True) == []
    waiting.join(timeout=120)
    assert results[0]["decision"] == "promoted" and len(history(name, home=registry)) == 1


@pytest.mark.usefixtures("uses_ray")
def test_concurrent_promotions_end_with_the_best_champion(registry: Path, logged: dict) -> None:
    name = "albert-race"
    order = [16, 0, 32, 8, 26, 4, 20, 12]  # registration order is not quality order
    versions = {register(name, step, logged): step for step in order}
    policy = PromotionPolicy(metrics=("eval_loss",), max_sequences=EVAL_N)  # a total order: "best" is defined
    # Separate processes from a fork server that imported the project once (spawning eight interpreters that each
    # import torch, mlflow and ray costs more than the whole test on two cores).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["training.promotion", "training.loop", "mlflow", "mlflow.artifacts", *MLFLOW_STORES]
    )
    with context.Pool(len(versions), initializer=torch.set_num_threads, initargs=(1,)) as pool:
        pending = [
            pool.apply_async(promote, (name,), {"home": registry, "version": v, "policy": policy})
            for v in versions
        ]
        results = [p.get(timeout=300) for p in pending]

    loss = {r["version"]: r["metrics"]["candidate"]["eval_loss"] for r in results}
    assert len(set(loss.values())) == len(loss)  # no ties: one best
    best = min(loss, key=loss.get)
    assert champion_of(name) == best and versions[best] != 0  # a trained snapshot, not the initialisation
    records = history(name, home=registry, include_unfinished=True)
    assert [r["seq"] for r in records] == list(range(1, 9))
    assert all(r["status"] == "FINISHED" for r in records)
    assert sorted(r["version"] for r in records) == sorted(versions)
    champion = None
    for r in records:  # each decision saw the champion left by the one before it: no stale read
        assert r["previous_champion"] == champion
        if champion is not None:
            assert r["metrics"]["champion"]["eval_loss"] == loss[champion]
            assert (r["decision"] == "promoted") == (loss[r["version"]] < loss[champion])
        champion = r["champion_version"]
        assert version_tags(name, r["version"])["decision"] == r["decision"]
    assert champion == best

    # The history is what rollback walks: back along the chain of promotions, to the first champion.
    chain = [r for r in records if r["decision"] == "promoted"]
    assert chain[0]["previous_champion"] is None  # the first decision found no champion
    for r in reversed(chain[1:]):
        back = rollback(name, home=registry)
        assert back["champion_version"] == r["previous_champion"] == champion_of(name)
    with pytest.raises(UserError, match="is the first champion"):
        rollback(name, home=registry)
    assert len(history(name, home=registry)) == 8 + len(chain) - 1
