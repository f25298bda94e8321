"""File formats: standard 3DGS `.ply`, checkpoints, atomic writes."""

from .atomic import atomic_path
from .ply import load_ply, save_ply

__all__ = ["atomic_path", "load_ply", "save_ply"]
