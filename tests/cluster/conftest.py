"""Cluster test fixtures live in :mod:`cluster_support` so test modules can import helpers."""

from .cluster_support import (
    clients,
    cluster,
    prefix,
    private_redis,
    pytest_collection_modifyitems,
    store,
)

__all__ = [
    "clients",
    "cluster",
    "prefix",
    "private_redis",
    "pytest_collection_modifyitems",
    "store",
]
