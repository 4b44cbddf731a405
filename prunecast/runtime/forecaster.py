"""The in-process runtime: load an artifact once, then forecast batches of series."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prunecast.export.manifest import FORECAST, QUANTILES, Manifest, load_manifest
from prunecast.runtime.backends import Backend, BackendOptions, open_backend
from prunecast.runtime.frame import forecast_frame
from prunecast.runtime.validation import prepare_batch


class Forecaster:
    """Forecasts from an exported artifact on one backend.

    Create it once with :meth:`load` and reuse it: the backend session, its threads and
    any device buffers live as long as the forecaster. :meth:`predict` is safe to call from
    several threads. Quantile models (Chronos-Bolt, TimesFM) also give :meth:`predict_quantiles`,
    at the levels in :attr:`quantile_levels`.
    """

    def __init__(self, backend: Backend, manifest: Manifest, art_dir: str | Path):
        self.backend = backend
        self.manifest = manifest
        self.art_dir = Path(art_dir)
        self.context_length = manifest.context_length
        self.horizon = manifest.horizon
        # levels of predict_quantiles, ascending; empty when the artifact has no quantile output
        self.quantile_levels: tuple[float, ...] = manifest.quantile_levels

    @classmethod
    def load(
        cls,
        art_dir: str | Path,
        backend: str = "auto",
        device: str = "auto",
        threads: int | None = None,
        max_batch: int | None = None,
        spinning: bool = True,
        split_batches: bool = True,
        verify: bool = True,
    ) -> Forecaster:
        """Open ``art_dir`` (checking every file's sha256 unless ``verify=False``) on ``backend``.

        ``backend`` is ``auto``, ``onnxruntime``, ``tensorrt`` or ``torch``; see
        :class:`~prunecast.runtime.backends.BackendOptions` for the rest.
        """
        manifest = load_manifest(art_dir, verify=verify)
        options = BackendOptions(
            device=device,
            threads=threads,
            spinning=spinning,
            max_batch=max_batch,
            split_batches=split_batches,
        )
        return cls(open_backend(backend, art_dir, manifest, options), manifest, art_dir)

    def predict(self, series, pad: bool = False) -> np.ndarray:
        """Forecasts ``[N, H]`` float32 for ``series``: a 2-D array ``[N, T]`` or a list of 1-D series.

        Each series needs at least ``context_length`` points (the last ones are used);
        ``pad=True`` left-pads shorter ones with their first value. Bad input is a
        ``ValueError`` naming the series.
        """
        return self.predict_batch(prepare_batch(series, self.context_length, pad))

    def predict_quantiles(self, series, pad: bool = False) -> np.ndarray:
        """Quantile forecasts ``[N, Q, H]`` float32, level ``q`` at index ``quantile_levels.index(q)``.

        The input is taken and checked as by :meth:`predict`; an artifact without a quantile output
        (TTM) is a ``ValueError``.
        """
        self._require_quantiles()
        batch = prepare_batch(series, self.context_length, pad)
        return self.predict_batch_outputs(batch, (QUANTILES,))[QUANTILES]

    def predict_with_quantiles(self, series, pad: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(forecast [N, H], quantiles [N, Q, H])`` from one model run (the forecast is the median)."""
        self._require_quantiles()
        out = self.predict_batch_outputs(
            prepare_batch(series, self.context_length, pad), (FORECAST, QUANTILES)
        )
        return out[FORECAST], out[QUANTILES]

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Forecasts for an already validated ``[N, L]`` float32 C-contiguous batch, split to the backend's max."""
        n = batch.shape[0]
        step = self.backend.max_batch
        if n <= step:
            return self.backend.run(batch)
        out = np.empty((n, self.horizon), dtype=np.float32)
        for start in range(0, n, step):
            out[start : start + step] = self.backend.run(batch[start : start + step])
        return out

    def predict_batch_outputs(self, batch: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        """``{name: array}`` for each of ``outputs`` (``forecast``, ``quantiles``) of a validated batch,
        each part of the batch run once for all of them."""
        unknown = [name for name in outputs if name not in self.manifest.output_names]
        if unknown:
            raise ValueError(
                f"{self.art_dir}: no output {unknown[0]!r}; the artifact has {list(self.manifest.output_names)}"
            )
        step = self.backend.max_batch
        if batch.shape[0] <= step:
            return self.backend.run_outputs(batch, outputs)
        parts = [
            self.backend.run_outputs(batch[i : i + step], outputs) for i in range(0, batch.shape[0], step)
        ]
        return {name: np.concatenate([part[name] for part in parts]) for name in outputs}

    def _require_quantiles(self) -> None:
        if not self.quantile_levels:
            raise ValueError(
                f"{self.art_dir}: the {self.manifest.family} artifact has no quantile output "
                f"({'TTM point forecasts' if self.manifest.family == 'ttm' else 'point forecasts only'}); "
                "use predict for its point forecasts, or export a quantile model (Chronos-Bolt, TimesFM)"
            )

    def forecast_frame(
        self,
        df,
        horizon: int | None = None,
        id_column: str | None = None,
        timestamp_column: str | None = None,
        target_column: str | list[str] | None = None,
        freq: str | None = None,
        fill: str = "error",
        quantiles: bool = False,
        pad: bool = False,
    ):
        """Forecasts for a panel DataFrame, as a long DataFrame of future-stamped rows.

        ``df`` is long (one row per series id, timestamp and value; the columns detected as
        ``unique_id/ds/y``, ``item_id/timestamp/target`` or ``id/timestamp/value`` unless named)
        or wide (a timestamp column and one column per series). The result has the id column
        (``unique_id`` for wide input), the timestamp column holding the ``horizon`` steps after
        each series' last timestamp at its frequency (inferred, or ``freq``), ``forecast``, and
        with ``quantiles`` one ``q<level>`` column per quantile level. ``fill`` handles missing
        values (``error``, ``ffill``, ``interpolate``, ``zero``, ``none``); ``pad`` left-pads
        series shorter than the context. Bad data is a ``DataError`` naming series and timestamp.
        """
        return forecast_frame(
            self, df, horizon, id_column, timestamp_column, target_column, freq, fill, quantiles, pad
        )

    def describe(self) -> dict:
        """The model and backend, as plain data (for ``/healthz`` and reports)."""
        return {
            "model": self.manifest.source_model,
            "family": self.manifest.family,
            "context_length": self.context_length,
            "horizon": self.horizon,
            "precision": self.manifest.precision,
            "quantile_levels": list(self.quantile_levels),
            **self.backend.describe(),
        }
