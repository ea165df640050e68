"""Command line and Prefect flows: the top of the stack."""
