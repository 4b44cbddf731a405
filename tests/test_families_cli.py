"""Chronos-Bolt and TimesFM 2.5 end to end through the CLI, on tiny random models saved with
``save_pretrained``: prune (heads among the ranked units) -> finetune -> export -> ``prunecast
serve``, whose forecasts equal the in-process ``Forecaster.predict`` of the same artifact."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import aiohttp
import numpy as np
import pytest
import torch

from prunecast.cli import main
from prunecast.compress import load_saved
from prunecast.runtime import Forecaster
from prunecast.runtime.server import FORECAST_PATH
from tests.conftest import write_csv

L, H = 64, 16
PRUNECAST = [sys.executable, "-c", "import sys; from prunecast.cli import main; sys.exit(main())"]


def _chronos_bolt():
    pytest.importorskip("chronos")
    from prunecast.models.chronos_bolt import ChronosBoltAdapter
    from tests.test_models_chronos_bolt import small_bolt_config

    return ChronosBoltAdapter().from_config(small_bolt_config(), context_length=L, horizon=H)


def _timesfm():
    pytest.importorskip("timesfm")
    from tests.test_models_timesfm import make

    return make(context=L, horizon=H, std=0.1)


def _run(capsys, *args: str) -> dict:
    assert main([*args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _serve_and_post(art_dir, x: np.ndarray) -> list[list[float]]:
    """Start ``prunecast serve`` on a free loopback port, post ``x``, stop it with SIGTERM."""
    cmd = [*PRUNECAST, "serve", str(art_dir), "--port", "0", "--json", "--backend", "onnxruntime"]
    cmd += ["--threads", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        url = json.loads(line)["url"]

        async def client():
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                body = json.dumps({"series": x.tolist()})
                headers = {"Content-Type": "application/json"}
                async with session.post(url + FORECAST_PATH, data=body, headers=headers) as r:
                    assert r.status == 200, await r.text()
                    return (await r.json())["forecast"]

        forecast = asyncio.run(client())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return forecast


@pytest.mark.parametrize("make_model", [_chronos_bolt, _timesfm], ids=["chronos_bolt", "timesfm"])
def test_prune_finetune_export_serve(make_model, tmp_path, capsys):
    torch.manual_seed(0)
    module = make_model()
    module.save_pretrained(tmp_path / "base")
    csv = str(write_csv(tmp_path / "series.csv", rows=500, columns=1))
    data = ["--data", csv, "--horizon", str(H)]

    pruned = _run(
        capsys,
        *("prune", "--model", str(tmp_path / "base"), "--context", str(L), "-o", str(tmp_path / "p")),
        *("--budget", "0.5", "--max-steps", "2", "--macro-batch", "32", "--step-fraction", "0.4", *data),
    )
    layers = pruned["layers"]
    assert {layer["kind"] for layer in layers} == {"heads", "mlp_hidden"}  # heads are ranked too
    assert any(layer["kept"] < layer["original"] for layer in layers if layer["kind"] == "heads")
    assert pruned["macs_after"] < pruned["macs_before"] and len(pruned["steps"]) == 2
    saved = load_saved(tmp_path / "p")
    assert saved.family == module.family
    kept = {layer["name"]: layer["kept"] for layer in layers}
    assert {g.name: g.units for g in saved.pruning_spec().groups} == kept  # saved as pruned

    tuned = _run(
        capsys,
        *("finetune", "--model", str(tmp_path / "p"), "-o", str(tmp_path / "f")),
        *("--lr", "1e-3", "--epochs", "1", "--windows-per-epoch", "64", *data),
    )
    assert tuned["macs"] == pruned["macs_after"]

    exported = _run(capsys, "export", str(tmp_path / "f"), "--out", str(tmp_path / "art"), "--data", csv)
    assert exported["family"] == module.family and exported["horizon"] == H
    assert exported["parity"]["max_abs_err"] < 1e-3

    x = np.sin(np.arange(3 * L).reshape(3, L) / 7.0) + np.arange(3)[:, None]
    served = np.array(_serve_and_post(tmp_path / "art", x), dtype=np.float32)
    expected = Forecaster.load(tmp_path / "art", backend="onnxruntime", threads=1).predict(x)
    assert served.shape == (3, H)
    np.testing.assert_allclose(served, expected, atol=1e-6)
