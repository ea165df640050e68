"""A production-like stack on one machine, as plain processes on 127.0.0.1 (no containers): PostgreSQL,
an S3-API store (moto), an MLflow tracking server on both, a Prefect server + process worker, and a two-node
Ray cluster. See `infra.local.stack` (`python -m infra.local.stack start|stop|status|env`)."""
