"""The model-patching layer: architecture table, steering vectors, training setups, folding."""

from steer_cli.patching.archs import ARCHITECTURES, ArchSpec, arch_for_config, locate
from steer_cli.patching.steering import PLACES, SteeringHandle, attach_steering

__all__ = ["ARCHITECTURES", "ArchSpec", "PLACES", "SteeringHandle", "arch_for_config", "attach_steering", "locate"]
