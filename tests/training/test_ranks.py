"""One answer to "am I global rank 0", from the environment each launcher sets: exactly one process of a run says
yes, under torchrun, srun, Lightning's own launcher, and Lightning's launcher inside a SLURM allocation."""

import pytest

from training.ranks import is_global_zero


def torchrun(nodes: int, per_node: int) -> list[dict[str, str]]:
    return [
        {"RANK": str(n * per_node + k), "LOCAL_RANK": str(k), "GROUP_RANK": str(n), "WORLD_SIZE": str(nodes * per_node)}
        for n in range(nodes)
        for k in range(per_node)
    ]


def srun(nodes: int, per_node: int) -> list[dict[str, str]]:
    return [
        {
            "SLURM_PROCID": str(n * per_node + k),
            "SLURM_LOCALID": str(k),
            "SLURM_NODEID": str(n),
            "SLURM_NTASKS": str(nodes * per_node),
        }
        for n in range(nodes)
        for k in range(per_node)
    ]


def lightning(nodes: int, per_node: int, *, slurm_task_per_node: bool = False) -> list[dict[str, str]]:
    """Each node's first process is started by the user (NODE_RANK set); Lightning starts the others with
    LOCAL_RANK. Inside a SLURM allocation with one task per node, every process also has that task's SLURM_PROCID."""
    envs = []
    for n in range(nodes):
        for k in range(per_node):
            env = {"NODE_RANK": str(n)} | ({"LOCAL_RANK": str(k)} if k else {})
            if slurm_task_per_node:
                env |= {"SLURM_PROCID": "0" if nodes == 1 else str(n), "SLURM_NTASKS": str(nodes)}
            envs.append(env)
    return envs


@pytest.mark.parametrize(
    "envs",
    [
        [{}],
        torchrun(1, 4),
        torchrun(2, 4),
        srun(1, 4),
        srun(3, 2),
        lightning(1, 4),
        lightning(2, 4),
        lightning(1, 4, slurm_task_per_node=True),
        lightning(2, 4, slurm_task_per_node=True),
    ],
    ids=[
        "one process",
        "torchrun",
        "torchrun 2 nodes",
        "srun",
        "srun 3 nodes",
        "lightning",
        "lightning 2 nodes",
        "lightning in slurm",
        "lightning in slurm 2 nodes",
    ],
)
def test_exactly_one_process_of_a_run_is_global_rank_zero(envs):
    answers = [is_global_zero(env=env) for env in envs]
    assert answers.count(True) == 1 and answers[0], answers
