"""``MeasuredLatency``: a model's latency on its serving backend, predicted from measured blocks.

``--target latency`` prunes to a fraction of this prediction::

    seconds = fixed + sum(table[linear shape] for each Linear) + per_element * activation elements
              + per_linear * Linear calls

``table`` is the :class:`~prunecast.bench.blocks.BlockTable` of the backend (each Linear timed
alone at its shape). The rest of the model's work, normalisation, softmax, activations,
transposes and the per-call cost of the graph, is not a Linear: it is fitted to whole-model
measurements on the same backend (the model as given, copies with every prunable group cut to a
half and a quarter of its units, one without every other block where the model has blocks, and
the pruned models ``prune`` checks on its way: :meth:`MeasuredLatency.calibrate`). The work that
comes with each layer whatever its width (a normalisation, a softmax gate, a layout change on a
small tensor) is the per-Linear term; only a probe with fewer layers tells it apart from the
fixed one, so without it depth pruning would be priced as if a removed block saved its Linears
alone. Each pruned model's prediction is recorded before it is
measured, so the report says how far the prediction holds. A whole model is timed side by side
with the reference, in alternating rounds, and its time is that ratio times the reference's: on
a shared machine the load moves between measurements, and a ratio taken in one moment holds.

Settings mirror the runtime's: onnxruntime with several threads runs a batch of at least
``2 * SPLIT_MIN_ROWS`` series as one single-threaded part per thread, side by side, so its
blocks are timed single-threaded at the part's batch (:func:`serving_parts`).
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from prunecast.bench.blocks import BACKENDS, BlockTable, BlockTiming, cache_root, quiet_median
from prunecast.compress.blocks import without
from prunecast.compress.cost import LinearShape, linear_shapes
from prunecast.compress.discover import pruning_spec
from prunecast.compress.groups import remove_units
from prunecast.data.csv import TimeAxisPolicy
from prunecast.models.base import ForecastModule

WHOLE_MODEL_TIMING = BlockTiming(warmup=3, rounds=5, min_calls=5, min_seconds=0.15)


@dataclass(frozen=True)
class LatencySettings:
    """The backend and settings the model will be served with, which latency is measured on."""

    backend: str = "onnxruntime"
    batch: int = 256
    threads: int = 2
    data: str = "ETTh1"
    """Where the whole-model probes' export takes its parity windows (any benchmark the model fits)."""
    time_axis: TimeAxisPolicy = TimeAxisPolicy()
    cache_dir: Path | None = None
    """Default: ``$PRUNECAST_CACHE`` or ``~/.cache/prunecast`` (see :func:`~prunecast.bench.blocks.cache_root`)."""

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"latency backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.batch < 1 or self.threads < 1:
            raise ValueError(
                f"latency batch and threads must be at least 1, got {self.batch}, {self.threads}"
            )


def serving_parts(settings: LatencySettings) -> tuple[int, int]:
    """``(series, threads)`` of each part the runtime runs a batch as (see ``BackendOptions.split_batches``:
    on onnxruntime with several threads every part, a batch too small to split included, is single-threaded)."""
    if settings.backend == "onnxruntime" and settings.threads > 1:
        from prunecast.runtime.backends.ort import SPLIT_MIN_ROWS

        parts = min(settings.threads, settings.batch // SPLIT_MIN_ROWS)
        return (math.ceil(settings.batch / parts) if parts >= 2 else settings.batch), 1
    return settings.batch, settings.threads


@dataclass
class Probe:
    """One whole model measured on the backend: what the fit of the non-Linear terms learns from."""

    label: str
    measured_ms: float
    linear_ms: float
    """The block table's figure for its Linears (the rest of ``measured_ms`` is not Linear work)."""
    activation_elements: int
    linears: int = 0
    """Linear calls in one forward pass (the layers that run)."""
    predicted_ms: float | None = None
    """What the fit predicted for it before it was measured (None for the first probes)."""


@dataclass
class Calibration:
    """The whole-model probes and the fit of ``measured - linear = fixed + per_element * elements
    + per_linear * linears`` to them, least squares on relative error, every term at least 0."""

    probes: list[Probe] = field(default_factory=list)
    fixed_ms: float = 0.0
    per_element_ns: float = 0.0
    per_linear_us: float = 0.0
    residual_ms: float = 0.0
    """The fit's error on the last pruned probe, added to every prediction after it."""
    blocks_measured: int = 0
    blocks_cached: int = 0

    def refit(self) -> None:
        y = np.array([p.measured_ms - p.linear_ms for p in self.probes])
        elements = np.array([p.activation_elements * 1e-6 for p in self.probes], dtype=float)
        linears = np.array([p.linears * 1e-3 for p in self.probes], dtype=float)
        w = 1 / np.array([p.measured_ms for p in self.probes])
        fixed, per_element, per_linear = _nonnegative_fit(np.stack([elements, linears], axis=1), y, w)
        # ms per 1e6 elements = ns per element; ms per 1e3 Linears = us per Linear
        self.fixed_ms, self.per_element_ns, self.per_linear_us = fixed, per_element, per_linear

    def non_linear_ms(self, probe: Probe) -> float:
        """The fit's figure for a probe's work outside its Linears."""
        return (
            self.fixed_ms
            + self.per_element_ns * 1e-6 * probe.activation_elements
            + self.per_linear_us * 1e-3 * probe.linears
        )


def _nonnegative_fit(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, ...]:
    """``y ~ a + x @ b`` by weighted least squares with ``a`` and every ``b`` at least 0: the
    unconstrained fit on every subset of the terms (the others held at 0), keeping the best that
    is admissible. ``x`` is one column per term (``[n]`` for one term); returns ``(a, *b)``."""
    x = x.reshape(len(y), -1)
    design = np.concatenate([np.ones((len(y), 1)), x], axis=1)
    terms = design.shape[1]
    best, best_err = np.zeros(terms), float(np.sum((w * y) ** 2))
    for mask in range(1, 2**terms):
        cols = [j for j in range(terms) if mask >> j & 1]
        if any(j and np.ptp(design[:, j]) == 0 for j in cols):
            continue  # the same in every probe: the fixed term's work, not this term's
        sub = design[:, cols] * w[:, None]
        if np.linalg.matrix_rank(sub) < len(cols):
            continue  # a term the probes cannot tell apart from the others
        coef = np.zeros(terms)
        coef[cols] = np.linalg.lstsq(sub, w * y, rcond=None)[0]
        err = float(np.sum((w * (design @ coef - y)) ** 2))
        if np.all(coef >= 0) and err < best_err:
            best, best_err = coef, err
    return tuple(float(c) for c in best)


@dataclass
class MeasuredLatency:
    """Predicts a forecast module's latency at ``settings`` from its Linear shapes (the
    :class:`~prunecast.compress.cost.LatencyModel` that ``prune`` ranks and budgets with).

    The fit is measured on first use (so a ``torchrun`` job measures on rank 0 alone, the only
    rank that asks) on ``reference`` (normally the unpruned model), a copy with every group at
    half its width and one at a quarter; :meth:`calibrate` adds a pruned model's measurement.
    """

    reference: ForecastModule
    settings: LatencySettings = LatencySettings()
    calibration: Calibration | None = None
    table: BlockTable | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.settings.check()
        self.reference = copy.deepcopy(self.reference).eval()
        self.batch_size, self.block_threads = serving_parts(self.settings)
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._anchor: Callable[[], object] | None = None
        self._anchor_s = 0.0

    def seconds(self, shapes: dict[str, LinearShape]) -> float:
        """Predicted seconds of one call at the settings' batch, from ``linear_shapes(module, batch_size)``:
        the fit, plus the fit's error on the last model :meth:`calibrate` measured (so that model
        is predicted as measured, and the models pruning reaches from it are corrected alike)."""
        cal = self._calibrated()
        return (
            (cal.fixed_ms + cal.residual_ms) / 1e3
            + self._linear(shapes)
            + cal.per_element_ns * 1e-9 * _activation_elements(shapes)
            + cal.per_linear_us * 1e-6 * len(shapes)
        )

    def predict(self, module: ForecastModule) -> float:
        """Predicted seconds of ``module``."""
        return self.seconds(linear_shapes(module, self.batch_size))

    def calibrate(self, module: ForecastModule) -> float:
        """Measure ``module`` as it will be served, refit to it, and return the measured seconds
        (its prediction before the measurement is kept beside it in the probes)."""
        predicted = self.predict(module) * 1e3
        cal = self._calibrated()
        probe = self._probe("pruned", module, predicted)
        cal.probes.append(probe)
        cal.refit()
        cal.residual_ms = probe.measured_ms - probe.linear_ms - cal.non_linear_ms(probe)
        return probe.measured_ms / 1e3

    def realise(self, module: ForecastModule) -> float:
        """Measured seconds of ``module``, exported and run as it will be served: its time
        relative to the reference, timed side by side, times the reference's."""
        self._ensure_anchor()
        return relative_time(
            serving_call(module, self.settings, self._workdir()), self._anchor, WHOLE_MODEL_TIMING
        ) * (self._anchor_s)

    def _ensure_anchor(self) -> None:
        """Load the reference as served and time it: every measurement is relative to it."""
        if self._anchor is None:
            self._anchor = serving_call(self.reference, self.settings, self._workdir())
            self._anchor_s = quiet_median(self._anchor, WHOLE_MODEL_TIMING)

    def _workdir(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="prunecast-latency-")
        return Path(self._tmp.name)

    def to_dict(self) -> dict:
        """Settings, the fit, and where the block table lives, for reports."""
        settings = asdict(self.settings)
        settings["time_axis"] = asdict(self.settings.time_axis)
        settings["cache_dir"] = str(self.settings.cache_dir) if self.settings.cache_dir else None
        return {
            "settings": settings,
            "block_batch": self.batch_size,
            "block_threads": self.block_threads,
            "calibration": asdict(self._calibrated()),
            "table": str(self._table().path),
            "table_entries": len(self._table().entries),
        }

    def _table(self) -> BlockTable:
        if self.table is None:
            self.table = BlockTable(
                self.settings.backend, self.block_threads, _cache(self.settings) / "latency"
            )
        return self.table

    def _linear(self, shapes: dict[str, LinearShape]) -> float:
        return float(sum(self._table().seconds(shapes.values())))

    def _calibrated(self) -> Calibration:
        if self.calibration is None:
            table = self._table()
            cached = len(table.entries)
            self._ensure_anchor()
            half = halved(self.reference)
            probes = [
                self._probe("full", self.reference),
                self._probe("half", half),
                self._probe("quarter", halved(half)),
            ]
            blocks = pruning_spec(self.reference).blocks
            if len(blocks) > 1:
                # fewer layers: the probe that alone tells the per-Linear term from the fixed one
                probes.append(self._probe("shallow", without(self.reference, blocks[::2])))
            cal = Calibration(probes, blocks_cached=cached)
            cal.refit()
            self.calibration = cal
        self.calibration.blocks_measured = self._table().measured
        return self.calibration

    def _probe(self, label: str, module: ForecastModule, predicted_ms: float | None = None) -> Probe:
        shapes = linear_shapes(module, self.batch_size)
        return Probe(
            label=label,
            measured_ms=(self._anchor_s if module is self.reference else self.realise(module)) * 1e3,
            linear_ms=self._linear(shapes) * 1e3,
            activation_elements=_activation_elements(shapes),
            linears=len(shapes),
            predicted_ms=None if predicted_ms is None else round(predicted_ms, 4),
        )


def latency_model_for(
    target: str, reference: ForecastModule, settings: LatencySettings | None = None
) -> MeasuredLatency | None:
    """The latency model :func:`~prunecast.compress.prune` needs for a ``target``: ``reference``'s
    blocks measured at ``settings`` (default :class:`LatencySettings`) for ``latency``, None for the
    targets it computes itself (the estimate, MACs, parameters)."""
    return MeasuredLatency(reference, settings or LatencySettings()) if target == "latency" else None


def halved(module: ForecastModule) -> ForecastModule:
    """A copy of ``module`` with every prunable group cut to half its units (the last ones):
    the second point the non-Linear terms are fitted to."""
    half = copy.deepcopy(module)
    for name in [g.name for g in pruning_spec(half).groups]:
        group = {g.name: g for g in pruning_spec(half).groups}[name]
        keep = max(math.ceil(group.units / 2), group.min_units)
        remove_units(half, group, list(range(keep, group.units)))
    return half


def serving_call(module: ForecastModule, settings: LatencySettings, workdir: Path) -> Callable[[], object]:
    """One forecast call of ``module`` as the runtime serves it at ``settings``: exported under
    ``workdir``, loaded by :class:`~prunecast.runtime.Forecaster`, on a fixed batch."""
    from prunecast.export.onnx_export import ExportConfig, export_onnx
    from prunecast.runtime import Forecaster

    art = Path(tempfile.mkdtemp(prefix="model-", dir=workdir))
    export_onnx(module, art, ExportConfig(batch_sizes=(1,), data=settings.data, time_axis=settings.time_axis))
    if settings.backend == "tensorrt":
        from prunecast.export.tensorrt import build_engine

        build_engine(art)
    fc = Forecaster.load(
        art,
        backend=settings.backend,
        device="cuda" if settings.backend == "tensorrt" else "cpu",
        threads=settings.threads,
        spinning=False,
    )
    inputs = np.random.default_rng(0).standard_normal((settings.batch, fc.context_length)).astype(np.float32)
    return lambda: fc.predict_batch(inputs)


def relative_time(call: Callable[[], object], anchor: Callable[[], object], timing: BlockTiming) -> float:
    """``call``'s time as a multiple of ``anchor``'s, timed in alternating rounds: the median of
    the rounds' ratios, which a change in the machine's load between rounds moves far less than
    either time alone (the two are measured side by side, never from different moments)."""
    ratios = []
    for _ in range(timing.rounds):
        one = replace(timing, rounds=1, warmup=1)
        ratios.append(quiet_median(call, one) / quiet_median(anchor, one))
    return float(np.median(ratios))


def _cache(settings: LatencySettings) -> Path:
    return settings.cache_dir or cache_root()


def _activation_elements(shapes: dict[str, LinearShape]) -> int:
    return sum(rows * (i + o) for rows, i, o in shapes.values())
