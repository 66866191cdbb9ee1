"""bnnctl.arch.conv against independent truth: hand-written ``nn.Module`` s of the presets
(layout, init, forward, gradients), symmetries checked on the function those modules
compute, canonical forms invariant under random group elements (hypothesis), and the
``cnn:`` grammar's refusals."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from bnnctl.arch import ArchSpec, ConvSpec, UnitGroup, arch_from_json, parse_arch
from bnnctl.errors import DataError, UsageError
from bnnctl.symmetry.action import flip_, l2_mass, permute_, scale_
from bnnctl.symmetry.canonical import canonicalize
from bnnctl.symmetry.transform import KEYS, make_transform

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]

# --- the presets, written out by hand -------------------------------------------------


class OptuNet(nn.Module):
    """The paper's 355-parameter MNIST net, as its authors write it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, kernel_size=4, stride=1, bias=False)
        self.conv2 = nn.Conv2d(2, 10, kernel_size=5, groups=2, bias=False)
        self.fc1 = nn.Linear(10, 3)
        self.fc2 = nn.Linear(3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 3, 3)
        x = F.relu(self.conv2(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc2(F.relu(self.fc1(x)))


class LeNet5(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class CifarSmall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x)).mean((2, 3))
        return self.fc1(x)


HAND = {"optunet": OptuNet, "lenet5": LeNet5, "cifar_small": CifarSmall}
#: Grammar strings exercising the other paths: a grouped first conv, stride and padding,
#: leaky relu, tanh, average pools, dropout, flatten of a map, blocks of several channels
#: moving with their consumers, a net with no conv.
CUSTOM = [
    "cnn:4x12x12/c6k3g2-r-m2-c4k3-r-gap-l3",
    "cnn:3x16x16/c8k3s2p1-lr-a2-f-l5-t-d0.2-l2",
    "cnn:2x10x10/c4k3-r-c6k3g2-r-a2-f-l5-r-l3",
    "cnn:1x12x12/c4k3-t-c8k3g2-t-gap-l5-t-l3",
    "cnn:1x6x6/f-l5-r-l3",
]


@torch.no_grad()
def hand_outputs(name: str, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``[M, B, out]`` from M separate forward passes of a plain module (the preset's
    hand-written one when it has one), in the params' dtype."""
    arch = parse_arch(name)
    outs = []
    for row in params:
        net = (HAND[name]() if name in HAND else arch.module()).to(params.dtype).eval()
        net.load_state_dict(arch.state_dict(row))
        outs.append(net(x.to(params.dtype)))
    return torch.stack(outs)


def torch_init_(net: nn.Module, gen: torch.Generator) -> None:
    """What ``Conv2d``/``Linear.reset_parameters`` do, from ``gen``, module by module."""
    for mod in net.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(mod.weight, a=math.sqrt(5), generator=gen)
            if mod.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(mod.weight)
                bound = 1 / math.sqrt(fan_in)
                nn.init.uniform_(mod.bias, -bound, bound, generator=gen)


# --- layout, init, forward --------------------------------------------------------------


def test_optunet_has_355_parameters_with_the_papers_names():
    arch = ConvSpec.parse("optunet")
    assert arch.n_params == 355 and arch.kind == "cnn" and arch.name == "optunet"
    assert [t.name for t in arch.layout] == [
        "conv1.weight",
        "conv2.weight",
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
    ]
    assert arch.spec_string == "cnn:1x28x28/c2k4nb-r-m3-c10k5g2nb-r-gap-l3-r-l10"
    assert ConvSpec.parse(arch.spec_string).layout == arch.layout


@pytest.mark.parametrize("name", list(HAND))
def test_layout_is_the_hand_written_modules_state_dict(name):
    arch = parse_arch(name)
    sd = HAND[name]().state_dict()
    assert [(t.name, t.shape) for t in arch.layout] == [(k, tuple(v.shape)) for k, v in sd.items()]
    assert arch.n_params == sum(v.numel() for v in sd.values())
    assert list(arch.module().state_dict()) == list(sd)


@pytest.mark.parametrize("name", list(HAND) + CUSTOM)
def test_init_is_pytorchs_default_from_the_same_generator(name):
    arch = parse_arch(name)
    net = HAND[name]() if name in HAND else arch.module()
    torch_init_(net, torch.Generator().manual_seed(3))
    want = torch.cat([p.detach().reshape(-1) for p in net.state_dict().values()])
    assert torch.equal(arch.init(torch.Generator().manual_seed(3)), want)
    torch.manual_seed(5)  # a module built fresh draws from the global generator
    fresh = HAND[name]() if name in HAND else arch.module()
    torch.manual_seed(5)
    got = arch.init(torch.default_generator)
    assert torch.equal(got, torch.cat([p.reshape(-1) for p in fresh.state_dict().values()]))


@pytest.mark.parametrize("name", list(HAND) + CUSTOM)
def test_stacked_forward_and_gradients_equal_separate_modules(name):
    arch = parse_arch(name)
    gen = torch.Generator().manual_seed(1)
    params = torch.stack([arch.init(gen) for _ in range(4)]) * 2  # livelier than init
    x = torch.randn(6, *arch.input, generator=gen)
    params.requires_grad_(True)
    out = arch.forward(params, x)
    want = hand_outputs(name, params.detach(), x)
    assert out.shape == want.shape == (4, 6, want.shape[-1])
    assert torch.allclose(out, want, rtol=1e-4, atol=1e-5)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    grads = []
    for row in params.detach():
        p = row.clone().requires_grad_(True)
        net = HAND[name]() if name in HAND else arch.module()
        y = torch.func.functional_call(net.eval(), arch.state_dict(p), (x,))  # differentiable
        (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
        grads.append(p.grad)
    assert params.grad is not None
    assert torch.allclose(params.grad, torch.stack(grads), rtol=1e-4, atol=1e-5)
    assert torch.allclose(arch.forward_vmap(params.detach(), x), want, rtol=1e-4, atol=1e-5)


def test_bench_conv_forward_quick():
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_conv_forward.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["grouped_models_per_s"] > 0 and out["vmap_models_per_s"] > 0
    assert out["max_rel_diff"] < 1e-4


# --- names and JSON ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(HAND) + CUSTOM)
def test_json_round_trip(name):
    arch = parse_arch(name)
    assert ConvSpec.from_json(arch.to_json()) == arch
    assert arch_from_json(arch.to_json()) == arch
    assert arch_from_json(json.loads(arch.to_json())) == arch
    assert parse_arch(arch.spec_string).layout == arch.layout


@pytest.mark.parametrize("name", list(HAND) + CUSTOM)
def test_to_json_validates_against_the_cnn_schema(name):
    from jsonschema import Draft202012Validator

    from bnnctl.arch.conv import cnn_json_schema

    validator = Draft202012Validator(cnn_json_schema())
    Draft202012Validator.check_schema(cnn_json_schema())
    validator.validate(json.loads(parse_arch(name).to_json()))
    bad = json.loads(parse_arch(name).to_json())
    bad["layers"].append({"op": "bn"})
    assert not validator.is_valid(bad)


def test_dispatch_keeps_mlps_as_they_were():
    mlp = parse_arch("mlp:4-3-2")
    assert isinstance(mlp, ArchSpec) and mlp == ArchSpec.parse("mlp:4-3-2")
    assert arch_from_json(mlp.to_json()) == mlp
    assert isinstance(parse_arch("lenet5"), ConvSpec)
    with pytest.raises(UsageError, match="vgg"):
        parse_arch("vgg")


@pytest.mark.parametrize(
    "text",
    [
        '{"kind": "cnn"}',
        '{"kind": "cnn", "input": [1, 8, 8], "layers": [{"op": "conv", "out": 2}]}',
        '{"kind": "cnn", "input": [1, 8, 8], "layers": [{"op": "gap", "rate": 1}]}',
        '{"kind": "cnn", "input": [1, 8, 8], "layers": [{"op": "bn"}]}',
        '{"kind": "cnn", "input": [1, 8, 8], "layers": [], "extra": 1}',
        '{"kind": "cnn", "input": [1, 8, 8], "layers": [{"op": "conv", "out": 2, "kernel": 2.5}]}',
        '{"kind": "cnn", "input": [1, 8, 8], "layers": [{"op": "linear", "out": 2, "bias": 1}]}',
        '{"kind": "cnn", "input": [1, 8, 8], "layers": [{"op": "f"}, {"op": "linear", "out": 2}]}',
        '{"kind": "mlp", "input": [1,8,8], "layers": [{"op": "gap"}, {"op": "linear", "out": 2}]}',
        '{"kind": "cnn", "input": [1, 8, 8], "layers": [{"op": "act", "fn": "swish"}]}',
        "not json",
    ],
)
def test_malformed_json_is_a_data_error_quoting_it(text):
    with pytest.raises(DataError) as e:
        ConvSpec.from_json(text)
    assert text[:20] in str(e.value)
    with pytest.raises(DataError):
        arch_from_json(text)


@pytest.mark.parametrize(
    "text,named",
    [
        ("cnn:1x28x28/c6k5-bn-r-gap-l10", "'bn'"),
        ("cnn:1x28x28/c6k5-frn-r-gap-l10", "'frn'"),
        ("cnn:1x28x28/c6k5-resblock16-gap-l10", "'resblock16'"),
        ("cnn:1x28x28/c6k5-batchnorm-gap-l10", "'batchnorm'"),
    ],
)
def test_normalisation_and_residual_layers_are_refused_by_name(text, named):
    with pytest.raises(UsageError, match="not supported") as e:
        parse_arch(text)
    assert named in str(e.value) and "mis-canonicalised" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "text,named",
    [
        ("cnn:1x28x28/c6x5-r-gap-l10", "'c6x5'"),
        ("cnn:1x28x28/c6k5-relu6-gap-l10", "'relu6'"),
        ("cnn:1x28x28/c6k5--gap-l10", "''"),
        ("cnn:1x28x28/c6k5-r-gap-d1.5-l10", "'d1.5'"),
        ("cnn:1x4x4/c2k5-gap-l2", "layer 1 (c2k5)"),  # kernel larger than the map
        ("cnn:3x8x8/c4k3g2-gap-l2", "layer 1 (c4k3g2)"),  # 3 channels, 2 groups
        ("cnn:2x8x8/c5k3g2-gap-l2", "layer 1 (c5k3g2)"),  # 5 channels, 2 groups
        ("cnn:1x8x8/c2k3-l10", "layer 2 (l10)"),  # a linear on a map
        ("cnn:1x8x8/c2k3-m4-m4-gap-l2", "layer 3 (m4)"),  # pool larger than the map
        ("cnn:1x8x8/c2k3", "ends in a 2x6x6 map"),
        ("cnn:1x8x8/f-c2k3-l2", "layer 2 (c2k3)"),  # a conv on flat features
        ("cnn:2x8x8/c6k3g2-r-c6k3g3-gap-l2", "conv2: groups 3"),
        ("cnn:28x28/c2k3-gap-l2", "cnn:28x28"),
    ],
)
def test_bad_strings_name_the_bad_token_or_layer(text, named):
    with pytest.raises(UsageError) as e:
        parse_arch(text)
    assert named in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


# --- symmetries -------------------------------------------------------------------------


def random_perm(g: UnitGroup, m: int, gen: torch.Generator) -> torch.Tensor:
    """``[M, n]``: a random permutation the group allows: units within their block, and
    whole blocks when they may move."""
    bs, out = g.size // g.blocks, []
    for _ in range(m):
        inner = [torch.randperm(bs, generator=gen) for _ in range(g.blocks)]
        order = torch.randperm(g.blocks, generator=gen) if g.block_moves else range(g.blocks)
        out.append(torch.cat([int(b) * bs + inner[int(b)] for b in order]))
    return torch.stack(out)


def random_symmetry(arch, flat: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """g·θ for a random g of the arch's group (permutations, scales in e^±1.5, signs)."""
    out = flat.clone()
    v, m = arch.views(out), flat.shape[0]
    for g in arch.unit_groups():
        if "scale" in arch.symmetries:
            scale_(v, g, torch.rand(m, g.size, generator=gen, dtype=flat.dtype) * 3 - 1.5)
        if "sign" in arch.symmetries:
            flip_(v, g, torch.randint(0, 2, (m, g.size), generator=gen).to(flat.dtype) * 2 - 1)
        permute_(v, g, random_perm(g, m, gen))
    return out


def close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    return bool((a - b).abs().max() <= rtol * max(1.0, float(b.abs().max())))


def test_optunet_groups_by_hand():
    """Swapping OptuNet's two conv1 channels is a symmetry only together with conv2's two
    output groups and fc1's matching columns; the unit groups say exactly that."""
    arch = parse_arch("optunet")
    gen = torch.Generator().manual_seed(0)
    theta = torch.stack([arch.init(gen) for _ in range(2)]).double()
    x = torch.randn(5, 1, 28, 28, generator=gen, dtype=torch.float64)
    sd = [arch.state_dict(r) for r in theta]
    swapped = []
    for d in sd:
        e = dict(d)
        e["conv1.weight"] = d["conv1.weight"][[1, 0]]
        e["conv2.weight"] = torch.cat([d["conv2.weight"][5:], d["conv2.weight"][:5]])
        e["fc1.weight"] = torch.cat([d["fc1.weight"][:, 5:], d["fc1.weight"][:, :5]], 1)
        swapped.append(torch.cat([e[t.name].reshape(-1) for t in arch.layout]))
    by_hand = torch.stack(swapped)
    assert close(hand_outputs("optunet", by_hand, x), hand_outputs("optunet", theta, x), 1e-12)
    naive = theta.clone()  # conv1's channels alone: not a symmetry
    naive_v = arch.views(naive)
    naive_v["conv1.weight"].copy_(naive_v["conv1.weight"][:, [1, 0]])
    assert not close(hand_outputs("optunet", naive, x), hand_outputs("optunet", theta, x), 1e-3)
    moved = theta.clone()
    permute_(arch.views(moved), arch.unit_groups()[0], torch.tensor([[1, 0], [1, 0]]))
    assert torch.equal(moved, by_hand)
    g0, g1 = arch.unit_groups()[:2]
    assert (g0.blocks, g0.block_moves, g1.blocks, g1.block_moves) == (2, True, 2, False)


@pytest.mark.parametrize(
    "name,symmetries",
    [
        ("optunet", ("perm", "scale")),
        ("lenet5", ("perm", "scale")),
        ("cnn:1x12x12/c4k3-t-c8k3g2-t-gap-l5-t-l3", ("perm", "sign")),
        ("cnn:1x12x12/c4k3-t-m2-f-l5-t-l3", ("perm",)),  # max pools break sign flips
        ("cnn:1x12x12/c4k3-gelu-gap-l3", ("perm",)),
        ("cnn:1x12x12/c4k3-a2-gap-l3", ("perm", "scale", "sign")),  # linear in between
    ],
)
def test_symmetries_follow_activations_and_pools(name, symmetries):
    assert parse_arch(name).symmetries == symmetries


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(KEYS), st.sampled_from(("l2", "unitnorm")))
def test_optunet_canonical_form_is_invariant_and_keeps_the_function(seed, key, mode):
    assume(check_canonical("optunet", seed, key, mode, m=3))


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(list(HAND)[1:] + CUSTOM[:4]))
def test_other_canonical_forms_are_invariant_and_keep_the_function(seed, name):
    assume(check_canonical(name, seed, "mean", "l2", m=2))


@pytest.mark.parametrize("name", list(HAND) + CUSTOM[:4])
@pytest.mark.parametrize(
    "key,mode", [("mean", "l2"), ("pc", "l2"), ("mass", "l2"), ("weight0", "unitnorm")]
)
def test_each_arch_canonical_form_is_invariant_and_keeps_the_function(name, key, mode):
    assert check_canonical(name, 0, key, mode, m=2) or check_canonical(name, 1, key, mode, m=2)


def check_canonical(name: str, seed: int, key: str, mode: str, m: int) -> bool:
    """Check canon(g·θ) = canon(θ), idempotence and the function for a random θ and g;
    False (nothing checked) when the keys have near ties."""
    arch = parse_arch(name)
    gen = torch.Generator().manual_seed(seed)
    theta = (torch.stack([arch.init(gen) for _ in range(m)]) * 2).double()
    x = torch.randn(4, *arch.input, generator=gen, dtype=torch.float64)
    moved = random_symmetry(arch, theta, gen)
    f_theta = hand_outputs(name, theta, x)
    assert close(hand_outputs(name, moved, x), f_theta, 1e-9)  # g is a symmetry
    assert not torch.allclose(moved, theta)
    t = make_transform(arch, None, key=key, scale_mode=mode)
    canon = canonicalize(arch, theta, t)
    c = canon.params
    assert close(hand_outputs(name, c, x), f_theta, 1e-6)  # the function is kept
    again = canonicalize(arch, moved, t)
    if not close(again.params, c, 1e-5) or not close(canonicalize(arch, c, t).params, c, 1e-5):
        # only a near tie of keys may order units either way (e.g. pc with unitnorm on
        # two bias-free units: both keys are 1 + u1·u2 in exact arithmetic); it is
        # reported, not removed
        assert int(canon.near_ties.sum()) + int(again.near_ties.sum()) > 0
        return False
    if "scale" in t.symmetries and mode == "l2":
        assert bool((l2_mass(arch, c) <= l2_mass(arch, theta) * (1 + 1e-9)).all())
    return True


def test_l2_scaling_sums_kernels_over_their_spatial_elements():
    """At the optimum each ReLU channel's incoming mass (its whole kernel) equals its
    outgoing mass (its slices of the next kernels, all spatial elements)."""
    arch = parse_arch("lenet5")
    gen = torch.Generator().manual_seed(2)
    theta = torch.stack([arch.init(gen) for _ in range(2)]).double()
    c = canonicalize(arch, theta, make_transform(arch, ["scale"])).params
    sd = arch.state_dict(c[0])
    w1, w2, f1 = sd["conv1.weight"], sd["conv2.weight"], sd["fc1.weight"]
    assert torch.allclose(w1.pow(2).sum((1, 2, 3)), w2.pow(2).sum((0, 2, 3)), rtol=1e-6)
    assert torch.allclose(
        w2.pow(2).sum((1, 2, 3)), f1.view(120, 16, 25).pow(2).sum((0, 2)), rtol=1e-6
    )


@pytest.mark.parametrize("name", ["optunet", "cifar_small", CUSTOM[0], CUSTOM[2], CUSTOM[3]])
def test_weight_matching_recovers_a_permuted_copy(name):
    """Grouped convs included: a copy moved by a random permutation the arch allows
    (units within their groups, whole groups with what they feed) is aligned back to
    the reference exactly."""
    from bnnctl.symmetry.matching import weight_match

    arch = parse_arch(name)
    gen = torch.Generator().manual_seed(4)
    theta = arch.init(gen).double().unsqueeze(0)
    moved = theta.expand(3, -1).clone()
    for g in arch.unit_groups():
        permute_(arch.views(moved), g, random_perm(g, 3, gen))
    assert not torch.equal(moved, theta.expand(3, -1))
    aligned, _, _ = weight_match(arch, moved, theta[0])
    assert torch.equal(aligned, theta.expand(3, -1))


@pytest.mark.parametrize("name", ["optunet", CUSTOM[0]])
def test_weight_matching_of_grouped_convs_keeps_the_function(name):
    """Aligning a different model (not a permuted copy) moves it within its symmetry
    group: the same outputs."""
    from bnnctl.symmetry.matching import weight_match

    arch = parse_arch(name)
    gen = torch.Generator().manual_seed(5)
    ref = arch.init(gen).double()
    other = torch.stack([arch.init(gen) for _ in range(4)]).double()
    x = torch.randn(6, *arch.input, generator=gen, dtype=torch.float64)
    aligned, _, _ = weight_match(arch, other, ref)
    assert close(arch.forward(aligned, x.flatten(1)), arch.forward(other, x.flatten(1)), 1e-9)
    assert not torch.equal(aligned, other)  # it did move them


@settings(max_examples=60, deadline=None)
@given(
    blocks=st.integers(1, 3),
    size=st.integers(1, 3),
    moves=st.booleans(),
    carried=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_block_assignment_is_the_best_allowed_permutation(blocks, size, moves, carried, seed):
    """Against brute force over every permutation a layer in blocks allows: units within
    their block, and whole blocks when they may move (each block move also scoring what
    the block carries)."""
    import itertools

    import numpy as np

    from bnnctl.symmetry.matching import block_assignment

    assume(blocks * size <= 6)  # brute force over at most 720 permutations
    rng = np.random.default_rng(seed)
    n = blocks * size
    cost = rng.normal(size=(n, n))
    carry = rng.normal(size=(blocks, blocks)) if carried and moves else None
    perm = block_assignment(cost, blocks, moves, carry)

    def score(p) -> float:
        s = cost[np.arange(n), p].sum()
        if carry is not None:
            s += sum(carry[b, p[b * size] // size] for b in range(blocks))
        return float(s)

    allowed = [
        p
        for p in map(np.array, itertools.permutations(range(n)))
        if all(len({int(p[b * size + i]) // size for i in range(size)}) == 1 for b in range(blocks))
        and (moves or all(int(p[b * size]) // size == b for b in range(blocks)))
    ]
    assert any(np.array_equal(perm, p) for p in allowed)  # it is allowed
    assert score(perm) >= max(map(score, allowed)) - 1e-9  # and no allowed one beats it
