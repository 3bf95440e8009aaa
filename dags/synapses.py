"""DAG `synapses`: cleft probability → clefts → partners → deduplicated synapse table.

sanity_check → scale_up → map → reduce → remap → assign → dedup → relabel → scale_down → report
"""

from __future__ import annotations

from dags.common import stage_dag
from dags.stages import synapses_body

# An Airflow DAG file: DagBag's safe mode parses only files that name both airflow and dag.
dag = stage_dag("synapses", synapses_body, doc=__doc__, max_active_tasks=1)
