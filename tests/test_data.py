"""Datasets: built-ins, user files (npz, IDX), validation, and metrics vs scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss

from bnnctl.data import load_dataset, read_idx, validate
from bnnctl.errors import DataError, UsageError
from bnnctl.evaluate.metrics import classification, ece
from bnnctl.testing.images import write_idx


def test_builtin_datasets():
    d = load_dataset("digits")
    assert d.x_train.shape == (1437, 64) and d.x_test.shape == (360, 64)
    assert d.n_classes == 10 and d.task == "classification" and d.x_train.max() <= 1.0
    assert np.bincount(d.y_test).min() >= 35  # stratified
    assert d.default_arch_widths() == (64, 128, 128, 10)
    assert load_dataset("digits").sha256 == d.sha256  # fixed split
    m = load_dataset("moons")
    assert m.x_train.shape == (400, 2) and m.n_classes == 2


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def good_arrays(rng=np.random.default_rng(0)):
    return dict(
        x_train=rng.normal(size=(20, 3)),
        y_train=np.arange(20) % 3,
        x_test=rng.normal(size=(6, 3)),
        y_test=np.arange(6) % 3,
    )


def test_npz_classification_and_regression(tmp_path):
    d = load_dataset(None, write_npz(tmp_path / "c.npz", **good_arrays()))
    assert d.name == "c" and d.n_classes == 3 and d.x_train.dtype == np.float32
    a = good_arrays()
    a["y_train"], a["y_test"] = np.linspace(0, 1, 20), np.linspace(0, 1, 6)
    r = load_dataset("reg", write_npz(tmp_path / "r.npz", **a))
    assert r.task == "regression" and r.y_train.shape == (20, 1) and r.n_outputs == 1


@pytest.mark.parametrize(
    "change,msg",
    [
        (lambda a: a.pop("y_test"), "missing arrays y_test"),
        (lambda a: a.update(y_test=np.array([0, 1, 2, 3, 0, 1])), "out of range"),
        (lambda a: a.update(y_train=-(np.arange(20) % 3)), "negative label"),
        (lambda a: a["x_train"].__setitem__((0, 0), np.nan), "NaN"),
        (lambda a: a.update(x_test=np.zeros((6, 4))), "features"),
        (lambda a: a.update(y_train=np.arange(19) % 3), "rows"),
        (lambda a: a.update(y_train=np.array(["a"] * 20)), "integer labels or real"),
        (
            lambda a: a.update(y_train=np.zeros(20, dtype=int), y_test=np.zeros(6, dtype=int)),
            "two classes",
        ),
    ],
)
def test_bad_npz_is_rejected_with_a_clear_message(tmp_path, change, msg):
    a = good_arrays()
    change(a)
    with pytest.raises(DataError, match=msg):
        load_dataset(None, write_npz(tmp_path / "bad.npz", **a))


def test_malformed_and_missing_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(None, tmp_path / "junk.npz")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(None, tmp_path / "nope.npz")
    with pytest.raises(UsageError, match="unknown dataset"):
        load_dataset("imagenet")


def test_idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    xtr, xte = rng.integers(0, 256, (30, 4, 4)), rng.integers(0, 256, (10, 4, 4))
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", xtr, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(30) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", xte)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(10) % 10)
    d = load_dataset(None, tmp_path)
    assert d.x_train.shape == (30, 16) and d.n_classes == 10
    np.testing.assert_allclose(d.x_test, xte.reshape(10, 16) / 255.0, rtol=1e-6)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x0a\x01")
    with pytest.raises(DataError, match="IDX header"):
        load_dataset(None, tmp_path)
    (tmp_path / "bad-idx").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "bad-idx")


def test_metrics_match_sklearn_and_a_direct_ece():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 200, 4)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    y = rng.integers(0, 4, 200)
    got = classification(torch.from_numpy(probs), torch.from_numpy(y))
    for m in range(3):
        assert got["acc"][m].item() == pytest.approx(accuracy_score(y, probs[m].argmax(1)))
        assert got["nll"][m].item() == pytest.approx(log_loss(y, probs[m], labels=range(4)))
        onehot = np.eye(4)[y]
        assert got["brier"][m].item() == pytest.approx(((probs[m] - onehot) ** 2).sum(1).mean())
        # direct ECE: loop over 15 bins (lo, hi]
        conf, correct = probs[m].max(1), probs[m].argmax(1) == y
        total = 0.0
        for b in range(15):
            sel = (conf > b / 15) & (conf <= (b + 1) / 15)
            if sel.any():
                total += sel.mean() * abs(conf[sel].mean() - correct[sel].mean())
        assert got["ece"][m].item() == pytest.approx(total)
    # binary Brier: the multi-class form is twice sklearn's one-sided binary score
    p1 = rng.uniform(size=50)
    yb = rng.integers(0, 2, 50)
    two = torch.from_numpy(np.stack([1 - p1, p1], 1))[None]
    got = classification(two, torch.from_numpy(yb))["brier"][0].item()
    assert got == pytest.approx(2 * brier_score_loss(yb, p1))
    # perfectly calibrated toy: confidence 1 and always right
    assert ece(torch.ones(1, 5), torch.ones(1, 5)).item() == 0.0


def test_images_keep_their_shape_in_the_store_and_not_in_the_hash(tmp_path):
    """digits28 is [N, 1, 28, 28] in the store (MNIST's IDX and CIFAR's binary layouts
    too); it loads back as the same flat features, hash and image shape."""
    import zarr

    from bnnctl.arch import parse_arch
    from bnnctl.evaluate import check_arch
    from bnnctl.store import Store

    ds = load_dataset("digits28")
    assert ds.image_shape == (1, 28, 28) and ds.x_train.shape == (len(ds.y_train), 784)
    flat = validate("digits28", {**ds.arrays()})  # the same values given flat
    assert flat.image_shape is None and flat.sha256 == ds.sha256
    store = Store.open(tmp_path / "s.zarr", create=True)
    path = store.put_dataset(ds)
    group = zarr.open_group(str(tmp_path / "s.zarr" / path), mode="r")
    assert group["x_train"].shape == (len(ds.y_train), 1, 28, 28)
    assert group["x_test"].shape == (len(ds.y_test), 1, 28, 28)
    back = Store.open(tmp_path / "s.zarr").load_data(path)
    assert back.image_shape == (1, 28, 28) and back.sha256 == ds.sha256
    np.testing.assert_array_equal(back.x_train, ds.x_train)
    check_arch(parse_arch("optunet"), back)
    with pytest.raises(UsageError, match="takes 4x14x14 images but digits28 holds 1x28x28"):
        check_arch(parse_arch("cnn:4x14x14/c2k3-r-gap-l10"), back)
