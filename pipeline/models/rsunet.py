"""The paper's modified Residual Symmetric U-Net (RSUNet) boundary detector.

After Lee et al. (2017) as modified in Macrina et al. (2021):

- 3×3×3 convolutions everywhere, except a 5×5×1 (x, y, z) convolution on the input and on the
  output (torch kernel ``(1, 5, 5)`` in its (z, y, x) layout);
- each residual module is a convolution into the level's width followed by a residual block of
  *three* convolutions (the extra one of the paper) with an identity skip;
- ReLU and InstanceNorm after every convolution but the output one;
- max-pooling down by ``pool`` between levels; nearest upsampling plus a 1×1×1 convolution up,
  joined to the encoder's features by summation (the "symmetric" part);
- one output convolution for every head: 3 nearest-neighbour affinities (x, y, z), optional
  long-range affinities, an optional myelin channel and optional semantic classes.

Tensors are (N, C, Z, Y, X). The net returns logits; :meth:`RSUNet.predict` maps them to
probabilities (sigmoid on affinities and myelin, softmax over semantic classes).
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

LONG_RANGE_OFFSETS: tuple[tuple[int, int, int], ...] = (
    (3, 0, 0), (0, 3, 0), (0, 0, 2),
    (9, 0, 0), (0, 9, 0), (0, 0, 3),
    (27, 0, 0), (0, 27, 0), (0, 0, 4),
)
"""Long-range affinity offsets (x, y, z) of Lee et al. 2017, whose RSUNet the paper adapts:
3, 9 and 27 voxels in x and y, 2, 3 and 4 sections in z."""


class ModelSpec(BaseModel):
    """An RSUNet architecture. Stored in every checkpoint, so a checkpoint loads by itself.

    ``widths[d]`` is the feature count of level d (the depth is ``len(widths)``); ``pool`` the
    x, y, z down-sampling between levels; ``long_range`` the extra affinity offsets (x, y, z).
    Output channels, in order: 3 affinities (x, y, z), ``len(long_range)`` long-range ones,
    myelin (if ``myelin``), ``semantic_classes`` semantic logits.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    in_channels: int = Field(1, ge=1, le=16)
    widths: tuple[int, ...] = Field((28, 36, 48, 64, 80), min_length=1, max_length=8)
    pool: tuple[int, int, int] = Field((2, 2, 1), description="x, y, z down-sampling")
    long_range: tuple[tuple[int, int, int], ...] = ()
    myelin: bool = False
    semantic_classes: int = Field(0, ge=0, le=64)

    @field_validator("widths")
    @classmethod
    def _widths(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(w < 1 for w in v):
            raise ValueError(f"every width must be >= 1, got {list(v)}")
        return v

    @field_validator("pool")
    @classmethod
    def _pool(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(p < 1 for p in v):
            raise ValueError(f"every factor must be >= 1, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _offsets(self) -> ModelSpec:
        for off in self.long_range:
            if any(o < 0 for o in off) or not any(off):
                raise ValueError(f"long_range offsets must be >= 0 and nonzero, got {off}")
        return self

    @property
    def depth(self) -> int:
        return len(self.widths)

    @property
    def n_affinity(self) -> int:
        """Affinity channels: 3 nearest-neighbour plus the long-range ones."""
        return 3 + len(self.long_range)

    @property
    def myelin_channel(self) -> int | None:
        return self.n_affinity if self.myelin else None

    @property
    def out_channels(self) -> int:
        return self.n_affinity + int(self.myelin) + self.semantic_classes

    @property
    def patch_multiple(self) -> tuple[int, int, int]:
        """Patch sizes (x, y, z) must be multiples of this so every level pools evenly."""
        return tuple(p ** (self.depth - 1) for p in self.pool)  # type: ignore[return-value]


def _conv(cin: int, cout: int, kernel: tuple[int, int, int], bias: bool = False) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, kernel, padding=tuple(k // 2 for k in kernel), bias=bias)


def _norm(c: int) -> nn.InstanceNorm3d:
    return nn.InstanceNorm3d(c, affine=True, track_running_stats=False)


K3 = (3, 3, 3)
K5 = (1, 5, 5)


class ResModule(nn.Module):
    """conv → [conv, conv, conv] + skip: a convolution into ``cout`` features, then a residual
    block of three 3×3×3 convolutions (Lee et al. use two; the paper adds one)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.pre = _conv(cin, cout, K3)
        self.pre_norm = _norm(cout)
        self.convs = nn.ModuleList(_conv(cout, cout, K3) for _ in range(3))
        self.norms = nn.ModuleList(_norm(cout) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.pre_norm(self.pre(x)))
        skip = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = norm(conv(x))
            if i < len(self.convs) - 1:
                x = torch.relu(x)
        return torch.relu(x + skip)


class UpModule(nn.Module):
    """Nearest upsampling by ``pool``, 1×1×1 convolution, sum with the skip, norm, ReLU."""

    def __init__(self, cin: int, cout: int, pool_zyx: tuple[int, int, int]) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=pool_zyx, mode="nearest")
        self.conv = _conv(cin, cout, (1, 1, 1))
        self.norm = _norm(cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(self.up(x)) + skip))


class RSUNet(nn.Module):
    """The residual symmetric U-Net of a :class:`ModelSpec`; input (N, C, Z, Y, X) with Z, Y, X
    multiples of ``spec.patch_multiple`` (z, y, x), output logits of the same spatial shape."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        w = spec.widths
        pool_zyx = tuple(reversed(spec.pool))
        self.embed = _conv(spec.in_channels, w[0], K5)
        self.embed_norm = _norm(w[0])
        self.down = nn.ModuleList(ResModule(w[d - 1] if d else w[0], w[d])
                                  for d in range(spec.depth))
        self.pool = nn.MaxPool3d(pool_zyx) if spec.depth > 1 else nn.Identity()
        self.ups = nn.ModuleList(UpModule(w[d + 1], w[d], pool_zyx)
                                 for d in range(spec.depth - 1))
        self.up_res = nn.ModuleList(ResModule(w[d], w[d]) for d in range(spec.depth - 1))
        self.out = _conv(w[0], spec.out_channels, K5, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.embed_norm(self.embed(x)))
        skips = []
        for d, mod in enumerate(self.down):
            if d:
                x = self.pool(x)
            x = mod(x)
            skips.append(x)
        for d in reversed(range(self.spec.depth - 1)):
            x = self.up_res[d](self.ups[d](x, skips[d]))
        return self.out(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities: sigmoid of affinity and myelin logits, softmax of semantic ones."""
        return logits_to_probabilities(self.forward(x), self.spec)


def logits_to_probabilities(logits: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Sigmoid on affinity (and myelin) channels, softmax over the semantic channels."""
    n = spec.n_affinity + int(spec.myelin)
    out = torch.sigmoid(logits[:, :n].float())
    if spec.semantic_classes:
        out = torch.cat([out, torch.softmax(logits[:, n:].float(), dim=1)], dim=1)
    return out


def count_parameters(model: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())
