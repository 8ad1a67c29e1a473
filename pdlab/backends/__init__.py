"""Backends: deploy a topology locally (processes) or on Kubernetes; see `base` for the protocol."""

from pdlab.backends.base import Backend, Deployment, Endpoint, get_backend
from pdlab.backends.local import (
    LocalBackend,
    LocalDeployment,
    capacity,
    cleanup_local,
    deploy_and_hold,
)

__all__ = [
    "Backend",
    "Deployment",
    "Endpoint",
    "LocalBackend",
    "LocalDeployment",
    "capacity",
    "cleanup_local",
    "deploy_and_hold",
    "get_backend",
]
