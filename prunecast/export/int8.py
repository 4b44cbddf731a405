"""INT8 static quantisation of an exported FP32 graph, kept only when it keeps accuracy.

onnxruntime's ``quantize_static`` rewrites the optimised FP32 graph into QDQ form (INT8 weights per
output channel, UINT8 activations with ranges calibrated by MinMax), which onnxruntime's CPU
kernels fuse into integer MatMul/Gemm. Only the weight ops are quantised by default: the
elementwise work around them (LayerNorm, softmax gating, the model's own input scaler over the raw
context) has no faster INT8 kernel and would only lose accuracy.

Calibration reads a bounded, evenly spread sample of the TRAINING windows (the scaler is fitted on
train as well), never validation or test: the guard then scores the result on validation, and the
test split stays untouched for the report. The guard runs both graphs through the runtime
:class:`~prunecast.runtime.Forecaster` on every validation window; the INT8 graph is shipped only
when its MSE stays within ``tolerance`` (relative) of FP32's; otherwise the artifact keeps the FP32
graph, and the record in the manifest says why, with both MSEs and the error against FP32.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from prunecast.data.splits import Split, split_borders
from prunecast.data.windows import PreparedData, Windows
from prunecast.export.manifest import ONNX_NAME, ExportError, Int8Record, Manifest

QUANTISED_OPS = ("MatMul", "Gemm")
CALIBRATION_BATCH = 64
VAL_BATCH = 1024


@dataclass(frozen=True)
class Int8Config:
    """How to calibrate and how strictly to guard accuracy."""

    calibration_windows: int = 256
    tolerance: float = 0.005
    """Largest allowed relative rise of validation MSE over FP32 (0.005 = 0.5%)."""
    op_types: tuple[str, ...] = QUANTISED_OPS

    def validate(self) -> None:
        if self.calibration_windows < 1:
            raise ExportError(f"--calibration-windows must be at least 1, got {self.calibration_windows}")
        if not self.tolerance >= 0:
            raise ExportError(f"--int8-tolerance must be >= 0, got {self.tolerance}")


@dataclass
class Int8Result:
    """The guard's outcome: the record for the manifest and, when accepted, the INT8 graph's path."""

    record: Int8Record
    int8_path: Path | None


def calibration_indices(train: Windows, count: int) -> np.ndarray:
    """``count`` window indices spread evenly over the training windows (every channel, every season)."""
    count = min(count, len(train))
    return np.linspace(0, len(train) - 1, count).round().astype(np.int64)


class WindowReader(CalibrationDataReader):
    """The quantizer's calibration input: fixed contexts, in batches of ``batch`` windows."""

    def __init__(self, contexts: np.ndarray, batch: int = CALIBRATION_BATCH):
        self.contexts = contexts
        self.batch = batch
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.contexts):
            return None
        part = self.contexts[self._next : self._next + self.batch]
        self._next += self.batch
        return {"context": np.ascontiguousarray(part)}

    def rewind(self) -> None:
        self._next = 0


def quantize_graph(fp32_path: Path, out_path: Path, contexts: np.ndarray, op_types: tuple[str, ...]) -> None:
    """Write the QDQ INT8 form of ``fp32_path`` to ``out_path``, calibrated on ``contexts``."""
    reader = WindowReader(contexts)
    with tempfile.TemporaryDirectory(prefix="prunecast-int8-") as tmp, _quiet_quantizer():
        prepared = Path(tmp) / "prepared.onnx"
        try:
            # symbolic shapes for every tensor (the quantizer needs them) and onnxruntime's basic fusions
            quant_pre_process(str(fp32_path), str(prepared))
            quantize_static(
                str(prepared),
                str(out_path),
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        except Exception as exc:  # noqa: BLE001 - the quantizer raises many kinds; all mean "cannot"
            raise ExportError(f"INT8 quantisation of {fp32_path.name} failed: {exc}") from None


def quantize_with_guard(
    fp32_path: Path, work_dir: Path, manifest: Manifest, data: PreparedData, config: Int8Config
) -> Int8Result:
    """Quantise ``fp32_path`` on training windows and judge it on validation (see module doc).

    ``manifest`` describes the FP32 graph (files need not be hashed yet); ``work_dir`` receives
    ``int8/model.onnx``, which the caller moves into place when the result is accepted."""
    config.validate()
    indices = calibration_indices(data.train, config.calibration_windows)
    contexts, _ = data.train.gather(indices)
    int8_dir = work_dir / "int8"
    int8_dir.mkdir()
    int8_path = int8_dir / ONNX_NAME
    quantize_graph(fp32_path, int8_path, contexts, config.op_types)

    fp32 = _forecaster(fp32_path.parent, manifest)
    int8 = _forecaster(int8_dir, manifest)
    fp32_mse, fp32_out = _val_mse(fp32, data.val)
    int8_mse, int8_out = _val_mse(int8, data.val)
    max_err = float(np.abs(int8_out - fp32_out).max())
    scale = max(1.0, float(np.abs(fp32_out).max()))
    rise = int8_mse / fp32_mse - 1 if fp32_mse > 0 else float("inf")
    accepted = bool(int8_mse <= fp32_mse * (1 + config.tolerance))  # False for NaN too
    decision = (
        f"{'INT8 accepted' if accepted else 'INT8 rejected, keeping FP32'}: validation MSE {int8_mse:.6f} "
        f"vs FP32 {fp32_mse:.6f} ({rise:+.2%}, tolerance {config.tolerance:.2%}); "
        f"max abs error against FP32 {max_err:.3g}"
    )

    borders = split_borders(data.benchmark.name, data.benchmark.num_rows)
    train_first = borders.rows(Split.TRAIN, data.train.context_length)[0]
    starts = train_first + (indices // data.train.num_channels) * data.train.stride
    record = Int8Record(
        accepted=accepted,
        decision=decision,
        calibration_split=Split.TRAIN.value,
        calibration_windows=len(indices),
        calibration_rows=[int(starts.min()), int(starts.max()) + data.train.context_length],
        split_rows={split.value: list(getattr(borders, split.value)) for split in Split},
        data=str(data.benchmark.path),
        val_windows=len(data.val),
        fp32_val_mse=fp32_mse,
        int8_val_mse=int8_mse,
        tolerance=config.tolerance,
        max_abs_err=max_err,
        rel_err=max_err / scale,
        op_types=list(config.op_types),
    )
    return Int8Result(record, int8_path if accepted else None)


def _forecaster(art_dir: Path, manifest: Manifest):
    """A runtime Forecaster on ``art_dir/model.onnx`` (onnxruntime CPU), before the artifact is sealed."""
    from prunecast.runtime import Forecaster
    from prunecast.runtime.backends import BackendOptions, open_backend

    backend = open_backend("onnxruntime", art_dir, manifest, BackendOptions(device="cpu"))
    return Forecaster(backend, manifest, art_dir)


def _val_mse(forecaster, windows: Windows) -> tuple[float, np.ndarray]:
    """MSE over every window of ``windows`` (scaled data) and the forecasts themselves."""
    sq_err, n_values, outputs = 0.0, 0, []
    for contexts, targets in windows.batches(VAL_BATCH):
        pred = forecaster.predict_batch(contexts)
        sq_err += float(np.square(pred.astype(np.float64) - targets).sum())
        n_values += targets.size
        outputs.append(pred)
    return sq_err / n_values, np.concatenate(outputs)


@contextlib.contextmanager
def _quiet_quantizer():
    """Keep the quantizer's INFO/WARNING chatter (it logs on the root logger) out of the export's output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
