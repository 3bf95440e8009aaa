"""Write a synthetic volume as precomputed layers plus its truth tables."""

from __future__ import annotations

import csv
import io

import numpy as np
from cloudfiles import CloudFiles

from pipeline import storage
from pipeline.config import to_cloudpath
from pipeline.geometry import Bbox
from pipeline.synth.kernels import DefectSpec, SynthVolume, synthesize

CHUNK = (64, 64, 16)
SYNAPSE_COLUMNS = ("cleft_id", "pre", "post", "centroid_x", "centroid_y", "centroid_z", "size")


def synapse_csv(vol: SynthVolume) -> str:
    """The true synapse table as CSV (columns :data:`SYNAPSE_COLUMNS`, centroids in voxels)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(SYNAPSE_COLUMNS)
    for s in vol.synapses:
        w.writerow([s["cleft_id"], s["pre"], s["post"], *(round(c, 3) for c in s["centroid"]),
                    s["size"]])
    return buf.getvalue()


def make_volume(shape: tuple[int, int, int], seed: int, resolution: tuple[float, float, float],
                *, misalign: bool = False, folds: int = 0, missing: int = 0) -> SynthVolume:
    """A synthetic volume with the requested defects injected into its image."""
    return synthesize(tuple(shape), seed, resolution=tuple(resolution),
                      defects=DefectSpec(shifts=misalign, folds=folds, missing=missing))


def write_truth(output: str, vol: SynthVolume, resolution: tuple[float, float, float],
                overwrite: bool = False) -> dict[str, tuple[str, str]]:
    """Write the ground-truth layers (gt, clefts, cleft_probability) and tables under ``output``.

    Tables: ``synapses.csv`` / ``synapses.json`` (true partners) and ``defects.json``.
    """
    root = to_cloudpath(output)
    bbox = Bbox.from_shape(vol.segmentation.shape)
    layers = {"gt": (vol.segmentation, "segmentation"), "clefts": (vol.clefts, "segmentation"),
              "cleft_probability": (vol.cleft_probability, "probability")}
    out = {}
    for name, (data, kind) in layers.items():
        path = f"{root}/{name}"
        storage.create_layer(path, kind, bbox, resolution, CHUNK, overwrite=overwrite)
        storage.write(path, bbox, data)
        storage.set_status(path, "complete")
        out[name] = (path, kind)
    cf = CloudFiles(root)
    cf.put("synapses.csv", synapse_csv(vol).encode(), content_type="text/csv")
    cf.put_json("synapses.json", vol.synapses)
    cf.put_json("defects.json", vol.defects)
    return out


def write_synthetic(output: str, shape: tuple[int, int, int], seed: int,
                    resolution: tuple[float, float, float], *, misalign: bool = False,
                    folds: int = 0, missing: int = 0,
                    overwrite: bool = False) -> dict[str, tuple[str, str]]:
    """Write image, truth layers and tables for one synthetic volume; return the layers."""
    vol = make_volume(shape, seed, resolution, misalign=misalign, folds=folds, missing=missing)
    root = to_cloudpath(output)
    path = f"{root}/image"
    bbox = Bbox.from_shape(vol.image.shape)
    storage.create_layer(path, "image", bbox, resolution, CHUNK, overwrite=overwrite)
    storage.write(path, bbox, vol.image)
    storage.set_status(path, "complete")
    return {"image": (path, "image"), **write_truth(output, vol, resolution, overwrite)}


def save_stack(vol: SynthVolume, path: str) -> None:
    """Save the image as a z, y, x .npy stack, the layout `petarecon ingest` reads by default."""
    np.save(path, np.ascontiguousarray(vol.image.transpose(2, 1, 0)))


