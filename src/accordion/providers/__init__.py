"""Providers create, list and delete node containers by name."""

from __future__ import annotations

from accordion.config import ClusterConfig
from accordion.paths import ClusterPaths
from accordion.providers.base import Provider


def make_provider(config: ClusterConfig, paths: ClusterPaths) -> Provider:
    if config.provider == "local":
        from accordion.providers.local import LocalProvider

        return LocalProvider(config, paths)
    if config.provider == "kubernetes":
        from accordion.providers.kubernetes import KubernetesProvider

        return KubernetesProvider(config, paths)
    if config.provider == "hosts":
        from accordion.providers.hosts import HostsProvider

        return HostsProvider(config, paths)
    raise ValueError(f"unknown provider {config.provider!r}")
