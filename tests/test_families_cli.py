"""Chronos-Bolt, TimesFM 2.5, PatchTST and PatchTSMixer end to end through the CLI, on tiny random
models saved with ``save_pretrained``: prune (heads among the ranked units where the family has
them) -> finetune -> export -> ``prunecast serve``, whose ``/v1`` and ``/v2`` forecasts equal the
in-process ``Forecaster.predict`` of the same artifact; PatchTST and PatchTSMixer also through
``prunecast forecast`` on a long panel."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import aiohttp
import numpy as np
import pandas as pd
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


def _patchtst():
    from prunecast.models.patchtst import PatchTSTAdapter
    from tests.test_models_patchtst import PATCHTST

    return PatchTSTAdapter().from_config(PATCHTST, context_length=L, horizon=H)


def _patchtsmixer():
    from prunecast.models.patchtst import PatchTSMixerAdapter
    from tests.test_models_patchtst import MIXER

    return PatchTSMixerAdapter().from_config(MIXER, context_length=L, horizon=H)


def _run(capsys, *args: str) -> dict:
    assert main([*args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _serve_and_post(art_dir, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start ``prunecast serve`` on a free loopback port, post ``x`` once to ``/v1/forecast`` and
    once to the Open Inference Protocol's ``/v2/models/<name>/infer``, stop it with SIGTERM."""
    cmd = [*PRUNECAST, "serve", str(art_dir), "--port", "0", "--json", "--backend", "onnxruntime"]
    cmd += ["--threads", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        started = json.loads(line)
        url = started["url"]
        context = {"name": "context", "shape": list(x.shape), "datatype": "FP32"}
        context["data"] = x.astype(np.float32).ravel().tolist()
        v2_body = {"inputs": [context], "outputs": [{"name": "forecast"}]}

        async def client():
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                body = json.dumps({"series": x.tolist()})
                headers = {"Content-Type": "application/json"}
                async with session.post(url + FORECAST_PATH, data=body, headers=headers) as r:
                    assert r.status == 200, await r.text()
                    v1 = (await r.json())["forecast"]
                async with session.post(started["v2_url"] + "/infer", json=v2_body) as r:
                    assert r.status == 200, await r.text()
                    (output,) = (await r.json())["outputs"]
                assert output["name"] == "forecast" and output["shape"] == [len(x), started["horizon"]]
                v2 = np.array(output["data"], dtype=np.float32).reshape(output["shape"])
                return np.array(v1, dtype=np.float32), v2

        forecasts = asyncio.run(client())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return forecasts


def _prune_saved(make_model, tmp_path, capsys) -> tuple:
    """A small random model saved with ``save_pretrained``, pruned by the CLI: (module, data args, report)."""
    torch.manual_seed(0)
    module = make_model()
    module.save_pretrained(tmp_path / "base")
    csv = str(write_csv(tmp_path / "series.csv", rows=500, columns=1))
    data = ["--data", csv, "--horizon", str(H)]
    pruned = _run(
        capsys,
        *("prune", "--model", str(tmp_path / "base"), "--context", str(L), "-o", str(tmp_path / "p")),
        *(
            "--budget",
            "0.5",
            "--target",
            "latency-estimate",
            "--max-steps",
            "2",
            "--macro-batch",
            "32",
            "--step-fraction",
            "0.4",
            *data,
        ),
    )
    return module, data, pruned


@pytest.mark.parametrize("make_model", [_chronos_bolt, _timesfm], ids=["chronos_bolt", "timesfm"])
def test_prune_finetune_export_serve(make_model, tmp_path, capsys):
    module, data, pruned = _prune_saved(make_model, tmp_path, capsys)
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

    exported = _run(capsys, "export", str(tmp_path / "f"), "--out", str(tmp_path / "art"), *data[:2])
    assert exported["family"] == module.family and exported["horizon"] == H
    assert exported["parity"]["max_abs_err"] < 1e-3

    x = np.sin(np.arange(3 * L).reshape(3, L) / 7.0) + np.arange(3)[:, None]
    v1, v2 = _serve_and_post(tmp_path / "art", x)
    expected = Forecaster.load(tmp_path / "art", backend="onnxruntime", threads=1).predict(x)
    assert v1.shape == (3, H)
    np.testing.assert_allclose(v1, expected, atol=1e-6)
    np.testing.assert_allclose(v2, expected, atol=1e-6)


def _assert_physically_pruned(saved, layers: list[dict]) -> None:
    """Every ranked group's weights have exactly the kept width in the saved model: heads as
    ``head_dim``-row blocks of q/k/v and ``out_proj`` columns, MLP channels as the hidden Linear's
    rows and the next Linear's columns."""
    for layer in layers:
        name, kept = layer["name"], layer["kept"]
        if layer["kind"] == "heads":  # PatchTST: model.model.encoder.layers.<i>.self_attn.heads
            attn = saved.get_submodule(name.removesuffix(".heads"))
            assert attn.q_proj.out_features == attn.k_proj.out_features == kept * attn.head_dim
            assert attn.v_proj.out_features == attn.out_proj.in_features == kept * attn.head_dim
        elif name.endswith(".ff.0"):  # PatchTST FFN: ff.0 Linear, activation, dropout, ff.3 Linear
            ff = saved.get_submodule(name.removesuffix(".0"))
            assert ff[0].out_features == ff[3].in_features == kept
        else:  # PatchTSMixer: <mixer>.mlp.fc1 -> fc2
            assert name.endswith(".mlp.fc1"), name
            mlp = saved.get_submodule(name.removesuffix(".fc1"))
            assert mlp.fc1.out_features == mlp.fc2.in_features == kept


def _long_panel(lengths=(70, L, 100)) -> pd.DataFrame:
    """Three hourly series of different lengths, rows shuffled, in prunecast forecast's default columns."""
    rng = np.random.default_rng(1)
    parts = []
    for k, n in enumerate(lengths):
        stamps = pd.date_range(f"2021-0{k + 1}-01", periods=n, freq="h")
        values = np.sin(np.arange(n) / (3 + k)) * (k + 1) + 0.1 * rng.standard_normal(n) + 2 * k
        parts.append(pd.DataFrame({"item_id": f"s{k}", "timestamp": stamps, "target": values}))
    return pd.concat(parts, ignore_index=True).sample(frac=1.0, random_state=0)


@pytest.mark.parametrize("make_model", [_patchtst, _patchtsmixer], ids=["patchtst", "patchtsmixer"])
def test_patch_families_prune_finetune_export_serve_forecast(make_model, tmp_path, capsys):
    module, data, pruned = _prune_saved(make_model, tmp_path, capsys)
    layers = pruned["layers"]
    dropped = {d["name"]: d["reason"] for d in pruned["dropped"]}
    if module.family == "patchtst":
        assert {layer["kind"] for layer in layers} == {"heads", "mlp_hidden"}
        assert any(layer["kept"] < layer["original"] for layer in layers if layer["kind"] == "heads")
        # the tracer's coupled q/k/v/out axis fails the exactness check: the hand heads replace it
        assert any(name.endswith("self_attn.v_proj") for name in dropped)
    else:
        assert {layer["kind"] for layer in layers} == {"mlp_hidden"}
    assert any(layer["kept"] < layer["original"] for layer in layers if layer["kind"] == "mlp_hidden")
    assert pruned["macs_after"] < pruned["macs_before"] and len(pruned["steps"]) == 2
    saved = load_saved(tmp_path / "p")
    assert saved.family == module.family
    _assert_physically_pruned(saved, layers)
    assert pruned["params_after"] == sum(p.numel() for p in saved.parameters()) < pruned["params_before"]

    tuned = _run(
        capsys,
        *("finetune", "--model", str(tmp_path / "p"), "-o", str(tmp_path / "f")),
        *("--lr", "1e-3", "--epochs", "1", "--windows-per-epoch", "64", *data),
    )
    assert tuned["macs"] == pruned["macs_after"]
    _assert_physically_pruned(load_saved(tmp_path / "f"), layers)

    exported = _run(capsys, "export", str(tmp_path / "f"), "--out", str(tmp_path / "art"), *data[:2])
    assert exported["family"] == module.family and exported["horizon"] == H
    assert exported["parameters"] == pruned["params_after"]
    assert exported["parity"]["max_abs_err"] < 1e-4

    fc = Forecaster.load(tmp_path / "art", backend="onnxruntime", threads=1)
    x = np.sin(np.arange(3 * L).reshape(3, L) / 7.0) + np.arange(3)[:, None]
    v1, v2 = _serve_and_post(tmp_path / "art", x)
    np.testing.assert_allclose(v1, fc.predict(x), atol=1e-6)
    np.testing.assert_allclose(v2, fc.predict(x), atol=1e-6)

    panel = _long_panel()
    panel.to_csv(tmp_path / "panel.csv", index=False)
    out = tmp_path / "forecast.csv"
    summary = _run(
        capsys, "forecast", str(tmp_path / "art"), "--data", str(tmp_path / "panel.csv"), "--out", str(out)
    )
    assert summary["series"] == 3 and summary["rows_written"] == 3 * H
    back = pd.read_csv(out, parse_dates=["timestamp"])
    names = list(dict.fromkeys(back["item_id"]))  # the engine's batch, in the order it wrote them
    series = {name: group for name, group in panel.sort_values("timestamp").groupby("item_id")}
    want = fc.predict(np.stack([series[n]["target"].to_numpy()[-L:] for n in names]))
    np.testing.assert_allclose(back["forecast"].to_numpy().reshape(3, H), want, rtol=1e-6, atol=1e-7)
    for name in names:
        future = pd.date_range(series[name]["timestamp"].iloc[-1], periods=H + 1, freq="h")[1:]
        assert list(back.loc[back["item_id"] == name, "timestamp"]) == list(future)
