"""Training components that run without Ray: config validation, shard rows -> model inputs, exact resume."""

from pathlib import Path

import numpy as np
import pytest
import torch

from albert_core import AlbertConfig, AlbertForPreTraining, UserError
from albert_core.optim import build_optimizer, lr_scheduler
from albert_core.pretraining_data import SopConfig, SpecialIds, build_instances
from training.batches import STATS, BatchSpec, to_model_inputs
from training.checkpointing import TrainState, load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.step import Diverged, build, optimizer_step, training_steps

SPECIAL = SpecialIds(cls=2, sep=3, mask=4, vocab_size=200)


def rows(static: bool) -> dict[str, np.ndarray]:
    """Shard-like rows (as Ray Data hands them to collate_fn) from the real instance builder."""
    rng = np.random.default_rng(0)
    docs = {f"d{i}": [rng.integers(5, 200, size=int(rng.integers(4, 12))).tolist() for _ in range(6)]
            for i in range(6)}  # fmt: skip
    cfg = SopConfig(max_seq_len=32, max_predictions=5, dupe_factor=1, static_masking=static)
    instances = list(build_instances(docs, cfg, SPECIAL, np.ones(200, dtype=bool)))
    fields = ["input_ids", "token_type_ids", "attention_mask", "word_start",
              "masked_lm_positions", "masked_lm_ids", "masked_lm_weights"]  # fmt: skip
    out = {f: np.stack([getattr(i, f) for i in instances]) for f in fields}
    out["sop_label"] = np.array([i.sop_label for i in instances])
    out["doc_id"] = np.array([i.doc_id for i in instances], dtype=object)
    out["pass_index"] = np.array([i.pass_index for i in instances])
    out["index"] = np.array([i.index for i in instances])
    return out


def spec(masking: str) -> BatchSpec:
    return BatchSpec(masking, SPECIAL, SopConfig(max_seq_len=32, max_predictions=5, dupe_factor=1), seed=1)


def test_static_batches_become_labels_at_masked_positions() -> None:
    batch = rows(static=True)
    inputs = to_model_inputs(batch, spec("static"))
    weights = batch["masked_lm_weights"]
    assert inputs["labels"].shape == inputs["masked_lm_positions"].shape == weights.shape
    assert (inputs["labels"][torch.from_numpy(weights == 0)] == -100).all()
    assert (inputs["labels"][torch.from_numpy(weights > 0)] >= 5).all()
    model = AlbertForPreTraining(AlbertConfig.from_preset("tiny", vocab_size=200, num_hidden_layers=1))
    assert torch.isfinite(model(**inputs).loss)


def test_dynamic_masks_are_per_epoch_and_independent_of_batch_composition() -> None:
    batch = rows(static=False)
    assert batch["masked_lm_weights"].sum() == 0
    a = to_model_inputs(batch, spec("dynamic"), epoch=0)
    again = to_model_inputs(batch, spec("dynamic"), epoch=0)
    other_epoch = to_model_inputs(batch, spec("dynamic"), epoch=1)
    half = {k: v[::2] for k, v in batch.items()}
    subset = to_model_inputs(half, spec("dynamic"), epoch=0)
    assert torch.equal(a["input_ids"], again["input_ids"])
    assert not torch.equal(a["input_ids"], other_epoch["input_ids"])
    assert torch.equal(subset["input_ids"], a["input_ids"][::2])  # a row's mask does not depend on its batch
    masked = (a["labels"] != -100).sum(1)
    assert (masked >= 1).all() and (masked <= 5).all()


def _step_setup(grad_accum: int = 1):
    cfg = TrainConfig(shards="s", workers=1, batch_size=8 * grad_accum, grad_accum=grad_accum, max_steps=10)
    model, optimizer, scheduler = build(
        cfg, AlbertConfig.from_preset("tiny", vocab_size=200, num_hidden_layers=1)
    )
    inputs = to_model_inputs(rows(static=True), spec("static"))
    data = iter([{k: v[:8] for k, v in inputs.items()}] * 4)
    return cfg, model, optimizer, scheduler, data


def test_optimizer_step_learns_and_accumulates_on_one_process() -> None:
    """The step the Ray Train workers run, here at world size 1: the loss falls on a batch seen again, and two
    micro-batches of 8 count 16 sequences."""
    cfg, model, optimizer, scheduler, data = _step_setup(grad_accum=2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    first = optimizer_step(model, optimizer, scheduler, scaler, data, cfg, torch.device("cpu"))
    second = optimizer_step(model, optimizer, scheduler, scaler, data, cfg, torch.device("cpu"))
    sequences = STATS.index("sequences")
    assert first.stats[sequences] == second.stats[sequences] == 16
    assert second.stats[STATS.index("loss_sum")] < first.stats[STATS.index("loss_sum")]
    assert torch.isfinite(first.grad_norm) and first.lr < second.lr  # warming up


def test_the_step_loop_runs_at_world_size_one_and_evaluates_on_schedule() -> None:
    """`training_steps` without Ray: steps numbered from `first_step`, evaluation every `eval_every` and at the
    last step, the figures reduced once per step."""
    cfg, model, optimizer, scheduler, _ = _step_setup()
    cfg = cfg.replace(max_steps=5, eval_every=2)
    inputs = to_model_inputs(rows(static=True), spec("static"))
    data = iter([{k: v[:8] for k, v in inputs.items()}] * 5)
    reduced, evaluated = [], []
    steps = training_steps(model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False), data, cfg,
                           torch.device("cpu"), first_step=2, reduce=lambda t: reduced.append(t) or t,
                           evaluate=lambda: evaluated.append(1) or {"eval_loss": 1.0})  # fmt: skip
    done = list(steps)
    assert [s.step for s in done] == [2, 3, 4, 5] and len(reduced) == 4
    assert ["eval_loss" in s.figures for s in done] == [True, False, True, True]
    assert all(s.tokens == int(inputs["attention_mask"][:8].sum()) and s.seconds > 0 for s in done)
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s"} <= set(done[0].figures)


def test_non_finite_gradients_stop_the_run_before_the_update() -> None:
    cfg, model, optimizer, scheduler, data = _step_setup()
    with torch.no_grad():
        model.predictions.decoder.bias[5] = float("inf")  # a poisoned logit: the MLM loss goes to NaN
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with pytest.raises(Diverged, match="stopped before the update"):
        optimizer_step(model, optimizer, scheduler, scaler, data, cfg, torch.device("cpu"))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the weights changed"
    assert not optimizer.state, "the optimizer took a step"


def test_checkpoint_resume_continues_bit_exactly(tmp_path: Path) -> None:
    cfg = AlbertConfig.from_preset("tiny", vocab_size=200, num_hidden_layers=2)
    inputs = to_model_inputs(rows(static=True), spec("static"))

    def setup() -> tuple:
        torch.manual_seed(0)
        model = AlbertForPreTraining(cfg)
        opt = build_optimizer(model, "lamb", lr=1e-2)
        return model, opt, lr_scheduler(opt, 2, 10)

    def step(model, opt, sched) -> float:
        loss = model(**inputs).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        return loss.item()

    model, opt, sched = setup()
    for _ in range(3):
        step(model, opt, sched)
    save_checkpoint(tmp_path / "ckpt", model, opt, sched, TrainState(step=3, epoch=1, batches_in_epoch=2))
    expected = [step(model, opt, sched) for _ in range(3)]

    model2, opt2, sched2 = setup()
    state = load_checkpoint(tmp_path / "ckpt", model2, opt2, sched2)
    assert (state.step, state.epoch, state.batches_in_epoch) == (3, 1, 2)
    assert [step(model2, opt2, sched2) for _ in range(3)] == expected

    (tmp_path / "ckpt" / "training_state.pt").write_bytes(b"tampered")
    with pytest.raises(UserError, match="sha256"):
        load_checkpoint(tmp_path / "ckpt", model2, opt2, sched2)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(preset="huge"), "unknown preset"),
        (dict(batch_size=10, workers=3), "divisible"),
        (dict(max_steps=0), "max_steps must be a positive integer"),
        (dict(precision="fp16"), "fp16 needs a GPU"),
        (dict(warmup_steps=500, max_steps=100), "warmup_steps"),
        (dict(optimizer="sgd"), "optimizer must be one of"),
    ],
)
def test_train_config_rejects_nonsense(changes: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        TrainConfig(shards="x", **changes)


def test_train_config_round_trip_and_derived_values() -> None:
    cfg = TrainConfig(shards="abc", workers=2, batch_size=32, grad_accum=2, max_steps=100)
    assert cfg.per_worker_batch == 8 and cfg.warmup == 10 and cfg.registered_model_name == "albert-tiny"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(UserError, match="unknown training config keys: lrr"):
        TrainConfig.from_dict({**cfg.to_dict(), "lrr": 1})
