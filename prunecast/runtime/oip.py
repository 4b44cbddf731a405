"""The Open Inference Protocol (KServe v2, Triton's HTTP/REST protocol) for one forecasting model.

This module knows the protocol's documents and nothing of HTTP serving: it turns a request
body (JSON, or JSON followed by binary tensors per the ``binary_tensor_data`` extension) into
a validated ``[n, L]`` batch plus what to answer with, and model outputs into a response
body. Every problem is a :class:`ProtocolError` whose message names it (input, datatype,
shape, sizes, framing); the server answers it with a 400.

Tensors: input ``context`` FP32 ``[-1, L]``; outputs ``forecast`` FP32 ``[-1, H]`` and, for
a model with quantile levels, ``quantiles`` FP32 ``[-1, Q, H]``. Binary tensors are raw
little-endian, row-major bytes, as ``tritonclient`` writes and reads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import orjson

from prunecast import __version__
from prunecast.runtime.validation import InputError, prepare_batch

#: the header that says how many bytes of the body are JSON, the rest being binary tensors
HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT = "context"
FORECAST = "forecast"
QUANTILES = "quantiles"
DATATYPE = "FP32"
_WIRE = np.dtype("<f4")
#: what each backend's model is called on Triton (the ``platform`` of model metadata)
PLATFORMS = {"onnxruntime": "onnx_onnxv1", "tensorrt": "tensorrt_plan", "torch": "pytorch_libtorch"}
EXTENSIONS = ("binary_tensor_data",)


class ProtocolError(ValueError):
    """A v2 request that cannot be served as given; the message names the problem."""


@dataclass(frozen=True)
class ModelInfo:
    """What the protocol says about the served model. ``quantile_levels`` is empty when it has none."""

    name: str
    version: str
    platform: str
    context_length: int
    horizon: int
    quantile_levels: tuple[float, ...] = ()

    def output_shapes(self) -> dict[str, list[int]]:
        """Each output's shape, ``-1`` for the batch axis, in the order the model returns them."""
        shapes = {FORECAST: [-1, self.horizon]}
        if self.quantile_levels:
            shapes[QUANTILES] = [-1, len(self.quantile_levels), self.horizon]
        return shapes

    def metadata(self) -> dict:
        """The model metadata document (``GET /v2/models/{name}``)."""
        out = {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [_tensor(INPUT, [-1, self.context_length])],
            "outputs": [_tensor(name, shape) for name, shape in self.output_shapes().items()],
        }
        if self.quantile_levels:
            out["parameters"] = {"quantile_levels": list(self.quantile_levels)}
        return out


def server_metadata() -> dict:
    """The server metadata document (``GET /v2``)."""
    return {"name": "prunecast", "version": __version__, "extensions": list(EXTENSIONS)}


@dataclass(frozen=True)
class InferRequest:
    """A parsed infer request: the validated batch, the outputs asked for (name -> binary?), the
    request id to echo and the timeout the client set (Triton's ``timeout`` parameter, in µs)."""

    context: np.ndarray
    outputs: dict[str, bool]
    id: str | None = None
    timeout_s: float | None = None


def parse_infer(body: bytes, header_length: str | None, model: ModelInfo) -> InferRequest:
    """Parse and validate one infer request body; ``header_length`` is the framing header, if sent."""
    header, binary = _split(body, header_length)
    try:
        request = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        if header_length is None:
            raise ProtocolError(
                f"request body is not valid JSON: {exc} (binary tensors after the JSON need the "
                f"{HEADER_LENGTH} header)"
            ) from None
        raise ProtocolError(f"request header ({header_length} bytes) is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise ProtocolError("request must be a JSON object with 'inputs'")
    parameters = _object(request.get("parameters", {}), "request parameters")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"request id must be a string, got {type(request_id).__name__}")
    context = _context(request.get("inputs"), binary, header_length is not None, model)
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise ProtocolError(f"parameter binary_data_output must be true or false, got {binary_default!r}")
    outputs = _outputs(request.get("outputs"), binary_default, model)
    return InferRequest(context, outputs, request_id, _timeout(parameters.get("timeout")))


def encode_infer(
    request: InferRequest, results: dict[str, np.ndarray], model: ModelInfo
) -> tuple[bytes, int | None]:
    """The response body for ``results`` and, when any output is binary, its JSON header's length."""
    tensors, chunks = [], []
    for name, binary in request.outputs.items():
        array = np.ascontiguousarray(results[name], dtype=_WIRE)
        tensor = {"name": name, "datatype": DATATYPE, "shape": list(array.shape)}
        if binary:
            tensor["parameters"] = {"binary_data_size": array.nbytes}
            chunks.append(array.tobytes())
        else:
            tensor["data"] = array.reshape(-1)
        tensors.append(tensor)
    response = {"model_name": model.name, "model_version": model.version}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = tensors
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join((header, *chunks)), len(header)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary part of a body, checking the framing header against its size."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise ProtocolError(f"{HEADER_LENGTH} must be a byte count, got {header_length!r}") from None
    if not 0 < length <= len(body):
        raise ProtocolError(
            f"malformed binary framing: {HEADER_LENGTH} is {length} but the body has {len(body)} bytes"
        )
    view = memoryview(body)
    return view[:length], view[length:]


def _context(inputs, binary: memoryview, framed: bool, model: ModelInfo) -> np.ndarray:
    """The ``context`` input as a validated ``[n, L]`` float32 batch."""
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError(f"request must list its inputs: expected [{{'name': '{INPUT}', ...}}]")
    names = [tensor.get("name") if isinstance(tensor, dict) else None for tensor in inputs]
    unknown = [name for name in names if name != INPUT]
    if unknown:
        raise ProtocolError(f"unknown input {unknown[0]!r}: the model takes one input, {INPUT!r}")
    if len(inputs) > 1:
        raise ProtocolError(f"input {INPUT!r} is given {len(inputs)} times")
    tensor = inputs[0]
    parameters = _object(tensor.get("parameters", {}), f"input {INPUT!r} parameters")
    if "shared_memory_region" in parameters:
        raise ProtocolError(f"input {INPUT!r}: shared memory is not supported; send the data in the body")
    datatype = tensor.get("datatype")
    if datatype != DATATYPE:
        raise ProtocolError(f"input {INPUT!r}: datatype {datatype!r} is not supported; expected {DATATYPE}")
    shape = tensor.get("shape")
    L = model.context_length
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or shape[0] < 1
        or shape[1] != L
    ):
        raise ProtocolError(f"input {INPUT!r}: shape {shape} does not match the model's [-1, {L}] (n >= 1)")
    count = shape[0] * L
    size = parameters.get("binary_data_size")
    if size is not None:
        array = _binary_input(size, "data" in tensor, binary, framed, count)
    else:
        if len(binary):
            raise ProtocolError(
                f"malformed binary framing: {len(binary)} bytes follow the JSON header but no input "
                "has a binary_data_size"
            )
        array = _json_input(tensor.get("data"), shape, count)
    try:
        return prepare_batch(array.reshape(shape), L)
    except InputError as exc:
        raise ProtocolError(f"input {INPUT!r}: {exc}") from None


def _binary_input(size, has_data: bool, binary: memoryview, framed: bool, count: int) -> np.ndarray:
    if not framed:
        raise ProtocolError(
            f"malformed binary framing: input {INPUT!r} has a binary_data_size but the request has no "
            f"{HEADER_LENGTH} header"
        )
    if has_data:
        raise ProtocolError(f"input {INPUT!r}: give either data or binary_data_size, not both")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ProtocolError(f"input {INPUT!r}: binary_data_size must be a byte count, got {size!r}")
    expected = count * _WIRE.itemsize
    if size != expected:
        raise ProtocolError(
            f"input {INPUT!r}: binary_data_size is {size} bytes, but its shape holds {count} FP32 values "
            f"({expected} bytes)"
        )
    if size != len(binary):
        raise ProtocolError(
            f"malformed binary framing: binary_data_size says {size} bytes, but {len(binary)} bytes "
            f"follow the {HEADER_LENGTH}-byte JSON header"
        )
    # a copy, not a view: the tensor starts wherever the JSON header ends, and onnxruntime's
    # vectorised reductions round differently on a misaligned buffer than on an aligned one
    return np.frombuffer(binary, dtype=_WIRE).astype(np.float32)


def _json_input(data, shape: list[int], count: int) -> np.ndarray:
    if data is None:
        raise ProtocolError(f"input {INPUT!r} has no data: give data or a binary_data_size")
    if not isinstance(data, list):
        raise ProtocolError(f"input {INPUT!r}: data must be a list of numbers, got {type(data).__name__}")
    try:
        with np.errstate(over="ignore"):  # beyond float32 range becomes inf, refused by validation
            array = np.asarray(data, dtype=np.float32)  # JSON null becomes NaN: a missing value
    except (TypeError, ValueError, OverflowError):
        raise ProtocolError(
            f"input {INPUT!r}: data must be numbers, flat or nested row-major (nested lists of equal length)"
        ) from None
    if array.size != count:
        raise ProtocolError(
            f"input {INPUT!r}: data holds {array.size} values, but shape {shape} needs {count}"
        )
    return array.reshape(-1)


def _outputs(requested, binary_default: bool, model: ModelInfo) -> dict[str, bool]:
    """Output name -> whether it goes back binary; every output when none are named."""
    available = list(model.output_shapes())
    if requested is None:
        return dict.fromkeys(available, binary_default)
    if not isinstance(requested, list) or not requested:
        raise ProtocolError("outputs must be a non-empty list of {'name': ...}; leave it out for all")
    out: dict[str, bool] = {}
    for tensor in requested:
        name = tensor.get("name") if isinstance(tensor, dict) else None
        if name not in available:
            point_only = " (a point-forecast model; quantiles come from Chronos-Bolt or TimesFM artifacts)"
            raise ProtocolError(
                f"unknown output {name!r}: the model has {', '.join(map(repr, available))}"
                + (point_only if name == QUANTILES else "")
            )
        parameters = _object(tensor.get("parameters", {}), f"output {name!r} parameters")
        for unsupported in ("classification", "shared_memory_region"):
            if parameters.get(unsupported):
                raise ProtocolError(f"output {name!r}: {unsupported.replace('_', ' ')} is not supported")
        binary = parameters.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise ProtocolError(f"output {name!r}: binary_data must be true or false, got {binary!r}")
        out[name] = binary
    return out


def _timeout(microseconds) -> float | None:
    if microseconds is None or microseconds == 0:
        return None
    if (
        isinstance(microseconds, bool)
        or not isinstance(microseconds, (int, float))
        or not (microseconds > 0 and math.isfinite(microseconds))
    ):
        raise ProtocolError(
            f"parameter timeout must be a positive number of microseconds, got {microseconds!r}"
        )
    return microseconds / 1e6


def _object(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _tensor(name: str, shape: list[int]) -> dict:
    return {"name": name, "datatype": DATATYPE, "shape": shape}
