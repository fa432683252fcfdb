"""Pure torch/numpy core: grids, flows, priors, networks, training. Never imports Qt or napari."""
