"""Official checkpoint loading: every variant strictly, and clear errors for bad files and ids."""
from __future__ import annotations

import json

import huggingface_hub.constants
import pytest
import torch

import segany
from fixture_paths import FIXTURES
from segany.errors import CheckpointError, ModelNotFound
from segany.model.weights import VIDEO_ONLY_PREFIXES, map_official_keys, read_checkpoint

SCHEMA = json.loads((FIXTURES / "sam2_checkpoint_schema.json").read_text())["variants"]


@pytest.mark.parametrize("variant", list(SCHEMA))
def test_every_variant_loads_strictly(make_checkpoint, variant):
    path = make_checkpoint(variant)
    model = segany.load_model(variant, checkpoint=path, device="cpu", dtype=torch.float32)
    official = read_checkpoint(path)
    mapped, skipped = map_official_keys(official)
    assert set(mapped) == set(model.state_dict())
    assert all(k.startswith(VIDEO_ONLY_PREFIXES) for k in skipped)
    assert len(mapped) + len(skipped) == len(SCHEMA[variant]["state_dict"])
    # Weights really arrived: a tensor equals the file's.
    assert torch.equal(model.mask_decoder.iou_token.weight, official["sam_mask_decoder.iou_token.weight"])
    # The variant is inferred from a bare file too.
    assert segany.load_model(path, device="cpu", dtype=torch.float32).variant == variant


def test_registry_matches_schema():
    assert segany.list_variants() == list(SCHEMA)
    for name, entry in SCHEMA.items():
        spec = segany.model.get_variant(name)
        assert (spec.hf_id, spec.checkpoint_file) == (entry["hf_id"], entry["checkpoint_file"])
        assert segany.model.get_variant(entry["hf_id"]).name == name


def test_checkpoint_of_another_size_is_named(make_checkpoint):
    with pytest.raises(CheckpointError, match="sam2.1_hiera_small.*not sam2.1_hiera_tiny"):
        segany.load_model("sam2.1_hiera_tiny", checkpoint=make_checkpoint("sam2.1_hiera_small"), device="cpu")


def test_truncated_checkpoint(tmp_path, tiny_checkpoint):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(tiny_checkpoint.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="truncated"):
        segany.load_model("sam2.1_hiera_tiny", checkpoint=cut, device="cpu")


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_checkpoint):
    sd = read_checkpoint(tiny_checkpoint)
    sd.pop("sam_mask_decoder.iou_token.weight")
    sd["sam_mask_decoder.surprise"] = torch.zeros(1)
    bad = tmp_path / "bad.pt"
    torch.save({"model": sd}, bad)
    with pytest.raises(CheckpointError) as err:
        segany.load_model("sam2.1_hiera_tiny", checkpoint=bad, device="cpu")
    assert "mask_decoder.iou_token.weight" in str(err.value)
    assert "mask_decoder.surprise" in str(err.value)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save({"model": [1, 2, 3]}, path)
    with pytest.raises(CheckpointError, match="state dict"):
        segany.load_model("sam2.1_hiera_tiny", checkpoint=path, device="cpu")


def test_unknown_name_lists_variants():
    with pytest.raises(ModelNotFound, match="sam2.1_hiera_tiny"):
        segany.load_model("sam3_giant")


def test_offline_uncached_id_fails_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFound, match="--checkpoint"):
        segany.load_model("facebook/sam2.1-hiera-tiny")


def test_cached_hub_file_is_used(monkeypatch, tmp_path, tiny_checkpoint):
    """A file in the Hugging Face cache layout resolves without network."""
    repo = tmp_path / "models--facebook--sam2.1-hiera-tiny"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    (snap / "sam2.1_hiera_tiny.pt").symlink_to(tiny_checkpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    model = segany.load_model("facebook/sam2.1-hiera-tiny", device="cpu", dtype=torch.float32)
    assert model.variant == "sam2.1_hiera_tiny"


def test_video_model_defaults_to_float32(tiny_checkpoint):
    """bfloat16 tracking falls below 0.98 mean mask IoU on the video goldens: the video model is float32 unless
    asked otherwise, also where load_model would pick bfloat16."""
    model = segany.load_video_model("sam2.1_hiera_tiny", checkpoint=tiny_checkpoint, device="cpu")
    assert model.image.dtype == torch.float32
    bf16 = segany.load_video_model("sam2.1_hiera_tiny", checkpoint=tiny_checkpoint, device="cpu", dtype="bfloat16")
    assert bf16.image.dtype == torch.bfloat16
