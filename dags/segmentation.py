"""DAG `segmentation`: affinities → supervoxels (`ws`) → agglomerated segments (`seg`).

sanity_check → scale_up → ws_level_0 … ws_level_15 → ws_remap → agg_level_0 … agg_level_15
→ agg_remap → tables → seg_pyramid → seg_meshes → seg_manifests → scale_down → report

One task instance per octree level, so an operator can watch and retry each level; levels
above this run's octree top are skipped. The shape is static; parameters come from the
DAG-run conf.
"""

from __future__ import annotations

from dags.common import stage_dag
from dags.stages import segmentation_body

# An Airflow DAG file: DagBag's safe mode parses only files that name both airflow and dag.
dag = stage_dag("segmentation", segmentation_body, doc=__doc__, max_active_tasks=1)
