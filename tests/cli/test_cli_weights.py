"""`segany weights list | fetch` and what every run says about its weights, through the real console script.

The success path of `fetch` is checked offline (HF_HUB_OFFLINE=1) against a Hugging Face cache written here
in the hub's own layout (models--OWNER--NAME/refs/main + snapshots/COMMIT/FILE), which the hub's reader
`scan_cache_dir` must accept; `hf_hub_download` then finds the file there without network, which is all a
fetch of an already cached file does.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import scan_cache_dir
from PIL import Image

from segany.model.weights import mark_random_checkpoint
from segany_cli_helpers import IMAGES, MODEL_FLAGS, run_segany

COMMIT = "2" * 40


def _hub_cache(folder: Path, checkpoint: Path) -> Path:
    """A Hugging Face cache holding sam2.1_hiera_tiny.pt of facebook/sam2.1-hiera-tiny (as a symlink)."""
    repo = folder / "models--facebook--sam2.1-hiera-tiny"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    (snapshot / "sam2.1_hiera_tiny.pt").symlink_to(checkpoint)
    return folder


@pytest.fixture(scope="module")
def cache_env(tiny_checkpoint: Path, tmp_path_factory) -> dict[str, str]:
    cache = _hub_cache(tmp_path_factory.mktemp("hub"), tiny_checkpoint)
    assert [r.repo_id for r in scan_cache_dir(cache).repos] == ["facebook/sam2.1-hiera-tiny"]
    return {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


def test_list_shows_every_variant_the_detector_and_what_is_cached(cache_env):
    result = run_segany("weights", "list", env=cache_env, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:] if line.strip()}
    assert len(rows) == 9
    tiny = rows["sam2.1_hiera_tiny"].split()
    assert tiny[1:4] == ["facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt", "~156"]
    assert tiny[-1].endswith(f"snapshots/{COMMIT}/sam2.1_hiera_tiny.pt")
    assert rows["sam2.1_hiera_large"].split()[1:4] == ["facebook/sam2.1-hiera-large", "sam2.1_hiera_large.pt", "~898"]
    assert rows["sam2.1_hiera_large"].split()[-1] == "no"
    assert "IDEA-Research/grounding-dino-tiny" in rows and rows["IDEA-Research/grounding-dino-tiny"].endswith("no")


def test_fetch_of_a_cached_checkpoint_succeeds_offline(cache_env):
    result = run_segany("weights", "fetch", "facebook/sam2.1-hiera-tiny", env=cache_env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sam2.1_hiera_tiny: already cached: ")


def test_fetch_offline_fails_at_once_with_the_download_command(cache_env):
    started = time.perf_counter()
    result = run_segany("weights", "fetch", "--all", env=cache_env, timeout=120)
    elapsed = time.perf_counter() - started
    assert result.returncode == 1
    assert "sam2.1_hiera_tiny: already cached" in result.stdout
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 7  # every variant but the cached one
    assert any("`hf download facebook/sam2-hiera-large sam2_hiera_large.pt`" in line for line in errors)
    assert elapsed < 20, elapsed  # seven failures, no retries (the interpreter start is most of it)


def test_fetch_of_an_unknown_name_is_a_usage_error(cache_env):
    result = run_segany("weights", "fetch", "sam3_giant", env=cache_env, timeout=120)
    assert result.returncode == 2 and "unknown weights 'sam3_giant'" in result.stderr


def test_an_uncached_model_fails_fast_offline_naming_the_fetch(cache_env, tmp_path):
    image = tmp_path / "x.png"
    Image.open(IMAGES / "chelsea.png").resize((64, 48)).save(image)
    started = time.perf_counter()
    result = run_segany("segment", image, "--point", "10,10", "--model", "sam2.1_hiera_small", *MODEL_FLAGS,
                        env=cache_env, timeout=120)
    assert time.perf_counter() - started < 15
    assert result.returncode == 1
    assert "hf download facebook/sam2.1-hiera-small sam2.1_hiera_small.pt" in result.stderr
    assert "--checkpoint PATH" in result.stderr


def test_every_run_on_random_weights_warns(tiny_checkpoint, tmp_path):
    marked = tmp_path / "random.pt"
    shutil.copyfile(tiny_checkpoint, marked)
    mark_random_checkpoint(marked)
    image = tmp_path / "x.png"
    Image.open(IMAGES / "chelsea.png").resize((64, 48)).save(image)
    for checkpoint, warned in ((marked, True), (tiny_checkpoint, False)):
        result = run_segany("segment", image, "--point", "10,10", "--checkpoint", checkpoint, *MODEL_FLAGS,
                            "--out", tmp_path / "out.json", timeout=300)
        assert result.returncode == 0, result.stderr
        assert ("holds RANDOM weights" in result.stderr) is warned, result.stderr
        assert "mask(s) ->" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch sees a GPU")
@pytest.mark.parametrize("command", [["serve", "--port", "1"], ["auto", "IMAGE"]])
def test_device_cuda_on_a_cpu_torch_says_how_to_fix_it(command, tmp_path):
    image = tmp_path / "x.png"
    Image.open(IMAGES / "chelsea.png").resize((64, 48)).save(image)
    args = [str(image) if part == "IMAGE" else part for part in command]
    result = run_segany(*args, "--device", "cuda", timeout=120)
    assert result.returncode == 2, result.stderr
    assert "--device cpu" in result.stderr
    if torch.version.cuda is None:
        assert "CPU-only build" in result.stderr and "download.pytorch.org/whl/cu" in result.stderr
