"""DAG `ingest`: image stack → precomputed image layer → igneous pyramid.

sanity_check → scale_up → ingest_wave → pyramid_wave → scale_down → report
"""

from __future__ import annotations

from dags.common import stage_dag
from dags.stages import ingest_body

# An Airflow DAG file: DagBag's safe mode parses only files that name both airflow and dag.
dag = stage_dag("ingest", ingest_body, doc=__doc__)
