"""Walk the README's own commands in a fresh virtualenv made from a clean clone, offline, and check each one.

Every line of the README's ```bash blocks is a command this test knows: it either runs it and checks its
exit status and a key line of its output, or names why it cannot run here (the two set-up scripts, which
the suite itself is run by; installs from the internet; a Ray cluster). A new README command that this
table does not know fails the test, so the README and this walk change together.

How the walk stays offline (no download from anywhere): the clone's `.venv` is made by the README's
`python3 -m venv .venv` (from this interpreter's base, `--without-pip`) and sees this interpreter's
site-packages through a `.pth` file, which stands in for `pip install torch ...` (torch and every
dependency are already there); `pip install -e .` then runs as `python -m pip install --no-index
--no-build-isolation --no-deps -e .`. The environment is offline (HF_HUB_OFFLINE=1, an empty Hugging Face
cache) and `SEGANY_CHECKPOINT` is a checkpoint marked as random weights: the situation `scripts/serve.sh`
sets up on an offline machine.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from fixture_paths import IMAGES
from live_server import free_port
from segany.model.weights import mark_random_checkpoint

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SETUP_COMMANDS = ("bash scripts/serve.sh", "bash scripts/test.sh")
BASH_BLOCK = re.compile(r"^```(?:bash|sh)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def readme_commands(text: str) -> list[str]:
    """The commands of the README's bash blocks, in order, without their trailing `# comments`."""
    commands = []
    for block in BASH_BLOCK.findall(text):
        for line in block.splitlines():
            command = re.sub(r"\s+#\s.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


@dataclass
class Walk:
    clone: Path
    env: dict[str, str]
    port: int
    server: subprocess.Popen | None = None
    ran: list[str] = field(default_factory=list)

    def run(self, command: str | list[str], timeout: float = 600) -> subprocess.CompletedProcess:
        argv = ["bash", "-c", command] if isinstance(command, str) else command
        return subprocess.run(argv, cwd=self.clone, env=self.env, capture_output=True, text=True, timeout=timeout)


def _ok(result: subprocess.CompletedProcess, command: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{command!r} exited {result.returncode}:\n{output[-3000:]}"
    return output


# ---- how each README command is walked -------------------------------------------------------------------
def make_venv(walk: Walk, command: str) -> None:
    base = getattr(sys, "_base_executable", sys.executable)
    _ok(walk.run([base, "-m", "venv", "--without-pip", ".venv"]), command)
    site = walk.clone / ".venv" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "_segany_readme_walk.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")


def pip_install_torch(walk: Walk, command: str) -> None:
    # Not run (it downloads torch); the .pth written by make_venv provides this interpreter's torch. The index
    # must be PyTorch's own: the CPU build for CPUs, a CUDA build for GPUs.
    assert re.search(r"--index-url https://download\.pytorch\.org/whl/(cpu|cu\d{3})$", command), command
    assert (walk.clone / ".venv" / "bin" / "python").is_file(), "the venv comes first"


def pip_install_segany(walk: Walk, command: str) -> None:
    args = shlex.split(command)[2:]  # after ".venv/bin/pip install"
    _ok(walk.run([".venv/bin/python", "-m", "pip", "install", "-q", "--no-index", "--no-build-isolation", "--no-deps",
                  *args]), command)
    found = _ok(walk.run([".venv/bin/python", "-c", "import segany; print(segany.__file__)"]), command)
    assert found.strip() == str(walk.clone / "src" / "segany" / "__init__.py")


def torch_check(walk: Walk, command: str) -> None:
    output = _ok(walk.run(command), command).strip()
    assert output == f"{torch.__version__} {torch.cuda.is_available()}", output


def serve_cuda(walk: Walk, command: str) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: `serve --device cuda` would start a server")
    result = walk.run(command, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "--device cpu" in result.stderr
    if torch.version.cuda is None:
        assert "CPU-only build" in result.stderr and "download.pytorch.org/whl/cu" in result.stderr


def version(walk: Walk, command: str) -> None:
    assert re.match(r"segany \d+\.\d+", _ok(walk.run(command), command))


def weights_list(walk: Walk, command: str) -> None:
    output = _ok(walk.run(command), command)
    assert re.search(r"^sam2\.1_hiera_tiny\s+facebook/sam2\.1-hiera-tiny\s+sam2\.1_hiera_tiny\.pt\s+~156 MB\s+no$",
                     output, re.MULTILINE), output
    assert "IDEA-Research/grounding-dino-tiny" in output


def weights_fetch(walk: Walk, command: str) -> None:
    started = time.perf_counter()
    result = walk.run(command, timeout=120)
    assert time.perf_counter() - started < 15  # at once: no retries (an interpreter start is most of it)
    assert result.returncode == 1
    assert "`hf download facebook/sam2.1-hiera-tiny sam2.1_hiera_tiny.pt`" in result.stderr, result.stderr


def segment(walk: Walk, command: str) -> None:
    output = _ok(walk.run(command), command)
    assert "holds RANDOM weights" in output  # the warning of every run on random weights
    assert "-> photo.overlay.png" in output and (walk.clone / "photo.overlay.png").is_file()


def auto(walk: Walk, command: str) -> None:
    output = _ok(walk.run(command), command)
    assert "mask(s) -> masks.json" in output
    json.loads((walk.clone / "masks.json").read_text())  # a whole JSON document


def batch(walk: Walk, command: str) -> None:
    output = _ok(walk.run(command), command)
    assert "1 image(s) labelled" in output, output
    assert json.loads((walk.clone / "coco.json").read_text())["images"][0]["file_name"].endswith("one.jpg")


def serve(walk: Walk, command: str) -> None:
    walk.server = subprocess.Popen(["bash", "-c", f"exec {command} --port {walk.port}"], cwd=walk.clone,
                                   env=walk.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while True:
        assert walk.server.poll() is None, walk.server.stderr.read() if walk.server.stderr else "server exited"
        try:
            if httpx.get(f"http://127.0.0.1:{walk.port}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.5)


def curl_readyz(walk: Walk, command: str) -> None:
    assert walk.server is not None, "`segany serve` comes before the curl"
    command = command.replace("127.0.0.1:8000", f"127.0.0.1:{walk.port}")
    if shutil.which("curl"):
        body = json.loads(_ok(walk.run(command), command))
    else:
        body = httpx.get(shlex.split(command)[-1], timeout=30).json()
    assert body["ready"] is True and body["weights"] == "random", body


def not_walked(reason: str) -> Callable[[Walk, str], None]:
    def skip(walk: Walk, command: str) -> None:
        walk.ran.append(f"not walked ({reason}): {command}")
    return skip


WALKS: list[tuple[str, Callable[[Walk, str], None]]] = [
    (r"python3 -m venv \.venv", make_venv),
    (r"\.venv/bin/pip install torch --index-url \S+", pip_install_torch),
    (r"\.venv/bin/pip install -e \S+", pip_install_segany),
    (r'\.venv/bin/python -c "import torch; print\(torch.__version__, torch.cuda.is_available\(\)\)"', torch_check),
    (r"(\.venv/bin/)?segany serve --device cuda", serve_cuda),
    (r"segany --version", version),
    (r"segany weights list", weights_list),
    (r"segany weights fetch sam2\.1_hiera_tiny", weights_fetch),
    (r"segany segment photo\.jpg --point \d+,\d+ --format overlay", segment),
    (r"segany auto photo\.jpg( --points-per-side \d+)? --out masks\.json", auto),
    (r"segany batch photos/ --out coco\.json( --points-per-side \d+)?", batch),
    (r"segany serve", serve),
    (r"curl -s http://127\.0\.0\.1:8000/readyz", curl_readyz),
    (r"segany (serve|batch) .*--ray.*", not_walked("needs a Ray cluster; tests/cli/test_ray_serve.py and "
                                                  "test_batch_modes.py run it on a local instance")),
    (r"SEGANY_SHARED=\S+ bash scripts/test\.sh", not_walked("the suite itself")),
]


def walk_for(command: str) -> Callable[[Walk, str], None]:
    for pattern, handler in WALKS:
        if re.fullmatch(pattern, command):
            return handler
    raise AssertionError(f"README command {command!r} is not walked by tests/test_readme.py: add it to WALKS")


def test_readme_keeps_the_two_setup_commands_first() -> None:
    assert readme_commands(README.read_text())[:2] == list(SETUP_COMMANDS)


def test_every_readme_command_is_known() -> None:
    for command in readme_commands(README.read_text())[2:]:
        walk_for(command)


@pytest.fixture
def walk(tmp_path: Path, tiny_checkpoint: Path) -> Iterator[Walk]:
    clone = tmp_path / "segany"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, capture_output=True, timeout=120)
    photo = Image.open(IMAGES / "chelsea.png").convert("RGB").resize((160, 106))
    photo.save(clone / "photo.jpg", quality=90)
    (clone / "photos").mkdir()
    photo.save(clone / "photos" / "one.jpg", quality=90)
    checkpoint = tmp_path / "sam2.1_hiera_tiny-random.pt"
    shutil.copyfile(tiny_checkpoint, checkpoint)
    mark_random_checkpoint(checkpoint)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SEGANY_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=f"{clone / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1",
               HF_HUB_CACHE=str(tmp_path / "hub"), SEGANY_CHECKPOINT=str(checkpoint), SEGANY_DEVICE="cpu",
               SEGANY_DTYPE="float32", SEGANY_DATA_DIR=str(tmp_path / "data"))
    walk = Walk(clone, env, free_port())
    try:
        yield walk
    finally:
        if walk.server is not None and walk.server.poll() is None:
            walk.server.terminate()
            try:
                walk.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                walk.server.kill()


def test_readme_commands_do_what_the_readme_says(walk: Walk) -> None:
    commands = readme_commands((walk.clone / "README.md").read_text())
    assert commands[:2] == list(SETUP_COMMANDS)
    for command in commands[2:]:
        walk_for(command)(walk, command)
        walk.ran.append(command)
    assert any(command.startswith("segany segment") for command in walk.ran)
