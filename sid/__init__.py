"""Score identity Distillation (SiD) studies: networks, losses, distillation loop, metrics, Ray studies."""

__version__ = "0.1.0"
