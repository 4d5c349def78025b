"""SLURM through submitit: one task per GPU, checkpoint and requeue on pre-emption and at the time limit.

    python -m training.submit --nodes 2 --gpus-per-node 8 --partition gpu --time 4320 -- \\
        --recipe voc_ade20k_coco_200ep --output runs/voc_ade20k_coco_200ep

Everything after ``--`` goes to ``python -m training.pretrain``. Each task reads its rank from SLURM (submitit's
``TorchDistributedEnvironment``) and trains as one torchrun process would. Before a pre-emption or the time limit
SLURM sends SIGUSR2 (``--signal-delay`` seconds ahead): every task's loop writes ``last.pth`` at the next step
boundary and stops (the ranks agree on the step), then rank 0 hands the job back to submitit, which requeues it
with the same arguments; the requeued job resumes from ``last.pth`` like any restart. ``--cluster local`` runs the
same job with submitit's local executor (real processes, no SLURM), which is how the tests run it. Without
submitit, the ``srun`` line in docs/TRAINING.md does the same minus the requeue.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from mdp_hub.errors import UserError, command
from mdp_hub.help_format import HelpFormatter

PREEMPTION_SIGNAL = signal.SIGUSR2  # what submitit asks SLURM to send before pre-emption or the time limit


class SubmititMissingError(UserError, ImportError):
    """The optional ``cluster`` dependency is not installed."""


class PretrainJob:
    """The function submitit runs in every task: pretraining with this task's rank; ``checkpoint`` requeues it."""

    def __init__(self, pretrain_args: list[str]):
        self.pretrain_args = list(pretrain_args)

    def __call__(self) -> int:
        import submitit

        from training.pretrain import main as pretrain_main

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        code = pretrain_main(self.pretrain_args)
        if code == 128 + PREEMPTION_SIGNAL:
            # The loop has written last.pth and restored submitit's handler: raising the signal again lets submitit
            # call checkpoint() and requeue (rank 0; the other ranks' handler does nothing).
            if submitit.JobEnvironment().global_rank == 0:
                os.kill(os.getpid(), PREEMPTION_SIGNAL)
            return code
        if code != 0:
            raise RuntimeError(f"python -m training.pretrain {' '.join(self.pretrain_args)} exited with {code}")
        return code

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on the pre-emption signal: the same job again (it resumes from ``last.pth``)."""
        import submitit

        return submitit.helpers.DelayedSubmission(PretrainJob(self.pretrain_args))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.submit",
        formatter_class=HelpFormatter,
        description="Submit pretraining to SLURM with submitit (one task per GPU, requeued on pre-emption).",
    )
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8, help="tasks per node: one per GPU")
    parser.add_argument("--partition", help="SLURM partition")
    parser.add_argument("--time", type=int, default=4320, help="time limit per job, minutes (default: 72 h)")
    parser.add_argument("--cpus-per-task", type=int, default=10, help="data workers + the training process")
    parser.add_argument("--mem-gb", type=int, help="memory per node (default: the partition's)")
    parser.add_argument("--account", help="SLURM account")
    parser.add_argument("--qos", help="SLURM quality of service")
    parser.add_argument("--signal-delay", type=int, default=120, help="seconds between SIGUSR2 and the kill")
    parser.add_argument("--logs", type=Path, default=Path("runs/submitit"), help="submitit's job folder")
    parser.add_argument(
        "--cluster", choices=("slurm", "local"), help="default: SLURM when sbatch is here, else the local executor"
    )
    parser.add_argument("--wait", action="store_true", help="wait for the job to finish and report its result")
    parser.add_argument("pretrain_args", nargs=argparse.REMAINDER, help="-- then the arguments of training.pretrain")
    args = parser.parse_args(argv)
    args.pretrain_args = args.pretrain_args[1:] if args.pretrain_args[:1] == ["--"] else args.pretrain_args
    for name in ("nodes", "gpus_per_node", "time", "cpus_per_task"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def build_executor(args: argparse.Namespace):
    """submitit's executor with one task per GPU and the pre-emption signal ahead of the time limit."""
    try:
        import submitit
    except ImportError:
        raise SubmititMissingError("python -m training.submit needs submitit: pip install 'mdp-hub[cluster]'") from None
    executor = submitit.AutoExecutor(folder=str(args.logs), cluster=args.cluster)
    slurm = {
        "slurm_partition": args.partition,
        "slurm_signal_delay_s": args.signal_delay,
        "slurm_additional_parameters": {k: v for k, v in (("account", args.account), ("qos", args.qos)) if v},
    }
    local = executor.cluster == "local"
    executor.update_parameters(
        name="mdp-pretrain",
        nodes=args.nodes,
        tasks_per_node=args.gpus_per_node,
        gpus_per_node=0 if local else args.gpus_per_node,
        cpus_per_task=args.cpus_per_task,
        timeout_min=args.time,
        **({"mem_gb": args.mem_gb} if args.mem_gb else {}),
        **({} if local else {k: v for k, v in slurm.items() if v not in (None, {})}),
    )
    return executor


@command("python -m training.submit")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    executor = build_executor(args)
    job = executor.submit(PretrainJob(args.pretrain_args))
    print(f"submitted job {job.job_id} ({args.nodes} node(s) x {args.gpus_per_node} task(s)); logs in {args.logs}")
    if args.wait:
        results = job.results()
        print(f"job {job.job_id} finished: exit codes {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
