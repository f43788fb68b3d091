"""The `segany` command: segment, auto, batch, serve, weights, bench. See docs/cli.md.

Exit status: 0 success; 1 the work failed (an image that cannot be decoded, weights that do not load, an
error while running); 2 the command line is wrong (unknown option, bad value, missing file, unknown model,
missing optional extra); 130 interrupted (a batch run keeps what it finished and resumes on the next run).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from segany.cli import options as opts
from segany.cli.outputs import FORMATS, MaskSet

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

EPILOG = """exit status:
  0    success
  1    the work failed (undecodable image, weights that do not load, runtime error)
  2    usage error (bad option or value, missing file, unknown model, missing optional extra)
  130  interrupted (segany batch saves what it finished; rerun the same command to resume)

every command takes --model, --checkpoint, --device and --dtype; `segany COMMAND --help` lists the rest."""


class UsageError(Exception):
    """The command line is wrong; reported with exit status 2."""


def _usage_checks(check: Callable[[], Any]) -> Any:
    """Run option validation; segany input errors raised there are usage errors."""
    from segany.errors import InvalidInput, MissingExtra, ModelNotFound

    try:
        return check()
    except (InvalidInput, MissingExtra, ModelNotFound) as error:
        raise UsageError(str(error)) from None


RANDOM_WEIGHTS_WARNING = (
    "warning: {path} holds RANDOM weights: masks are noise (automatic masks are usually none at the defaults). "
    "Get the official ones with `segany weights fetch {variant}` and drop --checkpoint / SEGANY_CHECKPOINT.")


def _warn_random_weights(args: argparse.Namespace) -> None:
    """Say on stderr, before any work, when the checkpoint this run uses is marked as random weights."""
    from segany.model.weights import is_random_checkpoint

    path = args.checkpoint or (args.model if Path(str(args.model)).is_file() else None)
    if path and is_random_checkpoint(path):
        variant = "VARIANT" if Path(str(args.model)).is_file() else args.model
        print(RANDOM_WEIGHTS_WARNING.format(path=path, variant=variant), file=sys.stderr)


def _check_device(args: argparse.Namespace) -> None:
    """The device, and that the encoder runtime asked for can run on it, before any weights are read."""
    import torch

    from segany.model.encoder_runtime import choose_runtime
    from segany.model.weights import check_device, default_dtype

    device = _usage_checks(lambda: check_device(args.device))
    dtype = getattr(torch, args.dtype) if args.dtype else default_dtype(device)
    _usage_checks(lambda: choose_runtime(args.encoder_runtime, device, dtype))


def _check_image_arg(path: str) -> None:
    if not Path(path).is_file():
        raise UsageError(f"image {path!r} is not a file")


def _load_predictor(args: argparse.Namespace) -> Any:
    import segany
    from segany import runtime

    if args.threads:
        runtime.limit_cpu_threads(args.threads)
    model = segany.load_model(args.model, checkpoint=args.checkpoint, device=args.device, dtype=args.dtype,
                              encoder_runtime=args.encoder_runtime)
    return segany.Predictor(model)


def _finish(args: argparse.Namespace, rgb: Any, found: MaskSet, variant: str) -> int:
    from segany.cli.outputs import default_out, write_result

    out = args.out or default_out(args.format, args.image)
    written = write_result(args.format, out, args.image, rgb, found, variant)
    if out != "-":
        print(f"{len(found)} mask(s) -> {', '.join(written) if written else 'nothing written'}", file=sys.stderr)
    return EXIT_OK


# ---- segany segment --------------------------------------------------------------------------------------
def cmd_segment(args: argparse.Namespace) -> int:
    import numpy as np

    points, boxes = args.point or [], args.box or []
    if args.text is not None and (points or boxes):
        raise UsageError("--text cannot be combined with --point or --box (the detector supplies the boxes)")
    if not (points or boxes or args.text):
        raise UsageError("give at least one --point, --box or --text (for automatic masks use `segany auto`)")
    if points and len(boxes) > 1:
        raise UsageError("--point works with at most one --box (one prompt); several boxes are one prompt each")
    _check_image_arg(args.image)
    _usage_checks(lambda: opts.check_model_option(args.model, args.checkpoint))
    _check_device(args)
    _warn_random_weights(args)
    if args.text is not None:
        from segany.predict.text.grounding import normalize_text

        _usage_checks(lambda: normalize_text(args.text))

    from segany.io.images import load_image

    rgb = load_image(args.image)
    predictor = _load_predictor(args)
    if args.text is not None:
        found = _segment_text(args, predictor, rgb)
    else:
        embedding = predictor.embed(rgb)
        coords = np.asarray([p[:2] for p in points], dtype=np.float32).reshape(-1, 2) if points else None
        labels = np.asarray([p[2] for p in points], dtype=np.int64) if points else None
        box = np.asarray(boxes, dtype=np.float32) if boxes else None
        if box is not None and len(box) == 1:
            box = box[0]
        out = predictor.predict(embedding, point_coords=coords, point_labels=labels, box=box,
                                multimask_output=args.multimask)
        masks, scores = out.masks, out.scores
        if masks.ndim == 3:
            masks, scores = masks[None], scores[None]
        order = np.argsort(-scores, axis=1, kind="stable")  # best mask of each prompt first
        rows = np.arange(len(scores))[:, None]
        masks, scores = masks[rows, order], scores[rows, order]
        prompt_of = np.repeat(np.arange(len(scores)), scores.shape[1])
        found = MaskSet(masks=masks.reshape(-1, *masks.shape[2:]), scores=scores.reshape(-1),
                        extras=[{"prompt": int(i)} for i in prompt_of], points_xy=coords, point_labels=labels,
                        boxes_xyxy=np.asarray(boxes, dtype=np.float32).reshape(-1, 4) if boxes else None)
    return _finish(args, rgb, found, predictor.variant)


def _segment_text(args: argparse.Namespace, predictor: Any, rgb: Any) -> MaskSet:
    """Detector boxes for --text, then one mask per box (the image is embedded only when a box is found)."""
    import warnings

    from segany.predict.detections import NoDetectionsWarning
    from segany.predict.text.grounding import DEFAULT_MODEL_ID, TextGrounder
    from segany.predict.text.segment import segment_text

    grounder = TextGrounder(args.detector or DEFAULT_MODEL_ID, box_threshold=args.box_threshold,
                            text_threshold=args.text_threshold, device=args.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)
        result = segment_text(predictor, rgb, args.text, grounder, multimask_output=args.multimask)
    if result.reason:
        print(f"note: {result.reason}", file=sys.stderr)
    confidences = result.confidences if result.confidences is not None else [None] * len(result)
    return MaskSet(
        masks=result.masks, scores=result.mask_scores, labels=list(result.class_names),
        extras=[{"detector_score": None if c is None else float(c), "box_xyxy": [float(v) for v in box]}
                for c, box in zip(confidences, result.boxes_xyxy)],
        boxes_xyxy=result.boxes_xyxy,
    )


# ---- segany auto -----------------------------------------------------------------------------------------
def cmd_auto(args: argparse.Namespace) -> int:
    import numpy as np

    _check_image_arg(args.image)
    _usage_checks(lambda: opts.check_model_option(args.model, args.checkpoint))
    _check_device(args)
    _warn_random_weights(args)
    amg = _usage_checks(lambda: opts.amg_kwargs(args))

    import segany
    from segany.io.images import load_image

    rgb = load_image(args.image)
    predictor = _load_predictor(args)
    generator = segany.MaskGenerator(predictor, **amg, output_mode="binary_mask")
    records = generator.generate(rgb)
    masks = np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, *rgb.shape[:2]), dtype=bool)
    found = MaskSet(
        masks=masks, scores=np.asarray([r["predicted_iou"] for r in records], dtype=np.float32),
        extras=[{"stability_score": float(r["stability_score"]), "point_coords": r["point_coords"],
                 "crop_box": [float(v) for v in r["crop_box"]]} for r in records],
    )
    return _finish(args, rgb, found, predictor.variant)


# ---- segany batch ----------------------------------------------------------------------------------------
def cmd_batch(args: argparse.Namespace) -> int:
    from segany.batch.annotate import AnnotatorConfig
    from segany.batch.boxes import load_box_prompts
    from segany.batch.inputs import find_images
    from segany.batch.runner import BatchRun, RayOptions

    if args.mode != "text" and args.text is not None:
        raise UsageError("--text needs --mode text")
    if args.mode != "boxes" and args.boxes is not None:
        raise UsageError("--boxes needs --mode boxes")
    _usage_checks(lambda: opts.check_model_option(args.model, args.checkpoint))
    _check_device(args)
    _warn_random_weights(args)
    items = _usage_checks(lambda: find_images(args.input))
    box_prompts = _usage_checks(lambda: load_box_prompts(args.boxes)) if args.boxes else None
    amg = _usage_checks(lambda: opts.amg_kwargs(args)) if args.mode == "auto" else {}
    config = _usage_checks(lambda: AnnotatorConfig(
        mode=args.mode, model=args.model, checkpoint=args.checkpoint, device=args.device, dtype=args.dtype,
        encoder_runtime=args.encoder_runtime, threads=args.threads, amg=amg, text=args.text, detector=args.detector,
        box_threshold=args.box_threshold, text_threshold=args.text_threshold, multimask=args.multimask))
    ray = None
    if args.ray is not None:
        from segany.ray_cluster import import_ray, loopback_only

        _usage_checks(lambda: import_ray(local_instance=loopback_only(args.ray)))
        ray = RayOptions(address=None if args.ray == "local" else args.ray, workers=args.ray_workers,
                         cpus_per_worker=args.ray_cpus_per_worker, gpus_per_worker=args.ray_gpus_per_worker,
                         num_cpus=args.ray_num_cpus)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    job = _usage_checks(lambda: BatchRun(
        items, config, args.out, box_prompts=box_prompts, overwrite=args.overwrite, decode_workers=args.workers,
        max_pixels=args.max_pixels, checkpoint_every_s=args.checkpoint_every))
    summary = job.run(progress=progress, ray=ray)
    skipped = f"; {len(summary.skipped)} unreadable image(s) skipped" if summary.skipped else ""
    print(f"{summary.labelled} image(s) labelled, {summary.annotations} annotation(s) in {summary.elapsed_s:.1f} s "
          f"({summary.images_per_s:.2f} img/s); {summary.already_done} already done{skipped} -> {args.out}",
          file=sys.stderr)
    if summary.interrupted:
        print("interrupted: finished images are saved; rerun the same command to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


# ---- segany serve / bench --------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    import os

    if args.ray is None:
        from segany.model.weights import check_device

        # A CPU-only torch asked for cuda: say how to fix it now, not in /readyz after start-up.
        _usage_checks(lambda: check_device(args.device or os.environ.get("SEGANY_DEVICE") or None))
        from segany.server.launch import serve

        return serve(args)
    from segany.server.ray_serve import serve_on_ray

    return serve_on_ray(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from segany.cli.bench import run_benchmarks, select

    _, chosen = _usage_checks(lambda: select(args))
    return run_benchmarks(args, chosen)


# ---- parser ----------------------------------------------------------------------------------------------
def _subparser(commands: Any, name: str, handler: Callable[[argparse.Namespace], int], help_text: str,
               description: str) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text, description=description, epilog=EPILOG,
                                 formatter_class=opts.SeganyHelpFormatter, allow_abbrev=False)
    parser.set_defaults(handler=handler)
    parser.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failures")
    return parser


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="json",
                        help="png: a 0/255 PNG per mask; overlay: the image with coloured, outlined masks; rle, "
                             "polygon, json: a JSON document (json holds both RLE and polygons)")
    parser.add_argument("--out", default=None,
                        help="output file; '-' is stdout (default: stdout for rle/polygon/json, IMAGE_STEM.mask.png "
                             "or IMAGE_STEM.overlay.png in the working directory)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segany", description="Self-hosted Segment Anything 2: segment images, label folders to COCO, serve APIs.",
        epilog=EPILOG, formatter_class=opts.SeganyHelpFormatter, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"segany {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    segment = _subparser(commands, "segment", cmd_segment, "masks for point, box or text prompts on one image",
                         "Masks for prompts given on the command line. Coordinates are image pixels.")
    segment.add_argument("image", metavar="IMAGE", help="image file")
    segment.add_argument("--point", action="append", type=opts.parse_point, metavar="X,Y[,LABEL]",
                         help="a click; LABEL 1 (default) keeps, 0 excludes; repeatable")
    segment.add_argument("--box", action="append", type=opts.parse_box, metavar="X0,Y0,X1,Y1",
                         help="a box; repeatable (several boxes: one prompt, and one mask set, each)")
    segment.add_argument("--text", default=None, help="phrases to find, e.g. 'a dog. a ball.' (needs segany[text])")
    segment.add_argument("--multimask", action="store_true", help="three masks per prompt, best first (else one)")
    _add_output_options(segment)
    opts.add_text_options(segment)
    opts.add_model_options(segment)

    auto = _subparser(commands, "auto", cmd_auto, "automatic masks for everything in one image",
                      "Segment everything: a grid of point prompts, filtered and de-duplicated (segany.MaskGenerator).")
    auto.add_argument("image", metavar="IMAGE", help="image file")
    _add_output_options(auto)
    opts.add_amg_options(auto)
    opts.add_model_options(auto)

    batch = _subparser(commands, "batch", cmd_batch, "label a folder, glob or list of images into a COCO file",
                       "Label many images into one COCO instances file (RLE masks). Resumable: rerun the same "
                       "command after an interruption and finished images are kept and skipped.")
    batch.add_argument("input", metavar="INPUT",
                       help="a folder (searched recursively), a glob such as 'data/**/*.jpg', a .txt list of paths, "
                            "or one image")
    batch.add_argument("--out", required=True, help="COCO JSON file to write (and resume)")
    batch.add_argument("--mode", choices=("auto", "text", "boxes"), default="auto",
                       help="auto: segment everything; text: masks for --text phrases; boxes: masks for --boxes")
    batch.add_argument("--text", default=None, help="mode text: phrases, e.g. 'a dog. a cat.' (the categories)")
    batch.add_argument("--boxes", default=None, metavar="FILE",
                       help="mode boxes: COCO file, or JSON {file_name: [[x0, y0, x1, y1] | {box_xyxy, label, "
                            "score}, ...]}")
    batch.add_argument("--multimask", action="store_true",
                       help="modes text/boxes: decode three masks per box and keep the best (else one)")
    batch.add_argument("--workers", type=int, default=2, help="threads decoding images ahead of the model")
    batch.add_argument("--max-pixels", type=int, default=None,
                       help="skip images with more pixels than this (default: 64 Mi pixels)")
    batch.add_argument("--overwrite", action="store_true", help="start over instead of resuming --out")
    batch.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                       help="rewrite --out at least this often while running (finished images are journalled as "
                            "they complete either way)")
    batch.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="progress bar with rate and time left on stderr (default: when stderr is a terminal)")
    ray_group = batch.add_argument_group("Ray (segany[ray])")
    ray_group.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                           help="run on Ray Data: ADDRESS of a cluster ('auto': the one this machine is in), or no "
                                "ADDRESS to start a local instance for this run")
    ray_group.add_argument("--ray-workers", type=int, default=None,
                           help="model actors (default: one per GPU, or one per 4 CPUs)")
    ray_group.add_argument("--ray-cpus-per-worker", type=float, default=None,
                           help="CPUs per actor (default: the cluster's CPUs shared among the actors)")
    ray_group.add_argument("--ray-gpus-per-worker", type=float, default=None,
                           help="GPUs per actor (default: 1 when the device is cuda or the cluster has GPUs)")
    ray_group.add_argument("--ray-num-cpus", type=int, default=None,
                           help="CPUs of a local instance (default: all of this machine's)")
    opts.add_amg_options(batch)
    opts.add_text_options(batch)
    opts.add_model_options(batch)

    from segany.server.ray_serve import add_ray_serve_arguments

    serve = _subparser(commands, "serve", cmd_serve, "run the HTTP server: web page, native API and the Replicate, Segmind, Livepeer, HF and Roboflow dialects",
                       "Serve segany over HTTP. Every option is also an environment variable (SEGANY_...).")
    from segany.server.settings import add_settings_arguments

    add_settings_arguments(serve)
    add_ray_serve_arguments(serve)

    from segany.cli.weights import add_weights_command

    add_weights_command(commands, _subparser)

    from segany.cli.bench import add_bench_arguments

    bench = _subparser(commands, "bench", cmd_bench, "run the benchmarks in bench/",
                       "Run the package's benchmarks (bench/bench_*.py in the source tree). Arguments after '--' "
                       "are passed to every benchmark; --model, --checkpoint, --device and --dtype reach them as "
                       "SEGANY_MODEL, SEGANY_CHECKPOINT, SEGANY_DEVICE and SEGANY_DTYPE.")
    add_bench_arguments(bench)
    opts.add_model_options(bench)
    from segany.cli.export import add_export_parser

    add_export_parser(commands, _subparser)
    from segany.cli.track import add_track_parser

    add_track_parser(commands)
    return parser


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _version() -> str:
    from segany import __version__

    return __version__


class _StderrHandler(logging.Handler):
    """Writes each record to the `sys.stderr` of the moment (a StreamHandler keeps the one it was made with, which
    a caller running several commands in one process, such as a test, may have swapped since)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def _show_model_progress() -> None:
    """Print the model layer's INFO lines on stderr: it logs what makes a start slow (converting the encoder for
    OpenVINO the first time, ~10-30 s), which a command would otherwise spend in silence."""
    logger = logging.getLogger("segany.model")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("segany: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if argv[:1] == ["bench"] and "--" in argv:  # everything after -- belongs to the benchmarks
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with status 2 on a usage error
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args.passthrough = passthrough
    if args.command != "serve":  # the servers handle their own signals and logging
        _show_model_progress()
        # SIGTERM (a scheduler stopping the job) stops a batch run as cleanly as Ctrl-C does; Ctrl-C works even
        # when the process was started with SIGINT ignored (a background job of a script).
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    where = f"segany {args.command}"
    try:
        return int(args.handler(args))
    except UsageError as error:
        print(f"{where}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001  (the last line of defence: a message, not a traceback)
        if getattr(args, "verbose", False):
            traceback.print_exc()
        print(f"{where}: error: {error}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
