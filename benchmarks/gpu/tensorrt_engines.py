"""On a machine with an NVIDIA GPU and TensorRT: build FP32 and FP16 engines, check parity, time them.

    python benchmarks/gpu/tensorrt_engines.py [--model ID_OR_DIR] [--batches 1 7 64 256 1024]

Exports the model twice (FP32 and ``--fp16``), builds one engine from each artifact, compares
each engine with onnxruntime (FP32 graph, CPU) on real scaled ETTh1 test windows, and times
median latency per batch size with CUDA events. Writes
``benchmarks/results/gpu_tensorrt_engines.json`` naming the GPU, TensorRT and CUDA versions.
Needs torch with CUDA for device buffers; TensorRT runs the engine.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from prunecast.compress import load_model
from prunecast.export.onnx_export import ExportConfig, export_onnx, parity_windows
from prunecast.export.tensorrt import EngineConfig, build_engine, gpu_compute_capability, load_engine
from prunecast.models import DEFAULT_MODEL

RESULTS = Path(__file__).resolve().parents[1] / "results" / "gpu_tensorrt_engines.json"


class EngineRunner:
    """Runs a TensorRT 10/11 engine on torch CUDA buffers (name-based I/O, ``execute_async_v3``)."""

    def __init__(self, engine, horizon: int):
        self.context = engine.create_execution_context()
        self.horizon = horizon
        self.stream = torch.cuda.Stream()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty((x.shape[0], self.horizon), device="cuda", dtype=torch.float32)
        self.context.set_input_shape("context", tuple(x.shape))
        self.context.set_tensor_address("context", x.data_ptr())
        self.context.set_tensor_address("forecast", out.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        return out


def median_ms(fn, x: torch.Tensor, repeats: int) -> float:
    for _ in range(5):
        fn(x)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(x)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 7, 64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    import onnxruntime as ort
    import tensorrt

    module = load_model(args.model).eval()
    contexts = parity_windows("ETTh1", module, max(args.batches))
    engine_config = EngineConfig(min_batch=1, opt_batch=64, max_batch=max(args.batches))
    result = {
        "device": torch.cuda.get_device_name(0),
        "compute_capability": gpu_compute_capability(),
        "tensorrt": tensorrt.__version__,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "host": platform.node(),
        "model": args.model,
        "context_length": module.context_length,
        "horizon": module.horizon,
        "engines": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "fp16"):
            art = Path(tmp) / precision
            manifest = export_onnx(
                module, art, ExportConfig(fp16=precision == "fp16", source_model=args.model)
            )
            start = time.perf_counter()
            build_engine(art, engine_config)
            build_s = time.perf_counter() - start
            if precision == "fp32":  # the reference for both engines: onnxruntime on the FP32 graph
                session = ort.InferenceSession(str(art / "model.onnx"), providers=["CPUExecutionProvider"])
                reference = {b: session.run(None, {"context": contexts[:b]})[0] for b in args.batches}
            runner = EngineRunner(load_engine(art, precision), module.horizon)
            rows = []
            for batch in args.batches:
                want = reference[batch]
                xg = torch.from_numpy(contexts[:batch]).cuda()
                got = runner(xg).cpu().numpy()
                rows.append(
                    {
                        "batch": batch,
                        "max_abs_err_vs_onnxruntime": float(np.abs(got - want).max()),
                        "median_ms": median_ms(runner, xg, args.repeats),
                    }
                )
                rows[-1]["series_per_s"] = batch / rows[-1]["median_ms"] * 1e3
            result["engines"][precision] = {
                "build_s": round(build_s, 1),
                "export_parity": manifest.parity.max_abs_err,
                "fp16_parity": manifest.fp16_parity.max_abs_err if manifest.fp16_parity else None,
                "batches": rows,
            }
            print(json.dumps({precision: result["engines"][precision]}, indent=1))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
