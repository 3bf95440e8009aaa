"""DAG `postprocess`: skeletons of `seg` (kimimaro through igneous) and the cleft pyramid.

sanity_check → scale_up → skeletons → skeleton_merge → clefts_pyramid → scale_down → report
"""

from __future__ import annotations

from dags.common import stage_dag
from dags.stages import postprocess_body

# An Airflow DAG file: DagBag's safe mode parses only files that name both airflow and dag.
dag = stage_dag("postprocess", postprocess_body, doc=__doc__, max_active_tasks=1)
