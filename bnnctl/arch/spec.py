"""Architectures as data.

An :class:`ArchSpec` is a small JSON-able description of an MLP. From it alone come the
parameter layout (PyTorch ``state_dict`` order and conventions), the batched forward and
backward pass over ``M`` stacked models held as one ``[M, n_params]`` tensor, and the
symmetry structure: which slices a permutation (or rescaling, or sign flip) of one hidden
layer's units touches. Training, sampling, canonicalisation, export and stats all read
the spec; none re-derives it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from bnnctl.errors import DataError, UsageError, describe

if TYPE_CHECKING:  # torch is imported where it is used: the CLI reads specs without it
    import torch


#: Activations and the symmetries of a hidden unit they admit besides permutation:
#: "scale" = positive rescaling (positively homogeneous), "sign" = sign flip (odd).
class Activation(str, Enum):
    """Hidden activations."""

    relu = "relu"
    leaky_relu = "leaky_relu"
    tanh = "tanh"
    gelu = "gelu"


ACTIVATIONS: dict[str, tuple[str, ...]] = {
    Activation.relu.value: ("scale",),
    Activation.leaky_relu.value: ("scale",),
    Activation.tanh.value: ("sign",),
    Activation.gelu.value: (),
}
LEAKY_SLOPE = 0.01


@dataclass(frozen=True)
class Tensor:
    """One entry of the layout: ``row[offset:offset+size].reshape(shape)`` is the tensor."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "offset": self.offset}


@dataclass(frozen=True)
class UnitGroup:
    """The hidden units of one layer and the parameter axes their symmetries act on.

    ``incoming`` are (tensor name, axis) pairs indexed by the unit on the producing side
    (the layer's weight rows and bias); ``outgoing`` are those indexed by the unit on the
    consuming side (the next layer's weight columns).

    The optional fields describe convolutional structure (all default to an MLP layer):

    - ``views``: ``(name, shape)``: for this group, tensor ``name`` is seen as ``[M, *shape]``
      (a view) and its pairs' axes refer to that shape; e.g. a Linear after flattening a
      ``C x H x W`` map, ``[out, C*H*W]`` seen as ``[out, C, H*W]`` with the unit on axis 1.
    - ``blocks``: the units form ``blocks`` contiguous equal blocks; a unit moves only
      within its block (grouped convolutions).
    - ``diag``: names whose (viewed) axis 0 enumerates the blocks, the unit being block
      ``b`` and index ``j`` within it on the pair's axis (a grouped conv's weight
      ``[G, out/G, in/G, k, k]``: input channel ``b·in/G + j`` meets only rows of group ``b``).
    - ``block_moves``: whether whole blocks may also be permuted (with every unit's
      slices), carrying ``carried``: ``(name, axis)`` pairs whose axis is cut into
      ``blocks`` contiguous equal parts that move with the blocks (the grouped layer's
      bias and what its outputs feed).
    """

    layer: int
    size: int
    incoming: tuple[tuple[str, int], ...]
    outgoing: tuple[tuple[str, int], ...]
    blocks: int = 1
    block_moves: bool = True
    carried: tuple[tuple[str, int], ...] = ()
    views: tuple[tuple[str, tuple[int, ...]], ...] = ()
    diag: tuple[str, ...] = ()

    def view_shape(self, name: str) -> tuple[int, ...] | None:
        """The shape tensor ``name`` is seen as for this group, or None (as stored)."""
        return dict(self.views).get(name)

    def plain(self, name: str) -> bool:
        """Whether ``name`` is indexed by unit on a plain axis of its stored shape."""
        return name not in self.diag and self.view_shape(name) is None


class LaidOut:
    """What follows from an architecture's ``layout`` alone (shared by every kind)."""

    @property
    def layout(self) -> list[Tensor]:
        raise NotImplementedError

    @property
    def n_params(self) -> int:
        t = self.layout[-1]
        return t.offset + t.size

    def slices(self) -> dict[str, tuple[int, int, tuple[int, ...]]]:
        return {t.name: (t.offset, t.offset + t.size, t.shape) for t in self.layout}

    def state_dict(self, row: torch.Tensor) -> dict[str, torch.Tensor]:
        """One model's ``[P]`` row as a PyTorch state_dict (copies)."""
        return {
            t.name: row[t.offset : t.offset + t.size].reshape(t.shape).clone() for t in self.layout
        }


@dataclass(frozen=True)
class ArchSpec(LaidOut):
    """An MLP ``widths[0] -> ... -> widths[-1]`` with one activation between layers.

    ``dropout`` is the rate of a dropout layer after each hidden activation (0 = none);
    it only matters for training and MC dropout, not for the parameter layout.
    """

    widths: tuple[int, ...]
    activation: str = "relu"
    dropout: float = 0.0
    kind: str = field(default="mlp")

    def __post_init__(self) -> None:
        if self.kind != "mlp":
            raise UsageError(f"unknown architecture kind {self.kind!r}; supported: mlp")
        if len(self.widths) < 2 or any(int(w) < 1 for w in self.widths):
            raise UsageError(f"an MLP needs at least two positive widths, got {self.widths}")
        if self.activation not in ACTIVATIONS:
            raise UsageError(
                f"unknown activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"`dropout` must be in [0, 1), got {self.dropout}", "dropout")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))

    # --- naming and serialisation -------------------------------------------------

    @classmethod
    def parse(cls, text: str, activation: str = "relu", dropout: float = 0.0) -> ArchSpec:
        """Parse ``mlp:64-128-128-10`` (``mlp:2-1`` is a linear model)."""
        m = re.fullmatch(r"\s*mlp:(\d+(?:-\d+)+)\s*", text)
        if not m:
            raise UsageError(
                f"cannot parse architecture {text!r}; expected e.g. 'mlp:64-128-128-10'"
            )
        return cls(tuple(int(w) for w in m.group(1).split("-")), activation, dropout)

    @property
    def name(self) -> str:
        return "mlp:" + "-".join(str(w) for w in self.widths)

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": self.kind,
                "widths": list(self.widths),
                "activation": self.activation,
                "dropout": self.dropout,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | dict) -> ArchSpec:
        """The arch a manifest row or file header describes; text bnnctl did not write is
        a :class:`DataError` that quotes it."""
        try:
            d = json.loads(text) if isinstance(text, str) else dict(text)
            return cls(
                tuple(d["widths"]), d.get("activation", "relu"), d.get("dropout", 0.0), d["kind"]
            )
        except (ValueError, KeyError, TypeError) as e:  # UsageError is a ValueError
            shown = str(text) if len(str(text)) <= 80 else str(text)[:77] + "..."
            raise DataError(f"arch {shown!r} is not a valid architecture: {describe(e)}") from None

    # --- layout ------------------------------------------------------------------

    @property
    def n_layers(self) -> int:
        return len(self.widths) - 1

    @property
    def n_inputs(self) -> int:
        """Input features per point (the data's flat width)."""
        return self.widths[0]

    @property
    def n_outputs(self) -> int:
        return self.widths[-1]

    def module_index(self, layer: int) -> int:
        """Index of Linear ``layer`` inside the ``nn.Sequential`` that modules.py builds."""
        per_hidden = 3 if self.dropout > 0 else 2
        return layer * per_hidden

    @property
    def layout(self) -> list[Tensor]:
        out, offset = [], 0
        for i in range(self.n_layers):
            idx = self.module_index(i)
            for suffix, shape in (
                ("weight", (self.widths[i + 1], self.widths[i])),
                ("bias", (self.widths[i + 1],)),
            ):
                out.append(Tensor(f"{idx}.{suffix}", shape, offset))
                offset += math.prod(shape)
        return out

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: [M, *shape] view}`` into a contiguous model-major ``[M, P]`` tensor."""
        m = flat.shape[0]
        return {
            t.name: flat[:, t.offset : t.offset + t.size].view(m, *t.shape) for t in self.layout
        }

    def unflatten(self, flat: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views ``(W [M,out,in], b [M,out])`` per layer into a contiguous ``[M, P]`` tensor."""
        v = list(self.views(flat).values())
        return list(zip(v[0::2], v[1::2], strict=True))

    # --- symmetries as data ------------------------------------------------------

    @property
    def symmetries(self) -> tuple[str, ...]:
        return ("perm",) + ACTIVATIONS[self.activation]

    def unit_groups(self) -> list[UnitGroup]:
        groups = []
        for layer in range(self.n_layers - 1):
            here, nxt = self.module_index(layer), self.module_index(layer + 1)
            groups.append(
                UnitGroup(
                    layer=layer,
                    size=self.widths[layer + 1],
                    incoming=((f"{here}.weight", 0), (f"{here}.bias", 0)),
                    outgoing=((f"{nxt}.weight", 1),),
                )
            )
        return groups

    # --- batched computation -----------------------------------------------------

    def init(self, generator: torch.Generator) -> torch.Tensor:
        """One model's initial ``[P]`` row: PyTorch's ``nn.Linear`` default
        (uniform in ±1/sqrt(fan_in) for weight and bias), drawn in layout order."""
        import torch

        parts = []
        for t in self.layout:
            bound = 1.0 / math.sqrt(t.shape[-1] if len(t.shape) == 2 else self._fan_in(t))
            parts.append(torch.empty(t.size).uniform_(-bound, bound, generator=generator))
        return torch.cat(parts)

    def _fan_in(self, bias: Tensor) -> int:
        return next(
            t.shape[1] for t in self.layout if t.name == bias.name.replace("bias", "weight")
        )

    # --- stacked parameters -------------------------------------------------------
    #
    # The store holds model-major rows [M, P]; batched matmuls want each layer's weights
    # of all M models contiguous. Engines keep one layer-major buffer of M*P numbers whose
    # per-layer views are contiguous [M, out, in] / [M, out] tensors; an elementwise
    # optimizer sees it as one flat tensor.

    def layer_views(self, buf: torch.Tensor, m: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer ``(W [M,out,in], b [M,out])`` views into a layer-major buffer."""
        views, pos = [], 0
        for t in self.layout:
            views.append(buf[pos : pos + m * t.size].view(m, *t.shape))
            pos += m * t.size
        return list(zip(views[0::2], views[1::2], strict=True))

    def to_layer_major(self, flat: torch.Tensor) -> torch.Tensor:
        """Model-major ``[M, P]`` -> layer-major buffer ``[M*P]``."""
        import torch

        return torch.cat([flat[:, t.offset : t.offset + t.size].reshape(-1) for t in self.layout])

    def to_model_major(self, buf: torch.Tensor, m: int) -> torch.Tensor:
        """Layer-major buffer ``[M*P]`` -> model-major ``[M, P]``."""
        import torch

        return torch.cat([v.reshape(m, -1) for layer in self.layer_views(buf, m) for v in layer], 1)

    def layers_of(self, params) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer views of model-major ``[M, P]`` params, or a list of layers as is."""
        import torch

        return self.unflatten(params) if isinstance(params, torch.Tensor) else params

    # --- batched computation -----------------------------------------------------

    def act_(self, z: torch.Tensor) -> torch.Tensor:
        """The activation, in place where the backward pass only needs its output."""
        import torch

        a = self.activation
        if a == "relu":
            return z.relu_()
        if a == "leaky_relu":
            return torch.nn.functional.leaky_relu_(z, LEAKY_SLOPE)
        if a == "tanh":
            return z.tanh_()
        return torch.nn.functional.gelu(z)

    def act_backward(
        self, dh: torch.Tensor, z: torch.Tensor | None, h: torch.Tensor
    ) -> torch.Tensor:
        """d loss / d z given d loss / d h for h = act(z) (z is only kept for gelu)."""
        import torch

        a = self.activation
        if a == "relu":
            return torch.ops.aten.threshold_backward(dh, h, 0.0)
        if a == "leaky_relu":
            return torch.ops.aten.leaky_relu_backward(dh, h, LEAKY_SLOPE, True)
        if a == "tanh":
            return torch.ops.aten.tanh_backward(dh, h)
        return torch.ops.aten.gelu_backward(dh, z)

    def forward(
        self,
        params,
        x: torch.Tensor,
        keep: list | None = None,
        dropout_masks: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Outputs ``[M, B, out]`` of ``M`` stacked models (model-major ``[M, P]`` params or
        per-layer views) on ``x`` (``[B, in]`` shared by all models, or ``[M, B, in]``).
        Pass a list as ``keep`` to retain what :meth:`backward` needs. ``dropout_masks``
        (one per hidden layer, already scaled by 1/(1-p)) applies dropout."""
        import torch

        layers = self.layers_of(params)
        h = x
        for i, (w, b) in enumerate(layers):
            if h.dim() == 2:  # shared input: one big gemm over all models at once
                z = torch.matmul(h, w.reshape(-1, w.shape[-1]).T).view(h.shape[0], w.shape[0], -1)
                z = z.transpose(0, 1).add(b.unsqueeze(1))
            else:
                z = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if keep is not None:
                keep.append(h)
            if i == len(layers) - 1:
                return z
            pre = z.clone() if self.activation == "gelu" and keep is not None else None
            h = self.act_(z)
            if keep is not None:
                keep.extend((pre, h))
            if dropout_masks is not None:
                h = h * dropout_masks[i]
        raise AssertionError("unreachable")

    def backward(
        self,
        params,
        keep: list,
        dout: torch.Tensor,
        grads,
        dropout_masks: list[torch.Tensor] | None = None,
    ):
        """Write d loss / d params into ``grads`` (same form as ``params``) given
        d loss / d outputs ``dout [M, B, out]`` and what :meth:`forward` kept. Hand-written
        so that gradients land directly in the optimizer's buffer, with no autograd graph."""
        import torch

        layers, glayers = self.layers_of(params), self.layers_of(grads)
        dz = dout
        for i in range(len(layers) - 1, -1, -1):
            w, _ = layers[i]
            gw, gb = glayers[i]
            h_in = keep[3 * i]  # the layer's input, after dropout
            if h_in.dim() == 2:  # shared input: gW of all models as one gemm
                g = torch.matmul(dz.transpose(1, 2).reshape(-1, dz.shape[1]), h_in).view_as(gw)
                gw.copy_(g)
            elif gw.is_contiguous():
                torch.bmm(dz.transpose(1, 2), h_in, out=gw)
            else:
                gw.copy_(torch.bmm(dz.transpose(1, 2), h_in))
            if gb.is_contiguous():
                torch.sum(dz, dim=1, out=gb)
            else:
                gb.copy_(dz.sum(1))
            if i == 0:
                return grads
            dh = torch.bmm(dz, w)
            if dropout_masks is not None:
                dh.mul_(dropout_masks[i - 1])
            dz = self.act_backward(dh, keep[3 * i - 2], keep[3 * i - 1])
        return grads
