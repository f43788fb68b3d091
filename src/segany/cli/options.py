"""Command-line options shared by several `segany` commands: model, automatic masks, text, prompts.

The automatic-mask options are every `segany.MaskGenerator` argument spelled with dashes; their defaults are
read from the generator's signature and their help and types from `segany.predict.amg.params`, so the
help can never disagree with the library.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
from typing import Any

DEFAULT_MODEL = "sam2.1_hiera_tiny"
DTYPE_CHOICES = ("float32", "bfloat16", "float16")
# segany.model.encoder_runtime.RUNTIMES, repeated so that `--help` needs no torch (a test holds them equal).
ENCODER_RUNTIME_CHOICES = ("auto", "eager", "openvino")

# Not a MaskGeneratorParams field (the grids themselves are the generator's argument); `output_mode` is not an
# option: --format decides the encoding.
POINT_GRIDS_HELP = "JSON file: a list of point grids in [0, 1], one per crop layer (replaces --points-per-side)"
_SKIPPED = ("self", "predictor", "output_mode")


class SeganyHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except where it is None (the help text then says what None means)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = action.option_strings and default not in (None, argparse.SUPPRESS) and not isinstance(default, bool)
        if shown and "default" not in text.lower():
            text += " (default: %(default)s)"
        return text


def _env_default(name: str, fallback: str | None) -> str | None:
    return os.environ.get(f"SEGANY_{name.upper()}") or fallback


def add_model_options(parser: argparse.ArgumentParser, image_encoder: bool = True) -> None:
    """--model, --checkpoint, --device, --dtype, --threads, and where image embeds run --encoder-runtime (each
    also SEGANY_<NAME> in the environment; the last only for commands that embed images, `image_encoder`)."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=_env_default("model", DEFAULT_MODEL),
                       help="variant name (e.g. sam2.1_hiera_large), Hugging Face id or checkpoint file (env SEGANY_MODEL)")
    group.add_argument("--checkpoint", default=_env_default("checkpoint", None),
                       help="checkpoint file for --model (env SEGANY_CHECKPOINT; default: the Hugging Face cache, "
                            "downloaded when missing and online)")
    group.add_argument("--device", default=_env_default("device", None),
                       help="torch device, e.g. cpu, cuda, cuda:1 (env SEGANY_DEVICE; default: cuda if available, else cpu)")
    group.add_argument("--dtype", default=_env_default("dtype", None), choices=DTYPE_CHOICES,
                       help="weights and activations (env SEGANY_DTYPE; default: bfloat16 on CUDA and on CPUs with "
                            "native bf16, else float32)")
    group.add_argument("--threads", type=int, default=None,
                       help="CPU threads for torch and OpenCV (default: their choice, usually one per core)")
    if image_encoder:
        group.add_argument("--encoder-runtime", default=_env_default("encoder_runtime", None),
                           choices=ENCODER_RUNTIME_CHOICES,
                           help="where image embeds run (env SEGANY_ENCODER_RUNTIME; default auto: OpenVINO, when "
                                "installed, for bfloat16 on CPUs with AVX512-BF16 and no AMX, where it measured "
                                "faster; else eager torch). The first OpenVINO start converts the encoder "
                                "(~10-30 s) and caches it under ~/.cache/segany/openvino")


def generator_defaults() -> dict[str, Any]:
    """MaskGenerator's keyword arguments and their defaults, minus predictor and output_mode."""
    from segany.predict.amg.generator import MaskGenerator

    params = inspect.signature(MaskGenerator.__init__).parameters
    return {name: p.default for name, p in params.items() if name not in _SKIPPED}


def add_amg_options(parser: argparse.ArgumentParser) -> None:
    """One --dashed-name option per MaskGenerator argument, defaulting to the generator's own default."""
    from segany.predict.amg.params import amg_fields

    declared = amg_fields()
    group = parser.add_argument_group("automatic masks (segany.MaskGenerator)")
    for name, default in generator_defaults().items():
        flag = "--" + name.replace("_", "-")
        if name == "point_grids":
            group.add_argument(flag, dest=name, metavar="FILE", default=None, help=POINT_GRIDS_HELP)
            continue
        help_text = declared[name].metadata["help"].replace("point_grids", "--point-grids")  # the flag's name
        if isinstance(default, bool):
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=default,
                               help=help_text)  # BooleanOptionalAction appends the default itself
        else:
            kind = int if declared[name].metadata["kind"] == "int" else float
            group.add_argument(flag, dest=name, type=kind, default=default, metavar=kind.__name__.upper(),
                               help=help_text)


def amg_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """MaskGenerator keyword arguments from parsed options, validated (InvalidInput names the option)."""
    from segany.errors import InvalidInput
    from segany.predict.amg.params import validated_params

    kwargs = {name: getattr(args, name) for name in generator_defaults()}
    if kwargs["min_mask_region_area"] is not None and float(kwargs["min_mask_region_area"]).is_integer():
        kwargs["min_mask_region_area"] = int(kwargs["min_mask_region_area"])
    if kwargs["point_grids"] is not None:
        try:
            with open(kwargs["point_grids"], encoding="utf-8") as grids:
                kwargs["point_grids"] = json.load(grids)
        except (OSError, ValueError) as error:
            raise InvalidInput(f"point-grids: cannot read {kwargs['point_grids']!r} ({error})", "point_grids") from None
        kwargs["points_per_side"] = None
    checked = {k: v for k, v in kwargs.items() if k != "point_grids"}
    validated_params(kwargs["point_grids"], **checked, output_mode="binary_mask")
    return kwargs


def add_text_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("text prompts (segany[text])")
    group.add_argument("--detector", default=None,
                       help="open-vocabulary detector: Hugging Face id or local directory "
                            "(default: IDEA-Research/grounding-dino-tiny)")
    group.add_argument("--box-threshold", type=float, default=None,
                       help="keep detector boxes scoring above this (default: the detector family's, 0.4 for "
                            "Grounding DINO)")
    group.add_argument("--text-threshold", type=float, default=None,
                       help="Grounding DINO: a box's phrase must score above this (default: 0.3)")


def parse_point(text: str) -> tuple[float, float, int]:
    """`X,Y` or `X,Y,LABEL` (LABEL 1 positive, the default, or 0 negative) -> (x, y, label)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        x, y = float(parts[0]), float(parts[1])
        label = int(parts[2]) if len(parts) == 3 else 1
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y or X,Y,LABEL (pixels; LABEL 1 or 0), got {text!r}") from None
    if label not in (0, 1):
        raise argparse.ArgumentTypeError(f"point label must be 1 (positive) or 0 (negative), got {label}")
    return x, y, label


def parse_box(text: str) -> tuple[float, float, float, float]:
    """`X0,Y0,X1,Y1` pixels, top-left then bottom-right."""
    try:
        x0, y0, x1, y1 = (float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X0,Y0,X1,Y1 (pixels), got {text!r}") from None
    if x1 < x0 or y1 < y0:
        raise argparse.ArgumentTypeError(f"box {text!r}: X1 must be >= X0 and Y1 >= Y0")
    return x0, y0, x1, y1


def check_model_option(model: str, checkpoint: str | None) -> None:
    """Raise InvalidInput when --model names nothing loadable or --checkpoint is not a file."""
    from segany.errors import InvalidInput
    from segany.model.variants import get_variant, list_variants

    if get_variant(model) is None and not os.path.isfile(model):
        raise InvalidInput(f"unknown model {model!r}: expected one of {', '.join(list_variants())}, a Hugging Face "
                           "id such as facebook/sam2.1-hiera-tiny, or a checkpoint file", "model")
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise InvalidInput(f"checkpoint {checkpoint!r} is not a file", "checkpoint")
