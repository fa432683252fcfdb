"""Resident memory (MiB, /proc/self/status VmRSS) around two predictions of the bundled model.

    PYTHONPATH=src python resident_memory.py system|reused SIZE [release]

``reused`` applies core.allocator.reuse_freed_memory first; ``release`` calls
core.allocator.release_freed_memory after each prediction is dropped.
"""

import gc
import resource
import sys

from napari_difftt.core.allocator import release_freed_memory, reuse_freed_memory

if sys.argv[1] == "reused":
    print(reuse_freed_memory())
# torch and the model after the policy, as the command line does
import torch

from napari_difftt.core.data import make_phantom
from napari_difftt.core.inference import default_checkpoint, load_model, predict_volume


def resident() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS"))
    return int(line.split()[1]) // 1024


torch.set_num_threads(2)
model = load_model(default_checkpoint(), device="cpu").model
image = make_phantom((int(sys.argv[2]),) * 3, seed=999).image
print("before", resident())
for _ in range(2):
    prediction = predict_volume(model, image)
    print("with result", resident())
    del prediction
    gc.collect()
    if len(sys.argv) > 3:
        release_freed_memory()
    print("after", resident())
print("peak", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
