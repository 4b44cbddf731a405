"""``prunecast export``: a model (HF id, HF directory or prunecast-saved directory) becomes an artifact."""

from __future__ import annotations

import argparse
import time

from prunecast.cli.common import (
    add_revision_arg,
    add_time_axis_args,
    emit,
    load_model_from_args,
    time_axis_from_args,
)
from prunecast.common.defaults import DEFAULT_DATA


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to an ONNX artifact with parity checks and a manifest")
    p.add_argument("model", help="HF id, HF model directory, or a prunecast-saved (pruned) model directory")
    p.add_argument("--out", required=True, help="artifact directory to create (must not exist or be empty)")
    p.add_argument("--fp16", action="store_true", help="compute in FP16 inside; inputs/outputs stay FP32")
    p.add_argument(
        "--int8",
        action="store_true",
        help="quantise to INT8 (onnxruntime static QDQ, per-channel weights) calibrated on --data's "
        "training windows; kept only if validation MSE stays within --int8-tolerance of FP32",
    )
    p.add_argument(
        "--int8-tolerance",
        type=float,
        default=0.005,
        help="largest relative rise of validation MSE INT8 may cause (default 0.005 = 0.5%%)",
    )
    p.add_argument(
        "--calibration-windows",
        type=int,
        default=256,
        help="training windows that calibrate the INT8 activation ranges (default 256)",
    )
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, 18-23 (default 18)")
    p.add_argument(
        "--no-optimize",
        dest="optimize",
        action="store_false",
        help="keep the exporter's graph as is (no bias-into-Gemm or square-as-Mul rewrites)",
    )
    add_revision_arg(p)
    p.add_argument("--horizon", type=int, default=None, help="forecast steps (default: the model's)")
    p.add_argument("--context", type=int, default=None, help="context length (default: the model's)")
    p.add_argument("--family", default=None, help="model family, when config.json cannot tell it")
    p.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help=f"benchmark whose test windows check parity; with --int8 its training windows calibrate and "
        f"its validation windows guard accuracy (default {DEFAULT_DATA})",
    )
    add_time_axis_args(p)
    p.add_argument("--json", action="store_true", help="print the manifest as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prunecast.export.onnx_export import ExportConfig, export_onnx

    model = load_model_from_args(args)
    config = ExportConfig(
        opset=args.opset,
        optimize=args.optimize,
        fp16=args.fp16,
        data=args.data,
        time_axis=time_axis_from_args(args),
        source_model=args.model,
        int8=args.int8,
        int8_tolerance=args.int8_tolerance,
        calibration_windows=args.calibration_windows,
    )
    start = time.perf_counter()
    manifest = export_onnx(model, args.out, config)
    seconds = round(time.perf_counter() - start, 2)
    lines = [
        f"exported {manifest.family} ({manifest.parameters:,} parameters, context {manifest.context_length}, "
        f"horizon {manifest.horizon}, {manifest.precision}) to {args.out} in {seconds} s",
        f"FP32 parity: max abs error {manifest.parity.max_abs_err:.2e} at batches {manifest.parity.batch_sizes}",
    ]
    if manifest.fp16_parity:
        lines.append(f"FP16 parity: max abs error {manifest.fp16_parity.max_abs_err:.2e}")
    if manifest.int8:
        lines.append(manifest.int8.decision)
    emit({**manifest.to_dict(), "out": str(args.out), "seconds": seconds}, args.json, lines)
    return 0
