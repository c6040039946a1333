"""The work of each pipeline step, as plain typed functions (no Prefect imports here)."""
