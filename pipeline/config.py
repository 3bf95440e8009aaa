"""RunConfig: one validated document per run.

A run config is a YAML or JSON file, or a dict from an Airflow DAG-run conf. Static problems
(types, ranges, chunk arithmetic) are caught by :func:`load_config`; problems that need to look
at data (a missing input, a bbox outside the input, an output that already holds data) are
caught by :func:`pipeline.sanity.check_run` before any task is enqueued. Either way the error
is a :class:`ConfigError` naming each offending field. The stages' own sections are in
:mod:`pipeline.stage_params`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipeline.geometry import Bbox, Vec
from pipeline.stage_params import (
    AlignmentParams,
    ChainParams,
    InferenceParams,
    IngestParams,
    PositiveVec,
    SegmentationParams,
    Strict,
    SynapseSection,
    to_cloudpath,
)

__all__ = [
    "QUEUE_SCHEMES",
    "STORAGE_SCHEMES",
    "AlignmentParams",
    "ChainParams",
    "ClusterConfig",
    "ConfigError",
    "InferenceParams",
    "IngestParams",
    "RunConfig",
    "SegmentationParams",
    "SynapseSection",
    "load_config",
    "local_path",
    "to_cloudpath",
]

QUEUE_SCHEMES = ("fq", "sqs", "pubsub")
STORAGE_SCHEMES = ("file", "gs", "s3", "mem")


class ConfigError(ValueError):
    """A run config is invalid. ``problems`` holds (field, message) pairs, one per problem."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f" ({source})" if source else ""
        if len(problems) == 1:  # one problem, one line
            field, msg = problems[0]
            super().__init__(f"invalid run config{where}: {field or '<root>'}: {msg}")
            return
        lines = "\n".join(f"  {field or '<root>'}: {msg}" for field, msg in problems)
        super().__init__(f"invalid run config{where}:\n{lines}")


def local_path(cloudpath: str) -> str | None:
    """The filesystem path of a file:// cloud path, else None."""
    return cloudpath[len("file://"):] if cloudpath.startswith("file://") else None


class ClusterConfig(Strict):
    """Where workers run and how many."""

    backend: Literal["local", "kubernetes"] = "local"
    workers: int = Field(2, ge=0, le=10_000, description="workers to scale each pool to")
    max_workers: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, description="per-pool cap on workers, e.g. {'cpu': 64}")
    namespace: str = "petarecon"
    kubeconfig: str | None = Field(None, description="default: in-cluster, then ~/.kube/config")
    deployment_prefix: str = Field("petarecon-worker", description="pool P is Deployment "
                                                                   "{prefix}-{P}")
    secret: str | None = Field(None, description="Secret with queue/storage credentials that "
                                                 "workers mount; checked before scaling")

    def size_for(self, pool: str) -> int:
        """Workers to run for ``pool``: ``workers`` capped by that pool's ``max_workers``."""
        return min(self.workers, self.max_workers.get(pool, self.workers))


class RunConfig(Strict):
    """One run of the pipeline. Paths are cloud paths (file://, gs://, s3://)."""

    name: str = Field(description="run name: lowercase letters, digits and dashes")
    output: str = Field(description="root under which every layer of the run is written")
    scratch: str | None = Field(
        None, description="tables and bookkeeping (default: output/scratch)")
    input: str | None = Field(None, description="input image layer, for stages after ingest")
    bbox: tuple[int, int, int, int, int, int] | None = Field(
        None, description="[x0, y0, z0, x1, y1, z1] in voxels at `mip`; default: whole input")
    mip: int = Field(0, ge=0)
    resolution: tuple[float, float, float] = Field(
        (8.0, 8.0, 40.0), description="nm per voxel of layers created from stacks")
    storage_chunk_size: PositiveVec = Field((64, 64, 16), description="voxels per stored chunk")
    chunk_size: PositiveVec = Field((128, 128, 32), description="voxels per task chunk")
    queue: str | None = Field(
        None, description="fq://, sqs:// or pubsub:// (default: fq:// in scratch)")
    lease_seconds: int = Field(600, ge=5, description="task lease; renewed at half-life")
    max_attempts: int = Field(3, ge=1, le=100, description="failures before dead-lettering")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    overwrite: bool = Field(False, description="allow writing into layers that hold data")
    ingest: IngestParams | None = None
    segmentation: SegmentationParams | None = None
    inference: InferenceParams | None = None
    synapses: SynapseSection | None = None
    alignment: AlignmentParams | None = None
    chain: ChainParams | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", v):
            raise ValueError("must be 1-63 lowercase letters, digits or dashes, not starting or "
                             "ending with a dash (it names queues and Kubernetes objects)")
        return v

    @field_validator("output", "input", "scratch")
    @classmethod
    def _cloudpath(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if "://" in v and v.split("://", 1)[0] not in STORAGE_SCHEMES:
            raise ValueError(f"unsupported storage scheme in {v!r}; use one of "
                             + ", ".join(f"{s}://" for s in STORAGE_SCHEMES))
        return to_cloudpath(v).rstrip("/")

    @field_validator("queue")
    @classmethod
    def _queue(cls, v: str | None) -> str | None:
        if v is None:
            return v
        scheme = v.split("://", 1)[0] if "://" in v else ""
        if scheme not in QUEUE_SCHEMES:
            raise ValueError(f"unsupported queue {v!r}; use fq://PATH, sqs://NAME or "
                             "pubsub://projects/P/topics/T/subscriptions/S")
        if scheme == "fq":
            return "fq://" + os.path.abspath(os.path.expanduser(v[len("fq://"):]))
        if scheme == "pubsub":
            from pipeline.queue_pubsub import parse_url

            parse_url(v)  # ValueError naming the expected form
        return v

    @field_validator("chunk_size", "storage_chunk_size")
    @classmethod
    def _positive(cls, v: Vec, info: ValidationInfo) -> Vec:
        if any(c <= 0 for c in v):
            raise ValueError(f"every entry must be > 0, got {list(v)}")
        storage = info.data.get("storage_chunk_size")
        if info.field_name == "chunk_size" and storage:
            bad = [f"{a}={c} is not a multiple of {s}"
                   for a, c, s in zip("xyz", v, storage, strict=True) if c % s]
            if bad:
                raise ValueError("must be a multiple of storage_chunk_size: " + "; ".join(bad))
        return v

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r <= 0 for r in v):
            raise ValueError(f"every entry must be > 0 nm, got {list(v)}")
        return v

    @field_validator("bbox", mode="before")
    @classmethod
    def _bbox_length(cls, v: Any) -> Any:
        if isinstance(v, list | tuple) and len(v) != 6:
            raise ValueError(f"needs 6 numbers [x0, y0, z0, x1, y1, z1], got {len(v)}")
        return v

    @field_validator("bbox")
    @classmethod
    def _bbox(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and any(b <= a for a, b in zip(v[:3], v[3:], strict=True)):
            raise ValueError(f"stop must exceed start on every axis, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _cross_field(self) -> RunConfig:
        if self.queue is None and not self.output.startswith("file://"):
            raise ValueError("queue is required when output is not a file:// path")
        if self.input is None and self.ingest is None and self.segmentation is None \
                and self.synapses is None and self.inference is None \
                and self.alignment is None:
            raise ValueError("give `input` (an image layer), an `ingest` or a "
                             "`segmentation` section")
        if self.inference is not None and self.input is None and self.ingest is None \
                and self.inference.input is None:
            raise ValueError("the inference stage needs an image layer: give `input`, "
                             "`inference.input` or an `ingest` section")
        return self

    # --- derived paths -------------------------------------------------------------------
    @property
    def scratch_path(self) -> str:
        """Where tables and bookkeeping go."""
        return self.scratch or f"{self.output}/scratch"

    @property
    def queue_url(self) -> str:
        """The run's task queue."""
        if self.queue:
            return self.queue
        return "fq://" + str(local_path(self.scratch_path)) + "/queue"

    @property
    def dead_letter_path(self) -> str:
        """Cloud path where tasks that failed ``max_attempts`` times are recorded."""
        return f"{self.scratch_path}/dead_letter"

    def layer_path(self, name: str) -> str:
        """Cloud path of the run's output layer ``name``."""
        return f"{self.output}/{name}"

    @property
    def image_path(self) -> str:
        """The image layer later stages read: ``input``, or the ingested layer."""
        if self.input:
            return self.input
        assert self.ingest is not None
        return self.layer_path(self.ingest.layer)

    @property
    def bounds(self) -> Bbox | None:
        return Bbox.from_list(self.bbox) if self.bbox else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict that :func:`load_config` turns back into an equal config."""
        return self.model_dump(mode="json")


def _problems(err: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check spelling)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        out.append((field, msg))
    return out


def load_config(source: str | Path | dict[str, Any] | RunConfig) -> RunConfig:
    """Parse and validate a run config from a YAML/JSON file path or a dict.

    Raises :class:`ConfigError` naming the file and each bad field.
    """
    if isinstance(source, RunConfig):
        return source
    where = None
    if isinstance(source, str | Path):
        where = str(source)
        path = Path(source)
        if not path.is_file():
            raise ConfigError([("", f"config file not found: {path}")], where)
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise ConfigError([("", f"cannot parse {path.name}: {e}")], where) from None
    else:
        data = source
    if not isinstance(data, dict):
        raise ConfigError([("", "a run config must be a mapping of fields")], where)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_problems(e), where) from None
