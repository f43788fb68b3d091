"""Which images a batch run labels: a folder, a glob pattern, a text file of paths, or one image.

Every image gets a COCO `file_name` that stays the same between runs (resuming matches images by it):
relative to the folder, to the glob's fixed leading directory, or to the list file's folder for
relative entries (absolute entries keep their absolute path).
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from segany.errors import InvalidInput

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".avif", ".heic", ".heif")
LIST_SUFFIXES = (".txt", ".lst", ".list")
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class ImageItem:
    """One image to label: where to read it and the name it has in the COCO file."""

    path: str  # readable path (absolute)
    file_name: str  # COCO images[].file_name, POSIX separators


def find_images(source: str | os.PathLike) -> list[ImageItem]:
    """Resolve a batch INPUT to its images, sorted by file_name, duplicates removed.

    A folder is searched recursively for image suffixes (hidden files and folders skipped); a pattern with
    `*`, `?` or `[` is a glob (`**` recurses); a `.txt`/`.lst`/`.list` file holds one path per line (`#`
    starts a comment); any other existing file is a single image. Raises InvalidInput (field "input") when
    the source does not exist or holds no image.
    """
    text = os.fspath(source)
    if _GLOB_CHARS & set(text) and not os.path.exists(text):
        items = _from_glob(text)
    elif os.path.isdir(text):
        items = _from_folder(Path(text))
    elif os.path.isfile(text) and text.lower().endswith(LIST_SUFFIXES):
        items = _from_list(Path(text))
    elif os.path.isfile(text):
        path = Path(text).resolve()
        items = [ImageItem(str(path), path.name)]
    else:
        raise InvalidInput(f"input {text!r}: no such file, folder or matching glob", "input")
    unique = {item.file_name: item for item in items}
    if not unique:
        raise InvalidInput(f"input {text!r} holds no image (looked for {', '.join(IMAGE_SUFFIXES)})", "input")
    return [unique[name] for name in sorted(unique)]


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _from_folder(root: Path) -> list[ImageItem]:
    root = root.resolve()
    items = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in files:
            path = Path(folder) / name
            if not name.startswith(".") and _is_image(path):
                items.append(ImageItem(str(path), path.relative_to(root).as_posix()))
    return items


def _glob_root(pattern: str) -> Path:
    """The pattern's leading directories that contain no glob character."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _from_glob(pattern: str) -> list[ImageItem]:
    root = _glob_root(pattern).resolve()
    items = []
    for match in glob.glob(pattern, recursive=True):
        path = Path(match).resolve()
        if path.is_file() and _is_image(path):
            items.append(ImageItem(str(path), _relative_name(path, root)))
    return items


def _from_list(list_file: Path) -> list[ImageItem]:
    base = list_file.resolve().parent
    items = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        given = Path(entry).expanduser()
        path = given if given.is_absolute() else base / given
        # Listed files are taken as images whatever their suffix; unreadable ones are skipped at decode time.
        name = given.as_posix() if given.is_absolute() else _relative_name(path.resolve(), base)
        items.append(ImageItem(str(path.resolve()), name))
    return items


def _relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # outside the root (a symlink, or `..` in a list): keep it unambiguous
        return path.as_posix()
