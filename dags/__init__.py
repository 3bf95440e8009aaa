"""Airflow DAGs: thin wiring of pipeline.* steps; no computation here."""
