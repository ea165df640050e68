"""LAMB, parameter grouping and the warmup-then-linear-decay schedule of the ALBERT recipe.

Reference: google-research/albert
- `lamb_optimizer.py` (`LAMBOptimizer.apply_gradients`): Adam moments with *no* bias correction,
  `update = m / (sqrt(v) + eps)`, plus `weight_decay * param` where decay applies, scaled by the trust ratio
  `‖param‖ / ‖update‖` (1.0 when either norm is 0) where layer adaptation applies.
- `optimization.py` (`create_optimizer`): β 0.9/0.999, eps 1e-6, weight decay 0.01 except for names matching
  "LayerNorm", "layer_norm" or "bias" (layer adaptation inherits the same exclusion); global-norm clip 1.0
  (done by the train loop, not here); LR = polynomial (power 1) decay to 0 over `num_train_steps`, replaced by
  a linear warmup while `step < num_warmup_steps`.
"""

from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch

from albert_core.errors import UserError

# Name fragments the reference excludes from weight decay and, by default, from layer adaptation.
NO_DECAY_NAMES: tuple[str, ...] = ("LayerNorm", "layer_norm", "bias")


class Lamb(torch.optim.Optimizer):
    """LAMB exactly as the ALBERT reference `LAMBOptimizer` (see module docstring).

    Per param group: `lr`, `betas`, `eps`, `weight_decay` (0 disables decay) and `adapt` (apply the trust
    ratio). The reference has no default learning rate; 1e-3 is torch's convention (the ALBERT paper
    pretrains with 0.00176 at batch 4096). State per parameter: `exp_avg`, `exp_avg_sq`, same dtype as the
    parameter. A group's parameters must share one device (the trust ratios are computed in one batch).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        adapt: bool = True,
    ) -> None:
        if lr < 0.0:
            raise UserError(f"LAMB learning rate must be >= 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise UserError(f"LAMB betas must lie in [0, 1), got {betas}")
        if eps < 0.0:
            raise UserError(f"LAMB eps must be >= 0, got {eps}")
        if weight_decay < 0.0:
            raise UserError(f"LAMB weight_decay must be >= 0, got {weight_decay}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "adapt": adapt}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs = [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
            if not params:
                continue

            beta1, beta2 = group["betas"]
            # Adam moments, no bias correction (the reference has none).
            torch._foreach_mul_(exp_avgs, beta1)
            torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)

            # eps is added outside the sqrt, as in the reference.
            denom = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_add_(denom, group["eps"])
            updates = torch._foreach_div(exp_avgs, denom)
            if group["weight_decay"] != 0.0:
                # Decoupled decay: added to the update, so it never enters m or v.
                torch._foreach_add_(updates, params, alpha=group["weight_decay"])

            if group["adapt"]:
                # Trust ratio per tensor, computed on the device without a host sync.
                w_norm = torch.stack(torch._foreach_norm(params))
                u_norm = torch.stack(torch._foreach_norm(updates))
                ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                torch._foreach_mul_(updates, list(ratio.unbind()))
            torch._foreach_add_(params, updates, alpha=-group["lr"])
        return loss


def param_groups(model: torch.nn.Module, weight_decay: float = 0.01) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed+adapted group and a no-decay, no-adaptation group.

    Follows the reference name rule, not a shape rule: a parameter is excluded when its name contains
    "LayerNorm", "layer_norm" or "bias" (nanoGPT excludes every 1-D tensor instead; for ALBERT's names the
    two agree, but a 1-D tensor with another name is decayed here, as in the reference). Tied tensors appear
    once (`named_parameters` dedupes them, keeping the first name). Frozen parameters are left out, as the
    reference optimises only trainable variables. Empty groups are dropped. The extra `adapt` key is read by
    `Lamb`; `torch.optim.AdamW` keeps and ignores it.
    """
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if any(s in name for s in NO_DECAY_NAMES) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "adapt": True},
        {"params": no_decay, "weight_decay": 0.0, "adapt": False},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: torch.nn.Module,
    name: Literal["lamb", "adamw"],
    lr: float,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
) -> torch.optim.Optimizer:
    """LAMB (the pretraining recipe) or AdamW over `param_groups(model, weight_decay)`.

    torch's AdamW differs from the reference `AdamWeightDecayOptimizer` in one way: it bias-corrects the
    moments. Decay (lr·wd·param, decoupled) and the exclusion rule are the same.
    """
    groups = param_groups(model, weight_decay)
    if name == "lamb":
        return Lamb(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    raise UserError(f"unknown optimizer {name!r}: choose 'lamb' or 'adamw'")


def _check_schedule(warmup_steps: int, total_steps: int) -> None:
    if total_steps <= 0:
        raise UserError(f"total_steps must be > 0, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise UserError(f"warmup_steps must lie in [0, total_steps={total_steps}], got {warmup_steps}")


def warmup_linear_decay(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier at `step` (0-based), as the reference `create_optimizer`.

    Decay is measured from step 0, not from the end of warmup: after warmup the multiplier is
    `1 - step/total` (so it is `1 - warmup/total` right after warmup, not 1). During warmup it is
    `step/warmup` (0 at step 0). From `total_steps` on it stays 0.
    """
    _check_schedule(warmup_steps, total_steps)
    if step < warmup_steps:
        return step / warmup_steps
    return max(0.0, 1.0 - step / total_steps)


def lr_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """`LambdaLR` over `warmup_linear_decay`; call `scheduler.step()` once after each `optimizer.step()`."""
    _check_schedule(warmup_steps, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_linear_decay(step, warmup_steps, total_steps)
    )
