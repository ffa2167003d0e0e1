"""`shoggoth harvest --ray`: the harvest's shards as Ray tasks, merged into --db.

The grid's batches never depend on where a run starts, so shard I of N harvested anywhere holds
exactly the rows an uninterrupted run writes for those batches. Each Ray task harvests one shard
into its own file (the model loaded once per task), resuming its partial file when Ray retries a
task whose worker died; the driver then merges the shard files into --db with the same
transactional merge as `shoggoth merge`. Ray schedules, retries and places the tasks (one GPU
each with --gpus-per-worker 1); shoggoth writes no scheduler of its own.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

from shoggoth.core.errors import BadInput, first_line
from shoggoth.core.progress import Log
from shoggoth.index.harvest.store import HarvestResult, summary
from shoggoth.index.store.merge import MergeConfig, merge
from shoggoth.pipeline.harvest.run import HarvestConfig, harvest, sae_ids

DEFAULT_WORKERS = 2
RETRIES = 3
"""Times Ray reruns a shard whose worker died (the rerun resumes its partial file)."""


def shard_files(cfg: HarvestConfig) -> tuple[Path, list[Path]]:
    """The folder beside --db holding the shard files, and each shard's file."""
    folder, n = cfg.db.parent / f".{cfg.db.name}.ray", workers(cfg)
    return folder, [folder / f"shard-{i}-of-{n}.duckdb" for i in range(n)]


def workers(cfg: HarvestConfig) -> int:
    """The number of shards (--workers, default 2)."""
    return cfg.workers or DEFAULT_WORKERS


def harvest_shard(cfg: HarvestConfig) -> HarvestResult:
    """One shard's harvest (run inside a Ray worker)."""
    return harvest(cfg, log=lambda _: None)


def connect_ray(address: str, workers: int) -> Any:
    """The Ray module, connected: to the running session, to the cluster at `address` ('auto':
    the one this machine belongs to), or with 'local' to a new one on this machine."""
    try:
        import ray
    except ImportError:
        raise BadInput("--ray: Ray is not installed; pip install 'shoggoth[ray]'") from None
    if not ray.is_initialized():
        try:
            if address == "local":
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except ConnectionError as e:
            raise BadInput(f"--ray {address}: no Ray cluster there ({e})") from None
        except ValueError as e:
            if "Ray Client" in str(e):  # a ray:// address without the client extra
                raise BadInput(
                    f"--ray {address}: a ray:// address needs Ray Client; pip install 'ray[client]'"
                ) from None
            raise BadInput(f"--ray {address}: {first_line(e)}") from None
    return ray


def harvest_with_ray(cfg: HarvestConfig, log: Log = print) -> HarvestResult:
    """Harvest --workers shards as Ray tasks, then merge them into --db; returns the merged
    database's summary of each SAE."""
    if cfg.shard is not None:
        raise BadInput("--shard: --ray makes the shards itself; leave --shard out")
    n = workers(cfg)
    assert cfg.ray is not None  # (called for --ray only)
    ray = connect_ray(cfg.ray, n)
    folder, files = shard_files(cfg)
    folder.mkdir(exist_ok=True)
    task = ray.remote(num_cpus=1, num_gpus=cfg.gpus_per_worker or 0.0, max_retries=RETRIES)(
        harvest_shard
    )
    shards = [
        dataclasses.replace(
            cfg, db=f, shard=f"{i}/{n}", ray=None, workers=None, gpus_per_worker=None
        )
        for i, f in enumerate(files)
    ]
    log(f"ray: {n} shards on {ray.cluster_resources().get('CPU', 0):g} CPUs")
    started = time.time()
    try:
        ray.get([task.remote(s) for s in shards])
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, BadInput):  # the task's own one-line error, not a traceback
            shutil.rmtree(folder, ignore_errors=True)
            raise e.cause from None
        raise
    merge(MergeConfig(db=cfg.db, inputs=files))
    shutil.rmtree(folder, ignore_errors=True)
    seconds = time.time() - started
    out = [summary(cfg.db, i, seconds) for i in sae_ids(cfg)]
    return HarvestResult(out[0], out[1:], shards=n)
