"""`segany bench`: discovers bench/bench_*.py and runs them with the model options and pass-through arguments."""
from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path

import pytest

from segany.cli.main import main
from segany_cli_helpers import run_segany

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def keep_signals():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture
def bench_dir(tmp_path) -> Path:
    """Two benchmarks that report what they were given, and one that fails."""
    script = textwrap.dedent("""
        import json, os, sys
        keys = ("SEGANY_MODEL", "SEGANY_CHECKPOINT", "SEGANY_DEVICE", "SEGANY_DTYPE")
        print("REPORT " + json.dumps({"name": os.path.basename(__file__), "argv": sys.argv[1:],
                                      "env": {k: os.environ.get(k) for k in keys}}))
    """)
    (tmp_path / "bench_alpha.py").write_text(script)
    (tmp_path / "bench_beta.py").write_text(script)
    (tmp_path / "bench_gamma.py").write_text("raise SystemExit(3)\n")
    (tmp_path / "_common.py").write_text("")  # helpers are not benchmarks
    return tmp_path


def _reports(text: str) -> list[dict]:
    return [json.loads(line[len("REPORT "):]) for line in text.splitlines() if line.startswith("REPORT ")]


def test_list_shows_the_packages_benchmarks():
    result = run_segany("bench", "--list")
    assert result.returncode == 0, result.stderr
    names = [line.split("\t")[0] for line in result.stdout.splitlines()]
    expected = sorted(p.stem[len("bench_"):] for p in (REPO / "bench").glob("bench_*.py"))
    assert names == expected and "batch" in names


def test_named_benchmarks_get_arguments_and_model_options(bench_dir, capfd, keep_signals):
    code = main(["bench", "--bench-dir", str(bench_dir), "beta", "bench_alpha", "--model", "sam2.1_hiera_small",
                 "--device", "cpu", "--dtype", "bfloat16", "--", "--images", "3", "--json"])
    assert code == 0
    reports = _reports(capfd.readouterr().out)
    assert [r["name"] for r in reports] == ["bench_beta.py", "bench_alpha.py"]  # in the order asked
    for report in reports:
        assert report["argv"] == ["--images", "3", "--json"]
        assert report["env"] == {"SEGANY_MODEL": "sam2.1_hiera_small", "SEGANY_CHECKPOINT": None,
                                 "SEGANY_DEVICE": "cpu", "SEGANY_DTYPE": "bfloat16"}


def test_all_benchmarks_run_and_a_failure_gives_status_1(bench_dir, capfd, keep_signals):
    code = main(["bench", "--bench-dir", str(bench_dir)])
    captured = capfd.readouterr()
    assert code == 1
    assert [r["name"] for r in _reports(captured.out)] == ["bench_alpha.py", "bench_beta.py"]
    assert "== gamma: exit 3" in captured.out and "failed: gamma" in captured.err


def test_a_folder_without_benchmarks_is_a_usage_error(tmp_path, capsys, keep_signals):
    assert main(["bench", "--bench-dir", str(tmp_path)]) == 2
    assert "no bench_*.py scripts" in capsys.readouterr().err
