"""Multi-process launching on GPUs (NCCL) or CPUs (gloo), through detectron2's ``launch``.

detectron2's ``launch`` runs on CPUs with gloo since January 2023. detectron2 0.6's asserts CUDA
and hard-codes NCCL, so there CPU runs with several processes go through ``_gloo_worker`` here,
which sets up detectron2's ``comm`` the same way.
"""

import functools
import logging
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm
from ..errors import ConfigError, UserError
from .checks import check_num_processes

__all__ = ["launch", "run_eval_only", "run_launched", "WorkerError"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)

# Whether detectron2's launch runs on CPUs (gloo). Told by comm.create_local_process_group, which
# detectron2 added twelve days after that (January 2023); 0.6 has neither.
LIBRARY_LAUNCHES_ON_CPU = hasattr(comm, "create_local_process_group")


class WorkerError(RuntimeError):
    """A CPU worker process raised. ``kind``: its exception's class name; the message is its
    text (with the process number); ``details``: the worker's traceback."""

    # Errors that describe bad input (their message says what to fix): no traceback needed.
    @staticmethod
    def user_error_names() -> set:
        """Class names of the UserError family (errors whose message says what to fix)."""
        names, classes = set(), [UserError]
        while classes:
            cls = classes.pop()
            names.add(cls.__name__)
            classes.extend(cls.__subclasses__())
        return names

    def __init__(self, message: str, kind: str, details: str):
        super().__init__(message)
        self.kind, self.details = kind, details

    def exit_message(self) -> str:
        """The command line's last words: 'error: ...', after the worker's traceback when the
        error is not about the input (a bug needs it)."""
        if self.kind not in self.user_error_names():
            sys.stderr.write(self.details + "\n")
        return f"error: {self}"


def _worker_error(
    error: "mp.ProcessRaisedException", world_size: int, first_rank: int = 0
) -> WorkerError:
    lines = [line for line in str(error).splitlines() if line.strip()]
    last = lines[-1] if lines else str(error)
    kind, _, message = last.partition(": ")
    kind = kind.rsplit(".", 1)[-1]
    if not message or " " in kind:
        kind, message = "Exception", last
    return WorkerError(
        f"(process rank {first_rank + error.error_index} of {world_size}) {message}",
        kind,
        str(error),
    )


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(
    main_func,
    num_processes: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    args=(),
    use_cuda: bool = None,
    timeout=DEFAULT_TIMEOUT,
):
    """Runs ``main_func(*args)`` in ``num_processes`` processes per machine.

    With CUDA (``use_cuda`` default: ``torch.cuda.is_available()``) this is detectron2's launch:
    one process per GPU, NCCL. Without, processes share the CPU cores and talk over gloo,
    through detectron2's launch where it can (``LIBRARY_LAUNCHES_ON_CPU``), else ``_gloo_worker``.
    """
    check_num_processes(num_processes, num_machines, machine_rank)
    use_cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
    if use_cuda:
        return d2_launch(
            main_func,
            num_processes,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
            timeout=timeout,
        )
    world_size = num_machines * num_processes
    if world_size == 1:
        return main_func(*args)
    if dist_url == "auto" and num_machines != 1:
        raise ConfigError("--dist-url auto only works on one machine; give tcp://<host>:<port>")
    try:
        if LIBRARY_LAUNCHES_ON_CPU and not torch.cuda.is_available():
            d2_launch(
                functools.partial(_on_shared_cores, main_func, num_processes),
                num_processes,
                num_machines=num_machines,
                machine_rank=machine_rank,
                dist_url=dist_url,
                args=args,
                timeout=timeout,
            )
            return None
        if dist_url == "auto":
            dist_url = f"tcp://127.0.0.1:{_free_port()}"
        mp.spawn(
            _gloo_worker,
            nprocs=num_processes,
            daemon=False,
            args=(main_func, world_size, num_processes, machine_rank, dist_url, args, timeout),
        )
    except mp.ProcessRaisedException as error:
        raise _worker_error(error, world_size, machine_rank * num_processes) from None


def _share_cores(num_processes: int) -> None:
    """Each of ``num_processes`` processes on this machine takes its share of the CPU cores."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_processes))


def _on_shared_cores(main_func, num_processes, *args):
    _share_cores(num_processes)
    return main_func(*args)


def _gloo_worker(
    local_rank, main_func, world_size, num_processes, machine_rank, dist_url, args, timeout
):
    global_rank = machine_rank * num_processes + local_rank
    _share_cores(num_processes)
    dist.init_process_group(
        backend="gloo",
        init_method=dist_url,
        world_size=world_size,
        rank=global_rank,
        timeout=timeout,
    )
    num_machines = world_size // num_processes
    for i in range(num_machines):
        group = dist.new_group(list(range(i * num_processes, (i + 1) * num_processes)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    # No barrier when main_func raises: the other processes may be waiting in one of its
    # collectives (the evaluator's gather), where a barrier would hang both until the timeout
    # and hide this error. Raising ends this process; mp.spawn then stops the others and
    # reports the error.
    main_func(*args)
    comm.synchronize()
    dist.destroy_process_group()


def run_eval_only(main, args, validate) -> None:
    """The command line of an evaluation tool (train_net, lazyconfig_train_net): refuses
    training, then ``run_launched``."""
    if not args.eval_only:
        sys.exit(
            "CLIPtrase is training-free: there is nothing to train. Add --eval-only to evaluate."
        )
    run_launched(main, args, validate)


def run_launched(main, args, validate) -> None:
    """Runs ``validate(args)`` before any work, launches ``main(args)`` on ``args.num_gpus``
    processes (``num_machines``, ``machine_rank``, ``dist_url`` as Detectron2's), and ends with
    one line for a user error."""
    try:
        validate(args)  # before any work: config, device, process count, OUTPUT_DIR
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except UserError as error:
        sys.exit(f"error: {error}")  # bad input: one line; anything else keeps its traceback
    except WorkerError as error:
        sys.exit(error.exit_message())  # several CPU processes: the failing one's error
