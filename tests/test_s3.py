"""Stores on S3: every step against a real S3-compatible server (moto's ``moto_server``,
started here on 127.0.0.1 and a free port, stopped at the end), configured only through
the standard AWS variables that every S3 client reads."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
from deltalake import DeltaTable

pytest.importorskip("s3fs")
pytest.importorskip("moto")

TINY = ["--dataset", "moons", "--arch", "mlp:2-1", "--epochs", "1"]


@pytest.fixture(scope="module")
def s3_env():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("moto_server did not start")
            time.sleep(0.1)
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }
    urllib.request.urlopen(urllib.request.Request(f"{url}/bnnctl-test", method="PUT"))
    yield {**os.environ, **env}
    server.terminate()
    server.wait(timeout=10)


def bnnctl(env, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bnnctl", *args], capture_output=True, text=True, env=env, **kw
    )


def new_store() -> str:
    return f"s3://bnnctl-test/{uuid.uuid4().hex[:8]}.zarr"


def test_train_ls_verify_export_on_s3(s3_env, tmp_path):
    store = new_store()
    r = bnnctl(s3_env, "train", *TINY, "--seeds", "8", "--block-size", "4", "--store", store)
    assert r.returncode == 0 and "trained 8 models" in r.stderr, r.stderr
    r = bnnctl(s3_env, "ls", "--store", store, "--where", "seed < 3", "--format", "ids")
    assert r.returncode == 0 and r.stdout.split() == [f"moons.00000{k}" for k in range(3)]
    r = bnnctl(s3_env, "verify", "--store", store)
    assert r.returncode == 0 and "ok: 8 checkpoints" in r.stderr, r.stderr + r.stdout
    r = bnnctl(s3_env, "export", "--store", store, "--where", "seed < 2", str(tmp_path / "out"))
    assert r.returncode == 0 and len(list((tmp_path / "out").glob("*.safetensors"))) == 2
    # peers read the manifest with deltalake and the standard variables alone
    code = (
        f"from deltalake import DeltaTable; print(len(DeltaTable('{store}/manifest').to_pandas()))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=s3_env)
    assert r.stdout.strip() == "8", r.stderr


def test_kill_9_during_train_on_s3_then_rerun(s3_env, monkeypatch):
    store = new_store()
    args = ["train", *TINY, "--seeds", "24", "--block-size", "2", "--store", store, "--quiet"]
    p = subprocess.Popen(
        [sys.executable, "-m", "bnnctl", *args],
        env=s3_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    table = store + "/manifest"
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        monkeypatch.setenv(key, s3_env[key])
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    committed = False
    while time.time() < deadline and not committed:  # kill after a committed block
        try:
            committed = DeltaTable(table).version() >= 1
        except Exception:  # no table yet
            time.sleep(0.05)
    assert committed
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL  # killed mid-run, not after it
    assert len(DeltaTable(table).to_pandas()) < 24
    r = bnnctl(s3_env, "train", *args[1:])
    assert r.returncode == 0, r.stderr
    r = bnnctl(s3_env, "ls", "--store", store, "--format", "ids")
    ids = r.stdout.split()
    assert sorted(ids) == [f"moons.{k:06d}" for k in range(24)]
    assert bnnctl(s3_env, "verify", "--store", store).returncode == 0


#: Every other command on one S3 store, run in one process (one torch import): each
#: (arguments, text its output must hold).
SMALL = ["--dataset", "moons", "--arch", "mlp:2-4-2", "--epochs", "1"]
OTHER_COMMANDS = [
    (["train", *SMALL, "--seeds", "6", "--block-size", "3"], "trained 6 models"),
    (
        [
            "sample",
            "--method",
            "sgld",
            "--chains",
            "2",
            "--samples",
            "3",
            "--burn-in",
            "2",
            "--dataset",
            "moons",
            "--arch",
            "mlp:2-4-2",
        ],
        "committed 6 rows",
    ),
    (["canonicalize", "--where", "population == 'moons'"], "6"),
    (["stats", "--ensemble", "--where", "population == 'moons'"], "ensemble"),
    (["export", "--where", "population == 'moons' and seed < 2", "{out}"], "exported"),
    (["import", "{out}", "--dataset", "moons", "--arch", "mlp:2-4-2", "-p", "back"], "imported 2"),
    (["compact"], ""),
    (["migrate"], ""),
    (["gc", "--grace", "0"], ""),
    (["verify"], "ok:"),
    # another configuration of a claimed population: refused before training
    (["train", *SMALL, "--seeds", "2", "--seed-start", "50", "--lr", "0.5"], "error:"),
]


def test_every_command_on_s3(s3_env, tmp_path):
    store = new_store()
    script = f"""
import json, sys
from typer.testing import CliRunner
from bnnctl.cli.common import app
out = []
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(app, [*args, "--store", {store!r}])
    out.append([r.exit_code, r.output])
print(json.dumps(out))
"""
    cmds = [[a.replace("{out}", str(tmp_path / "out")) for a in args] for args, _ in OTHER_COMMANDS]
    r = subprocess.run(
        [sys.executable, "-c", script, json.dumps(cmds)],
        capture_output=True, text=True, env=s3_env, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout.strip().splitlines()[-1])
    for (args, want), (code, output) in zip(OTHER_COMMANDS, results, strict=True):
        refused = want == "error:"
        assert (code == 2) if refused else (code == 0), (args, output)
        assert want in output, (args, output)
