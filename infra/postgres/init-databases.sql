-- Run once by the postgres image's entrypoint, on an empty data volume, as POSTGRES_USER
-- (infra/compose.yaml mounts it into /docker-entrypoint-initdb.d/). One database per store:
-- MLflow's tracking and registry, Prefect's orchestration state, the live trade journal.
-- A volume that already holds a cluster skips this file: create any missing one by hand.
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
CREATE DATABASE journal;
