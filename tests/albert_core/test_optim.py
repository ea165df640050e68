"""LAMB against hand-written numpy formulas, grouping by the reference name rule, and the LR schedule."""

import copy
import io

import numpy as np
import pytest
import torch

from albert_core.errors import UserError
from albert_core.optim import Lamb, build_optimizer, lr_scheduler, param_groups, warmup_linear_decay

B1, B2, EPS, WD, LR = 0.9, 0.999, 1e-6, 0.01, 0.1


def numpy_lamb(w, m, v, g, wd: float, adapt: bool):
    """One reference LAMB step in float64 numpy, written from the formulas, not from our code."""
    m = B1 * m + (1 - B1) * g
    v = B2 * v + (1 - B2) * g * g
    u = m / (np.sqrt(v) + EPS)
    if wd:
        u = u + wd * w
    r = 1.0
    if adapt:
        wn, un = np.linalg.norm(w), np.linalg.norm(u)
        r = wn / un if wn > 0 and un > 0 else 1.0
    return w - LR * r * u, m, v


def test_two_lamb_steps_match_numpy_reference() -> None:
    init = {
        "weight": np.array([[0.5, -1.0], [2.0, 0.25]]),
        "bias": np.array([0.3, -0.2]),
        "zero": np.zeros(3),  # zero norm: trust ratio falls back to 1.0 on the first step
    }
    grads = [
        {
            "weight": np.array([[0.1, -0.2], [0.3, 0.05]]),
            "bias": np.array([1.0, -3.0]),
            "zero": np.array([0.2, -0.1, 0.4]),
        },
        {
            "weight": np.array([[-0.4, 0.1], [0.0, 0.6]]),
            "bias": np.array([0.5, 2.0]),
            "zero": np.array([-0.3, 0.2, 0.1]),
        },
    ]
    groups_of = {"weight": (WD, True), "bias": (0.0, False), "zero": (WD, True)}

    params = {k: torch.nn.Parameter(torch.tensor(a, dtype=torch.float32)) for k, a in init.items()}
    opt = Lamb(
        [
            {"params": [params["weight"], params["zero"]], "weight_decay": WD, "adapt": True},
            {"params": [params["bias"]], "weight_decay": 0.0, "adapt": False},
        ],
        lr=LR,
        betas=(B1, B2),
        eps=EPS,
    )
    ref = {k: (a.copy(), np.zeros_like(a), np.zeros_like(a)) for k, a in init.items()}
    for step_grads in grads:
        for k, g in step_grads.items():
            params[k].grad = torch.tensor(g, dtype=torch.float32)
            ref[k] = numpy_lamb(*ref[k], g, *groups_of[k])
        opt.step()
        for k, (w, m, v) in ref.items():
            np.testing.assert_allclose(params[k].detach().numpy(), w, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(opt.state[params[k]]["exp_avg"].numpy(), m, rtol=1e-5, atol=1e-8)
            np.testing.assert_allclose(opt.state[params[k]]["exp_avg_sq"].numpy(), v, rtol=1e-5, atol=1e-10)
    # The zero-init param moved by exactly lr·update on step 1 (ratio 1), so it is non-zero now.
    assert params["zero"].abs().sum() > 0


def test_sparse_grad_raises() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        Lamb([p]).step()


def _toy_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))


def _fixed_grads(model: torch.nn.Module, step: int) -> None:
    gen = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def test_state_dict_round_trip_resumes_exactly() -> None:
    model = _toy_model()
    opt = build_optimizer(model, "lamb", lr=1e-2)
    sched = lr_scheduler(opt, warmup_steps=2, total_steps=10)
    for s in range(3):
        _fixed_grads(model, s)
        opt.step()
        sched.step()

    buf = io.BytesIO()  # through torch.save, as a checkpoint would
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    resumed = _toy_model()
    resumed.load_state_dict(ckpt["model"])
    opt2 = build_optimizer(resumed, "lamb", lr=1e-2)
    sched2 = lr_scheduler(opt2, warmup_steps=2, total_steps=10)
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])

    for s in range(3, 6):
        for m, o, sc in ((model, opt, sched), (resumed, opt2, sched2)):
            _fixed_grads(m, s)
            o.step()
            sc.step()
        assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]
        for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
            assert torch.equal(a, b)


class _Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = torch.nn.Embedding(10, 4)
        self.LayerNorm = torch.nn.LayerNorm(4)
        self.dense = torch.nn.Linear(4, 4)
        self.full_layer_layer_norm = torch.nn.LayerNorm(4)
        self.decoder = torch.nn.Linear(4, 10)
        self.decoder.weight = self.word_embeddings.weight  # tied, as the MLM decoder
        self.frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)


def test_param_groups_follow_reference_name_rule() -> None:
    model = _Tied()
    groups = param_groups(model, weight_decay=0.02)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups[0]["params"]}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert decay == {"word_embeddings.weight", "dense.weight"}
    assert no_decay == {
        "LayerNorm.weight",
        "LayerNorm.bias",
        "dense.bias",
        "full_layer_layer_norm.weight",
        "full_layer_layer_norm.bias",
        "decoder.bias",
    }
    assert (groups[0]["weight_decay"], groups[0]["adapt"]) == (0.02, True)
    assert (groups[1]["weight_decay"], groups[1]["adapt"]) == (0.0, False)
    # Each trainable tensor exactly once; the tied decoder weight is not counted twice.
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(p.requires_grad for p in model.parameters()) == 8


def test_lamb_minimises_a_regression() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1) + 0.5
    model = torch.nn.Linear(8, 1)
    opt = build_optimizer(model, "lamb", lr=0.1, weight_decay=0.0)
    sched = lr_scheduler(opt, warmup_steps=10, total_steps=300)
    first = None
    for _ in range(300):
        loss = torch.nn.functional.mse_loss(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    assert loss.item() < first / 1000


def test_adamw_builds_and_steps() -> None:
    model = _Tied()
    opt = build_optimizer(model, "adamw", lr=1e-3)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    before = copy.deepcopy(model.state_dict())
    model.decoder(model.dense(model.word_embeddings(torch.tensor([1, 2])))).sum().backward()
    opt.step()
    assert not torch.equal(before["dense.weight"], model.dense.weight)
    with pytest.raises(UserError, match="unknown optimizer"):
        build_optimizer(model, "sgd", lr=1e-3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.0), (5, 0.5), (10, 0.9), (55, 0.45), (100, 0.0), (150, 0.0)],
)
def test_schedule_key_steps(step: int, expected: float) -> None:
    # Decay counts from step 0: right after a 10-step warmup of 100 the multiplier is 0.9, not 1.0.
    assert warmup_linear_decay(step, warmup_steps=10, total_steps=100) == pytest.approx(expected)


def test_schedule_without_warmup_starts_at_full_lr() -> None:
    assert warmup_linear_decay(0, warmup_steps=0, total_steps=4) == 1.0
    assert warmup_linear_decay(2, warmup_steps=0, total_steps=4) == 0.5


def test_scheduler_drives_optimizer_lr() -> None:
    opt = Lamb([torch.nn.Parameter(torch.ones(2))], lr=2.0)
    sched = lr_scheduler(opt, warmup_steps=4, total_steps=8)
    lrs = []
    for _ in range(9):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 1.5, 1.0, 0.75, 0.5, 0.25, 0.0])


@pytest.mark.parametrize(("warmup", "total"), [(0, 0), (5, 4), (-1, 4)])
def test_schedule_rejects_bad_arguments(warmup: int, total: int) -> None:
    with pytest.raises(UserError):
        warmup_linear_decay(0, warmup, total)
    with pytest.raises(UserError):
        lr_scheduler(Lamb([torch.nn.Parameter(torch.ones(1))]), warmup, total)
