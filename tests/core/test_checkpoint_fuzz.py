"""Checkpoints cannot lie: a SHA-256 catches damage, and no broken file escapes CheckpointError."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
import torch

from napari_difftt.core import io
from napari_difftt.core.inference import default_checkpoint, load_model
from napari_difftt.core.io import load_checkpoint, save_checkpoint
from napari_difftt.errors import CheckpointError, UnverifiedCheckpointWarning

FUZZ_CASES = 600


def _small_checkpoint() -> dict:
    return {
        "model": {"kind": "bch", "width": 4},
        "state_dict": {"w": torch.linspace(-1, 1, 64).reshape(8, 8), "n": torch.tensor(3)},
        "training": {"step": 7, "loss": [0.5, 0.25], "rng": torch.arange(16, dtype=torch.uint8)},
    }


def test_checksum_is_stored_and_verified(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", _small_checkpoint())
    raw = torch.load(path, weights_only=True)
    assert len(raw[io.CHECKSUM_KEY]) == 64  # hex SHA-256
    loaded = load_checkpoint(path)
    assert io.CHECKSUM_KEY not in loaded  # verified and removed: saving it again recomputes it
    torch.testing.assert_close(loaded["state_dict"]["w"], _small_checkpoint()["state_dict"]["w"])


def test_bit_rot_in_a_weight_is_caught(tmp_path):
    """64 bytes of one weight overwritten in place: the file still unpickles, the hash does not."""
    payload = _small_checkpoint()
    path = save_checkpoint(tmp_path / "m.pt", payload)
    blob = bytearray(path.read_bytes())
    weights = payload["state_dict"]["w"].numpy().tobytes()
    start = bytes(blob).index(weights)
    blob[start : start + 64] = bytes(64)
    path.write_bytes(bytes(blob))
    damaged = torch.load(path, weights_only=True)  # torch alone does not notice
    assert not torch.equal(damaged["state_dict"]["w"], payload["state_dict"]["w"])
    with pytest.raises(CheckpointError, match=r"m\.pt is damaged: its SHA-256"):
        load_checkpoint(path)


def test_a_changed_plain_value_is_caught(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, _small_checkpoint())
    raw = torch.load(path, weights_only=True)
    raw["training"]["step"] = 8
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="is damaged"):
        load_checkpoint(path)


def test_old_checkpoint_without_checksum_loads_with_a_note(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": "napari-difftt", "version": 1, **_small_checkpoint()}, path)
    with pytest.warns(UnverifiedCheckpointWarning, match=r"old\.pt: no checksum"):
        assert load_checkpoint(path)["training"]["step"] == 7


def test_bundled_model_still_loads():
    """Written before checksums: it must keep loading (with the note) until it is regenerated."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_model(default_checkpoint(), device="cpu")
    assert loaded.model.kind == loaded.checkpoint["model"]["kind"]
    if io.CHECKSUM_KEY not in torch.load(default_checkpoint(), weights_only=True):
        assert any(issubclass(w.category, UnverifiedCheckpointWarning) for w in caught)


def _fuzz_inputs(blob: bytes, rng: np.random.Generator):
    """(label, bytes): random bytes, text, truncations and in-place mutations of ``blob``."""
    for index in range(FUZZ_CASES):
        kind = index % 4
        if kind == 0:
            yield "random", rng.bytes(int(rng.integers(0, 2048)))
        elif kind == 1:
            yield "truncated", blob[: int(rng.integers(0, len(blob)))]
        elif kind == 2:
            data = bytearray(blob)
            for _ in range(int(rng.integers(1, 8))):
                data[int(rng.integers(len(data)))] = int(rng.integers(256))
            yield "mutated", bytes(data)
        else:
            text = rng.choice(["model", "{}", "PK\x03\x04", "format: napari-difftt", "\x80\x02}"])
            yield "text", (str(text) * int(rng.integers(1, 40))).encode("latin-1")


def test_fuzzed_files_only_ever_raise_checkpoint_error(tmp_path):
    """>= 500 seeded random, truncated and mutated files: each loads or raises CheckpointError
    naming the file; nothing else escapes (the issue found KeyError/IndexError tracebacks)."""
    blob = save_checkpoint(tmp_path / "good.pt", _small_checkpoint()).read_bytes()
    rng = np.random.default_rng(12)
    started, outcomes = time.perf_counter(), {"loaded": 0, "refused": 0}
    path = tmp_path / "fuzz.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedCheckpointWarning)
        for label, data in _fuzz_inputs(blob, rng):
            path.write_bytes(data)
            try:
                load_checkpoint(path)
            except CheckpointError as error:
                assert "fuzz.pt" in str(error), (label, error)
                outcomes["refused"] += 1
            else:
                outcomes["loaded"] += 1
    assert sum(outcomes.values()) == FUZZ_CASES >= 500
    assert outcomes["refused"] > 0.9 * FUZZ_CASES  # mutations of the pickle or the data
    assert time.perf_counter() - started < 30


def _model_checkpoint() -> dict:
    """A real (tiny) model's checkpoint, as load_model reads it."""
    from napari_difftt.core.models import TemplateTransformer

    model = TemplateTransformer("bch", ndim=2, pieces=2, width=2)
    return {"model": model.config(), "state_dict": model.state_dict(), "spacing": [1.0, 1.0],
            "training": {}, "versions": {"torch": str(torch.__version__)}}


def _field_paths(payload: dict) -> list[tuple[str, ...]]:
    """Every field load_model reads: the top level, model, model.velocity, model.prior."""
    paths = [(key,) for key in payload]
    paths += [("model", key) for key in payload["model"]]
    paths += [("model", "velocity", key) for key in payload["model"]["velocity"]]
    return paths + [("model", "prior", key) for key in payload["model"]["prior"]]


def _mutations(payload: dict):
    """(field, how, payload): each field deleted, of a wrong type, and an unknown one added."""
    import copy

    for path in _field_paths(payload):
        *parents, key = path
        for how in ("missing", "wrong type", "extra"):
            mutated = copy.deepcopy(payload)
            holder = mutated
            for parent in parents:
                holder = holder[parent]
            name = ".".join(path)
            if how == "missing":
                del holder[key]
            elif how == "wrong type":
                holder[key] = 7 if isinstance(holder[key], str) else "abc"
            else:
                holder[key + "_x"] = 1
                name += "_x"
            yield name, how, mutated


def test_every_field_mutated_with_a_valid_checksum_is_named(tmp_path):
    """The checksum only proves a file is the one written: a wrong field written with a valid
    one reached the model raw (KeyError: 'shape', '>' not supported between 'str' and 'int')."""
    from napari_difftt.core.schema import MODEL_OPTIONAL

    path = tmp_path / "m.pt"
    original = _model_checkpoint()
    count = 0
    for name, how, payload in _mutations(original):
        save_checkpoint(path, payload)  # a valid checksum: the content is what is wrong
        if how == "missing" and name.removeprefix("model.") in MODEL_OPTIONAL:
            # written before the field existed: it loads as the model it described then
            assert load_model(path, device="cpu").model.config() == original["model"]
            continue
        with pytest.raises(CheckpointError) as caught:
            load_model(path, device="cpu")
        assert "m.pt" in str(caught.value), (name, how, caught.value)
        assert f"'{name}'" in str(caught.value), (name, how, caught.value)
        count += 1
    assert count >= 80


@pytest.mark.parametrize(("field", "value", "message"), [
    ("spacing", "abc", r"field 'spacing' must be list or tuple, got str 'abc'"),
    ("spacing", [1.0, -2.0], r"field 'spacing' must be 2 positive numbers"),
    ("prior", {"type": "image", "ndim": 2}, r"field 'model.prior.shape' is missing"),
    ("weights", math.nan, r"weight 'state_dict.net.head.weight' holds \d+ NaN/Inf"),
])
def test_named_field_errors(tmp_path, field, value, message):
    payload = _model_checkpoint()
    if field == "prior":
        payload["model"]["prior"] = value
    elif field == "weights":
        payload["state_dict"]["net.head.weight"] = torch.full_like(
            payload["state_dict"]["net.head.weight"], value)
    else:
        payload[field] = value
    path = save_checkpoint(tmp_path / "m.pt", payload)
    with pytest.raises(CheckpointError, match=r"m\.pt: " + message):
        load_model(path, device="cpu")
