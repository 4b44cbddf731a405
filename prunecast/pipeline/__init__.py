"""Pipeline: ``prunecast run``, the whole job on one benchmark, and its report and plots."""

from prunecast.pipeline.job import VARIANTS, RunConfig, run

__all__ = ["VARIANTS", "RunConfig", "run"]
