"""Launch and DDP on CPU (fcos_d2.engine.launch, the trainer's create_ddp_model): two gloo
processes, and one process run in-process."""
import json
import os

import pytest
import torch

from fcos_d2.engine.launch import launch
from fcos_d2.engine.trainer import create_ddp_model


def _dist_main(out_dir, scale):
    """Runs in every launched process (must be a module-level function to be picklable)."""
    import torch.distributed as dist
    from detectron2.utils import comm

    rank = comm.get_rank()
    t = torch.tensor([float(rank + 1) * scale])
    if comm.get_world_size() > 1:
        dist.all_reduce(t)  # sum over ranks
    result = {
        "rank": rank,
        "world_size": comm.get_world_size(),
        "local_rank": comm.get_local_rank(),
        "local_size": comm.get_local_size(),
        "all_reduce": t.item(),
        "all_gather": comm.all_gather(rank),
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "is_main": comm.is_main_process(),
    }
    # fcos_d2's DDP wrapper, as its Trainer uses it, on a CPU model
    model = create_ddp_model(torch.nn.Linear(2, 1, bias=False), broadcast_buffers=False)
    result["wrapped"] = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    with torch.no_grad():
        getattr(model, "module", model).weight.zero_()
    model(torch.tensor([[float(rank + 1), 0.0]])).sum().backward()
    result["grad"] = getattr(model, "module", model).weight.grad.tolist()  # mean over ranks
    comm.synchronize()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    return result


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU launch path only used without CUDA")
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_launch_two_cpu_processes_with_gloo(tmp_path):
    assert launch(_dist_main, 2, args=(str(tmp_path), 10.0)) is None
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, res in enumerate(results):
        assert res["rank"] == r
        assert res["world_size"] == 2
        assert res["local_rank"] == r
        assert res["local_size"] == 2
        assert res["all_reduce"] == pytest.approx(30.0)  # 10 * (1 + 2)
        assert res["all_gather"] == [0, 1]
        assert res["backend"] == "gloo"
        assert res["is_main"] == (r == 0)
        assert res["wrapped"] is True
        assert res["grad"] == [[pytest.approx(1.5), 0.0]]  # mean of 1 and 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU launch path only used without CUDA")
def test_launch_single_cpu_process_runs_in_process(tmp_path):
    res = launch(_dist_main, 1, args=(str(tmp_path), 1.0))
    assert res["world_size"] == 1 and res["rank"] == 0 and res["all_reduce"] == 1.0
    assert res["wrapped"] is False and res["grad"] == [[1.0, 0.0]]
