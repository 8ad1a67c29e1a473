"""Deployment: turn an experiment into running workers and a router (local processes or a Kubernetes
RoleBasedGroup) behind one `Deployment` protocol; backends come from `registry`. See docs/architecture.md."""
