"""Which jobs of a sweep train together: groups that share a graph, split into chunks.

Pure Python on composed configs (no TensorFlow, no Hydra runtime), so it is tested directly.
"""
import json
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from runner.tasks import supports

# Config keys whose values change no tensor's shape: jobs that differ only here share a graph
# (runner.tasks.STACKS lists what the engine stacks of each group). The optimizer's name is
# the exception (Adam and SGD keep different slots). Seeds are replicates: each job of a graph
# keeps its own initial weights, data split and batch order.
SHAPE_FREE_KEYS = ("optimizer", "clipping", "regularizer", "lr_schedule", "plots", "seed")


def graph_key(cfg, env: Dict[str, str]) -> str:
    """Equal for two jobs exactly when they can share one graph (and one environment)."""
    shared = OmegaConf.to_container(cfg, resolve=True)
    for key in SHAPE_FREE_KEYS:
        shared.pop(key, None)
    shared["optimizer.name"] = cfg.optimizer.name
    return json.dumps({"config": shared, "env": env}, sort_keys=True, default=str)


def even_chunks(items: Sequence, max_size: int, workers: int = 1) -> List[list]:
    """`items` in order, in the fewest chunks of at most `max_size`, sizes within one of each
    other (17 jobs with max 16 -> 9 + 8, not 16 + 1: a chunk of one would train alone).

    A group that needs several chunks gets a multiple of `workers` of them while each keeps
    two jobs: 40 jobs on 2 workers train as 4 x 10 (two rounds), not 14 + 13 + 13 (the third
    chunk alone on one worker while the other idles)."""
    if not items:
        return []
    count = math.ceil(len(items) / max_size)
    if count > 1 and workers > 1:
        rounded = -(-count // workers) * workers
        if len(items) // rounded >= 2:
            count = rounded
    size, extra = divmod(len(items), count)
    chunks, start = [], 0
    for i in range(count):
        stop = start + size + (1 if i < extra else 0)
        chunks.append(list(items[start:stop]))
        start = stop
    return chunks


@dataclass
class Chunk:
    """Jobs (indices into the launcher's list) trained in one graph; `alone` says why a
    single job does not share one (None when it is stacked)."""
    members: List[int]
    alone: Optional[str] = None


def plan_chunks(cfgs: Sequence, envs: Sequence[Dict[str, str]], max_stack: int,
                supports: Callable = supports, workers: int = 1) -> List[Chunk]:
    """Group the jobs by graph, split the groups into chunks; ordered by each chunk's first job.

    With several `workers`, a chunk of 4 or more jobs is halved while there are fewer chunks
    than workers: 16 jobs on 2 workers train as 8 + 8 side by side, not 16 on one of them.
    """
    chunks, groups = [], {}
    for i, (cfg, env) in enumerate(zip(cfgs, envs)):
        reason = supports(cfg)
        if reason is not None:
            chunks.append(Chunk([i], alone=reason))
        else:
            groups.setdefault(graph_key(cfg, env), []).append(i)
    for members in groups.values():
        if len(members) == 1:
            chunks.append(Chunk(members, alone="no other job of this batch shares its graph"))
            continue
        # A seed's jobs side by side: jobs of one seed draw the same batches, and a chunk of
        # one seed feeds all of them one input (its first convolution is one dense conv, not
        # N grouped ones). Replicate sweeps (seed varying fastest) otherwise mix 5 seeds in
        # every chunk.
        members = sorted(members, key=lambda i: cfgs[i].seed)
        chunks.extend(Chunk(part) for part in even_chunks(members, max(1, max_stack), workers))
    while len(chunks) < workers:
        largest = max((c for c in chunks if c.alone is None), key=lambda c: len(c.members),
                      default=None)
        if largest is None or len(largest.members) < 4:
            break
        chunks.remove(largest)
        chunks.extend(Chunk(part) for part in even_chunks(largest.members,
                                                          -(-len(largest.members) // 2)))
    for chunk in chunks:
        if len(chunk.members) == 1 and chunk.alone is None:
            chunk.alone = "hydra.launcher.max_stack=1"
    return sorted(chunks, key=lambda chunk: chunk.members[0])
