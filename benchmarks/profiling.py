"""Where a training step goes: torch.profiler self time per op group and the top ops."""
from typing import Dict

from detectron2.utils.events import EventStorage
from torch.profiler import ProfilerActivity, profile

from .models import Variant, build_models
from .timing import TrainingRun

OP_GROUPS = (  # (group, substrings of profiler op names), first match wins
    ("convolution backward", ("convolution_backward",)),
    ("convolution forward", ("convolution", "conv2d")),
    ("GroupNorm forward + backward (head towers)", ("group_norm",)),
    ("BatchNorm forward + backward (backbone)", ("batch_norm",)),
    ("ReLU forward + backward", ("relu", "threshold_backward")),
    ("FPN top-down upsampling", ("upsample",)),
    ("max-pool (stem)", ("max_pool",)),
    ("SGD step", ("_foreach", "sgd")),
    ("memory-format / layout copies", ("copy_", "contiguous", "clone", "to_dense", "reorder")),
)


def profile_training(variant: Variant, args) -> str:
    """torch.profiler of ``--repeats`` training steps of ``variant`` after ``--warmup``:
    self time per op group and the top ops, forward and backward together (markdown)."""
    run = TrainingRun(build_models([variant], args.device)[variant], variant, args)
    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if args.device.startswith("cuda") else []
    )
    with EventStorage():
        for _ in range(max(args.warmup, 1)):
            run.step()
        with profile(activities=activities) as prof:
            for _ in range(args.repeats):
                run.step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    groups: Dict[str, float] = {}
    for event in events:
        key = event.key.lower()
        group = next((g for g, subs in OP_GROUPS if any(s in key for s in subs)), "other")
        groups[group] = groups.get(group, 0.0) + event.self_cpu_time_total
    lines = [f"profile of {variant.label}, {args.repeats} training steps: self CPU time by "
             "op group", "| op group | ms per step | share |", "|---|---|---|"]
    for group, us in sorted(groups.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {group} | {us / 1000 / args.repeats:.1f} | {100 * us / total:.1f}% |")
    lines += ["", "| op | calls per step | ms per step | share |", "|---|---|---|---|"]
    for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[:20]:
        lines.append(
            f"| {event.key} | {event.count / args.repeats:.0f} | "
            f"{event.self_cpu_time_total / 1000 / args.repeats:.1f} | "
            f"{100 * event.self_cpu_time_total / total:.1f}% |"
        )
    return "\n".join(lines)
