"""Scheduler adapters: each speaks one batch scheduler."""

from __future__ import annotations

from accordion.config import ClusterConfig
from accordion.paths import ClusterPaths
from accordion.providers.base import Provider
from accordion.schedulers.base import Scheduler


def make_scheduler(config: ClusterConfig, paths: ClusterPaths, provider: Provider) -> Scheduler:
    if config.scheduler == "slurm":
        from accordion.schedulers.slurm import SlurmScheduler

        return SlurmScheduler(config, paths, provider)
    if config.scheduler == "oar":
        from accordion.schedulers.oar import OarScheduler

        return OarScheduler(config, paths, provider)
    if config.scheduler == "gridengine":
        from accordion.schedulers.gridengine import GridEngineScheduler

        return GridEngineScheduler(config, paths, provider)
    raise ValueError(f"unknown scheduler {config.scheduler!r}")
