"""Structural latency of pruned Chronos-Bolt-base and TimesFM-2.5 shapes on onnxruntime CPU.

RANDOM WEIGHTS: no real checkpoints are available offline, so this measures what the pruned
*shapes* cost, not accuracy. Each model is built at its real size (Chronos-Bolt base, 205M
parameters; TimesFM 2.5, 231M), then every layer keeps the same fraction of its attention heads,
FFN hidden channels and patch-embedding / output-block hidden channels (the groups prunecast's
pruning spec lists for these families; d_model and head dims stay whole), exported with the
dynamo exporter, checked against PyTorch, and timed at one batch size in interleaved rounds so
the ratios compare figures taken side by side.

    python benchmarks/families_latency.py [--keep 1.0 0.5 0.25 0.125] [--batch 32] [--threads 2]

Writes ``benchmarks/results/families_latency.json`` (rows of families not measured are kept).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from prunecast.models.chronos_bolt import ChronosBoltAdapter, keep_hidden
from prunecast.models.chronos_bolt import keep_ffn as bolt_keep_ffn
from prunecast.models.chronos_bolt import keep_heads as bolt_keep_heads
from prunecast.models.timesfm import TimesFMAdapter, config_from_state
from prunecast.models.timesfm import keep_ffn as tfm_keep_ffn
from prunecast.models.timesfm import keep_heads as tfm_keep_heads

RESULTS = Path(__file__).resolve().parent / "results" / "families_latency.json"
QUANTILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]

CHRONOS_BOLT_BASE = {  # the published amazon/chronos-bolt-base config.json
    "model_type": "t5",
    "architectures": ["ChronosBoltModelForForecasting"],
    "d_model": 768,
    "d_ff": 3072,
    "d_kv": 64,
    "num_heads": 12,
    "num_layers": 12,
    "num_decoder_layers": 12,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "feed_forward_proj": "relu",
    "dense_act_fn": "relu",
    "is_gated_act": False,
    "decoder_start_token_id": 0,
    "pad_token_id": 0,
    "chronos_config": {
        "context_length": 2048,
        "prediction_length": 64,
        "input_patch_size": 16,
        "input_patch_stride": 16,
        "quantiles": QUANTILES,
        "use_reg_token": True,
    },
}


def chronos_bolt(keep: float, context: int, horizon: int):
    torch.manual_seed(0)
    module = ChronosBoltAdapter().from_config(CHRONOS_BOLT_BASE, context, horizon)
    for stack in (module.model.encoder, module.model.decoder):
        for block in stack.block:
            attentions = [block.layer[0].SelfAttention] + (
                [block.layer[1].EncDecAttention] if stack.is_decoder else []
            )
            for attention in attentions:
                bolt_keep_heads(attention, _first(attention.n_heads, keep))
            dense = block.layer[-1].DenseReluDense
            bolt_keep_ffn(dense, _first(dense.wo.in_features, keep))
    _keep_blocks(module.model, ("input_patch_embedding", "output_patch_embedding"), keep)
    return module.eval()


def _first(units: int, keep: float) -> list[int]:
    """The first ``keep`` fraction of ``units`` (at least one): which units survive is irrelevant here."""
    return list(range(max(1, round(units * keep))))


def _keep_blocks(model, names: tuple[str, ...], keep: float) -> None:
    """Keep ``keep`` of the hidden channels of each residual block (both families share its layout)."""
    for name in names:
        block = getattr(model, name)
        keep_hidden(block, _first(block.hidden_layer.out_features, keep))


def timesfm_25(keep: float, context: int, horizon: int):
    from timesfm.timesfm_2p5.timesfm_2p5_base import TimesFM_2p5_200M_Definition

    from prunecast.models.timesfm import build_module

    torch.manual_seed(0)
    state = build_module(TimesFM_2p5_200M_Definition()).state_dict()
    module = TimesFMAdapter().from_config(config_from_state(state), context, horizon)
    with torch.no_grad():  # the package zero-initialises RMSNorm scales; give every weight a role
        for p in module.parameters():
            p.normal_(0, 0.02)
    for layer in module.model.stacked_xf:
        tfm_keep_heads(layer, _first(layer.attn.num_heads, keep))
        tfm_keep_ffn(layer, _first(layer.ff0.out_features, keep))
    _keep_blocks(module.model, ("tokenizer", "output_projection_point", "output_projection_quantiles"), keep)
    return module.eval()


def export(module, path: Path) -> None:
    program = torch.onnx.export(
        module,
        (module.example_input(2),),
        input_names=["context"],
        output_names=["forecast"],
        dynamic_shapes={"context": {0: torch.export.Dim("batch", min=1)}},
        dynamo=True,
        verbose=False,
    )
    program.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.125])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=4, help="timed runs per round")
    parser.add_argument("--families", nargs="+", default=["chronos_bolt", "timesfm"])
    args = parser.parse_args()
    builders = {"chronos_bolt": (chronos_bolt, 64), "timesfm": (timesfm_25, 96)}
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((args.batch, args.context)).cumsum(axis=1) * 0.1).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    rows, sessions = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            build, horizon = builders[family]
            for keep in args.keep:
                module = build(keep, args.context, horizon)
                params = sum(p.numel() for p in module.parameters())
                path = Path(tmp) / f"{family}-{keep}.onnx"
                t0 = time.perf_counter()
                export(module, path)
                export_s = time.perf_counter() - t0
                with torch.inference_mode():
                    want = module(torch.from_numpy(x)).numpy()
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                got = session.run(None, {"context": x})[0]
                err = float(np.abs(got - want).max())
                print(
                    f"{family} keep {keep}: {params / 1e6:.1f}M params, export {export_s:.0f}s, parity {err:.2e}"
                )
                rows.append(
                    {
                        "family": family,
                        "keep_fraction": keep,
                        "params_m": round(params / 1e6, 2),
                        "horizon": horizon,
                        "parity_max_abs_err": err,
                        "times_ms": [],
                    }
                )
                sessions.append(session)
                del module
        for _ in range(2):  # warm-up
            for session in sessions:
                session.run(None, {"context": x})
        for _ in range(args.rounds):  # interleaved: ratios are taken side by side
            for row, session in zip(rows, sessions, strict=True):
                for _ in range(args.iters):
                    t0 = time.perf_counter()
                    session.run(None, {"context": x})
                    row["times_ms"].append((time.perf_counter() - t0) * 1e3)
    for row in rows:
        times = row.pop("times_ms")
        row["p50_ms"] = round(float(np.median(times)), 1)
        row["min_ms"] = round(float(np.min(times)), 1)
        row["runs"] = len(times)
    for row in rows:
        base = next(r for r in rows if r["family"] == row["family"] and math.isclose(r["keep_fraction"], 1.0))
        row["speedup_p50"] = round(base["p50_ms"] / row["p50_ms"], 2)
        print(row)
    if RESULTS.exists():  # keep the rows of families not measured this time
        kept = [r for r in json.loads(RESULTS.read_text())["rows"] if r["family"] not in args.families]
        rows = kept + rows
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "what": "RANDOM-WEIGHT STRUCTURAL MEASUREMENT: latency of pruned shapes, not accuracy",
                "pruning": "every layer keeps the same fraction of attention heads, FFN hidden channels and "
                "patch-embedding / output-block hidden channels; d_model and head dims kept whole",
                "backend": "onnxruntime CPUExecutionProvider",
                "batch": args.batch,
                "context": args.context,
                "threads": args.threads,
                "machine": {
                    "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__,
                },
                "onnxruntime": ort.__version__,
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
