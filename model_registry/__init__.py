"""Everything MLflow: runs, the ensemble's pyfunc, register, aliases, promotion, rollback."""
