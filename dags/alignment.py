"""DAG `alignment`: raw image → defects → block fields → stitch → final fields → aligned image
→ inference masks → pyramid.

sanity_check → scale_up → defects → fields → stitch → compose → render → masks → pyramid →
scale_down → report
"""

from __future__ import annotations

from dags.common import stage_dag
from dags.stages import alignment_body

# An Airflow DAG file: DagBag's safe mode parses only files that name both airflow and dag.
dag = stage_dag("alignment", alignment_body, doc=__doc__, max_active_tasks=1)
