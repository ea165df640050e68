"""Cluster and server specs: Kubernetes manifests and container files beside this package, and `infra.local`,
which starts a production-like stack as local processes (`python -m infra.local.stack start`)."""
