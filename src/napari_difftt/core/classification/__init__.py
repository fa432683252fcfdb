"""Spatial-transformer classifiers (the paper's rotated-digit study): affine, TPS and
diffeomorphic transformers, the IDX digit data and the rotation protocol."""
