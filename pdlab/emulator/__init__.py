"""Emulated SGLang worker: SGLang's HTTP surface with timing from a GPU performance model.

Modules: ``perfmodel`` (step cost, KV pool sizing, KV transfer), ``engine`` (clock-agnostic scheduler and
``simulate`` in virtual time), ``driver`` (real-time loop), ``worker`` (engine + metrics + PD handoff),
``server`` (HTTP), ``bootstrap`` (PD handoff sockets), ``api`` (JSON shapes), ``tokens``, ``metrics``, ``cli``.
"""

from pdlab.emulator.engine import Engine, EngineConfig, RequestTiming, SimRequest, simulate
from pdlab.emulator.perfmodel import StepCost, kv_pool_tokens, kv_transfer_time, step_time

__all__ = ["Engine", "EngineConfig", "RequestTiming", "SimRequest", "StepCost", "kv_pool_tokens",
           "kv_transfer_time", "simulate", "step_time"]
