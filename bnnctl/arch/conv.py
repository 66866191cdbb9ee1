"""Convolutional architectures as data.

A :class:`ConvSpec` (kind ``"cnn"``) describes a plain feed-forward CNN: a tuple of
:class:`Layer` and an input shape ``(C, H, W)``. It offers the same surface the symmetry
code reads from :class:`~bnnctl.arch.spec.ArchSpec` (``layout``, ``views``,
``unit_groups``, ``symmetries``, ``init``, ``forward``, JSON round trip), so canonical
forms are computed generically from its unit groups.

Names
-----
Presets: ``optunet`` (the 355-parameter MNIST net of "A Symmetry-Aware Exploration of
BNN Posteriors"), ``lenet5`` (classic LeNet-5 on 1x28x28 with padding 2, relu, max
pools), ``cifar_small`` (3x32x32: conv 3->16 k3 p1, relu, maxpool 2, conv 16->32 k3 p1,
relu, global average pool, linear 32->10).

Or a ``cnn:`` string, ``cnn:CxHxW/`` then layer tokens joined by ``-``::

    c<out>k<k>[s<stride>][p<pad>][g<groups>][nb]   Conv2d (nb = no bias)
    l<out>[nb]                                    Linear (on flat features: f or gap first)
    m<k>[s<stride>]                               MaxPool2d (stride defaults to k)
    a<k>[s<stride>]                               AvgPool2d (stride defaults to k)
    gap                                           AdaptiveAvgPool2d(1) + flatten
    f                                             flatten a CxHxW map (channel-major)
    r | lr | t | gelu                             relu, leaky_relu, tanh, gelu
    d<rate>                                       Dropout(rate)

Examples: ``cnn:1x28x28/c2k4nb-r-m3-c10k5g2nb-r-gap-l3-r-l10`` is OptuNet;
``cnn:1x28x28/c6k5p2-r-m2-c16k5-r-m2-f-l120-r-l84-r-l10`` is LeNet-5. Normalisation
and residual layers (``bn``, ``frn``, ``ln``, ``gn``, ``res...``) are refused by name:
their statistics or skip paths do not transform with the unit symmetries below, so a
canonical form computed from these unit groups would be wrong.

State-dict names are those of an ``nn.Sequential`` with named children: conv layers
``conv1``, ``conv2``, ..., linear layers ``fc1``, ``fc2``, ... (parameter-free layers get
other names), so ``conv1.weight``, ``fc1.bias``, ... in module order (:meth:`ConvSpec.module`).

Symmetries
----------
Each hidden conv channel and hidden linear unit is a unit: incoming axes are the
producing layer's ``(weight, 0)`` and ``(bias, 0)``; outgoing, the next conv's input
channel axis, or the next linear's input features (after ``gap`` one column per
channel; after ``f`` of a CxHxW map the H·W consecutive columns of a channel, expressed
by viewing that weight as ``[out, C, H·W]``). Pools and dropout act channel-wise and
commute with permutations and positive scalings; max pooling does not commute with sign
flips, so a tanh network with max pools has no sign symmetry. A grouped conv (groups
``G``) constrains its input channels and its own output channels to move within their
group (``UnitGroup.blocks``); whole groups of its input channels may move together with
the conv's output-channel groups (and what those feed) when the producing layer is
ungrouped and the conv's outputs are hidden and feed an ungrouped layer (otherwise the
blocks stay in place: a subgroup of the true symmetries, so canonical forms stay
correct but remove less). The arch's ``symmetries`` are those every hidden layer has.

Limits: a channel with zero kernels but a bias (a constant map) keeps its own form (see
:func:`bnnctl.symmetry.scaling.dead_units_`); ``forward`` has no hand-written backward
(autograd through it).

Dropout
-------
``forward`` is eval-mode unless given ``dropout_masks``: one tensor per ``d<rate>`` layer
(``None`` for rate 0), already scaled by 1/(1-p), of shape ``[M, B, *shape]`` where
``shape`` is the activation it multiplies (:meth:`ConvSpec.dropout_shapes`: ``(C, H, W)``
on a feature map, ``(F,)`` on flat features). The masks are element-wise, as
``nn.Dropout`` (not ``nn.Dropout2d``) draws them: one Bernoulli per model, example,
channel and position. The trainer draws them from each model's own generator.

Forward
-------
``forward`` stacks the ``M`` models as groups of one grouped ``conv2d`` (first conv on the
shared input with weights ``[M*out, in/groups, k, k]``; later convs with
``groups = M*groups``), pools channel-wise on ``[B, M*C, H, W]``, then ``baddbmm`` for the
linear layers, with two exact rewrites: an ungrouped first conv is one matmul of the
unfolded input with all ``M*out`` filters, leaving a channels-last map (max pooling is
~5x faster on one), and relu/leaky relu before a max pool runs after it. Measured with
``python scripts/bench_conv_forward.py`` (OptuNet, M=256 models, B=128, one thread of a
shared 2-core CPU, torch 2.13; best of 5, runs varied by ~20 %): grouped conv 160-205 ms
per batch, i.e. 1,250-1,570 models/s (each model on 128 images); ``torch.func.vmap``
over ``functional_call`` of the ``nn.Module`` 590-665 ms, 385-435 models/s; the grouped
conv without the two rewrites was 494 ms (518 models/s). The grouped conv is kept
(``forward_vmap`` remains, for the benchmark and as a cross-check). Where each group has
one input channel and several filters (both of OptuNet's convs, stacked), the grouped
conv's forward runs as oneDNN's faster depthwise conv on the repeated input
(:mod:`bnnctl.arch.conv_kernels`; its weight gradients are the grouped conv's own).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bnnctl.arch.spec import ACTIVATIONS, LEAKY_SLOPE, LaidOut, Tensor, UnitGroup
from bnnctl.errors import DataError, UsageError, describe

if TYPE_CHECKING:
    import torch
    from torch import nn

OPS = ("conv", "linear", "maxpool", "avgpool", "gap", "flatten", "act", "dropout")
ACT_TOKENS = {"r": "relu", "lr": "leaky_relu", "t": "tanh", "gelu": "gelu"}
TOKEN_OF_ACT = {v: k for k, v in ACT_TOKENS.items()}
#: Stacked linear layers with at most this many weights per model run as elementwise
#: products and sums (one rounding whatever the model's row; see ``ConvSpec.forward``).
TINY_LINEAR = 1024
REFUSED = re.compile(r"(bn|batchnorm|frn|ln|layernorm|gn|groupnorm|res|skip)", re.IGNORECASE)


@dataclass(frozen=True)
class Layer:
    """One layer. ``op`` is one of :data:`OPS`; the other fields matter per op: conv uses
    out/kernel/stride/padding/groups/bias, linear out/bias, pools kernel/stride, act fn,
    dropout rate."""

    op: str
    out: int = 0
    kernel: int = 0
    stride: int = 0  # 0: conv 1, pools = kernel
    padding: int = 0
    groups: int = 1
    bias: bool = True
    fn: str = ""
    rate: float = 0.0

    FIELDS = {
        "conv": ("out", "kernel", "stride", "padding", "groups", "bias"),
        "linear": ("out", "bias"),
        "maxpool": ("kernel", "stride"),
        "avgpool": ("kernel", "stride"),
        "gap": (),
        "flatten": (),
        "act": ("fn",),
        "dropout": ("rate",),
    }

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise UsageError(f"unknown layer op {self.op!r}; choose from {', '.join(OPS)}")
        for k in ("out", "kernel", "stride", "padding", "groups"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool):
                raise UsageError(f"a {self.op} layer's `{k}` must be an integer, got {v!r}")
        if not isinstance(self.bias, bool) or not isinstance(self.fn, str):
            raise UsageError(f"a {self.op} layer's `bias` must be true/false and `fn` a name")
        if not isinstance(self.rate, (int, float)) or isinstance(self.rate, bool):
            raise UsageError(f"a dropout layer's `rate` must be a number, got {self.rate!r}")
        if self.op == "act" and self.fn not in ACTIVATIONS:
            raise UsageError(
                f"unknown activation {self.fn!r}; choose from {', '.join(ACTIVATIONS)}"
            )
        if self.op in ("conv", "maxpool", "avgpool") and self.stride == 0:
            object.__setattr__(self, "stride", 1 if self.op == "conv" else self.kernel)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"op": self.op}
        d.update({k: getattr(self, k) for k in self.FIELDS[self.op]})
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Layer:
        op = d["op"]
        allowed = set(cls.FIELDS.get(op, ())) | {"op"}
        extra = set(d) - allowed
        if extra:
            raise ValueError(f"unexpected keys {sorted(extra)} for a {op} layer")
        return cls(**d)

    def token(self) -> str:
        if self.op == "conv":
            t = f"c{self.out}k{self.kernel}"
            t += f"s{self.stride}" if self.stride != 1 else ""
            t += f"p{self.padding}" if self.padding else ""
            t += f"g{self.groups}" if self.groups != 1 else ""
            return t + ("" if self.bias else "nb")
        if self.op == "linear":
            return f"l{self.out}" + ("" if self.bias else "nb")
        if self.op in ("maxpool", "avgpool"):
            t = f"{self.op[0]}{self.kernel}"
            return t + (f"s{self.stride}" if self.stride != self.kernel else "")
        if self.op == "gap":
            return "gap"
        if self.op == "flatten":
            return "f"
        if self.op == "act":
            return TOKEN_OF_ACT[self.fn]
        return f"d{self.rate:g}"


def parse_token(tok: str) -> Layer:
    """One ``cnn:`` token as a :class:`Layer` (UsageError naming the token otherwise)."""
    if REFUSED.match(tok):
        raise UsageError(
            f"layer {tok!r} not supported: normalisation layers and residual connections "
            "would be mis-canonicalised (their statistics and skip paths do not transform "
            "with the unit symmetries)"
        )
    if tok in ACT_TOKENS:
        return Layer("act", fn=ACT_TOKENS[tok])
    if tok == "gap":
        return Layer("gap")
    if tok == "f":
        return Layer("flatten")
    m = re.fullmatch(r"c(\d+)k(\d+)(?:s(\d+))?(?:p(\d+))?(?:g(\d+))?(nb)?", tok)
    if m:
        out, k, s, p, g, nb = m.groups()
        return Layer("conv", int(out), int(k), int(s or 1), int(p or 0), int(g or 1), not nb)
    m = re.fullmatch(r"l(\d+)(nb)?", tok)
    if m:
        return Layer("linear", int(m.group(1)), bias=not m.group(2))
    m = re.fullmatch(r"([ma])(\d+)(?:s(\d+))?", tok)
    if m:
        op = "maxpool" if m.group(1) == "m" else "avgpool"
        return Layer(op, kernel=int(m.group(2)), stride=int(m.group(3) or m.group(2)))
    m = re.fullmatch(r"d(0?\.\d+|0|[01]\.?\d*e-?\d+)", tok)
    if m:
        return Layer("dropout", rate=float(m.group(1)))
    raise UsageError(
        f"cannot parse layer token {tok!r}; expected e.g. c16k3p1, c10k5g2nb, m2, a2, gap, f, "
        "l10, r, lr, t, gelu, d0.1"
    )


def _presets() -> dict[str, tuple[tuple[int, int, int], str]]:
    return {
        "optunet": ((1, 28, 28), "c2k4nb-r-m3-c10k5g2nb-r-gap-l3-r-l10"),
        "lenet5": ((1, 28, 28), "c6k5p2-r-m2-c16k5-r-m2-f-l120-r-l84-r-l10"),
        "cifar_small": ((3, 32, 32), "c16k3p1-r-m2-c32k3p1-r-gap-l10"),
    }


PRESETS = tuple(_presets())


def cnn_json_schema() -> dict:
    """JSON Schema (draft 2020-12) of :meth:`ConvSpec.to_json`: the ``cnn`` variant an
    arch schema can add (e.g. as ``oneOf`` beside the MLP one in
    ``bnnctl/store/schema.py``, which generates ``schemas/arch.schema.json``)."""
    pos = {"type": "integer", "minimum": 1}

    def op(name: str, props: dict, required: tuple[str, ...] = ()) -> dict:
        return {
            "type": "object",
            "required": ["op", *required],
            "properties": {"op": {"const": name}, **props},
            "additionalProperties": False,
        }

    window = {"kernel": pos, "stride": pos}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "bnnctl convolutional architecture spec",
        "type": "object",
        "required": ["kind", "input", "layers"],
        "properties": {
            "kind": {"const": "cnn"},
            "name": {"type": "string", "description": "Preset or cnn: string."},
            "input": {
                "type": "array",
                "items": pos,
                "minItems": 3,
                "maxItems": 3,
                "description": "Input shape C, H, W.",
            },
            "layers": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "oneOf": [
                        op(
                            "conv",
                            {
                                "out": pos,
                                "kernel": pos,
                                "stride": pos,
                                "padding": {"type": "integer", "minimum": 0},
                                "groups": pos,
                                "bias": {"type": "boolean"},
                            },
                            ("out", "kernel"),
                        ),
                        op("linear", {"out": pos, "bias": {"type": "boolean"}}, ("out",)),
                        op("maxpool", window, ("kernel",)),
                        op("avgpool", window, ("kernel",)),
                        op("gap", {}),
                        op("flatten", {}),
                        op("act", {"fn": {"enum": list(ACTIVATIONS)}}, ("fn",)),
                        op(
                            "dropout",
                            {"rate": {"type": "number", "minimum": 0, "exclusiveMaximum": 1}},
                            ("rate",),
                        ),
                    ]
                },
            },
        },
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class _Param:
    """A parametric layer as the spec sees it (internal)."""

    index: int  # position in ``layers``
    prefix: str  # conv1, fc2, ...
    layer: Layer
    in_shape: tuple[int, ...]  # (C, H, W) or (F,)
    out_shape: tuple[int, ...]


@dataclass(frozen=True)
class ConvSpec(LaidOut):
    """A feed-forward CNN: ``layers`` applied in order to an input of shape ``input``."""

    layers: tuple[Layer, ...]
    input: tuple[int, int, int]
    name: str = ""
    kind: str = field(default="cnn")

    def __post_init__(self) -> None:
        if self.kind != "cnn":
            raise UsageError(f"unknown architecture kind {self.kind!r} for a ConvSpec")
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "input", tuple(int(x) for x in self.input))
        if len(self.input) != 3 or min(self.input) < 1:
            raise UsageError(f"a CNN input is a positive C x H x W, got {self.input}")
        if not self.name:
            object.__setattr__(self, "name", self.spec_string)
        object.__setattr__(self, "_params", self._check())

    @property
    def n_inputs(self) -> int:
        """Input features per point: an image is stored flat, channel-major (C, H, W)."""
        return math.prod(self.input)

    @property
    def n_outputs(self) -> int:
        return next(ly.out for ly in reversed(self.layers) if ly.op in ("linear", "conv"))

    def feature_sizes(self) -> list[int]:
        """Values per image of each layer's output (input first): what a forward pass
        holds per image and model (for memory estimates)."""
        shape: tuple[int, ...] = self.input
        sizes = [math.prod(shape)]
        for i, ly in enumerate(self.layers):
            shape = self._shape_after(ly, shape, f"layer {i + 1}")
            sizes.append(math.prod(shape))
        return sizes

    # --- construction checks ------------------------------------------------------

    def _check(self) -> tuple[_Param, ...]:
        shape: tuple[int, ...] = self.input
        params: list[_Param] = []
        n_conv = n_fc = 0
        for i, ly in enumerate(self.layers):
            try:
                where = f"layer {i + 1} ({ly.token()})"
            except (KeyError, TypeError, ValueError):
                where = f"layer {i + 1} ({ly.op})"
            new = self._shape_after(ly, shape, where)
            if ly.op == "conv":
                n_conv += 1
                params.append(_Param(i, f"conv{n_conv}", ly, shape, new))
            elif ly.op == "linear":
                n_fc += 1
                params.append(_Param(i, f"fc{n_fc}", ly, shape, new))
            shape = new
        if len(shape) != 1:
            raise UsageError(
                f"{self.name or 'the network'} ends in a {'x'.join(map(str, shape))} map; "
                "end with gap, f or a linear layer"
            )
        if not params:
            raise UsageError("a CNN needs at least one conv or linear layer")
        for a, b in zip(params, params[1:], strict=False):
            ga, gb = a.layer.groups, b.layer.groups
            if ga > 1 and gb > 1 and max(ga, gb) % min(ga, gb):
                raise UsageError(
                    f"{b.prefix}: groups {gb} after {a.prefix} with groups {ga}; consecutive "
                    "grouped convs need one group count to divide the other"
                )
        return tuple(params)

    @staticmethod
    def _shape_after(ly: Layer, shape: tuple[int, ...], where: str) -> tuple[int, ...]:
        if ly.op == "act":
            if ly.fn not in ACTIVATIONS:
                raise UsageError(
                    f"{where}: unknown activation {ly.fn!r}; choose from {', '.join(ACTIVATIONS)}"
                )
            return shape
        if ly.op == "dropout":
            if not 0.0 <= ly.rate < 1.0:
                raise UsageError(f"{where}: dropout rate must be in [0, 1), got {ly.rate}")
            return shape
        if ly.op == "linear":
            if len(shape) != 1:
                raise UsageError(
                    f"{where}: its input is a {'x'.join(map(str, shape))} map; "
                    "flatten it first (f or gap)"
                )
            if ly.out < 1:
                raise UsageError(f"{where}: a linear layer needs a positive width")
            return (ly.out,)
        if len(shape) != 3:
            raise UsageError(f"{where}: needs a C x H x W map, got {shape[0]} flat features")
        c, h, w = shape
        if ly.op == "gap":
            return (c,)
        if ly.op == "flatten":
            return (c * h * w,)
        if ly.kernel < 1 or ly.stride < 1 or ly.padding < 0:
            raise UsageError(f"{where}: kernel and stride must be positive, padding >= 0")
        if ly.op == "conv":
            if ly.out < 1 or ly.groups < 1:
                raise UsageError(f"{where}: out channels and groups must be positive")
            if c % ly.groups or ly.out % ly.groups:
                raise UsageError(
                    f"{where}: {c} input and {ly.out} output channels are not both "
                    f"divisible by groups={ly.groups}"
                )
            hp, wp = h + 2 * ly.padding, w + 2 * ly.padding
        else:
            hp, wp = h, w
        if ly.kernel > min(hp, wp):
            raise UsageError(f"{where}: kernel {ly.kernel} is larger than the {h}x{w} feature map")
        oh, ow = (hp - ly.kernel) // ly.stride + 1, (wp - ly.kernel) // ly.stride + 1
        return (ly.out if ly.op == "conv" else c, oh, ow)

    # --- naming and serialisation ---------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> ConvSpec:
        """A preset name or a ``cnn:CxHxW/tok-tok-...`` string (see the module doc)."""
        s = text.strip()
        presets = _presets()
        if s in presets:
            shape, body = presets[s]
            return cls(tuple(parse_token(t) for t in body.split("-")), shape, s)
        m = re.fullmatch(r"cnn:(\d+)x(\d+)x(\d+)/(.+)", s)
        if not m:
            raise UsageError(
                f"cannot parse architecture {text!r}; expected a preset "
                f"({', '.join(PRESETS)}) or e.g. 'cnn:1x28x28/c6k5p2-r-m2-f-l10'"
            )
        shape3 = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        return cls(tuple(parse_token(t) for t in m.group(4).split("-")), shape3)

    @property
    def spec_string(self) -> str:
        return "cnn:{}/{}".format(
            "x".join(map(str, self.input)), "-".join(ly.token() for ly in self.layers)
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": self.kind,
                "name": self.name,
                "input": list(self.input),
                "layers": [ly.to_dict() for ly in self.layers],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | dict) -> ConvSpec:
        """The arch a manifest row or file header describes; anything else is a
        :class:`DataError` that quotes it."""
        try:
            d = json.loads(text) if isinstance(text, str) else dict(text)
            extra = set(d) - {"kind", "name", "input", "layers"}
            if extra:
                raise ValueError(f"unexpected keys {sorted(extra)}")
            return cls(
                tuple(Layer.from_dict(x) for x in d["layers"]),
                tuple(d["input"]),
                d.get("name", ""),
                d["kind"],
            )
        except (ValueError, KeyError, TypeError) as e:  # UsageError is a ValueError
            shown = str(text) if len(str(text)) <= 80 else str(text)[:77] + "..."
            raise DataError(f"arch {shown!r} is not a valid architecture: {describe(e)}") from None

    # --- layout ---------------------------------------------------------------------

    @property
    def params(self) -> tuple[_Param, ...]:
        return self._params  # type: ignore[attr-defined]

    @property
    def layout(self) -> list[Tensor]:
        out, offset = [], 0
        for p in self.params:
            ly = p.layer
            if ly.op == "conv":
                wshape: tuple[int, ...] = (ly.out, p.in_shape[0] // ly.groups, ly.kernel, ly.kernel)
            else:
                wshape = (ly.out, p.in_shape[0])
            shapes = [("weight", wshape)] + ([("bias", (ly.out,))] if ly.bias else [])
            for suffix, shape in shapes:
                out.append(Tensor(f"{p.prefix}.{suffix}", shape, offset))
                offset += math.prod(shape)
        return out

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: [M, *shape] view}`` into a model-major ``[M, P]`` tensor (rows
        contiguous). One ``split``, so autograd assembles the gradient in one pass."""
        m, layout = flat.shape[0], self.layout
        parts = flat.split([t.size for t in layout], dim=1)
        return {t.name: part.view(m, *t.shape) for t, part in zip(layout, parts, strict=True)}

    @property
    def activation(self) -> str:
        """The activation's name, or the names joined by '+' when layers differ."""
        fns = list(dict.fromkeys(ly.fn for ly in self.layers if ly.op == "act"))
        return "+".join(fns) if fns else "identity"

    @property
    def dropout(self) -> float:
        """The largest dropout rate (0 = none)."""
        return max([ly.rate for ly in self.layers if ly.op == "dropout"], default=0.0)

    def dropout_shapes(self) -> list[tuple[int, tuple[int, ...]]]:
        """``(layer index, per-example shape)`` of each dropout layer, in order: the shape
        of the activation it multiplies, ``(C, H, W)`` or ``(F,)`` (what ``forward``'s
        ``dropout_masks`` hold per model and example)."""
        shape: tuple[int, ...] = self.input
        out = []
        for i, ly in enumerate(self.layers):
            if ly.op == "dropout":
                out.append((i, shape))
            shape = self._shape_after(ly, shape, f"layer {i + 1}")
        return out

    # --- symmetries as data -----------------------------------------------------------

    def _between(self, k: int) -> list[Layer]:
        """Parameter-free layers between parametric layers ``k`` and ``k + 1``."""
        a, b = self.params[k].index, self.params[k + 1].index
        return list(self.layers[a + 1 : b])

    def _group_symmetries(self, k: int) -> set[str]:
        """Symmetries of the units of parametric layer ``k`` besides permutation."""
        syms = {"scale", "sign"}  # of the identity
        for ly in self._between(k):
            if ly.op == "act":
                syms &= set(ACTIVATIONS[ly.fn])
            elif ly.op == "maxpool":
                syms.discard("sign")  # max(-x) != -max(x)
        return syms

    @property
    def symmetries(self) -> tuple[str, ...]:
        common = {"scale", "sign"}
        for k in range(len(self.params) - 1):
            common &= self._group_symmetries(k)
        return ("perm",) + tuple(s for s in ("scale", "sign") if s in common)

    def unit_groups(self) -> list[UnitGroup]:
        ps, groups = self.params, []
        for k in range(len(ps) - 1):
            p, q = ps[k], ps[k + 1]
            incoming = ((f"{p.prefix}.weight", 0),) + (
                ((f"{p.prefix}.bias", 0),) if p.layer.bias else ()
            )
            qw = f"{q.prefix}.weight"
            gp = p.layer.groups if p.layer.op == "conv" else 1
            gq = q.layer.groups if q.layer.op == "conv" else 1
            views: tuple[tuple[str, tuple[int, ...]], ...] = ()
            diag: tuple[str, ...] = ()
            axis = 1
            if q.layer.op == "conv" and gq > 1:
                w = next(t for t in self.layout if t.name == qw).shape
                views = ((qw, (gq, w[0] // gq, *w[1:])),)
                diag, axis = (qw,), 2
            elif q.layer.op == "linear" and len(p.out_shape) == 3:
                flat_in = q.in_shape[0]
                c = p.out_shape[0]
                if flat_in != c:  # flatten of a C x H x W map: H*W columns per channel
                    views = ((qw, (q.layer.out, c, flat_in // c)),)
            carried: tuple[tuple[str, int], ...] = ()
            moves = False
            if gq > 1 and gp == 1 and k + 2 < len(ps):
                r = ps[k + 2]
                if not (r.layer.op == "conv" and r.layer.groups > 1):
                    moves = True
                    carried = ((f"{q.prefix}.bias", 0),) if q.layer.bias else ()
                    carried += ((f"{r.prefix}.weight", 1),)
            groups.append(
                UnitGroup(
                    layer=k,
                    size=p.layer.out,
                    incoming=incoming,
                    outgoing=((qw, axis),),
                    blocks=max(gp, gq),
                    block_moves=moves,
                    carried=carried,
                    views=views,
                    diag=diag,
                )
            )
        return groups

    # --- modules, init and forward ------------------------------------------------------

    def module(self) -> nn.Sequential:
        """A fresh ``nn.Sequential`` whose ``state_dict`` keys are the layout's names."""
        from collections import OrderedDict

        from torch import nn

        from bnnctl.arch.modules import activation_module  # imports torch: not at the top

        mods: OrderedDict[str, nn.Module] = OrderedDict()
        pref = {p.index: p for p in self.params}
        for i, ly in enumerate(self.layers):
            if i in pref:
                p = pref[i]
                if ly.op == "conv":
                    mods[p.prefix] = nn.Conv2d(
                        p.in_shape[0], ly.out, ly.kernel, ly.stride, ly.padding,
                        groups=ly.groups, bias=ly.bias,
                    )  # fmt: skip
                else:
                    mods[p.prefix] = nn.Linear(p.in_shape[0], ly.out, bias=ly.bias)
            elif ly.op == "act":
                mods[f"act{i}"] = activation_module(ly.fn)
            elif ly.op in ("maxpool", "avgpool"):
                cls = nn.MaxPool2d if ly.op == "maxpool" else nn.AvgPool2d
                mods[f"pool{i}"] = cls(ly.kernel, ly.stride)
            elif ly.op == "gap":
                mods[f"gap{i}"] = nn.AdaptiveAvgPool2d(1)
                mods[f"flatten{i}"] = nn.Flatten()
            elif ly.op == "flatten":
                mods[f"flatten{i}"] = nn.Flatten()
            else:
                mods[f"drop{i}"] = nn.Dropout(ly.rate)
        return nn.Sequential(mods)

    def init(self, generator: torch.Generator) -> torch.Tensor:
        """One model's initial ``[P]`` row: PyTorch's default ``reset_parameters`` of
        ``Conv2d`` and ``Linear`` (weight: ``kaiming_uniform_(a=√5)``, i.e. uniform in
        ±1/√fan_in with fan_in = in/groups·k·k; bias: uniform in ±1/√fan_in), drawn from
        ``generator`` in layout (= module) order."""
        import torch

        parts = []
        for t in self.layout:
            w = t if t.name.endswith("weight") else None
            fan_in = math.prod(t.shape[1:]) if w else self._fan_in(t)
            if w:
                gain = math.sqrt(2.0 / (1 + math.sqrt(5) ** 2))  # as torch.nn.init computes it
                bound = math.sqrt(3.0) * (gain / math.sqrt(fan_in))
            else:
                bound = 1 / math.sqrt(fan_in)
            parts.append(torch.empty(t.size).uniform_(-bound, bound, generator=generator))
        return torch.cat(parts)

    def _fan_in(self, bias: Tensor) -> int:
        wname = bias.name.replace("bias", "weight")
        return math.prod(next(t.shape[1:] for t in self.layout if t.name == wname))

    def forward(
        self,
        params: torch.Tensor,
        x: torch.Tensor,
        dropout_masks: list[torch.Tensor | None] | None = None,
        maps: bool = False,
    ) -> torch.Tensor:
        """Outputs ``[M, B, out]`` of ``M`` stacked models (model-major ``[M, P]``;
        columns past ``P`` are ignored, so the trainer's padded rows can be passed) on
        ``x``: a shared input, flat ``[B, n_inputs]`` (channel-major, as datasets store
        images) or ``[B, C, H, W]``; or one minibatch per model, ``[M, B, n_inputs]`` or
        ``[M, B, C, H, W]`` (the first conv then runs on ``[B, M*C, H, W]`` with
        ``groups = M*groups``). The models are the groups of one grouped ``conv2d`` (see
        the module doc). Dropout is applied only with ``dropout_masks`` (one per dropout
        layer, ``None`` to skip one, each ``[M, B, *shape]`` of :meth:`dropout_shapes`,
        scaled by 1/(1-p): element-wise, as ``nn.Dropout``); without them, eval mode.
        ``maps=True``: ``x`` is already the per-model layout ``[B, M*C, H, W]`` (see
        :meth:`minibatch_maps`). Autograd flows through it.

        Two exact rewrites make it faster: an ungrouped first conv on the shared input is
        one matmul of the unfolded input with all ``M*out`` filters, giving a
        channels-last map (max pooling is ~5x faster on one); and relu or leaky relu
        followed by a max pool is applied after the pool (both are monotone, so the
        values are the same, on fewer elements)."""
        import torch
        import torch.nn.functional as F

        v, m = self.views(params), params.shape[0]
        x, stacked = self._maps(x, m) if maps else self._input(x, m)
        pref = {p.index: p for p in self.params}
        order = list(range(len(self.layers)))
        for i in range(len(order) - 1):
            la, lb = self.layers[order[i]], self.layers[order[i + 1]]
            if la.op == "act" and la.fn in ("relu", "leaky_relu") and lb.op == "maxpool":
                order[i], order[i + 1] = order[i + 1], order[i]
        drop_at = {i: j for j, (i, _) in enumerate(self.dropout_shapes())}
        if dropout_masks is not None and len(dropout_masks) != len(drop_at):
            raise ValueError(
                f"{self.name} has {len(drop_at)} dropout layers, got {len(dropout_masks)} masks"
            )
        h = x  # [B, C, H, W] before the first conv, [B, M*C, H, W] after, [M, B, F] flat
        # stacked: whether the channels hold all M models
        fresh = False  # whether h is an intermediate this call owns (in-place is safe)
        for i in order:
            ly = self.layers[i]
            if i in pref:
                p = pref[i]
                w = v[f"{p.prefix}.weight"]
                b = v[f"{p.prefix}.bias"] if ly.bias else None
                if ly.op == "conv":
                    h = self._conv(h, w, b, ly, m, stacked)
                    stacked = True
                elif h.dim() == 2:  # shared flat input (no conv before)
                    z = torch.matmul(h, w.reshape(-1, w.shape[-1]).T)
                    h = z.view(h.shape[0], m, -1).transpose(0, 1)
                    if b is not None:
                        h = h + b.unsqueeze(1)
                elif w.shape[1] * w.shape[2] <= TINY_LINEAR:
                    # products summed elementwise: MKL's batched sgemm rounds tiny matrices
                    # (e.g. [3, 64] @ [64, 10]) differently at odd batch positions, which
                    # would make a model's gradient depend on its row in the block
                    h = (h.unsqueeze(2) * w.unsqueeze(1)).sum(-1)
                    if b is not None:
                        h = h + b.unsqueeze(1)
                elif b is not None:
                    h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
                else:
                    h = torch.bmm(h, w.transpose(1, 2))
            elif ly.op == "act":
                h = _act(ly.fn, h, inplace=fresh)
            elif ly.op == "maxpool":
                h = F.max_pool2d(h, ly.kernel, ly.stride)
            elif ly.op == "avgpool":
                h = F.avg_pool2d(h, ly.kernel, ly.stride)
            elif ly.op == "dropout":
                mask = dropout_masks[drop_at[i]] if dropout_masks is not None else None
                if mask is not None:
                    h, stacked = _apply_mask(h, mask, m, stacked)
            elif ly.op in ("gap", "flatten"):
                if ly.op == "gap":
                    h = h.contiguous().mean((2, 3))  # one summation order whatever M
                if stacked:
                    h = h.reshape(h.shape[0], m, -1).transpose(0, 1).contiguous()
                else:
                    h = h.reshape(h.shape[0], -1)
            fresh = h is not x
        return h

    def _input(self, x: torch.Tensor, m: int) -> tuple[torch.Tensor, bool]:
        """``x`` as ``[B, C, H, W]`` (shared, False) or ``[B, M*C, H, W]`` (one minibatch
        per model, True); a :class:`UsageError` names any other shape."""
        c, hh, ww = self.input
        shape = tuple(x.shape)
        if x.dim() == 2 and shape[1] == self.n_inputs:
            return x.reshape(shape[0], c, hh, ww), False
        if x.dim() == 4 and shape[1:] == (c, hh, ww):
            return x, False
        per_model = (x.dim() == 3 and shape[0] == m and shape[2] == self.n_inputs) or (
            x.dim() == 5 and shape[0] == m and shape[2:] == (c, hh, ww)
        )
        if per_model:
            # channels-last [B, M*C, H, W]: oneDNN's grouped (depthwise-like) convs and
            # max pooling are ~5x faster on it than on the contiguous layout
            b = shape[1]
            if c == 1:  # [M, B*H*W] -> [B*H*W, M]: one 2-d transpose copy (blocked in
                # aten; ~1.3x faster than the general permute copy below; the same values)
                xt = x.reshape(m, b * hh * ww).t().contiguous()
                return xt.view(b, hh, ww, m).permute(0, 3, 1, 2), True
            x5 = x.reshape(m, b, c, hh, ww).permute(1, 3, 4, 0, 2)  # [B, H, W, M, C]
            return x5.contiguous().view(b, hh, ww, m * c).permute(0, 3, 1, 2), True
        raise UsageError(
            f"{self.name} takes [B, {self.n_inputs}] or [B, {c}, {hh}, {ww}] inputs, or per "
            f"model [{m}, B, {self.n_inputs}] or [{m}, B, {c}, {hh}, {ww}]; got {list(shape)}"
        )

    def minibatch_maps(self, x_t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Each model's minibatch ``x[idx[k]]`` as the channels-last ``[B, M, H, W]`` map
        that :meth:`forward` (``maps=True``) takes, for one-channel inputs: ``x_t`` is the
        data set pixel-major, ``[n_inputs, N]``, and ``idx [M, B]``. The same values as
        :meth:`forward`'s own layout of ``x[idx]`` (``[M, B, n_inputs]``), from one gather
        whose rows are already image-then-model ordered and a copy of whole per-pixel
        rows of M values (measured 1.3-1.7x faster than gathering ``[M, B, n_inputs]`` and
        transposing it, ``scripts/bench_conv_layers.py``)."""
        c, hh, ww = self.input
        if c != 1 or x_t.shape[0] != self.n_inputs or idx.dim() != 2:
            raise ValueError(f"minibatch_maps takes one-channel [{self.n_inputs}, N] data")
        m, b = idx.shape
        g = x_t.index_select(1, idx.t().reshape(-1))  # [H*W, B*M]: (pixel, image, model)
        g = g.view(hh * ww, b, m).transpose(0, 1).contiguous()  # [B, H*W, M]
        return g.view(b, hh, ww, m).permute(0, 3, 1, 2)

    def _maps(self, x: torch.Tensor, m: int) -> tuple[torch.Tensor, bool]:
        """``x`` of :meth:`minibatch_maps`, its shape checked."""
        c, hh, ww = self.input
        if x.dim() != 4 or tuple(x.shape[1:]) != (m * c, hh, ww):
            raise ValueError(f"maps=True takes [B, {m * c}, {hh}, {ww}]; got {list(x.shape)}")
        return x, True

    @staticmethod
    def _conv(
        h: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        ly: Layer,
        m: int,
        stacked: bool,
    ) -> torch.Tensor:
        """One conv layer of ``M`` models: ``w [M, out, in/groups, k, k]``; ``h`` is the
        shared input ``[B, C, H, W]`` (``stacked`` False) or ``[B, M*C, H, W]``."""
        import torch
        import torch.nn.functional as F

        from bnnctl.arch.conv_kernels import grouped_conv

        wf = w.reshape(-1, *w.shape[2:])  # [M*out, in/groups, k, k]
        bf = b.reshape(-1) if b is not None else None
        if stacked:  # one input channel per group: a depthwise forward (conv_kernels)
            return grouped_conv(h, wf, bf, ly.stride, ly.padding, m * ly.groups)
        if ly.groups > 1:  # each model's groups see their own copy of the input
            hm = h.repeat(1, m, 1, 1)
            return F.conv2d(hm, wf, bf, ly.stride, ly.padding, groups=m * ly.groups)
        n, _, hh, ww = h.shape
        oh = (hh + 2 * ly.padding - ly.kernel) // ly.stride + 1
        ow = (ww + 2 * ly.padding - ly.kernel) // ly.stride + 1
        u = F.unfold(h, ly.kernel, padding=ly.padding, stride=ly.stride)  # [B, C*k*k, L]
        u2 = u.transpose(1, 2).reshape(-1, u.shape[1])  # [B*L, C*k*k]
        wm = wf.reshape(wf.shape[0], -1).T  # [C*k*k, M*out]
        z = torch.mm(u2, wm) if bf is None else torch.addmm(bf, u2, wm)  # [B*L, M*out]
        return z.view(n, oh, ow, -1).permute(0, 3, 1, 2)  # channels-last [B, M*out, oh, ow]

    def forward_vmap(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The same outputs via ``torch.func.vmap`` over ``functional_call`` of
        :meth:`module` (kept for the benchmark and as a cross-check); the same inputs as
        :meth:`forward`."""
        from torch.func import functional_call, vmap

        net = self.module().eval()
        views = self.views(params)
        m, shape = params.shape[0], tuple(self.input)
        per_model = x.dim() in (3, 5)
        if x.dim() in (2, 3):
            x = x.reshape(*x.shape[:-1], *shape)
        self._input(x, m)  # the same shape checks as forward

        def one(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
            return functional_call(net, p, (xi,))

        return vmap(one, in_dims=(0, 0 if per_model else None))(views, x)


def _apply_mask(
    h: torch.Tensor, mask: torch.Tensor, m: int, stacked: bool
) -> tuple[torch.Tensor, bool]:
    """``h`` times per-model dropout masks ``[M, B, *shape]`` (element-wise): on a map
    ``h [B, C, H, W]`` (shared input, repeated per model first) or ``[B, M*C, H, W]``;
    on flat features ``[B, F]`` (shared) or ``[M, B, F]``. Returns ``h`` and whether its
    channels now hold all ``M`` models."""
    if h.dim() == 4:
        if not stacked:
            h = h.repeat(1, m, 1, 1)
        b = h.shape[0]
        return h * mask.transpose(0, 1).reshape(b, -1, *mask.shape[3:]), True
    if h.dim() == 2:
        return h.unsqueeze(0) * mask, stacked
    return h * mask, stacked


def _act(fn: str, h: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    import torch.nn.functional as F

    if fn == "relu":
        return h.relu_() if inplace else F.relu(h)
    if fn == "leaky_relu":
        return F.leaky_relu(h, LEAKY_SLOPE, inplace=inplace)
    if fn == "tanh":
        return h.tanh_() if inplace else h.tanh()
    return F.gelu(h)
