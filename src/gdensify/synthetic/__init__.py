"""Synthetic data generators: procedural objects in the Blender layout and indoor scenes in RealEstate10K chunks,
rendered exactly by analytic ray casting, for tests, demos and small training runs.

    objects   `generate_objects`: textured primitives in the object protocol's frame (`gdensify.data.protocol`)
    scenes    `generate_scenes`: textured rooms with camera paths and an evaluation index
The readers (`gdensify.data`) never import these modules.
"""

from .objects import generate_objects, render_object
from .scenes import generate_scenes

__all__ = ["generate_objects", "render_object", "generate_scenes"]
