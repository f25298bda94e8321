"""File formats: standard 3DGS `.ply`, checkpoints, atomic writes."""

from .atomic import atomic_path
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .images import save_png, side_by_side
from .ply import load_ply, save_ply

__all__ = ["Checkpoint", "atomic_path", "load_checkpoint", "load_ply", "save_checkpoint", "save_ply", "save_png", "side_by_side"]
