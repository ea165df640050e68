"""Cluster and server specs: `infra.local` starts a production-like stack as local processes."""
