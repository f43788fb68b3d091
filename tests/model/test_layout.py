"""The src/ layout: a folder named `segany` in the working directory cannot shadow the installed package."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path



def test_a_segany_folder_in_the_working_directory_does_not_shadow_the_package(tmp_path: Path) -> None:
    # What a user has after `git clone ... segany` and running python from the parent folder.
    (tmp_path / "segany" / "src").mkdir(parents=True)
    (tmp_path / "segany" / "README.md").write_text("a checkout\n")
    # `python -c` puts the working directory first on sys.path, exactly where the shadowing used to happen.
    result = subprocess.run([sys.executable, "-c", "import segany; print(segany.load_model); print(segany.__file__)"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    function, location = result.stdout.split("\n")[:2]
    assert function.startswith("<function load_model")
    assert Path(location).resolve().parent.parent.name == "src", location
    assert not Path(location).resolve().is_relative_to(tmp_path)
