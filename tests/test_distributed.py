"""Data-parallel pruning and fine-tuning: 2 gloo processes on CPU against one process."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from prunecast.compress import FinetuneConfig, PruneConfig, distributed, finetune, prune, save_model
from prunecast.data import prepare_windows
from prunecast.models.ttm import TTMAdapter
from tests.conftest import REPO, small_ttm_config, write_csv

WORLD = 2
PRUNE = {"budget": 0.5, "step_fraction": 0.25, "macro_batch": 64, "micro_batch": 16, "val_windows": 200}
FINETUNE = {
    "epochs": 2,
    "windows_per_epoch": 192,
    "lr_trial_windows": 64,
    "batch_size": 32,
    "val_windows": 200,
}


def _model():
    torch.manual_seed(0)
    return TTMAdapter().from_config(small_ttm_config(), context_length=64, horizon=16)


def _fingerprint(module) -> str:
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().numpy().tobytes())
    return digest.hexdigest()


def _work(csv: str) -> dict:
    """Prune (first and second order) and fine-tune the small TTM; what each rank ends up with."""
    data = prepare_windows(csv, 64, 16)
    out: dict = {}
    for importance in ("loss", "loss2"):
        module = _model()
        cfg = PruneConfig(importance=importance, per_sample_batch=8, **PRUNE)
        report = prune(module, data.train, data.val, cfg)
        out[importance] = {
            "kept": {layer.name: layer.kept for layer in report.layers},
            "val_loss": report.val_loss_after,
            "fingerprint": _fingerprint(module),
        }
    module = _model()
    report = finetune(module, data.train, data.val, FinetuneConfig(**FINETUNE), teacher=_model())
    out["finetune"] = {
        "lr": report.lr,
        "trials": report.lr_trials,
        "val_losses": [e.val_loss for e in report.epochs],
        "train_losses": [e.train_loss for e in report.epochs],
        "best_val_loss": report.best_val_loss,
        "fingerprint": _fingerprint(module),
    }
    errors = []
    for bad in (
        lambda: PruneConfig(macro_batch=63).check(),
        lambda: PruneConfig(importance="loss2", per_sample_batch=7).check(),
        lambda: FinetuneConfig(batch_size=33).check(),
    ):
        try:
            bad()
            errors.append(None)
        except ValueError as exc:
            errors.append(str(exc))
    out["errors"] = errors
    return out


def _worker(rank: int, port: int, csv: str, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    with distributed.process_group():
        assert (distributed.rank(), distributed.world_size()) == (rank, WORLD)
        result = _work(csv)
    assert distributed.world_size() == 1  # the group is gone after the command
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same work in one process and in two gloo processes."""
    tmp = tmp_path_factory.mktemp("ddp")
    csv = str(write_csv(tmp / "series.csv", rows=1200, columns=2))
    torch.multiprocessing.spawn(_worker, args=(_free_port(), csv, str(tmp)), nprocs=WORLD, join=True)
    ranks = [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(WORLD)]
    return _work(csv), ranks


def test_every_rank_ends_with_the_same_model(runs):
    _, (rank0, rank1) = runs
    for key in ("loss", "loss2", "finetune"):
        assert rank0[key]["fingerprint"] == rank1[key]["fingerprint"], key
    assert rank0["finetune"]["val_losses"] == rank1["finetune"]["val_losses"]


@pytest.mark.parametrize("importance", ["loss", "loss2"])
def test_two_workers_prune_to_the_single_process_architecture(runs, importance):
    single, (rank0, _) = runs
    kept1, kept2 = single[importance]["kept"], rank0[importance]["kept"]
    assert kept1.keys() == kept2.keys()
    assert all(abs(kept1[g] - kept2[g]) <= 1 for g in kept1), (kept1, kept2)
    assert sum(kept1.values()) < sum(_model_units().values())  # it did prune
    if kept1 == kept2:
        assert rank0[importance]["val_loss"] == pytest.approx(single[importance]["val_loss"], rel=1e-5)
    else:
        assert rank0[importance]["val_loss"] == pytest.approx(single[importance]["val_loss"], rel=2e-2)


def _model_units() -> dict[str, int]:
    return {g.name: g.units for g in _model().pruning_spec().groups}


def test_two_workers_finetune_like_one_process(runs):
    """No dropout in the small model: the two runs differ only by float summation order."""
    single, (rank0, _) = runs
    one, two = single["finetune"], rank0["finetune"]
    assert two["lr"] == one["lr"]
    for key in ("val_losses", "train_losses"):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4)
    for lr, loss in one["trials"].items():
        assert two["trials"][lr] == pytest.approx(loss, rel=1e-4)
    assert two["best_val_loss"] < min(one["trials"].values()) * 1.5


def test_a_world_size_that_does_not_split_the_batch_is_a_clear_error(runs):
    single, (rank0, rank1) = runs
    assert single["errors"] == [None, None, None]  # one process splits anything
    assert rank0["errors"] == rank1["errors"]
    macro, per_sample, batch = rank0["errors"]
    assert "macro_batch 63 is not divisible by the world size 2" in macro
    assert "per_sample_batch 7 is not divisible by the world size 2" in per_sample
    assert "batch_size 33 is not divisible by the world size 2" in batch


def test_helpers_are_the_identity_in_one_process():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    idx = np.arange(7)
    assert distributed.shard(idx) is idx
    assert distributed.rank_seed(5) == 5
    assert distributed.all_reduce_sum(1.5, 2) == (1.5, 2)
    distributed.check_divides(7, "batch_size")


def _torchrun(*args: str, env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD}"]
    return subprocess.run(
        [*cmd, "-m", "prunecast", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_torchrun_prune_cli_writes_and_prints_on_rank_zero_only(tmp_path):
    save_model(_model(), tmp_path / "base")
    csv = str(write_csv(tmp_path / "series.csv", rows=1200, columns=2))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    common = ["--model", str(tmp_path / "base"), "--data", csv, "--horizon", "16", "--budget", "0.6"]
    common += ["--target", "latency-estimate"]
    done = _torchrun("prune", *common, "-o", str(tmp_path / "p"), "--macro-batch", "32", "--json", env=env)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, done.stdout  # rank 0 alone prints
    result = json.loads(lines[0])
    assert result["world_size"] == WORLD and result["macs_after"] <= 0.6 * result["macs_before"]
    assert (tmp_path / "p" / "model.safetensors").is_file()

    bad = _torchrun("prune", *common, "-o", str(tmp_path / "x"), "--macro-batch", "33", env=env)
    assert bad.returncode != 0
    assert "prunecast prune: error: macro_batch 33 is not divisible by the world size 2" in bad.stderr
    assert not (tmp_path / "x").exists()
