"""Test doubles that notebooks, tests and `pdlab` itself can use (e.g. the fake Kubernetes API server)."""
