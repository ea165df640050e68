"""The deployments: scheduled ingestion, training triggered by a published corpus (and on demand), promotion,
fine-tuning triggered by a new champion.

    albert-ingest/scheduled         cron (default 02:00 UTC daily): ingest the configured sources
    albert-train/on-corpus          on the `albert.corpus.published` event: train on its shards, then promote
    albert-train/on-demand          run by hand (`prefect deployment run albert-train/on-demand -p shards=…`)
    albert-promote/on-demand        gate the latest candidate of a model
    albert-finetune/on-promoted     on the `albert.model.promoted` event of the model the fine-tuning config names:
                                    fine-tune the promoted version with that config; only with a config
                                    (`--finetune-config-json FILE`), since its task and data files have no default

`albert flows serve` serves them from one long-lived process (schedules and the event triggers active while
it runs); `albert flows deploy` registers them on the Prefect server in $PREFECT_API_URL with a process work pool,
whose workers (`prefect worker start --pool albert-process`) run them from this source tree.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

from albert_core.errors import UserError
from albert_core.storage import albert_home
from flows.pipeline import (
    CORPUS_PUBLISHED,
    MODEL_PROMOTED,
    PROJECT_ROOT,
    finetune_flow,
    ingest_flow,
    promote_flow,
    train_flow,
)
from training.config import FinetuneConfig, parse_model_uri

FINETUNE_DEPLOYMENT = "albert-finetune/on-promoted"
NO_FINETUNE_CONFIG = (
    "not created: give --finetune-config-json FILE (a fine-tuning config) to fine-tune new champions"
)


def _specs(
    home: str | None, cron: str, sources: list[str], corpus: str, finetune_config: FinetuneConfig | None
) -> list[tuple[Any, dict[str, Any]]]:
    """(flow, deployment options) for each deployment; the same for `serve` and `deploy`."""
    root = str(albert_home(home))
    on_corpus = DeploymentEventTrigger(
        name="train when a corpus is published",
        expect={CORPUS_PUBLISHED},
        parameters={
            "shards": "{{ event.payload.shards }}",
            "home": "{{ event.payload.home }}",
            "promote": True,
        },
    )
    specs = [
        (ingest_flow, {"name": "scheduled", "cron": cron,
                       "parameters": {"sources": sources, "corpus": corpus, "home": root}}),
        (train_flow, {"name": "on-corpus", "triggers": [on_corpus], "parameters": {"home": root}}),
        (train_flow, {"name": "on-demand", "parameters": {"home": root}}),
        (promote_flow, {"name": "on-demand", "parameters": {"home": root}}),
    ]  # fmt: skip
    if finetune_config is not None:
        model = _pretrained_model_name(finetune_config)
        on_promoted = DeploymentEventTrigger(
            name=f"fine-tune each new champion of {model}",
            expect={MODEL_PROMOTED},
            match={"prefect.resource.id": f"albert.model.{model}"},  # one config fits one model's vocabulary
            parameters={"model_uri": "{{ event.payload.model_uri }}", "home": "{{ event.payload.home }}"},
        )
        specs.append((finetune_flow, {"name": "on-promoted", "triggers": [on_promoted],
                                      "parameters": {"finetune_config": finetune_config.to_dict(), "home": root}}))  # fmt: skip
    return specs


def _pretrained_model_name(cfg: FinetuneConfig) -> str:
    """The registered model whose promotions trigger fine-tuning: the one the config's `model_uri` names."""
    if not cfg.model_uri.startswith("models:/"):
        raise UserError(
            f"--finetune-config-json: model_uri {cfg.model_uri!r} must name a registered model "
            "(models:/NAME@champion): the deployment fine-tunes that model's new champions"
        )
    return parse_model_uri(cfg.model_uri)[0]


def serve_deployments(
    *,
    home: str | None,
    cron: str,
    sources: list[str],
    corpus: str,
    finetune_config: FinetuneConfig | None = None,
) -> None:
    from prefect import serve

    specs = _specs(home, cron, sources, corpus, finetune_config)
    serve(*(f.to_deployment(**options) for f, options in specs))


def deploy_to_pool(
    *,
    work_pool: str,
    home: str | None,
    cron: str,
    sources: list[str],
    corpus: str,
    finetune_config: FinetuneConfig | None = None,
) -> dict[str, Any]:
    """Register the deployments on the server, creating the process work pool if it is missing."""
    if not os.environ.get("PREFECT_API_URL"):
        raise UserError(
            "`albert flows deploy` registers deployments on a Prefect server: set PREFECT_API_URL "
            "(e.g. http://127.0.0.1:4200/api after `prefect server start`), or use `albert flows serve`"
        )
    specs = _specs(home, cron, sources, corpus, finetune_config)  # a bad config fails before the pool is made
    _ensure_work_pool(work_pool)
    ids = {}
    for f, options in specs:
        entrypoint = f"flows/pipeline.py:{f.fn.__name__}"
        source = f.from_source(source=str(PROJECT_ROOT), entrypoint=entrypoint)
        # Not `source.deploy(…)`: it first lists the pool's online workers with null limit/offset, which the
        # Prefect 3.8.8 server rejects (422) under FastAPI 0.154; `apply` registers the same deployment.
        deployment = source.to_deployment(work_pool_name=work_pool, **options)
        ids[f"{f.name}/{options['name']}"] = str(deployment.apply(work_pool_name=work_pool))
    skipped = {FINETUNE_DEPLOYMENT: NO_FINETUNE_CONFIG} if finetune_config is None else {}
    return {"work_pool": work_pool, "deployments": ids, **({"skipped": skipped} if skipped else {})}


def _ensure_work_pool(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=name, type="process"))
