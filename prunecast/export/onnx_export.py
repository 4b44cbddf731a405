"""``export_onnx``: a forecast module becomes a verified artifact directory.

The module is exported with torch's dynamo exporter (a symbolic ``batch`` axis), rewritten for
speed (:mod:`prunecast.export.optimize`), checked with ``onnx.checker``, run in onnxruntime on
real scaled windows at several batch sizes against PyTorch, optionally converted to FP16 and
checked again, or quantised to INT8 behind an accuracy guard (:mod:`prunecast.export.int8`),
and written with its PyTorch weights and a manifest. A model with quantiles
(``module.quantile_levels``) gets a second output, ``quantiles [batch, Q, H]``, from the same pass
as ``forecast``, and each output has its own parity check. Everything is built in a
staging directory and moved into place only when every check passed, so a failed export leaves
nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import torch

from prunecast.data.csv import STRICT, TimeAxisPolicy
from prunecast.data.windows import PreparedData, Windows
from prunecast.export.graph import check_graph
from prunecast.export.manifest import (
    BATCH_AXIS,
    FORECAST,
    ONNX_NAME,
    QUANTILES,
    TORCH_DIR,
    ExportError,
    Manifest,
    Parity,
    TensorSpec,
    hash_tree,
)
from prunecast.models.base import ForecastModule

MIN_OPSET, MAX_OPSET = 18, 23  # what torch 2.13's dynamo exporter writes correctly


@dataclass(frozen=True)
class ExportConfig:
    """How to export and how strictly to check the result.

    Tolerances are on the max abs error relative to the output scale: the allowed error is
    ``tolerance * max(1, max |output|)``, an absolute bound on scaled data, for each output.
    """

    opset: int = 18
    optimize: bool = True
    """Apply the graph rewrites of :mod:`prunecast.export.optimize` (bias into Gemm, square as Mul,
    patch-mixer transposes folded, GELU fusable; ``--no-optimize`` turns them all off)."""
    fp16: bool = False
    tolerance: float = 1e-4
    fp16_tolerance: float = 1e-2
    batch_sizes: tuple[int, ...] = (1, 7, 256)
    data: str = "ETTh1"
    time_axis: TimeAxisPolicy = TimeAxisPolicy()
    """How ``data``'s time axis is checked (see :class:`prunecast.data.TimeAxisPolicy`)."""
    source_model: str | None = None
    source_revision: str | None = None
    """The HF revision of ``source_model``; None takes the module's own (:attr:`ForecastModule.revision`)."""
    int8: bool = False
    """Quantise to INT8 after the FP32 checks, calibrated on ``data``'s training windows; kept only when
    ``data``'s validation MSE stays within ``int8_tolerance`` of FP32's."""
    int8_tolerance: float = 0.005
    calibration_windows: int = 256

    def validate(self) -> None:
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ExportError(
                f"unsupported opset {self.opset}: the dynamo exporter writes opset {MIN_OPSET} to {MAX_OPSET}"
            )
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ExportError(f"parity batch sizes must be positive, got {self.batch_sizes}")
        if self.fp16 and self.int8:
            raise ExportError("--fp16 and --int8 exclude each other: choose one precision for model.onnx")
        if self.int8:
            self.int8_config().validate()

    def int8_config(self):
        from prunecast.export.int8 import Int8Config

        return Int8Config(calibration_windows=self.calibration_windows, tolerance=self.int8_tolerance)


def export_onnx(module: ForecastModule, out_dir: str | Path, config: ExportConfig | None = None) -> Manifest:
    """Export ``module`` into a new artifact directory ``out_dir`` and return its manifest."""
    config = config or ExportConfig()
    config.validate()
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir}: already exists and is not an empty directory; choose a new --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    from prunecast.data import prepare_windows

    # read once: its test windows check parity, and with --int8 its train/val windows calibrate and guard
    data = prepare_windows(config.data, module.context_length, module.horizon, policy=config.time_axis)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        manifest = _build(module, stage, config, data)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    stage.chmod(0o755)
    if out_dir.exists():
        out_dir.rmdir()  # empty, checked above
    stage.rename(out_dir)
    return manifest


def _build(module: ForecastModule, stage: Path, config: ExportConfig, data: PreparedData) -> Manifest:
    """Write and check every file of the artifact in ``stage``."""
    contexts = spread_contexts(data.test, max(config.batch_sizes))
    onnx_path = stage / ONNX_NAME
    export_graph(module, onnx_path, config.opset)
    if config.optimize:
        from prunecast.export.optimize import optimize_graph

        onnx.save(optimize_graph(onnx.load(onnx_path))[0], onnx_path)
    levels = module.quantile_levels
    check_graph(onnx_path, module.context_length, module.horizon, quantiles=len(levels))
    reference = _torch_outputs(module, contexts, config.batch_sizes)
    parity = measure_parity(onnx_path, contexts, reference, config.batch_sizes, config.tolerance)
    fp16_parity = {}
    if config.fp16:
        from prunecast.export.fp16 import convert_to_fp16

        onnx.save(convert_to_fp16(onnx.load(onnx_path)), onnx_path)
        fp16_parity = measure_parity(
            onnx_path, contexts, reference, config.batch_sizes, config.fp16_tolerance, "FP16"
        )
    outputs = [TensorSpec(FORECAST, [BATCH_AXIS, module.horizon])]
    if levels:
        outputs.append(TensorSpec(QUANTILES, [BATCH_AXIS, len(levels), module.horizon]))
    manifest = Manifest(
        family=module.family,
        source_model=config.source_model or str(module.config_dict().get("_name_or_path") or ""),
        context_length=module.context_length,
        horizon=module.horizon,
        inputs=[TensorSpec("context", [BATCH_AXIS, module.context_length])],
        outputs=outputs,
        precision="fp16" if config.fp16 else "fp32",
        parameters=sum(p.numel() for p in module.parameters()),
        opset=config.opset,
        versions=_versions(),
        parity=parity[FORECAST],
        fp16_parity=fp16_parity.get(FORECAST),
        quantile_levels=levels,
        quantile_parity=parity.get(QUANTILES),
        fp16_quantile_parity=fp16_parity.get(QUANTILES),
        source_revision=config.source_revision or module.revision,
        files={ONNX_NAME: ""},  # hashed once every file is in place
    )
    if config.int8:
        manifest = _quantize(stage, config, manifest, data)
    from prunecast.compress import save_model

    save_model(module, stage / TORCH_DIR)
    manifest.files = hash_tree(stage, sorted(p.name for p in stage.iterdir()))
    manifest.save(stage)
    return manifest


def quantize_artifact(
    art_dir: str | Path, out_dir: str | Path, config: ExportConfig | None = None
) -> Manifest:
    """A new artifact ``out_dir``: the FP32 artifact ``art_dir`` quantised to INT8 behind the guard,
    as ``export_onnx(module, out_dir, ExportConfig(int8=True, ...))`` would make it, without exporting
    and checking the FP32 graph a second time. ``config`` gives the calibration and validation data
    (``data``, ``time_axis``), ``int8_tolerance`` and ``calibration_windows``; ``int8`` is implied.
    A rejected attempt leaves an FP32 copy recording why, as the export does."""
    from prunecast.data import prepare_windows
    from prunecast.export.manifest import load_manifest

    config = config or ExportConfig()
    art_dir, out_dir = Path(art_dir), Path(out_dir)
    manifest = load_manifest(art_dir)  # its files verified against their hashes
    if manifest.precision != "fp32":
        raise ExportError(
            f"{art_dir}: its precision is {manifest.precision}; INT8 is quantised from an FP32 artifact"
        )
    config.int8_config().validate()
    if out_dir.exists():
        raise ExportError(f"{out_dir}: already exists; choose a new --out")
    data = prepare_windows(config.data, manifest.context_length, manifest.horizon, policy=config.time_axis)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        shutil.copy2(art_dir / ONNX_NAME, stage / ONNX_NAME)
        shutil.copytree(art_dir / TORCH_DIR, stage / TORCH_DIR)
        manifest.engines = []  # TensorRT engines were built from the FP32 graph: not this artifact's
        manifest = _quantize(stage, config, manifest, data)
        manifest.files = hash_tree(stage, sorted(p.name for p in stage.iterdir()))
        manifest.save(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    stage.chmod(0o755)
    stage.rename(out_dir)
    return manifest


def _quantize(stage: Path, config: ExportConfig, manifest: Manifest, data: PreparedData) -> Manifest:
    """Try INT8 on ``stage/model.onnx``; swap it in when the guard accepts, and record the attempt."""
    from prunecast.export.int8 import quantize_with_guard

    with tempfile.TemporaryDirectory(prefix=".int8.", dir=stage.parent) as work:
        result = quantize_with_guard(stage / ONNX_NAME, Path(work), manifest, data, config.int8_config())
        if result.int8_path is not None:
            quantiles = len(manifest.quantile_levels)
            check_graph(result.int8_path, manifest.context_length, manifest.horizon, quantiles=quantiles)
            result.int8_path.replace(stage / ONNX_NAME)
    manifest.int8 = result.record
    if result.record.accepted:
        manifest.precision = "int8"
    return manifest


class _WithQuantiles(torch.nn.Module):
    """``context -> (forecast, quantiles)`` in one pass, the graph a quantile family exports."""

    def __init__(self, module: ForecastModule):
        super().__init__()
        self.module = module

    def forward(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.module.forecast_and_quantiles(context)


def export_graph(module: ForecastModule, path: Path, opset: int) -> None:
    """Run the dynamo exporter with a symbolic batch axis; an untraceable forward is an ExportError.

    A model with quantile levels is exported with both outputs, ``forecast`` first."""
    batch = torch.export.Dim(BATCH_AXIS, min=1)
    with_quantiles = bool(module.quantile_levels)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                _WithQuantiles(module) if with_quantiles else module,
                (module.example_input(2),),
                input_names=["context"],
                output_names=[FORECAST, QUANTILES] if with_quantiles else [FORECAST],
                dynamic_shapes={"context": {0: batch}},
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
            program.save(path)
    except Exception as exc:  # noqa: BLE001 - torch.export raises many kinds; all mean "cannot trace"
        root = exc
        while root.__cause__ is not None:  # the exporter wraps the real reason
            root = root.__cause__
        reason = str(root).strip().splitlines()[0] if str(root).strip() else ""
        raise ExportError(
            f"cannot export the {module.family} model: its forward cannot be traced by torch.export "
            f"({type(root).__name__}: {reason})"
        ) from exc


def parity_windows(
    data: str, module: ForecastModule, count: int, policy: TimeAxisPolicy = STRICT
) -> np.ndarray:
    """``count`` real scaled test contexts spread evenly over the test split of ``data``."""
    from prunecast.data import prepare_windows

    return spread_contexts(
        prepare_windows(data, module.context_length, module.horizon, policy=policy).test, count
    )


def spread_contexts(windows: Windows, count: int) -> np.ndarray:
    """``count`` contexts of ``windows`` spread evenly from the first to the last."""
    contexts, _ = windows.gather(np.linspace(0, len(windows) - 1, count).round().astype(np.int64))
    return contexts


def measure_parity(
    onnx_path: Path,
    contexts: np.ndarray,
    reference: dict[str, dict[int, np.ndarray]],
    batch_sizes: tuple[int, ...],
    tolerance: float,
    label: str = "FP32",
) -> dict[str, Parity]:
    """Max abs error of onnxruntime against PyTorch at each batch size, per output in ``reference``
    (``{output: {batch: PyTorch result}}``); an output above its tolerance is an ExportError."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = list(reference)
    max_err, scale = dict.fromkeys(names, 0.0), dict.fromkeys(names, 1.0)
    for batch in batch_sizes:
        results = session.run(names, {"context": contexts[:batch]})  # every output from one run
        for name, got in zip(names, results, strict=True):
            want = reference[name][batch]
            if got.shape != want.shape:
                raise ExportError(
                    f"{label} ONNX gives {name} of shape {got.shape} at batch {batch}, PyTorch {want.shape}"
                )
            # np.fmax would drop a NaN and the builtin max keeps whichever comes first: np.maximum keeps it
            max_err[name] = float(np.maximum(max_err[name], np.abs(got - want).max()))
            scale[name] = max(scale[name], float(np.abs(want).max()))
    parity = {}
    for name in names:
        allowed = tolerance * scale[name]
        if not max_err[name] <= allowed:  # also catches NaN
            raise ExportError(
                f"{label} ONNX parity fails: max abs error {max_err[name]:.3g} of {name} over batches "
                f"{list(batch_sizes)} exceeds {allowed:.3g} (tolerance {tolerance:g} x output scale "
                f"{scale[name]:.3g})"
            )
        parity[name] = Parity(max_err[name], max_err[name] / scale[name], list(batch_sizes), tolerance)
    return parity


@torch.inference_mode()
def _torch_outputs(
    module: ForecastModule, contexts: np.ndarray, batch_sizes: tuple[int, ...]
) -> dict[str, dict[int, np.ndarray]]:
    """The PyTorch reference per output: ``forward`` for the forecast, ``quantiles`` for the quantiles."""
    inputs = {b: torch.from_numpy(contexts[:b]) for b in batch_sizes}
    reference = {FORECAST: {b: module(x).numpy() for b, x in inputs.items()}}
    if module.quantile_levels:
        reference[QUANTILES] = {b: module.quantiles(x).numpy() for b, x in inputs.items()}
    return reference


def _versions() -> dict[str, str]:
    import onnxruntime

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "prunecast": version("prunecast"),
    }


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's INFO chatter and warnings for the duration of one export only."""
    loggers = [
        logging.getLogger(name)
        for name in (
            "onnxscript",
            "onnx_ir",
            "torch.onnx",
            "torch.export",
            "torch._export",
            "torch.fx",
            "torch._dynamo",
        )
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
