"""pdlab: prefill/decode disaggregation experiments on Kubernetes, a notebook away."""

__version__ = "0.1.0"
