"""DAG `inference`: image layer → RSUNet affinities (and myelin), chunk by chunk.

sanity_check → scale_up → inference_wave → scale_down → report

The workers come from the "gpu" pool when ``inference.device`` is cuda, else from "cpu" (a
hint: the LocalCluster runs both pools the same way); the DAG's shape stays static.
"""

from __future__ import annotations

from dags.common import stage_dag
from dags.stages import inference_body, inference_pool

# An Airflow DAG file: DagBag's safe mode parses only files that name both airflow and dag.
dag = stage_dag("inference", inference_body, doc=__doc__, pool=inference_pool)
