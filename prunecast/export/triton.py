"""A Triton Inference Server model repository from an artifact.

Writes ``REPO/<name>/config.pbtxt`` and ``REPO/<name>/1/model.onnx`` (onnxruntime backend) or
``model.plan`` (tensorrt backend). With ``max_batch_size > 0`` Triton owns the batch axis, so
the dims in the config are the per-series shapes ``[L]`` and ``[H]``; dynamic batching merges
requests up to the max batch size, waiting at most the queue delay.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from prunecast.export.graph import check_artifact_graph
from prunecast.export.manifest import ONNX_NAME, ExportError, Manifest, load_manifest

BACKENDS = ("onnxruntime", "tensorrt")
DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
DEFAULT_MAX_BATCH = 256


@dataclass(frozen=True)
class TritonConfig:
    """Backend, batching and placement of the Triton model; ``max_batch_size`` None takes the engine's."""

    backend: str = "onnxruntime"
    max_batch_size: int | None = None
    max_queue_delay_us: int = 100
    model_name: str | None = None
    instance_count: int = 1
    kind: str = "KIND_GPU"
    engine_precision: str | None = None

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ExportError(f"unknown Triton backend {self.backend!r}; choose one of {BACKENDS}")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise ExportError(f"max batch size must be positive, got {self.max_batch_size}")
        if self.max_queue_delay_us < 0 or self.instance_count < 1:
            raise ExportError("queue delay must be >= 0 and instance count >= 1")
        if self.kind not in ("KIND_GPU", "KIND_CPU"):
            raise ExportError(f"instance kind must be KIND_GPU or KIND_CPU, got {self.kind!r}")
        if self.backend == "tensorrt" and self.kind != "KIND_GPU":
            raise ExportError("the tensorrt backend runs on GPUs only (KIND_GPU)")
        if self.model_name is not None and not NAME_PATTERN.fullmatch(self.model_name):
            raise ExportError(f"Triton model name {self.model_name!r} may hold only letters, digits, _ . -")


def export_triton(art_dir: str | Path, repo_dir: str | Path, config: TritonConfig | None = None) -> Path:
    """Write the artifact into Triton model repository ``repo_dir``; returns the model's directory."""
    config = config or TritonConfig()
    config.validate()
    art_dir = Path(art_dir)
    manifest = load_manifest(art_dir)
    check_artifact_graph(art_dir, manifest)
    name = config.model_name or _safe_name(art_dir.resolve().name)
    model_dir = Path(repo_dir) / name
    if model_dir.exists():
        raise ExportError(f"{model_dir}: already exists in the model repository; remove it or pick --name")

    if config.backend == "tensorrt":
        engine = _pick_engine(manifest, config.engine_precision, art_dir)
        max_batch = config.max_batch_size or engine.max_batch
        if max_batch > engine.max_batch or engine.min_batch > 1:
            raise ExportError(
                f"{engine.file} serves batches {engine.min_batch}-{engine.max_batch}; Triton needs 1-{max_batch}. "
                "Rebuild the engine with --min-batch 1 and a larger --max-batch, or lower --max-batch"
            )
        sources = {art_dir / engine.file: "model.plan"}
    else:
        max_batch = config.max_batch_size or DEFAULT_MAX_BATCH
        # external weight files (models over 2 GB) sit beside model.onnx under the names it refers to
        sources = {art_dir / rel: rel for rel in manifest.files if rel.startswith(ONNX_NAME)}

    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True)
    for src, dst in sources.items():
        shutil.copyfile(src, version_dir / dst)
    (model_dir / "config.pbtxt").write_text(model_config(manifest, name, max_batch, config))
    return model_dir


def model_config(manifest: Manifest, name: str, max_batch: int, config: TritonConfig) -> str:
    """The ``config.pbtxt`` text (Triton's ModelConfig protobuf in text format)."""
    backend = "onnxruntime" if config.backend == "onnxruntime" else "tensorrt"
    io = []
    for kind, specs in (("input", manifest.inputs), ("output", manifest.outputs)):
        entries = [
            f'  {{\n    name: "{s.name}"\n    data_type: {DTYPES[s.dtype]}\n    dims: [ {_dims(s.shape)} ]\n  }}'
            for s in specs
        ]
        io.append(f"{kind} [\n" + ",\n".join(entries) + "\n]")
    return (
        f'name: "{name}"\n'
        f'backend: "{backend}"\n'
        f"max_batch_size: {max_batch}\n"
        + "\n".join(io)
        + "\n"
        + f"dynamic_batching {{\n  max_queue_delay_microseconds: {config.max_queue_delay_us}\n}}\n"
        + f"instance_group [\n  {{\n    count: {config.instance_count}\n    kind: {config.kind}\n  }}\n]\n"
    )


def _dims(shape: list[int | str]) -> str:
    """Dims without the leading batch axis (Triton adds it when max_batch_size > 0)."""
    return ", ".join(str(d) for d in shape[1:])


def _pick_engine(manifest: Manifest, precision: str | None, art_dir: Path):
    engines = [e for e in manifest.engines if precision is None or e.precision == precision]
    if not engines:
        raise ExportError(
            f"{art_dir}: no{' ' + precision if precision else ''} TensorRT engine in the artifact; "
            "run `prunecast build-engine` on the serving GPU first"
        )
    return engines[-1]


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".") or "model"
