"""The artifact contract: ``ART_DIR/manifest.json`` and the integrity check on loading it.

An artifact directory is self-describing: the manifest names the model, its input and
output tensors, the precision of ``model.onnx``, the parity measured at export, every file
with its sha256, and any TensorRT engines built from it. The runtime reads it without torch
or onnx, so this module uses the standard library only.

Layout (paths relative to ``ART_DIR``, each listed in ``files``):

- ``model.onnx``: the graph to serve; ``precision`` says whether it computes in FP32, FP16
  or INT8 (QDQ: INT8 weights and activations around the matmuls); inputs and outputs are FP32
  in every case, so any onnxruntime loads it unchanged.
- ``torch/``: the PyTorch model, loadable with ``prunecast.compress.load_model``.
- ``*.plan``: TensorRT engines, one entry each in ``engines``.

Outputs: ``forecast [batch, H]``, the point forecast (the median for quantile models), always
first; quantile families (Chronos-Bolt, TimesFM) add ``quantiles [batch, Q, H]``, one row per
level in ``quantile_levels`` (empty, and no second output, for point models such as TTM).

``parity`` is the FP32 export checked against PyTorch; ``fp16_parity`` is present when
``model.onnx`` was converted to FP16, and measures that graph against PyTorch.
``quantile_parity`` and ``fp16_quantile_parity`` are the same checks on the ``quantiles`` output.
``int8`` is present when INT8 quantisation was tried (``export --int8``): how it was calibrated,
both validation MSEs, the INT8 graph's max abs error against the FP32 one over every validation
window, and whether the guard accepted it (``precision`` is then ``int8``) or kept FP32.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT = "prunecast-artifact"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ONNX_NAME = "model.onnx"
TORCH_DIR = "torch"
BATCH_AXIS = "batch"
FORECAST = "forecast"
QUANTILES = "quantiles"
PRECISIONS = ("fp32", "fp16", "int8")


class ArtifactError(ValueError):
    """An artifact is missing, malformed, tampered with or unusable here; the message says which file."""


class ExportError(ValueError):
    """A model cannot be exported as asked (untraceable forward, parity failure, bad option)."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: ``shape`` holds ints and ``"batch"`` for the dynamic axis."""

    name: str
    shape: list[int | str]
    dtype: str = "float32"

    @classmethod
    def from_dict(cls, data: dict) -> TensorSpec:
        return cls(name=data["name"], shape=list(data["shape"]), dtype=data["dtype"])


@dataclass(frozen=True)
class Parity:
    """Largest ONNX-vs-PyTorch gap over real windows, absolute and relative to the output scale."""

    max_abs_err: float
    rel_err: float
    batch_sizes: list[int]
    tolerance: float

    @classmethod
    def from_dict(cls, data: dict) -> Parity:
        return cls(
            max_abs_err=float(data["max_abs_err"]),
            rel_err=float(data["rel_err"]),
            batch_sizes=[int(b) for b in data["batch_sizes"]],
            tolerance=float(data["tolerance"]),
        )


@dataclass(frozen=True)
class EngineEntry:
    """A TensorRT engine built from ``model.onnx``: valid only on this TensorRT version and GPU."""

    file: str
    precision: str
    tensorrt_version: str
    compute_capability: str
    min_batch: int
    opt_batch: int
    max_batch: int
    sha256: str

    @classmethod
    def from_dict(cls, data: dict) -> EngineEntry:
        return cls(
            file=data["file"],
            precision=data["precision"],
            tensorrt_version=str(data["tensorrt_version"]),
            compute_capability=str(data["compute_capability"]),
            min_batch=int(data["min_batch"]),
            opt_batch=int(data["opt_batch"]),
            max_batch=int(data["max_batch"]),
            sha256=data["sha256"],
        )


@dataclass(frozen=True)
class Int8Record:
    """An INT8 attempt: calibration (which split, how many windows, which rows) and the guard's verdict.

    Rows are those of the benchmark CSV; ``split_rows`` holds each split's target rows, so a reader
    can check that ``calibration_rows`` (the rows the calibration contexts read) lie inside train.
    ``max_abs_err`` is INT8 against FP32 over the validation windows, ``rel_err`` the same divided by
    ``max(1, max |FP32 forecast|)``: recorded, not gated (the guard judges accuracy, by MSE)."""

    accepted: bool
    decision: str
    calibration_split: str
    calibration_windows: int
    calibration_rows: list[int]
    split_rows: dict[str, list[int]]
    data: str
    val_windows: int
    fp32_val_mse: float
    int8_val_mse: float
    tolerance: float
    max_abs_err: float
    rel_err: float
    op_types: list[str]
    quant_format: str = "QDQ"
    per_channel: bool = True
    calibrate_method: str = "MinMax"

    @classmethod
    def from_dict(cls, data: dict) -> Int8Record:
        return cls(
            accepted=bool(data["accepted"]),
            decision=str(data["decision"]),
            calibration_split=str(data["calibration_split"]),
            calibration_windows=int(data["calibration_windows"]),
            calibration_rows=[int(r) for r in data["calibration_rows"]],
            split_rows={str(k): [int(r) for r in v] for k, v in data["split_rows"].items()},
            data=str(data["data"]),
            val_windows=int(data["val_windows"]),
            fp32_val_mse=float(data["fp32_val_mse"]),
            int8_val_mse=float(data["int8_val_mse"]),
            tolerance=float(data["tolerance"]),
            max_abs_err=float(data["max_abs_err"]),
            rel_err=float(data["rel_err"]),
            op_types=[str(op) for op in data["op_types"]],
            quant_format=str(data.get("quant_format", "QDQ")),
            per_channel=bool(data.get("per_channel", True)),
            calibrate_method=str(data.get("calibrate_method", "MinMax")),
        )


@dataclass
class Manifest:
    """Everything a runtime needs to know about an artifact, as stored in ``manifest.json``."""

    family: str
    source_model: str
    context_length: int
    horizon: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    precision: str
    parameters: int
    opset: int
    versions: dict[str, str]
    files: dict[str, str]
    parity: Parity
    fp16_parity: Parity | None = None
    quantile_levels: tuple[float, ...] = ()
    quantile_parity: Parity | None = None
    fp16_quantile_parity: Parity | None = None
    engines: list[EngineEntry] = field(default_factory=list)
    source_revision: str | None = None
    """The HF revision (branch, tag or commit) of ``source_model``; None for the default branch."""
    int8: Int8Record | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def input(self) -> TensorSpec:
        return self.inputs[0]

    @property
    def output(self) -> TensorSpec:
        """The point forecast ``[batch, H]``."""
        return self.outputs[0]

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs)

    def engine(self, precision: str) -> EngineEntry | None:
        """The engine entry of ``precision``, if one was built."""
        return next((e for e in self.engines if e.precision == precision), None)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["quantile_levels"] = list(self.quantile_levels)
        for name in ("fp16_parity", "quantile_parity", "fp16_quantile_parity", "int8"):
            if data[name] is None:
                del data[name]
        # format first, for a reader opening the file by hand
        return {"format": data.pop("format"), "format_version": data.pop("format_version"), **data}

    @classmethod
    def from_dict(cls, data: dict, where: str = MANIFEST_NAME) -> Manifest:
        """Parse manifest JSON data; anything missing or of the wrong format is an :class:`ArtifactError`."""
        if not isinstance(data, dict):
            raise ArtifactError(f"{where}: expected a JSON object")
        if data.get("format") != FORMAT:
            raise ArtifactError(f"{where}: format is {data.get('format')!r}, expected {FORMAT!r}")
        if data.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{where}: format_version {data.get('format_version')!r} is not supported "
                f"(this prunecast reads {FORMAT_VERSION})"
            )
        try:
            manifest = cls(
                family=str(data["family"]),
                source_model=str(data["source_model"]),
                context_length=int(data["context_length"]),
                horizon=int(data["horizon"]),
                inputs=[TensorSpec.from_dict(t) for t in data["inputs"]],
                outputs=[TensorSpec.from_dict(t) for t in data["outputs"]],
                precision=str(data["precision"]),
                parameters=int(data["parameters"]),
                opset=int(data["opset"]),
                versions={str(k): str(v) for k, v in data["versions"].items()},
                files={str(k): str(v) for k, v in data["files"].items()},
                parity=Parity.from_dict(data["parity"]),
                fp16_parity=_parity(data, "fp16_parity"),
                # manifests written before quantile outputs existed have none
                quantile_levels=tuple(float(q) for q in data.get("quantile_levels", ())),
                quantile_parity=_parity(data, "quantile_parity"),
                fp16_quantile_parity=_parity(data, "fp16_quantile_parity"),
                engines=[EngineEntry.from_dict(e) for e in data.get("engines", [])],
                source_revision=None if data.get("source_revision") is None else str(data["source_revision"]),
                int8=Int8Record.from_dict(data["int8"]) if data.get("int8") else None,
            )
        except KeyError as exc:
            raise ArtifactError(f"{where}: missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"{where}: malformed field: {exc}") from None
        manifest.check_consistent(where)
        return manifest

    def check_consistent(self, where: str = MANIFEST_NAME) -> None:
        """Refuse a manifest whose parts contradict each other (e.g. a shape that is not ``[batch, L]``)."""
        if self.precision not in PRECISIONS:
            raise ArtifactError(f"{where}: precision {self.precision!r} is not one of {PRECISIONS}")
        self._check_quantiles(where)
        self._check_int8(where)
        expected = (
            ("inputs", self.inputs, [("context", [BATCH_AXIS, self.context_length])]),
            ("outputs", self.outputs, self.expected_outputs()),
        )
        for kind, specs, want in expected:
            got = [(s.name, s.shape) for s in specs]
            if got != want:
                raise ArtifactError(f"{where}: {kind} are {got}, expected {want}")
            for spec in specs:
                if spec.dtype != "float32":
                    raise ArtifactError(
                        f"{where}: {kind} {spec.name!r} has dtype {spec.dtype}, expected float32"
                    )
        if ONNX_NAME not in self.files:
            raise ArtifactError(f"{where}: files does not list {ONNX_NAME}")
        for engine in self.engines:
            if self.files.get(engine.file) != engine.sha256:
                raise ArtifactError(f"{where}: engine {engine.file} is not listed in files with its sha256")

    def expected_outputs(self) -> list[tuple[str, list[int | str]]]:
        """``(name, shape)`` of every output the model has: the forecast, then any quantiles."""
        outputs = [(FORECAST, [BATCH_AXIS, self.horizon])]
        if self.quantile_levels:
            outputs.append((QUANTILES, [BATCH_AXIS, len(self.quantile_levels), self.horizon]))
        return outputs

    def _check_quantiles(self, where: str) -> None:
        levels = list(self.quantile_levels)
        if levels and (
            levels != sorted(set(levels)) or not 0 < levels[0] <= levels[-1] < 1 or 0.5 not in levels
        ):
            raise ArtifactError(
                f"{where}: quantile_levels {levels} must be distinct, ascending, inside (0, 1) and hold 0.5"
            )
        if bool(levels) != (self.quantile_parity is not None):
            raise ArtifactError(f"{where}: quantile_levels and quantile_parity must be given together")
        if bool(levels and self.fp16_parity) != (self.fp16_quantile_parity is not None):
            raise ArtifactError(
                f"{where}: an FP16 artifact with quantiles needs fp16_quantile_parity, no other"
            )

    def _check_int8(self, where: str) -> None:
        accepted = self.int8 is not None and self.int8.accepted
        if (self.precision == "int8") != accepted:
            raise ArtifactError(
                f"{where}: precision {self.precision!r} contradicts the int8 record "
                f"({'accepted' if accepted else 'absent or rejected'})"
            )

    def save(self, art_dir: str | Path) -> Path:
        """Write ``manifest.json`` into ``art_dir`` (the files must already be hashed into ``files``)."""
        self.check_consistent()
        path = Path(art_dir) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _parity(data: dict, key: str) -> Parity | None:
    return Parity.from_dict(data[key]) if data.get(key) else None


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(art_dir: str | Path, paths: list[str | Path]) -> dict[str, str]:
    """``{relative path: sha256}`` for files and every file under directories in ``paths``."""
    root = Path(art_dir)
    out: dict[str, str] = {}
    for rel in paths:
        target = root / rel
        files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
        for file in files:
            out[file.relative_to(root).as_posix()] = sha256_file(file)
    return out


def verify_files(art_dir: str | Path, manifest: Manifest) -> None:
    """Refuse, by name, any listed file that is missing, outside ``art_dir`` or changed since export."""
    root = Path(art_dir).resolve()
    for rel, expected in sorted(manifest.files.items()):
        path = (root / rel).resolve()
        if root not in path.parents:
            raise ArtifactError(f"{art_dir}: listed file {rel!r} lies outside the artifact")
        if not path.is_file():
            raise ArtifactError(f"{art_dir}: {rel} is missing")
        if sha256_file(path) != expected:
            raise ArtifactError(
                f"{art_dir}: {rel} was changed after export (sha256 does not match the manifest); "
                "re-export the artifact"
            )


def load_manifest(art_dir: str | Path, verify: bool = True) -> Manifest:
    """Read ``ART_DIR/manifest.json``; with ``verify``, check the sha256 of every listed file."""
    root = Path(art_dir)
    if not root.is_dir():
        raise ArtifactError(f"{art_dir}: no such artifact directory")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"{art_dir}: no {MANIFEST_NAME}; not a prunecast artifact")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    manifest = Manifest.from_dict(data, where=str(path))
    if verify:
        verify_files(root, manifest)
    return manifest
