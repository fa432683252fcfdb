"""Freed CPU memory reused (core.allocator): counted by the page faults of a network pass, in
fresh processes (the settings are process-wide and cannot be undone)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from napari_difftt.core.allocator import ENVIRONMENT, OPT_OUT, _glibc


def _huge_pages_always() -> bool:
    """Transparent huge pages for every mapping: fresh tensors then fault 512 × less often."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as file:
            return "[always]" in file.read()
    except OSError:
        return False


pytestmark = [
    pytest.mark.skipif(_glibc() is None, reason="the policy is glibc's mallopt"),
    pytest.mark.skipif(_huge_pages_always(), reason="huge pages hide the faults counted here"),
]

# In a fresh interpreter: apply (or not), then count the minor page faults of the third of three
# passes of a U-Net (width 4, 64³) on the main thread, and the same on a thread started
# afterwards. With glibc's defaults each pass maps most of its tensors afresh (≈ 11000 faults).
PROBE = """
import json, resource, threading
import torch
from napari_difftt.core import allocator
status = {apply}
from napari_difftt.core.models import TemplateTransformer
torch.set_num_threads(1)
model = TemplateTransformer("unet", ndim=3, width=4).eval()
image = torch.zeros(1, 1, 64, 64, 64)
def faults():
    with torch.inference_mode():
        for _ in range(3):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            model(image)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
main = faults()
seen = []
thread = threading.Thread(target=lambda: seen.append(faults()))
thread.start(); thread.join()
print(json.dumps({{"status": status, "main": main, "thread": seen[0],
                   "again": allocator.reuse_freed_memory() == status}}))
"""
# measured here: 10000–12000 faults with the system default, 0–1100 with the policy
SYSTEM_AT_LEAST, REUSED_AT_MOST = 7000, 3000


def _probe(apply: str, **environment: str) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    env.pop(OPT_OUT, None)
    env.update(environment)
    done = subprocess.run([sys.executable, "-c", PROBE.format(apply=apply)], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_freed_tensors_are_reused_on_the_main_thread_and_on_later_threads():
    system = _probe("None")
    assert min(system["main"], system["thread"]) > SYSTEM_AT_LEAST
    reused = _probe("allocator.reuse_freed_memory()")
    assert reused["status"].startswith("reused (glibc ")
    assert reused["again"]  # idempotent: the second call repeats the first's answer
    assert max(reused["main"], reused["thread"]) < REUSED_AT_MOST


def test_glibc_variables_before_the_start_do_the_same():
    """What the README gives a napari started on its own."""
    run = _probe("None", **ENVIRONMENT)
    assert max(run["main"], run["thread"]) < REUSED_AT_MOST


def test_release_gives_the_kept_memory_back():
    code = ("import torch\nfrom napari_difftt.core import allocator\n"
            "allocator.reuse_freed_memory()\n"
            "def resident():\n"
            "    line = [l for l in open('/proc/self/status') if l.startswith('VmRSS')][0]\n"
            "    return int(line.split()[1]) // 1024\n"
            "torch.ones(2**26)\nkept = resident()\nallocator.release_freed_memory()\n"
            "print(kept - resident())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert int(done.stdout.splitlines()[-1]) > 200  # MiB of the 256 MiB tensor given back


def test_the_opt_out_leaves_malloc_alone():
    run = _probe("allocator.reuse_freed_memory()", **{OPT_OUT: "1"})
    assert run["status"] == f"system default ({OPT_OUT} is set)"
    assert run["main"] > SYSTEM_AT_LEAST


def test_the_command_line_applies_it_before_running_a_command():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "napari-difftt"]
    assert script.value == "napari_difftt.cli:run"
    probe = PROBE.format(apply="allocator._status")
    code = ("import sys\nfrom napari_difftt import cli\nsys.argv = ['napari-difftt', '--version']"
            "\ntry:\n    cli.run()\nexcept SystemExit as exit:\n    assert exit.code == 0\n"
            + probe)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    run = json.loads(done.stdout.splitlines()[-1])
    assert run["status"].startswith("reused (glibc ") and run["main"] < REUSED_AT_MOST
