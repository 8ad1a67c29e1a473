"""`pdlab calibrate`: measure a GPU's step times with the model's own layer shapes (PyTorch, CUDA graphs,
NCCL) and write a GPU profile, or fit a profile's factors to a finished measured run (``--from-run``).

Modules: ``measure`` (standalone torch timing code, also shipped into the k8s Job), ``fit`` (efficiencies
from raw measurements), ``profile`` (calibrated profile with provenance, YAML writer), ``fromrun`` (replay
fit of a run), ``k8s_job`` (the Job that runs ``measure`` on a cluster GPU node), ``command`` (the CLI).
"""
