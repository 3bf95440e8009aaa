"""The per-stage sections of a run config (see :mod:`pipeline.config`): ingest,
segmentation, synapses, inference, alignment and the reconstruction chain."""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from pipeline.geometry import Vec

PositiveVec = Annotated[tuple[int, int, int], Field(description="x, y, z; each > 0")]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


def to_cloudpath(path: str) -> str:
    """Return ``path`` as a cloud path; a plain or relative local path becomes absolute file://."""
    if "://" in path:
        scheme, rest = path.split("://", 1)
        if scheme == "file":
            return "file://" + os.path.abspath(os.path.expanduser(rest))
        return path
    return "file://" + os.path.abspath(os.path.expanduser(path))


class Strict(BaseModel):
    """A config section: unknown fields are errors, and it cannot change once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestParams(Strict):
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



class SegmentationParams(Strict):
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


class SynapseSection(Strict):
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


class InferenceParams(Strict):
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
        "fp32", description="autocast dtype of the forward pass (fp16 needs cuda); fp32 is "
                            "IEEE fp32 on GPUs too (no TF32)")
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


class AlignmentParams(Strict):
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


class ChainParams(Strict):
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
