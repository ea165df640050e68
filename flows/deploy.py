"""The deployments: scheduled ingestion, training triggered by a published corpus (and on demand), promotion.

    albert-ingest/scheduled         cron (default 02:00 UTC daily): ingest the configured sources
    albert-train/on-corpus          on the `albert.corpus.published` event: train on its shards, then promote
    albert-train/on-demand          run by hand (`prefect deployment run albert-train/on-demand -p shards=…`)
    albert-promote/on-demand        gate the latest candidate of a model

`albert flows serve` serves them from one long-lived process (schedules and the event trigger active while it
runs); `albert flows deploy` registers them on the Prefect server in $PREFECT_API_URL with a process work pool,
whose workers (`prefect worker start --pool albert-process`) run them from this source tree.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

from albert_core.errors import UserError
from albert_core.storage import albert_home
from flows.pipeline import CORPUS_PUBLISHED, PROJECT_ROOT, ingest_flow, promote_flow, train_flow


def _specs(home: str | None, cron: str, sources: list[str], corpus: str) -> list[tuple[Any, dict[str, Any]]]:
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
    return [
        (ingest_flow, {"name": "scheduled", "cron": cron,
                       "parameters": {"sources": sources, "corpus": corpus, "home": root}}),
        (train_flow, {"name": "on-corpus", "triggers": [on_corpus], "parameters": {"home": root}}),
        (train_flow, {"name": "on-demand", "parameters": {"home": root}}),
        (promote_flow, {"name": "on-demand", "parameters": {"home": root}}),
    ]  # fmt: skip


def serve_deployments(*, home: str | None, cron: str, sources: list[str], corpus: str) -> None:
    from prefect import serve

    serve(*(f.to_deployment(**options) for f, options in _specs(home, cron, sources, corpus)))


def deploy_to_pool(
    *, work_pool: str, home: str | None, cron: str, sources: list[str], corpus: str
) -> dict[str, Any]:
    """Register the deployments on the server, creating the process work pool if it is missing."""
    if not os.environ.get("PREFECT_API_URL"):
        raise UserError(
            "`albert flows deploy` registers deployments on a Prefect server: set PREFECT_API_URL "
            "(e.g. http://127.0.0.1:4200/api after `prefect server start`), or use `albert flows serve`"
        )
    _ensure_work_pool(work_pool)
    ids = {}
    for f, options in _specs(home, cron, sources, corpus):
        entrypoint = f"flows/pipeline.py:{f.fn.__name__}"
        source = f.from_source(source=str(PROJECT_ROOT), entrypoint=entrypoint)
        # Not `source.deploy(…)`: it first lists the pool's online workers with null limit/offset, which the
        # Prefect 3.8.8 server rejects (422) under FastAPI 0.154; `apply` registers the same deployment.
        deployment = source.to_deployment(work_pool_name=work_pool, **options)
        ids[f"{f.name}/{options['name']}"] = str(deployment.apply(work_pool_name=work_pool))
    return {"work_pool": work_pool, "deployments": ids}


def _ensure_work_pool(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=name, type="process"))
