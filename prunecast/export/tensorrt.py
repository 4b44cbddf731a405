"""TensorRT engines built from an artifact's ``model.onnx``, for TensorRT 10 and 11.

An engine only runs on the TensorRT version and GPU architecture it was built with, so each
one is recorded in the manifest with both, and :func:`check_engine` refuses a mismatch before
anything is deserialised. ``tensorrt`` is imported lazily: it needs an NVIDIA GPU and CUDA,
which most machines building artifacts lack.

Precision: TensorRT 10 can lower an FP32 graph to FP16 with its FP16 builder flag; TensorRT 11
has no such flag (networks are always strongly typed), so there FP16 comes from the FP16 ONNX
graph that ``prunecast export --fp16`` writes. An FP16 graph is built strongly typed on both.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from prunecast.export.graph import check_artifact_graph
from prunecast.export.manifest import (
    ONNX_NAME,
    ArtifactError,
    EngineEntry,
    ExportError,
    Manifest,
    load_manifest,
    sha256_file,
)

SUPPORTED_MAJORS = (10, 11)


class TensorRTUnavailable(RuntimeError):
    """TensorRT, CUDA or an NVIDIA GPU is missing on this machine."""


@dataclass(frozen=True)
class EngineConfig:
    """Build settings: the batch range of the optimisation profile, precision and workspace."""

    fp16: bool = False
    min_batch: int = 1
    opt_batch: int = 64
    max_batch: int = 1024
    workspace_gib: float = 4.0

    def validate(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ExportError(
                f"need 1 <= min batch <= opt batch <= max batch, got "
                f"{self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )
        if self.workspace_gib <= 0:
            raise ExportError(f"workspace must be positive, got {self.workspace_gib} GiB")


def import_tensorrt():
    """The ``tensorrt`` module, or a :class:`TensorRTUnavailable` that says how to get it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailable(
            "TensorRT is not installed: build engines on a machine with an NVIDIA GPU and CUDA, "
            f"after pip install 'prunecast[trt]' ({exc})"
        ) from None
    major = int(tensorrt.__version__.split(".")[0])
    if major not in SUPPORTED_MAJORS:
        raise TensorRTUnavailable(
            f"TensorRT {tensorrt.__version__} is not supported; prunecast builds with TensorRT "
            f"{' or '.join(map(str, SUPPORTED_MAJORS))}"
        )
    return tensorrt


def gpu_compute_capability(device: int = 0) -> str:
    """Compute capability (e.g. ``"9.0"``) of GPU ``device`` as ``nvidia-smi`` numbers it."""
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader", f"--id={device}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise TensorRTUnavailable(f"no NVIDIA GPU found: nvidia-smi failed ({exc})") from None
    return result.stdout.strip()


def engine_precision(manifest: Manifest, config: EngineConfig, tensorrt_major: int) -> str:
    """The precision an engine will have, or an ExportError when the request cannot be met."""
    if manifest.precision == "int8":
        raise ExportError(
            "model.onnx of this artifact is INT8 (onnxruntime QDQ, calibrated for the CPU runtime); "
            "build TensorRT engines from an FP32 or --fp16 export of the model"
        )
    if manifest.precision == "fp16":
        return "fp16"  # the graph itself is FP16: built strongly typed
    if config.fp16 and tensorrt_major >= 11:
        raise ExportError(
            "TensorRT 11 has no FP16 builder flag: FP16 comes from the graph. "
            "Re-export with `prunecast export --fp16` and build from that artifact"
        )
    return "fp16" if config.fp16 else "fp32"


def engine_file(precision: str) -> str:
    return f"model.{precision}.plan"


def build_engine(art_dir: str | Path, config: EngineConfig | None = None) -> EngineEntry:
    """Build a TensorRT engine from the artifact's ONNX, save it beside it and record it in the manifest."""
    config = config or EngineConfig()
    config.validate()
    art_dir = Path(art_dir)
    manifest = load_manifest(art_dir)  # refuses a tampered artifact before spending minutes on it
    check_artifact_graph(art_dir, manifest)
    trt = import_tensorrt()
    capability = gpu_compute_capability()
    major = int(trt.__version__.split(".")[0])
    precision = engine_precision(manifest, config, major)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = manifest.precision == "fp16"
    flags = 0
    if strongly_typed and major == 10:  # always on in 11
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(art_dir / ONNX_NAME)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{art_dir / ONNX_NAME}: TensorRT cannot parse the graph: {errors}")

    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(config.workspace_gib * (1 << 30)))
    if precision == "fp16" and not strongly_typed:
        builder_config.set_flag(trt.BuilderFlag.FP16)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        builder_config.clear_flag(trt.BuilderFlag.TF32)  # TF32 matmuls would break FP32 parity
    length = manifest.context_length
    profile = builder.create_optimization_profile()
    profile.set_shape(
        manifest.input.name,
        (config.min_batch, length),
        (config.opt_batch, length),
        (config.max_batch, length),
    )
    builder_config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise ExportError(f"TensorRT {trt.__version__} failed to build an engine (see its log above)")

    name = engine_file(precision)
    (art_dir / name).write_bytes(bytes(serialized))
    entry = EngineEntry(
        file=name,
        precision=precision,
        tensorrt_version=trt.__version__,
        compute_capability=capability,
        min_batch=config.min_batch,
        opt_batch=config.opt_batch,
        max_batch=config.max_batch,
        sha256=sha256_file(art_dir / name),
    )
    manifest.engines = [e for e in manifest.engines if e.file != name] + [entry]
    manifest.files[name] = entry.sha256
    manifest.save(art_dir)
    return entry


def check_engine(entry: EngineEntry, tensorrt_version: str, compute_capability: str) -> None:
    """Refuse an engine built for another TensorRT version or GPU architecture: it must not be run."""
    if entry.tensorrt_version != tensorrt_version:
        raise ArtifactError(
            f"{entry.file} was built with TensorRT {entry.tensorrt_version}, this machine has "
            f"{tensorrt_version}; rebuild it here with `prunecast build-engine`"
        )
    if entry.compute_capability != compute_capability:
        raise ArtifactError(
            f"{entry.file} was built for a GPU of compute capability {entry.compute_capability}, this GPU "
            f"is {compute_capability}; rebuild it here with `prunecast build-engine`"
        )


def load_engine(art_dir: str | Path, precision: str = "fp32"):
    """Deserialise the artifact's ``precision`` engine after checking its hash, TensorRT version and GPU."""
    art_dir = Path(art_dir)
    manifest = load_manifest(art_dir)
    entry = manifest.engine(precision)
    if entry is None:
        built = [e.precision for e in manifest.engines] or "none"
        raise ArtifactError(f"{art_dir}: no {precision} TensorRT engine (built: {built}); run build-engine")
    trt = import_tensorrt()
    check_engine(entry, trt.__version__, gpu_compute_capability())
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine((art_dir / entry.file).read_bytes())
    if engine is None:
        raise ArtifactError(f"{art_dir / entry.file}: TensorRT could not deserialise the engine")
    return engine
