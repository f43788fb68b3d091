"""`segany weights list | fetch`: what each model needs from the Hugging Face hub, what is cached, fetching it.

Checkpoints go into the Hugging Face cache (`HF_HOME` / `HF_HUB_CACHE`, default ~/.cache/huggingface/hub),
where `segany.load_model`, `segany serve` and every command find them with no network.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segany.model import hub

# Download sizes (float32 .pt files: 4 bytes per parameter of the full video model), to plan disk and time.
_CHECKPOINT_MB = {"tiny": 156, "small": 184, "base_plus": 324, "large": 898}
_DETECTOR_MB = {"IDEA-Research/grounding-dino-tiny": 690}
DEFAULT_FETCH = "sam2.1_hiera_tiny"


@dataclass(frozen=True)
class WeightsItem:
    """One thing to download: a SAM 2 checkpoint file, or a detector repository (its model files)."""

    name: str  # variant name, or the detector's hub id
    repo_id: str
    filename: str | None  # None: the repository's model files (HUB_PATTERNS)
    size_mb: int | None
    kind: str  # "sam2" | "detector"

    def cached(self) -> Path | None:
        """The cached file (or snapshot folder), or None; never touches the network."""
        if self.filename is not None:
            return hub.cached_file(self.repo_id, self.filename)
        from huggingface_hub import snapshot_download

        from segany.predict.text.grounding import HUB_PATTERNS

        try:
            folder = Path(snapshot_download(self.repo_id, local_files_only=True, allow_patterns=HUB_PATTERNS))
        except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError and friends)
            return None
        return folder if (folder / "config.json").is_file() else None

    def fetch(self) -> Path:
        """Download into the hub cache (or find it there); `ModelNotFound` with what to do instead."""
        how = ("connect this machine to the internet (or set HF_ENDPOINT / HTTPS_PROXY), or run "
               f"`{hub.fetch_command(self.repo_id, self.filename)}` on a connected machine and copy its Hugging Face "
               "cache (~/.cache/huggingface/hub) here")
        if self.filename is not None:
            how += ", or pass the file with --checkpoint PATH"
            return hub.download_file(self.repo_id, self.filename, how)
        found = self.cached()
        if found is not None:
            return found
        from segany.predict.text.grounding import resolve_model_dir

        return resolve_model_dir(self.repo_id)


def sam2_items() -> list[WeightsItem]:
    from segany.model.variants import get_variant, list_variants

    items = []
    for name in list_variants():
        spec = get_variant(name)
        assert spec is not None
        size = name.split("_hiera_", 1)[1]
        items.append(WeightsItem(name, spec.hf_id, spec.checkpoint_file, _CHECKPOINT_MB.get(size), "sam2"))
    return items


def detector_item(repo_id: str | None = None) -> WeightsItem:
    from segany.predict.text.grounding import DEFAULT_MODEL_ID

    repo_id = repo_id or DEFAULT_MODEL_ID
    return WeightsItem(repo_id, repo_id, None, _DETECTOR_MB.get(repo_id), "detector")


def find_item(name: str) -> WeightsItem:
    """A variant (name or hub id), or a detector hub id (`IDEA-Research/grounding-dino-tiny`, `owner/name`)."""
    from segany.errors import InvalidInput
    from segany.model.variants import get_variant

    spec = get_variant(name)
    if spec is not None:
        return next(item for item in sam2_items() if item.name == spec.name)
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return detector_item(name)
    from segany.model.variants import list_variants

    raise InvalidInput(f"unknown weights {name!r}: expected a variant ({', '.join(list_variants())}), its Hugging "
                       "Face id, or a detector's id such as IDEA-Research/grounding-dino-tiny", "name")


def _size(item: WeightsItem) -> str:
    return f"~{item.size_mb} MB" if item.size_mb else "?"


def cmd_list(args: argparse.Namespace) -> int:
    rows = [("NAME", "REPO", "FILE", "SIZE", "CACHED")]
    for item in [*sam2_items(), detector_item(args.detector)]:
        found = item.cached()
        label = item.name + (" (text prompts)" if item.kind == "detector" else "")
        rows.append((label, item.repo_id, item.filename or "model files (*.json, *.safetensors)", _size(item),
                     str(found) if found else "no"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    print(f"\nfetch with: segany weights fetch NAME (or --all); cache: {_cache_dir()}", file=sys.stderr)
    return 0


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def cmd_fetch(args: argparse.Namespace) -> int:
    from segany.errors import ModelNotFound

    names = list(args.names)
    if args.all:
        items = sam2_items()
        items += [find_item(name) for name in names if find_item(name) not in items]
    else:
        items = [find_item(name) for name in (names or [DEFAULT_FETCH])]
    failed = 0
    for item in items:
        before = item.cached()
        if before is not None:
            print(f"{item.name}: already cached: {before}")
            continue
        print(f"{item.name}: fetching {item.repo_id} {item.filename or '(model files)'} ({_size(item)}) ...",
              file=sys.stderr, flush=True)
        try:
            path = item.fetch()
        except ModelNotFound as error:
            print(f"{item.name}: error: {error}", file=sys.stderr)
            failed += 1
            continue
        print(f"{item.name}: fetched: {path}")
    return 1 if failed else 0


def _run(args: argparse.Namespace) -> int:
    from segany.errors import InvalidInput

    try:
        return int(args.weights_handler(args))
    except InvalidInput as error:  # a name that is not a variant or a hub id: a usage error
        print(f"segany weights: error: {error}", file=sys.stderr)
        return 2


def add_weights_command(commands: Any, make_subparser: Any) -> None:
    """Register `segany weights list | fetch` on the main parser's subcommands."""
    weights = make_subparser(commands, "weights", _run,
                             "list and fetch official checkpoints and the text detector (Hugging Face cache)",
                             "Official SAM 2 / 2.1 checkpoints and the text detector: what each needs, what is in "
                             "the Hugging Face cache, and downloading them there (needs the internet; offline, "
                             "fetch fails at once with what to do).")
    actions = weights.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every variant and the detector: repo, file, size, cached path")
    listing.set_defaults(weights_handler=cmd_list)
    listing.add_argument("--detector", default=None, help="the detector to show (default: the text prompts' one)")
    fetch = actions.add_parser("fetch", help="download checkpoints into the Hugging Face cache")
    fetch.set_defaults(weights_handler=cmd_fetch)
    fetch.add_argument("names", nargs="*", metavar="NAME",
                       help=f"variant (e.g. sam2.1_hiera_large), Hugging Face id, or a detector id such as "
                            f"IDEA-Research/grounding-dino-tiny (default: {DEFAULT_FETCH})")
    fetch.add_argument("--all", action="store_true", help="every official SAM 2 and SAM 2.1 checkpoint (~3.1 GB)")
