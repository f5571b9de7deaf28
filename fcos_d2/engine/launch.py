"""``launch()`` like ``detectron2.engine.launch``, which also runs multi-process on CPU.

Detectron2 v0.6's ``launch`` hard-codes the NCCL backend and asserts CUDA, so
``--num-gpus 2`` cannot run on a machine without GPUs.  This ``launch``:

* with CUDA available, delegates to ``detectron2.engine.launch`` unchanged;
* without CUDA and a world size of 1, calls ``main_func(*args)`` in this process;
* without CUDA and a world size > 1, spawns ``num_gpus_per_machine`` CPU worker processes per
  machine that join a ``gloo`` process group and create ``detectron2.utils.comm``'s
  per-machine ("local") process group with ``comm.create_local_process_group`` (public in
  Detectron2 after v0.6; the pure-Python v0.6 that ``tools/install_detectron2.py`` installs
  has it too), so ``comm.get_local_rank()`` & co. work.

Usage (``main_func`` must be picklable, i.e. defined at module level)::

    from fcos_d2.engine.launch import launch
    launch(main, args.num_gpus, num_machines=args.num_machines,
           machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
"""
import logging
import os
import shutil
import sys
import tempfile
from datetime import timedelta

import torch

__all__ = ["DEFAULT_TIMEOUT", "launch"]

DEFAULT_TIMEOUT = timedelta(minutes=30)

logger = logging.getLogger(__name__)


def launch(
    main_func,
    num_gpus_per_machine,
    num_machines=1,
    machine_rank=0,
    dist_url=None,
    args=(),
    timeout=DEFAULT_TIMEOUT,
):
    """Run ``main_func(*args)`` on ``num_machines * num_gpus_per_machine`` processes.

    Args:
        main_func: called as ``main_func(*args)`` in every process.
        num_gpus_per_machine (int): processes per machine (GPUs, or CPU workers without CUDA).
        num_machines (int): total number of machines.
        machine_rank (int): rank of this machine.
        dist_url (str): rendezvous URL, e.g. ``"tcp://127.0.0.1:8686"``.  ``"auto"`` (or None)
            on a single machine: a free localhost port with CUDA (Detectron2's launch), a
            file in a private temporary directory on CPU.
        args (tuple): arguments passed to ``main_func``.
        timeout (timedelta): timeout of the collective operations.

    Returns:
        ``main_func``'s result when it runs in this process (world size 1), else None.
    """
    if torch.cuda.is_available():
        from detectron2.engine import launch as d2_launch

        return d2_launch(
            main_func,
            num_gpus_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
            timeout=timeout,
        )

    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        return main_func(*args)
    _check_local_process_group_api()

    rendezvous_dir = None
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("dist_url must be given explicitly for a multi-machine job")
        # A file in a private directory: unlike a "free" TCP port picked now and bound later
        # by the workers, it cannot be taken by another program in between.
        rendezvous_dir = tempfile.mkdtemp(prefix="fcos_d2_launch_")
        dist_url = "file://" + os.path.join(rendezvous_dir, "rendezvous")
    elif num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// is not a reliable init_method in multi-machine jobs. Prefer tcp://")

    import torch.multiprocessing as mp

    logger.info(
        f"CUDA is not available: launching {num_gpus_per_machine} CPU worker processes "
        f"(world size {world_size}, gloo backend, {dist_url})"
    )
    try:
        mp.spawn(
            _cpu_worker,
            nprocs=num_gpus_per_machine,
            args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args,
                  timeout),
            daemon=False,
        )  # fmt: skip
    finally:
        if rendezvous_dir is not None:
            shutil.rmtree(rendezvous_dir, ignore_errors=True)
    return None


def _check_local_process_group_api() -> None:
    from detectron2.utils import comm

    if not hasattr(comm, "create_local_process_group"):
        raise RuntimeError(
            "Multi-process CPU training needs detectron2.utils.comm.create_local_process_group "
            "(Detectron2 after v0.6, or the pure-Python v0.6 of fcos_d2's "
            "tools/install_detectron2.py); this Detectron2 lacks it. Use one process "
            "(--num-gpus 1), GPUs, or a newer Detectron2."
        )


def _cpu_worker(
    local_rank, main_func, world_size, num_workers_per_machine, machine_rank, dist_url, args,
    timeout=DEFAULT_TIMEOUT,
):  # fmt: skip
    import torch.distributed as dist
    from detectron2.utils import comm

    # Share the cores between the workers unless the user decided (OMP_NUM_THREADS).
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_workers_per_machine))

    global_rank = machine_rank * num_workers_per_machine + local_rank
    try:
        dist.init_process_group(
            backend="gloo",
            init_method=dist_url,
            world_size=world_size,
            rank=global_rank,
            timeout=timeout,
        )
    except Exception:
        logger.error(f"Process group URL: {dist_url}")
        raise
    try:
        comm.create_local_process_group(num_workers_per_machine)
        comm.synchronize()
        main_func(*args)
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # pragma: no cover - best effort at exit
                print("destroy_process_group failed", file=sys.stderr)
