"""Command line and Prefect flows: the top of the stack."""

import os

# Prefect's temporary API server gets 20 s to start by default: too short on a busy 2-core machine, where a
# demo or a test run beside Ray workers would fail before its first task. Set before Prefect reads its settings.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# No calls home at run time: Prefect's server telemetry resolves a public host at start-up, which on a machine
# without network costs seconds of DNS time-out before the first flow run (and is traffic nobody asked for).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

# Prefect creates $PREFECT_HOME without its parents and then fails on every database call; make the whole path.
if os.environ.get("PREFECT_HOME"):
    os.makedirs(os.path.expanduser(os.environ["PREFECT_HOME"]), exist_ok=True)
