"""Multi-process launching, as Detectron2's ``launch`` (same arguments): one process per GPU
(NCCL), or N processes sharing the CPU cores (gloo), on one machine or several.

Detectron2's own ``launch`` asserts CUDA (0.6), gives no hook before the processes meet, and
leaves the loader workers behind when a process fails. Here ``--dist-url`` is checked before any
work; the processes meet through a ``TCPStore``, saying what they wait for until
``CLIPTRASE_D2_DIST_WAIT`` seconds (default 600); and each process runs in a process group of its
own, ended with its loader workers however the run ends, which ends with one line naming the
process. docs/reliability.md lists each fault and what the run does.
"""

import logging
import os
import signal
import socket
import sys
import threading
import time
from datetime import timedelta
from urllib.parse import urlsplit

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm

from .. import errors
from ..errors import ConfigError, UserError
from .checks import check_num_processes

__all__ = [
    "launch",
    "check_launch",
    "run_eval_only",
    "run_launched",
    "LostProcess",
    "WorkerError",
    "WAIT_ENV",
]

logger = logging.getLogger(__name__)

WAIT_ENV = "CLIPTRASE_D2_DIST_WAIT"  # seconds a process waits for the others to join
DEFAULT_WAIT_S = 600
FIRST_WAIT_LOG_S, WAIT_LOG_EVERY_S = 10, 60
LOST_LOADER_WORKER = "DataLoader worker (pid"  # how torch's loader says that a worker died
LOST_PEER = "Connection closed by peer"  # how gloo says that another process of the run ended
QUIET_TRACKER = "ignore:resource_tracker:UserWarning"  # a PYTHONWARNINGS filter


class LostProcess(RuntimeError):
    """A process of the run died (killed, out of memory): a rank, or a rank's loader worker."""


class WorkerError(RuntimeError):
    """A process of the run failed. ``kind``: its exception's class name; the message names the
    process; ``details``: its traceback (empty when it was killed)."""

    def __init__(self, message: str, kind: str, details: str = ""):
        super().__init__(message)
        self.kind, self.details = kind, details

    def exit_message(self) -> str:
        """The command line's last words: 'error: ...', after the process's traceback when the
        error is a bug (it needs one), not bad input (the UserError family of
        ``cliptrase_d2.errors``) or a lost process."""
        named = getattr(errors, self.kind, None)
        user_error = isinstance(named, type) and issubclass(named, UserError)
        if not user_error and self.kind != LostProcess.__name__:
            sys.stderr.write(self.details + "\n")
        return f"error: {self}"


def _worker_error(error: Exception, world_size: int, first_rank: int) -> WorkerError:
    rank = f"process rank {first_rank + error.error_index} of {world_size}"
    if isinstance(error, mp.ProcessExitedException):
        how = f"was killed by {error.signal_name}" if error.signal_name else "exited"
        return WorkerError(
            f"({rank}, pid {error.error_pid}) {how} (exit status {error.exit_code}); the run was "
            "stopped",
            LostProcess.__name__,
        )
    lines = [line for line in str(error).splitlines() if line.strip()]
    last = lines[-1] if lines else str(error)
    kind, _, message = last.partition(": ")
    kind = kind.rsplit(".", 1)[-1]
    if not message or " " in kind:
        kind, message = "Exception", last
    return WorkerError(f"({rank}) {message}", kind, str(error))


def _host_port(dist_url: str):
    try:
        url = urlsplit(dist_url)
        scheme, host, port = url.scheme, url.hostname, url.port
    except ValueError:  # a port that is not a number in 0..65535, a broken [IPv6] address
        scheme = host = port = None
    if scheme != "tcp" or not host or not port:
        raise ConfigError(
            f"--dist-url {dist_url}: give tcp://<host>:<port> (machine 0's address and a free "
            "port, e.g. tcp://127.0.0.1:29500), or auto on one machine"
        )
    return host, port


def check_launch(num_processes: int, num_machines: int, machine_rank: int, dist_url: str) -> str:
    """Checks what ``launch`` takes before any work, and returns ``dist_url`` with ``auto``
    replaced by a free local port. Several processes need a ``tcp://<host>:<port>`` whose host
    resolves, whose port is free on machine 0, a valid ``CLIPTRASE_D2_DIST_WAIT``, and with CUDA
    as many GPUs as processes."""
    check_num_processes(num_processes, num_machines, machine_rank)
    if num_processes * num_machines == 1:
        return dist_url
    wait_limit()
    if torch.cuda.is_available() and num_processes > torch.cuda.device_count():
        raise ConfigError(
            f"--num-gpus {num_processes}: this machine has {torch.cuda.device_count()} GPUs"
        )
    if not torch.cuda.is_available() and num_processes > (os.cpu_count() or 1):
        raise ConfigError(
            f"--num-gpus {num_processes}: without CUDA each process is a CPU process, and this "
            f"machine has {os.cpu_count() or 1} CPUs: give at most that many"
        )
    if dist_url == "auto":
        if num_machines != 1:
            raise ConfigError(
                "--dist-url auto only works on one machine; give tcp://<host>:<port> (machine "
                "0's address)"
            )
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    host, port = _host_port(dist_url)
    try:
        socket.getaddrinfo(host, port)
    except OSError as error:
        raise ConfigError(f"--dist-url {dist_url}: unknown host {host} ({error})") from None
    if machine_rank == 0:  # it will listen there, as TCPStore does (all addresses, reused)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("", port))
            except OSError as error:
                raise ConfigError(
                    f"--dist-url {dist_url}: port {port} is in use on this machine "
                    f"({error.strerror}); choose a free port"
                    + (", or --dist-url auto" if num_machines == 1 else "")
                ) from None
    return dist_url


def wait_limit() -> float:
    """Seconds a process waits for the others to join: ``$CLIPTRASE_D2_DIST_WAIT``, else 600."""
    value = os.environ.get(WAIT_ENV, str(DEFAULT_WAIT_S))
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):  # inf: a machine that never joins would hang the run
        raise ConfigError(
            f"{WAIT_ENV}={value}: give the seconds a process waits for the others to join, a "
            f"finite number above 0 (default {DEFAULT_WAIT_S})"
        )
    return seconds


def launch(
    main_func,
    num_processes: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    args=(),
    timeout=DEFAULT_TIMEOUT,
):
    """Runs ``main_func(*args)`` in ``num_processes`` processes on this machine, one per GPU with
    CUDA, else sharing the CPU cores, and in this process when there is only one in all.

    Raises ``WorkerError`` for the first process that fails (its rank, its error or the signal
    that killed it), after ending every process of this machine with its loader workers; on
    ``KeyboardInterrupt`` it ends them the same way before passing it on."""
    dist_url = check_launch(num_processes, num_machines, machine_rank, dist_url)
    world_size = num_machines * num_processes
    if world_size == 1:
        return _run(main_func, args)
    # The run's last line says what happened; torch would add "Terminating process N via signal
    # SIGTERM" for each process it stops after another one failed, and multiprocessing's
    # resource tracker (which cleans up after them) "There appear to be N leaked semaphore
    # objects" for a killed process's loader queues.
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    warning_filters = os.environ.get("PYTHONWARNINGS", "")
    if QUIET_TRACKER not in warning_filters:  # the tracker is a new interpreter: its filters
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, (warning_filters, QUIET_TRACKER)))
    context = mp.start_processes(
        _worker,
        nprocs=num_processes,
        args=(main_func, world_size, num_processes, machine_rank, dist_url, args, timeout),
        join=False,
    )
    try:
        while not context.join():
            pass
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as error:
        raise _worker_error(error, world_size, machine_rank * num_processes) from None
    finally:
        _end_groups(context.processes)


def _end_groups(processes, within: float = 5.0) -> None:
    """Kills each process's group (it and its loader workers) and waits, ``within`` seconds at
    most, until none of them is left."""
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:  # none left, or the process had no group of its own yet
            pass
        process.kill()
        process.join()
    deadline = time.monotonic() + within
    for process in processes:
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)


def _worker(
    local_rank, main_func, world_size, num_processes, machine_rank, dist_url, args, timeout
):
    os.setpgid(0, 0)  # a group of its own, which its loader workers join (ended by launch)
    rank = machine_rank * num_processes + local_rank
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    else:  # the processes on this machine share its cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_processes))
    store = _rendezvous(dist_url, rank, world_size, num_processes, timeout)
    dist.init_process_group(
        backend="nccl" if torch.cuda.is_available() else "gloo",
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=timeout,
    )
    for machine in range(world_size // num_processes):  # detectron2's comm.get_local_rank() ...
        group = dist.new_group(list(range(machine * num_processes, (machine + 1) * num_processes)))
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    # No barrier when main_func raises: the other processes may be waiting in one of its
    # collectives (the evaluator's gather), where a barrier would hang both until the timeout
    # and hide this error. Raising ends this process; launch then stops the others.
    _run(main_func, args)
    comm.synchronize()
    dist.destroy_process_group()
    # Done: leave without the interpreter's teardown, in which threads that torch.distributed
    # still holds can abort the process ("terminate called without an active exception",
    # SIGABRT) and turn a finished run into a failed one.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _run(main_func, args):
    """``main_func(*args)``. When it fails because one of this process's loader workers died,
    which torch reports in several ways depending on when (its own RuntimeError, or the error of
    a transfer from the dead worker), raises LostProcess naming the worker; the same when a
    collective finds that a process of another machine ended."""
    try:
        return main_func(*args)
    except UserError:
        raise
    except Exception as error:
        if threading.current_thread() is threading.main_thread():  # (signals: the main one only)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's would raise at any point
        deadline = time.monotonic() + 1  # a killed worker is waitable within milliseconds
        while time.monotonic() < deadline:
            try:  # a child that died and that nobody has waited for yet (left waitable)
                died = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # no child at all
                break
            if died is not None and died.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
                name = signal.Signals(died.si_status).name
                message = f"a loader worker (pid {died.si_pid}) was killed by {name}"
                raise LostProcess(message) from None
            time.sleep(0.05)
        if str(error).startswith(LOST_LOADER_WORKER):  # torch waited for it first
            raise LostProcess(str(error)) from None
        if LOST_PEER in str(error):  # "[.../pair.cc:561] Connection closed by peer [ip]:port. ..."
            peer = str(error).partition("] ")[2].split(". ")[0]
            raise LostProcess(f"another process of the run ended ({peer}): see its log") from None
        raise


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _rendezvous(dist_url, rank, world_size, num_processes, timeout) -> dist.TCPStore:
    """The store through which the ``world_size`` processes meet: rank 0 hosts it at
    ``dist_url``, each process adds its key and waits for every other's. The first process of
    each machine logs what it waits for; past the wait limit, ConfigError."""
    host, port = _host_port(dist_url)
    limit, start = wait_limit(), time.monotonic()
    machine = rank // num_processes

    def wait(ready, waited_for):
        next_log = FIRST_WAIT_LOG_S
        while not ready():
            waited = time.monotonic() - start
            if waited > limit:
                raise ConfigError(
                    f"gave up after {limit:g} s waiting for {waited_for()} at {dist_url}: start "
                    "every machine's command with the same --num-machines, --num-gpus and "
                    f"--dist-url, or wait longer (${WAIT_ENV}, seconds)"
                )
            if waited >= next_log and rank % num_processes == 0:
                logger.warning(
                    "machine %d is waiting for %s at %s (%.0f s so far; gives up after %g s, $%s)",
                    machine,
                    waited_for(),
                    dist_url,
                    waited,
                    limit,
                    WAIT_ENV,
                )
                next_log += WAIT_LOG_EVERY_S
            time.sleep(0.5)

    if rank == 0:
        try:
            store = dist.TCPStore(host, port, world_size, True, timeout, wait_for_workers=False)
        except dist.DistNetworkError as error:
            raise ConfigError(f"--dist-url {dist_url}: cannot listen there ({error})") from None
    else:
        wait(lambda: _accepts(host, port), lambda: "machine 0 (rank 0) to listen")
        try:  # machine 0's store answers at once; another program there never does
            store = dist.TCPStore(host, port, world_size, False, timedelta(seconds=min(limit, 30)))
        except dist.DistNetworkError as error:
            raise ConfigError(
                f"--dist-url {dist_url}: cannot join machine 0 there ({str(error).splitlines()[0]})"
                ": give machine 0's address and the port of its --dist-url"
            ) from None
        store.set_timeout(timeout)
    keys = [f"cliptrase_d2/joined/{r}" for r in range(world_size)]
    store.set(keys[rank], "1")

    def missing():
        ranks = [r for r, key in enumerate(keys) if not store.check([key])]
        described = []
        for m in sorted({r // num_processes for r in ranks}):
            on_m = [str(r) for r in ranks if r // num_processes == m]
            described.append(f"machine {m} (rank{'s' * (len(on_m) > 1)} {', '.join(on_m)})")
        return ", ".join(described)

    wait(lambda: store.check(keys), missing)
    return store


def run_eval_only(main, args, validate) -> None:
    """The command line of an evaluation tool (train_net, lazyconfig_train_net): refuses
    training, then ``run_launched``."""
    if not args.eval_only:
        sys.exit(
            "CLIPtrase is training-free: there is nothing to train. Add --eval-only to evaluate."
        )
    run_launched(main, args, validate)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signum)


def run_launched(main, args, validate) -> None:
    """Checks the launch arguments and runs ``validate(args)`` before any work, launches
    ``main(args)`` on ``args.num_gpus`` processes (``num_machines``, ``machine_rank``,
    ``dist_url`` as Detectron2's), and ends with one line for a user error, a lost process or
    SIGINT / SIGTERM (exit status 130 / 143, every process of the run ended)."""
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM ends the run as Ctrl-C does
    try:
        dist_url = check_launch(args.num_gpus, args.num_machines, args.machine_rank, args.dist_url)
        validate(args)  # before any work: config, device, OUTPUT_DIR
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=dist_url,
            args=(args,),
        )
    except (UserError, LostProcess) as error:
        sys.exit(f"error: {error}")  # one line; anything else keeps its traceback
    except WorkerError as error:
        sys.exit(error.exit_message())  # several processes: the failing one's error
    except KeyboardInterrupt as interrupt:
        signum = interrupt.args[0] if interrupt.args else signal.SIGINT
        sys.stderr.write(f"interrupted by {signal.Signals(signum).name}: the run was stopped\n")
        sys.exit(128 + signum)
