"""RunConfig: one validated document per run.

A run config is a YAML or JSON file, or a dict from an Airflow DAG-run conf. Static problems
(types, ranges, chunk arithmetic) are caught by :func:`load_config`; problems that need to look
at data (a missing input, a bbox outside the input, an output that already holds data) are
caught by :func:`pipeline.sanity.check_run` before any task is enqueued. Either way the error
is a :class:`ConfigError` naming each offending field.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipeline.geometry import Bbox, Vec

QUEUE_SCHEMES = ("fq", "sqs", "pubsub")
STORAGE_SCHEMES = ("file", "gs", "s3", "mem")

PositiveVec = Annotated[tuple[int, int, int], Field(description="x, y, z; each > 0")]


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


def to_cloudpath(path: str) -> str:
    """Return ``path`` as a cloud path; a plain or relative local path becomes absolute file://."""
    if "://" in path:
        scheme, rest = path.split("://", 1)
        if scheme == "file":
            return "file://" + os.path.abspath(os.path.expanduser(rest))
        return path
    return "file://" + os.path.abspath(os.path.expanduser(path))


def local_path(cloudpath: str) -> str | None:
    """The filesystem path of a file:// cloud path, else None."""
    return cloudpath[len("file://"):] if cloudpath.startswith("file://") else None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClusterConfig(_Strict):
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


class IngestParams(_Strict):
    """Turn an image stack into a precomputed image layer."""

    source: str = Field(description="HDF5, TIFF, .npy file, or a folder of PNG sections")
    dataset: str | None = Field(None, description="HDF5 dataset name (default: the only one)")
    axes: Literal["zyx", "xyz"] = Field("zyx", description="axis order of the stack")
    layer: str = "image"
    downsample_mips: int = Field(2, ge=0, le=12, description="mip levels igneous adds")

    @field_validator("source")
    @classmethod
    def _abs_source(cls, v: str) -> str:
        return v if "://" in v else os.path.abspath(os.path.expanduser(v))


Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class SegmentationParams(_Strict):
    """Watershed + mean-affinity agglomeration (the paper's AFF_PATH, WS_*, AGG_THRESHOLD)."""

    affinity: str | None = Field(None, description="float32 3-channel affinity layer (x, y, z)")
    boundary: str | None = Field(
        None, description="float32 1-channel boundary probability layer, used as affinities "
                          "aff[v, c] = 1 - max(p[v], p[v - e_c]) (for testing)")
    ws_high: Fraction = Field(0.99, description="plateau threshold of the watershed")
    ws_low: Fraction = Field(0.01, description="edges at or below it do not exist")
    ws_size: int = Field(100, ge=0, description="single linkage merges segments below it")
    ws_dust: int = Field(50, ge=0, description="final supervoxels below it become 0")
    agg_threshold: Fraction = Field(0.5, description="merge while the best mean affinity > it")
    size_limit: int = Field(0, ge=0, description="size constraint: 0 = off")
    size_affinity: Fraction = Field(1.0, description="big pairs merge only at mean >= it")
    semantic: str | None = Field(None, description="uint semantic label layer (optional)")
    semantic_classes: int = Field(0, ge=0, le=64)
    semantic_affinity: Fraction = Field(1.0, description="differing labels merge only above")
    myelin: str | None = Field(None, description="float32 myelin probability layer (optional)")
    myelin_threshold: Fraction = 0.5
    ws_layer: str = "ws"
    seg_layer: str = "seg"
    mesh: bool = Field(True, description="igneous meshes of the segmentation")
    downsample_mips: int = Field(1, ge=0, le=8)

    @field_validator("affinity", "boundary", "semantic", "myelin")
    @classmethod
    def _layer_path(cls, v: str | None) -> str | None:
        return None if v is None else to_cloudpath(v).rstrip("/")

    @model_validator(mode="after")
    def _one_source(self) -> SegmentationParams:
        if (self.affinity is None) == (self.boundary is None):
            raise ValueError("give exactly one of `affinity` (a layer) or `boundary`")
        if self.ws_low > self.ws_high:
            raise ValueError(f"ws_low ({self.ws_low}) must not exceed ws_high ({self.ws_high})")
        if self.semantic is not None and self.semantic_classes == 0:
            raise ValueError("a semantic layer needs semantic_classes > 0")
        return self


class SynapseSection(_Strict):
    """Synaptic clefts: threshold + connected components, partners, deduplication."""

    cleft: str = Field(description="float32 1-channel cleft probability layer")
    segmentation: str | None = Field(None, description="segmentation layer for partners")
    image: str | None = Field(None, description="EM image layer for the geometric partner "
                                                "rule (default: the run's input image)")
    cc_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="cleft = probability > it")
    connectivity: Literal[6, 18, 26] = 26
    size_threshold: int = Field(40, ge=0, description="clefts below it (voxels) are dropped")
    merge_distance_nm: float = Field(700.0, ge=0, description="dedup distance of centroids")
    max_segment_size: int = Field(0, ge=0, description="drop clefts on bigger segments (0=off)")
    partner_radius: tuple[int, int, int] = Field((3, 3, 1), description="dilation, voxels")
    partner_model: str | None = Field(None, description="TorchScript assignment network")
    assign: bool = Field(True, description="assign partners (needs segmentation)")
    cleft_layer: str = "clefts"

    @field_validator("cleft", "segmentation", "image", "partner_model")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        return None if v is None else to_cloudpath(v).rstrip("/")

    @field_validator("partner_radius")
    @classmethod
    def _radius(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(r < 0 for r in v):
            raise ValueError(f"every entry must be >= 0, got {list(v)}")
        return v


class InferenceParams(_Strict):
    """Chunked boundary detection: RSUNet affinities (and myelin) from the image layer.

    Sizes are x, y, z voxels. Checkpoints carry their architecture; ``model`` gives it for
    checkpoints that hold bare weights (when both are given, they must agree).
    """

    checkpoints: list[str] = Field(
        min_length=1, description="checkpoint paths (local, file://, gs://, s3://); several "
                                  "form an ensemble whose outputs are averaged")
    input: str | None = Field(None, description="uint8 image layer (default: the run's image)")
    output_layer: str = Field("aff", description="affinity layer name under `output`")
    myelin: bool = Field(False, description="also write the net's myelin channel")
    myelin_layer: str = Field("myelin", description="myelin probability layer name")
    patch_size: PositiveVec = Field((128, 128, 16), description="net input patch, x, y, z")
    overlap: tuple[int, int, int] = Field((32, 32, 4), description="patch overlap, x, y, z")
    batch_size: int = Field(1, ge=1, le=1024, description="patches per forward pass")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast dtype of the forward pass (fp16 needs cuda)")
    input_mask: str | None = Field(None, description="layer whose nonzero voxels zero the input")
    output_mask: str | None = Field(
        None, description="layer whose nonzero voxels zero the output")
    model: dict[str, Any] | None = Field(
        None, description="architecture (pipeline.models.ModelSpec fields) for checkpoints "
                          "that do not carry it")

    @field_validator("checkpoints")
    @classmethod
    def _checkpoint_paths(cls, v: list[str]) -> list[str]:
        return [p if "://" in p else os.path.abspath(os.path.expanduser(p)) for p in v]

    @field_validator("input", "input_mask", "output_mask")
    @classmethod
    def _layer_path(cls, v: str | None) -> str | None:
        return None if v is None else to_cloudpath(v).rstrip("/")

    @field_validator("patch_size")
    @classmethod
    def _patch(cls, v: Vec) -> Vec:
        if any(c <= 0 for c in v):
            raise ValueError(f"every entry must be > 0, got {list(v)}")
        return v

    @field_validator("overlap")
    @classmethod
    def _overlap(cls, v: Vec, info: ValidationInfo) -> Vec:
        if any(c < 0 for c in v):
            raise ValueError(f"every entry must be >= 0, got {list(v)}")
        patch = info.data.get("patch_size")
        if patch:
            bad = [f"{a}={o} >= patch {p}" for a, o, p in zip("xyz", v, patch, strict=True)
                   if o >= p]
            if bad:
                raise ValueError("must be smaller than patch_size: " + "; ".join(bad))
        return v

    @field_validator("precision")
    @classmethod
    def _precision(cls, v: str, info: ValidationInfo) -> str:
        if v == "fp16" and info.data.get("device") == "cpu":
            raise ValueError("fp16 needs device cuda (or auto); use bf16 on cpu")
        return v


class AlignmentParams(_Strict):
    """Alignment and defect masks (paper Methods "Image alignment"; corgie/SEAMLeSS style).

    Sizes are pixels at ``field_mip`` unless said otherwise. Outputs go under ``output``:
    ``field_layer`` (float32 x, y displacements in pixels at ``field_mip``, a pull map),
    ``aligned_layer`` (uint8, at ``render_mip``), ``input_mask_layer`` /
    ``output_mask_layer`` (uint8, 1 = masked, at ``render_mip``: pass their paths to
    ``inference.input_mask`` / ``inference.output_mask``), ``defects_layer`` (uint8 defect
    codes of the raw image at ``field_mip``) and ``misalignment_layer`` (float32 px).
    """

    image: str | None = Field(None, description="uint8 image layer (default: `input`)")
    field: str | None = Field(
        None, description="an existing 2-channel float32 field layer at `field_mip` to render "
                          "with, instead of computing fields (e.g. from a learned model)")
    field_mip: int = Field(0, ge=0, le=12, description="mip at which fields are computed")
    render_mip: int = Field(0, ge=0, le=12, description="mip of the aligned image and masks")
    neighbours: int = Field(3, ge=1, le=5, description="K: candidate fields per section, "
                                                      "one per aligned neighbour, voted")
    overlap: int = Field(2, ge=1, le=64, description="sections shared by neighbouring blocks")
    block_size: int = Field(16, ge=1, le=4096, description="sections per block (blocks are "
                                                           "aligned in parallel)")
    tile_size: int = Field(32, ge=8, le=1024, description="NCC tile size (even)")
    search_radius: int = Field(8, ge=1, le=256, description="NCC search radius per level")
    levels: int = Field(3, ge=1, le=8, description="pyramid levels of block matching")
    smooth: float = Field(32.0, ge=0, description="scale (px) of the local linear "
                                                  "regularization of tile displacements")
    refine_iterations: int = Field(40, ge=0, le=10_000, description="gradient steps")
    refine_lr: float = Field(0.5, gt=0, le=2, description="refinement step, as a fraction of "
                                                      "the Gauss-Newton step")
    smoothness: float = Field(4.0, ge=0, description="weight of the smoothness penalty")
    fold_relax: Fraction = Field(0.01, description="smoothness factor at folds and cracks")
    margin: int | None = Field(None, ge=0, description="xy context of field tasks (px at "
                                                       "field_mip); default from the search")
    misalign_threshold: float = Field(2.0, gt=0, description="px at render_mip above which "
                                                             "neighbours are misaligned")
    composite_partial: bool = Field(False, description="composite runs of partial sections "
                                                       "(largest to smallest, first non-zero)")
    downsample_mips: int = Field(1, ge=0, le=8, description="pyramid of the aligned image")
    field_layer: str = "field"
    aligned_layer: str = "aligned"
    input_mask_layer: str = "input_mask"
    output_mask_layer: str = "output_mask"
    defects_layer: str = "defects"
    misalignment_layer: str = "misalignment"

    @field_validator("image", "field")
    @classmethod
    def _layer_path(cls, v: str | None) -> str | None:
        return None if v is None else to_cloudpath(v).rstrip("/")

    @field_validator("block_size")
    @classmethod
    def _block(cls, v: int, info: ValidationInfo) -> int:
        overlap = info.data.get("overlap")
        if overlap is not None and v < overlap:
            raise ValueError(f"block_size ({v}) is smaller than the stitch overlap ({overlap})")
        return v

    @field_validator("tile_size")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"must be even, got {v}")
        return v

    @field_validator("render_mip")
    @classmethod
    def _render(cls, v: int, info: ValidationInfo) -> int:
        fm = info.data.get("field_mip")
        if fm is not None and v > fm:
            raise ValueError(f"render_mip ({v}) must not be coarser than field_mip ({fm})")
        return v



ChainStage = Literal["alignment", "inference", "segmentation", "synapses", "postprocess"]


class ChainParams(_Strict):
    """The `reconstruction` DAG: which stages of the chain run, and what to score against.

    Stages present in the config run in the order alignment → inference → segmentation →
    synapses → postprocess, each reading the previous one's output (see
    :mod:`pipeline.chain`). A stage in ``skip`` does not run; its outputs must exist.
    """

    skip: list[ChainStage] = Field(default_factory=list, description="stages not to run")
    skeletons: bool = Field(True, description="postprocess: kimimaro skeletons of seg")
    skeleton_dust: int = Field(100, ge=0, description="segments below it get no skeleton")
    ground_truth: str | None = Field(None, description="segmentation layer to score seg "
                                                       "against in the report")
    synapse_truth: str | None = Field(None, description="CSV with pre, post columns of the "
                                                        "true synapses, for the report")

    @field_validator("ground_truth")
    @classmethod
    def _gt_path(cls, v: str | None) -> str | None:
        if v is not None and "://" not in v and v.endswith((".h5", ".hdf5", ".npy")):
            return os.path.abspath(os.path.expanduser(v))  # a local label stack
        return None if v is None else to_cloudpath(v).rstrip("/")


class RunConfig(_Strict):
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
