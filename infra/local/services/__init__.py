"""The stack's services, one module each: how to start one, ask whether it is healthy, where it answers and
what it leaves behind. `infra.local.stack` lists them in start order; `infra.local.supervisor` runs them."""
