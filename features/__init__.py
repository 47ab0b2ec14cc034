"""Descriptors of model, GPU, layout, workload and engine, and the physics model built on them."""

from features.errors import InfeasibleError, InputError, UnknownNameError
from features.specs import EngineConfig, GPUSpec, Layout, LengthDist, ModelSpec, Scenario, Workload

__all__ = [
    "EngineConfig", "GPUSpec", "InfeasibleError", "InputError", "Layout", "LengthDist", "ModelSpec",
    "Scenario", "UnknownNameError", "Workload",
]
