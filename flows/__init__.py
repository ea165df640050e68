"""Command line and Prefect flows: the top of the stack."""

import os

# Prefect's temporary API server gets 20 s to start by default: too short on a busy 2-core machine, where a
# demo or a test run beside Ray workers would fail before its first task. Set before Prefect reads its settings.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
