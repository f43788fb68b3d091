"""Where a loaded model's weights came from (`model.weights`), the fast offline failure, and device errors."""
from __future__ import annotations

import shutil
import time

import pytest
import torch
from huggingface_hub import constants as hf_constants

import segany
from segany.errors import InvalidInput, ModelNotFound
from segany.model import hub
from segany.model.weights import check_device, is_random_checkpoint, mark_random_checkpoint, read_checkpoint


@pytest.fixture(autouse=True)
def _fresh_hub_memory():
    hub.forget_failures()
    yield
    hub.forget_failures()


@pytest.fixture(scope="module")
def random_marked(tiny_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("marked") / "sam2.1_hiera_tiny-random.pt"
    shutil.copyfile(tiny_checkpoint, path)
    mark_random_checkpoint(path)
    return path


def test_a_given_file_is_file_weights(tiny_model, tiny_checkpoint):
    assert tiny_model.weights == "file"
    assert tiny_model.checkpoint_path == str(tiny_checkpoint)
    assert not is_random_checkpoint(tiny_checkpoint)


def test_a_marked_file_is_random_weights_with_the_same_tensors(random_marked, tiny_checkpoint):
    assert is_random_checkpoint(random_marked)
    original, marked = read_checkpoint(tiny_checkpoint), read_checkpoint(random_marked)
    assert original.keys() == marked.keys() and all(torch.equal(original[k], marked[k]) for k in original)
    model = segany.load_model(random_marked, device="cpu", dtype=torch.float32)
    assert model.weights == "random" and model.variant == "sam2.1_hiera_tiny"


def test_the_hub_cache_gives_official_weights(monkeypatch, tmp_path, tiny_checkpoint):
    repo = tmp_path / "models--facebook--sam2.1-hiera-tiny"
    snapshot = repo / "snapshots" / ("1" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)
    (snapshot / "sam2.1_hiera_tiny.pt").symlink_to(tiny_checkpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    model = segany.load_model("sam2.1_hiera_tiny", device="cpu", dtype=torch.float32)
    assert model.weights == "official"


def _assert_fast_failure_with_hint(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    for attempt in range(2):  # the second attempt is answered from what the process remembers
        started = time.perf_counter()
        with pytest.raises(ModelNotFound) as caught:
            segany.load_model("facebook/sam2.1-hiera-small", device="cpu")
        elapsed = time.perf_counter() - started
        assert elapsed < 3.0, f"attempt {attempt}: {elapsed:.1f} s"
        message = str(caught.value)
        assert "`hf download facebook/sam2.1-hiera-small sam2.1_hiera_small.pt`" in message
        assert "`segany weights fetch sam2.1_hiera_small`" in message
        assert "--checkpoint PATH" in message


def test_offline_uncached_fails_under_3s_with_the_fetch_command(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _assert_fast_failure_with_hint(monkeypatch, tmp_path)


def test_unreachable_hub_fails_under_3s_without_retries(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on 9
    _assert_fast_failure_with_hint(monkeypatch, tmp_path)
    assert "127.0.0.1:9 unreachable" in (hub.hub_unreachable() or "")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch sees a GPU")
def test_cuda_on_a_cpu_torch_says_how_to_fix_it():
    with pytest.raises(InvalidInput) as caught:
        check_device("cuda")
    message = str(caught.value)
    assert caught.value.field == "device"
    if torch.version.cuda is None:
        assert "CPU-only build" in message and "download.pytorch.org/whl/cu" in message
    assert "--device cpu" in message


def test_bad_device_name_is_invalid_input():
    with pytest.raises(InvalidInput, match="not a torch device"):
        check_device("gpu0")
    assert check_device("cpu") == torch.device("cpu")
