"""Server options: defaults, SEGANY_... variables, command-line flags, validation, documentation."""
from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import fields

import pytest

from fixture_paths import REPO
from segany.errors import InvalidInput
from segany.server.settings import ServerSettings, add_settings_arguments, settings_from


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_are_safe():
    settings = settings_from(environ={})
    assert settings.host == "127.0.0.1" and settings.port == 8000
    assert settings.api_keys == ()
    assert settings.allow_url_fetch is False
    assert settings.model == "sam2.1_hiera_tiny"


def test_environment_then_flags():
    environ = {"SEGANY_PORT": "9000", "SEGANY_API_KEY": "a, b,,", "SEGANY_ALLOW_URL_FETCH": "yes",
               "SEGANY_EMBEDDING_CACHE_MB": "0.5", "SEGANY_CHECKPOINT": ""}
    from_env = settings_from(_parse(), environ)
    assert from_env.port == 9000 and from_env.api_keys == ("a", "b") and from_env.allow_url_fetch is True
    assert from_env.embedding_cache_bytes == 2**19 and from_env.checkpoint is None
    flags = settings_from(_parse("--port", "9100", "--api-key", "x", "--api-key", "y", "--no-allow-url-fetch"),
                          environ)
    assert flags.port == 9100 and flags.api_keys == ("x", "y") and flags.allow_url_fetch is False


@pytest.mark.parametrize(
    ("environ", "field"),
    [
        ({"SEGANY_PORT": "eighty"}, "SEGANY_PORT"),
        ({"SEGANY_PRELOAD": "perhaps"}, "SEGANY_PRELOAD"),
        ({"SEGANY_MAX_QUEUE": "0"}, "max_queue"),
        ({"SEGANY_REQUEST_TIMEOUT_S": "-1"}, "request_timeout_s"),
        ({"SEGANY_DTYPE": "int8"}, "dtype"),
        ({"SEGANY_ENCODER_RUNTIME": "tensorrt"}, "encoder_runtime"),
    ],
)
def test_bad_values_name_the_option(environ, field):
    with pytest.raises(InvalidInput) as caught:
        settings_from(environ=environ)
    assert caught.value.field == field


def test_with_revalidates():
    with pytest.raises(InvalidInput):
        ServerSettings().with_(max_prompts=0)


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "segany.server", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0
    assert "--checkpoint-dir" in result.stdout and "SEGANY_API_KEY" in result.stdout


def test_unknown_default_model_is_a_clear_startup_error():
    result = subprocess.run([sys.executable, "-m", "segany.server", "--model", "sam9_giant", "--port", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "sam9_giant" in result.stderr


def test_every_option_is_documented():
    """Each option's flag is in the server documentation (docs/api.md, or the guide it points to)."""
    docs = "".join((REPO / "docs" / name).read_text() for name in ("api.md", "labelling-tools.md"))
    flags = [option.metadata.get("flag") or "--" + option.name.replace("_", "-") for option in fields(ServerSettings)]
    missing = [flag for flag in flags if f"`{flag}" not in docs]
    assert not missing, f"options missing from docs/api.md: {missing}"
