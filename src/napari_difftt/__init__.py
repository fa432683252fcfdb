"""Diffeomorphic Template Transformers: topology-preserving segmentation (library, CLI, napari).

The heavy parts (torch, napari) are imported lazily by the modules that need them, so
``import napari_difftt`` and the napari plugin menu stay fast.
"""

__version__ = "0.1.0"
