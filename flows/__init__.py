"""Prefect flows: they only compose the tasks of ``tasks/`` in the order of the DAG."""
