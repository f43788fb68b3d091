"""`segany batch --ray`: the batch run on a Ray cluster with Ray Data (optional extra `segany[ray]`).

Images are read and decoded by Ray tasks (one image per block, so they spread over the cluster); a fixed
pool of actors, each holding one model (one per GPU, or per group of CPUs), labels them with the same
`ImageAnnotator` as a local run. Rows come back to this process in input order (`preserve_order`), where the
COCO writer records them exactly as a local run would.

A node lost mid-run (its actors and the objects it held) is survived by Ray Data's retries: the lost blocks
are recomputed elsewhere, and each image still reaches the output once because this process writes each row
once, by index. A small ledger actor on this process's node records every start of every image; at the end
the run's distribution (which node labelled which image, and which images were started again after a
failure) is reported to `report`, and the batch runner keeps it in the COCO file's `info.segany.run.ray`.

Every node needs segany (and its model weights: `--checkpoint` paths must exist on every node, or the
weights must be in each node's Hugging Face cache).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from segany.batch.annotate import AnnotatorConfig, BoxPrompt
from segany.batch.inputs import ImageItem
from segany.batch.per_image import ImageResult, RayOptions, annotate_decoded, decode_for_batch
from segany.errors import InvalidInput
from segany.ray_cluster import connect, import_ray, loopback_only

DECODE_CPUS = 0.1  # decoding is short and mostly I/O; a small reservation lets it run beside busy actors
CPUS_PER_CPU_WORKER = 4  # default grain of a CPU worker when the worker count is not given


def plan_workers(options: RayOptions, config: AnnotatorConfig, resources: dict[str, float]) -> tuple[int, float, float]:
    """(workers, CPUs per worker, GPUs per worker) for the cluster's `resources` (ray.cluster_resources())."""
    total_cpus = float(resources.get("CPU", 1.0))
    total_gpus = float(resources.get("GPU", 0.0))
    wants_gpu = (config.device or "").startswith("cuda") or (config.device is None and total_gpus > 0)
    gpus = options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if wants_gpu else 0.0)
    if gpus > 0 and total_gpus < gpus:
        raise InvalidInput(f"each worker wants {gpus} GPU but the cluster has {total_gpus:g}", "ray_gpus_per_worker")
    if options.workers is not None:
        workers = options.workers
    elif gpus > 0:
        workers = max(1, int(total_gpus // gpus))
    else:
        workers = max(1, int(total_cpus // CPUS_PER_CPU_WORKER))
    if workers < 1:
        raise InvalidInput(f"ray workers must be at least 1, got {workers}", "ray_workers")
    cpus = options.cpus_per_worker if options.cpus_per_worker is not None else _cpu_share(total_cpus, workers, gpus)
    if cpus * workers + DECODE_CPUS > total_cpus:
        raise InvalidInput(f"{workers} workers x {cpus:g} CPUs leave no CPU for decoding on a cluster of "
                           f"{total_cpus:g} CPUs", "ray_cpus_per_worker")
    return workers, float(cpus), float(gpus)


def _cpu_share(total_cpus: float, workers: int, gpus: float) -> float:
    if gpus > 0:
        return 1.0
    share = (total_cpus - 2 * DECODE_CPUS) / workers
    if share >= 2:
        return float(int(share))  # Ray takes fractions only below 1
    return max(0.1, min(1.0, round(share - 0.005, 2)))


def _decode_row(row: dict[str, Any], max_pixels: int | None) -> dict[str, Any]:
    rgb, error = decode_for_batch(row["path"], max_pixels)
    height, width = (0, 0) if rgb is None else rgb.shape[:2]
    # Raw bytes keep the row schema the same for every image (tensor columns would differ in shape).
    pixels = b"" if rgb is None else rgb.tobytes()
    return {"index": row["index"], "boxes": row["boxes"], "height": height, "width": width, "pixels": pixels,
            "error": error or ""}


class RunLedger:
    """Every start of every image (by input index) and the node it started on; one per run, on the driver's node."""

    def __init__(self) -> None:
        self.starts: dict[int, list[str]] = {}

    def started(self, index: int, node_id: str) -> None:
        self.starts.setdefault(index, []).append(node_id)

    def all_starts(self) -> dict[int, list[str]]:
        return self.starts


class _AnnotateRows:
    """A Ray Data actor: builds the model once, then labels one decoded row at a time."""

    def __init__(self, config: AnnotatorConfig, ledger: Any = None) -> None:
        import ray

        from segany.batch.annotate import ImageAnnotator

        self.annotator = ImageAnnotator(config)
        self.ledger = ledger
        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if self.ledger is not None:
            import ray

            ray.get(self.ledger.started.remote(int(row["index"]), self.node_id))  # recorded before the work
        rgb = None
        if not row["error"]:
            rgb = np.frombuffer(row["pixels"], dtype=np.uint8).reshape(int(row["height"]), int(row["width"]), 3)
        boxes = [BoxPrompt(tuple(b["box_xyxy"]), b["label"], b["score"]) for b in json.loads(row["boxes"])]
        item = ImageItem("", "")
        _, size_hw, outcome = annotate_decoded(self.annotator, item, rgb, row["error"] or None, lambda _: boxes)
        if size_hw is None:
            return {"index": row["index"], "height": 0, "width": 0, "error": str(outcome), "records": "",
                    "node": self.node_id}
        return {"index": row["index"], "height": size_hw[0], "width": size_hw[1], "error": "",
                "records": json.dumps(outcome), "node": self.node_id}


def distribution_report(items: Sequence[ImageItem], done_on: dict[int, str], starts: dict[int, list[str]],
                        addresses: dict[str, str]) -> dict[str, Any]:
    """The run's spread over the cluster: per node (id -> address, file names it labelled, and whether it was
    still alive at the end) and the images started more than once (with the nodes of every start, in order)."""
    nodes: dict[str, dict[str, Any]] = {}
    for index in sorted(done_on):
        node = done_on[index]
        entry = nodes.setdefault(node, {"address": addresses.get(node, "?"), "images": []})
        entry["images"].append(items[index].file_name)
    retried = [{"file_name": items[index].file_name, "started_on": list(on), "done_on": done_on.get(index)}
               for index, on in sorted(starts.items()) if len(on) > 1]
    return {"nodes": nodes, "retried": retried}


def describe_distribution(report: dict[str, Any]) -> list[str]:
    """Human-readable lines of `distribution_report`'s result."""
    lines = [f"ray node {node[:12]} ({entry['address']}): {len(entry['images'])} image(s): "
             + ", ".join(entry["images"]) for node, entry in report["nodes"].items()]
    for retry in report["retried"]:
        lines.append(f"ray retried {retry['file_name']}: started on "
                     + ", ".join(node[:12] for node in retry["started_on"])
                     + f", done on {str(retry['done_on'])[:12]}")
    if not report["retried"]:
        lines.append("ray retried nothing")
    return lines


def _alive_node_addresses(ray: Any) -> dict[str, str]:
    return {node["NodeID"]: node.get("NodeManagerAddress", "?") for node in ray.nodes()}


def _start_ledger(ray: Any) -> Any:
    """The ledger actor, pinned (no CPU) to this process's node so that losing a worker node never loses it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return ray.remote(num_cpus=0)(RunLedger).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)).remote()


def ray_results(
    items: Sequence[ImageItem], config: AnnotatorConfig, boxes_of: Callable[[ImageItem], list[BoxPrompt]],
    options: RayOptions, max_pixels: int | None, verbose: bool = False,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[ImageResult]:
    """Label `items` on Ray; yields the same (item, size_hw, records | error) tuples as a local run, in order.

    When every item is through, `report` gets `distribution_report`'s summary of the run."""
    ray = import_ray(local_instance=loopback_only(options.address))
    started_here = connect(options.address, options.num_cpus, verbose)
    try:
        from ray.data import ActorPoolStrategy, DataContext

        workers, cpus, gpus = plan_workers(options, config, ray.cluster_resources())
        if config.threads is None and gpus == 0:
            config = dataclasses.replace(config, threads=max(1, int(round(cpus))))
        context = DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False  # segany draws its own bar
        context.print_on_execution_start = False
        if not verbose:  # Ray Data's notes (e.g. "progress bars disabled") would cut through segany's bar
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        ledger = _start_ledger(ray)
        rows = [{"index": i, "path": item.path, "boxes": json.dumps([dataclasses.asdict(b) for b in boxes_of(item)])}
                for i, item in enumerate(items)]
        dataset = (
            ray.data.from_items(rows, override_num_blocks=len(rows))
            .map(_decode_row, fn_kwargs={"max_pixels": max_pixels}, num_cpus=DECODE_CPUS)
            .map(_AnnotateRows, fn_constructor_kwargs={"config": config, "ledger": ledger},
                 compute=ActorPoolStrategy(size=workers), num_cpus=cpus, num_gpus=gpus)
        )
        addresses = _alive_node_addresses(ray)  # before any node is lost, so lost nodes keep their address
        done_on: dict[int, str] = {}
        for row in dataset.iter_rows():
            index = int(row["index"])
            if index in done_on:  # cannot happen with Ray Data's exactly-once output; never write an image twice
                continue
            done_on[index] = str(row["node"])
            item = items[index]
            if row["error"]:
                yield item, None, str(row["error"])
            else:
                yield item, (int(row["height"]), int(row["width"])), json.loads(row["records"])
        if report is not None:
            addresses |= _alive_node_addresses(ray)
            report(distribution_report(items, done_on, ray.get(ledger.all_starts.remote()), addresses))
    finally:
        if started_here:
            ray.shutdown()
