"""The image encoder compiled by OpenVINO (segany.model.encoder_runtime) against the eager one, with real OpenVINO:
same outputs, an on-disk cache that later loads reuse, and eager fallbacks that warn once.

The conversion of tiny takes ~10 s; the module converts once, into its own cache folder, and every other test
loads from it (or from a copy it damages).
"""
from __future__ import annotations

import copy
import logging
import os
import pickle
import shutil
import time
import warnings

import numpy as np
import pytest
import torch

import segany
from segany.errors import InvalidInput
from segany.model import encoder_runtime, fused
from segany.model.encoder_runtime import EncoderRuntimeWarning, choose_runtime

pytestmark = pytest.mark.slow

VARIANT = "sam2.1_hiera_tiny"


def load(checkpoint, dtype, runtime="openvino"):
    return segany.load_model(VARIANT, checkpoint=checkpoint, device="cpu", dtype=dtype, encoder_runtime=runtime)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().mean() / want.float().abs().mean()).item()


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory):
    """XDG_CACHE_HOME for the module: the OpenVINO entries live under it, never in the user's ~/.cache."""
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture
def use_cache(cache_home, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    return cache_home / "segany" / "openvino"


@pytest.fixture(scope="module")
def first_load(tiny_checkpoint, cache_home):
    """The float32 model whose load converted the encoder, and what the load logged."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("segany.model.encoder_runtime")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("XDG_CACHE_HOME", str(cache_home))
            model = load(tiny_checkpoint, torch.float32)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return model, [r.getMessage() for r in records]


@pytest.fixture(scope="module")
def images(chelsea_rgb, tiny_model):
    return tiny_model.preprocess(chelsea_rgb)


def embed(model, images):
    with torch.inference_mode():
        return model.encode_image(images)


def test_first_load_converts_says_so_and_matches_eager_in_float32(first_load, tiny_model, images, cache_home):
    model, messages = first_load
    assert model.compiled_encoder is not None
    entries = list((cache_home / "segany" / "openvino").iterdir())
    assert [e.name.startswith(VARIANT) for e in entries] == [True]  # one entry, no staging folder left behind
    assert {"encoder.xml", "encoder.bin", "key.json", "compiled"} <= {p.name for p in entries[0].iterdir()}
    assert any(m.startswith(f"converting the {VARIANT} image encoder (f32, 1024x1024)") for m in messages), messages
    assert any(m.startswith(f"compiled the {VARIANT} image encoder") for m in messages), messages

    got, want = embed(model, images), embed(tiny_model, images)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == torch.float32
        assert g.stride() == w.stride()  # the eager neck's channels-last layout, which the decoder reads fastest
        assert relative_error(g, w) < 1e-5
        torch.testing.assert_close(g, w, atol=2e-3, rtol=1e-3)


def test_masks_through_openvino_match_eager(first_load, tiny_predictor, chelsea_rgb):
    predictor = segany.Predictor(first_load[0])
    box = np.array([40, 30, 400, 280], dtype=np.float32)
    got = predictor.predict(predictor.embed(chelsea_rgb), box=box, multimask_output=True)
    want = tiny_predictor.predict(tiny_predictor.embed(chelsea_rgb), box=box, multimask_output=True)
    inter = np.logical_and(got.masks, want.masks).sum(axis=(-2, -1))
    union = np.logical_or(got.masks, want.masks).sum(axis=(-2, -1))
    assert (inter / np.maximum(union, 1) > 0.99).all()
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-3)


def test_a_later_load_reads_the_cache_and_bfloat16_compiles_from_the_same_graph(first_load, tiny_checkpoint,
                                                                                  tiny_model, images, use_cache,
                                                                                  caplog):
    before = sorted(p.name for p in use_cache.iterdir())
    with caplog.at_level(logging.INFO, logger="segany.model.encoder_runtime"):
        model = load(tiny_checkpoint, torch.bfloat16)
    messages = [r.getMessage() for r in caplog.records]
    loaded = f"loaded the {VARIANT} image encoder (bf16, 1024x1024) for OpenVINO from"
    assert any(m.startswith(loaded) for m in messages), messages
    assert not any(m.startswith("converting") for m in messages), messages
    assert sorted(p.name for p in use_cache.iterdir()) == before
    got = embed(model, images)
    assert model.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in got)
    for g, w in zip(got, embed(tiny_model, images)):
        assert relative_error(g, w) < 3e-2  # bfloat16 rounding; eager bfloat16 is as far (bench/README.md)


def test_a_batch_is_embedded_image_by_image(first_load, images):
    model = first_load[0]
    flipped = images.flip(-1)
    batch = embed(model, torch.cat([images, flipped]))
    for i, single in enumerate((images, flipped)):
        for b, s in zip(batch, embed(model, single)):
            assert b.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(b[i : i + 1], s, atol=0, rtol=0)


def test_calls_it_does_not_serve_run_eagerly(first_load, tiny_model, images):
    model = first_load[0]
    with fused.plain():
        plain_eager = embed(tiny_model, images)
        for got, want in zip(embed(model, images), plain_eager):
            assert torch.equal(got, want)  # the same weights through the same torch ops
    copied = copy.deepcopy(model)
    assert copied.compiled_encoder is model.compiled_encoder
    assert not copied.compiled_encoder.serves(copied, images)  # a copy has other weights
    assert model.compiled_encoder.serves(model, images)
    assert not model.compiled_encoder.serves(model, images[..., :512])  # another input size
    assert pickle.loads(pickle.dumps(model)).compiled_encoder is None


def test_the_runtime_follows_the_weights(first_load, tiny_checkpoint, images, use_cache):
    """Weights changed after the compile are the ones an embed uses: the compiled graph steps aside."""
    model = load(tiny_checkpoint, torch.float32)
    assert model.compiled_encoder.serves(model, images)
    with torch.no_grad():
        model.trunk.patch_embed.proj.bias.add_(1.0)
    assert not model.compiled_encoder.serves(model, images)


def test_a_damaged_cache_entry_is_converted_again_with_one_warning(first_load, tiny_checkpoint, cache_home, tmp_path,
                                                                   monkeypatch, images, tiny_model):
    root = tmp_path / "segany" / "openvino"
    shutil.copytree(cache_home / "segany" / "openvino", root)
    (entry,) = root.iterdir()
    with open(entry / "encoder.bin", "r+b") as handle:
        handle.truncate(1000)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load(tiny_checkpoint, torch.float32)
    ours = [w for w in caught if issubclass(w.category, EncoderRuntimeWarning)]
    assert len(ours) == 1 and "did not load" in str(ours[0].message) and "converted it again" in str(ours[0].message)
    assert model.compiled_encoder is not None
    assert (entry / "encoder.bin").stat().st_size > 1000
    for got, want in zip(embed(model, images), embed(tiny_model, images)):
        assert relative_error(got, want) < 1e-5


def _old_entry(root, name, megabytes, days_ago):
    """A cache entry as another version left it: a graph's worth of bytes, last loaded `days_ago`."""
    entry = root / name
    entry.mkdir(parents=True)
    (entry / "encoder.bin").write_bytes(b"\0" * int(megabytes * 1e6))
    (entry / "key.json").write_text("{}\n")
    when = time.time() - days_ago * 86400
    os.utime(entry / "key.json", (when, when))
    return entry


def test_a_load_holds_the_cache_to_its_budget_dropping_the_least_recently_loaded(first_load, tiny_checkpoint,
                                                                                  cache_home, tmp_path, monkeypatch,
                                                                                  caplog):
    root = tmp_path / "segany" / "openvino"
    shutil.copytree(cache_home / "segany" / "openvino", root)
    (current,) = root.iterdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    load(tiny_checkpoint, torch.float32)  # OpenVINO compiles its blob again for the copy's new path
    recent = _old_entry(root, f"{VARIANT}-recent", 2, days_ago=1)
    stale = _old_entry(root, f"{VARIANT}-stale", 2, days_ago=30)
    dead_staging = _old_entry(root, f".{VARIANT}-0.123.tmp", 1, days_ago=2)
    os.utime(dead_staging, (time.time() - 2 * 86400,) * 2)
    budget_gb = (encoder_runtime._folder_bytes(current) + 3e6) / 1e9  # room for the loaded entry and one more
    monkeypatch.setenv(encoder_runtime.CACHE_BUDGET_ENV, str(budget_gb))
    with caplog.at_level(logging.INFO, logger="segany.model.encoder_runtime"):
        model = load(tiny_checkpoint, torch.float32)
    assert model.compiled_encoder is not None
    assert sorted(p.name for p in root.iterdir()) == sorted([current.name, recent.name])
    assert time.time() - (current / "key.json").stat().st_mtime < 600  # this load counts as a use
    assert any(m.startswith(f"removed the OpenVINO cache entry {stale.name}") for m in caplog.messages), caplog.messages


def test_eviction_keeps_the_entry_in_use_even_past_the_budget(tmp_path):
    root = tmp_path / "openvino"
    in_use = _old_entry(root, "in-use", 3, days_ago=5)
    newer = _old_entry(root, "newer", 1, days_ago=1)
    older = _old_entry(root, "older", 1, days_ago=3)
    assert encoder_runtime.evict(root, in_use, budget_bytes=0) == [newer, older]
    assert [p.name for p in root.iterdir()] == ["in-use"]


@pytest.mark.parametrize("value", ["-1", "lots", "nan"])
def test_a_malformed_cache_budget_is_refused_before_any_conversion(value, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv(encoder_runtime.CACHE_BUDGET_ENV, value)
    with pytest.raises(InvalidInput, match=encoder_runtime.CACHE_BUDGET_ENV):
        load(tiny_checkpoint, torch.float32)
    assert not (tmp_path / "segany").exists()


def test_a_build_that_fails_leaves_the_model_eager_with_one_warning(tiny_checkpoint, tmp_path, monkeypatch, images,
                                                                    tiny_model):
    (tmp_path / "segany").write_text("a file where the cache folder should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load(tiny_checkpoint, torch.float32)
    ours = [w for w in caught if issubclass(w.category, EncoderRuntimeWarning)]
    assert len(ours) == 1 and "runs eagerly in torch" in str(ours[0].message)
    assert model.compiled_encoder is None
    for got, want in zip(embed(model, images), embed(tiny_model, images)):
        assert torch.equal(got, want)


def test_the_cli_says_where_it_loaded_the_encoder_from(first_load, tiny_checkpoint, use_cache, tmp_path, image_paths,
                                                       capsys):
    from segany.cli.main import main

    out = tmp_path / "mask.png"
    code = main(["segment", str(image_paths["chelsea.png"]), "--box", "40,30,400,280", "--model", str(tiny_checkpoint),
                 "--dtype", "float32", "--encoder-runtime", "openvino", "--out", str(out)])
    assert code == 0 and out.is_file()
    assert f"segany: loaded the {VARIANT} image encoder (f32, 1024x1024) for OpenVINO from" in capsys.readouterr().err


def test_the_cli_refuses_a_runtime_that_cannot_run_before_reading_weights(tiny_checkpoint, image_paths, capsys):
    from segany.cli.main import main

    code = main(["segment", str(image_paths["chelsea.png"]), "--box", "1,1,50,50", "--model", str(tiny_checkpoint),
                 "--dtype", "float16", "--encoder-runtime", "openvino"])
    assert code == 2
    assert "encoder runtime openvino runs float32 or bfloat16, not torch.float16" in capsys.readouterr().err


def test_auto_picks_openvino_only_for_bfloat16_on_avx512_bf16_without_amx(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(encoder_runtime, "onednn_runs_avx512", lambda: True)
    for flags, dtype, expected in [
        ({"avx512_bf16"}, torch.bfloat16, "openvino"),
        ({"avx512_bf16"}, torch.float32, "eager"),  # float32: OpenVINO measured slower
        ({"avx512_bf16", "amx_bf16"}, torch.bfloat16, "eager"),  # AMX: eager measured faster
        ({"avx2"}, torch.bfloat16, "eager"),
    ]:
        monkeypatch.setattr(encoder_runtime, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert choose_runtime("auto", cpu, dtype) == expected, (flags, dtype)
    monkeypatch.setattr(encoder_runtime, "onednn_runs_avx512", lambda: False)  # ONEDNN_MAX_CPU_ISA=AVX2
    assert choose_runtime("auto", cpu, torch.bfloat16) == "eager"


def test_the_runtime_is_asked_for_by_argument_or_environment(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("SEGANY_ENCODER_RUNTIME", "openvino")
    assert choose_runtime(None, cpu, torch.float32) == "openvino"
    assert choose_runtime("eager", cpu, torch.float32) == "eager"  # the argument wins
    monkeypatch.setenv("SEGANY_ENCODER_RUNTIME", "tensorrt")
    with pytest.raises(InvalidInput, match="'tensorrt' is not one of auto, eager, openvino"):
        choose_runtime(None, cpu, torch.float32)
    with pytest.raises(InvalidInput, match="runs on the CPU, not on cuda"):
        choose_runtime("openvino", torch.device("cuda"), torch.float32)
    with pytest.raises(InvalidInput, match="float32 or bfloat16, not torch.float16"):
        choose_runtime("openvino", cpu, torch.float16)


def test_the_light_modules_list_the_same_runtimes():
    from segany.cli.options import ENCODER_RUNTIME_CHOICES
    from segany.server.settings import RUNTIMES

    assert ENCODER_RUNTIME_CHOICES == RUNTIMES == encoder_runtime.RUNTIMES


def test_importing_openvino_through_segany_sends_no_telemetry():
    """OpenVINO's import hook reports usage to Google Analytics unless its telemetry module is missing."""
    import subprocess
    import sys

    code = ("import sys; from segany.model.encoder_runtime import import_openvino; ov = import_openvino(); "
            "print(sys.modules['openvino_telemetry'] is None, "
            "type(sys.modules['openvino.tools.ovc'].telemetry).__module__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "openvino.tools.ovc.telemetry_stub"]
