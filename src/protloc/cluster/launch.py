"""Which process am I? The global rank and the launch, read the way Lightning's Trainer reads them.

Launchers and what they set:

==========================  =====================================================================
Lightning's own launcher    ``protloc train --devices N --strategy ddp``: the command runs once;
                            at ``trainer.fit`` Lightning re-executes it for local ranks 1..N-1
                            with ``LOCAL_RANK``, ``NODE_RANK``, ``WORLD_SIZE`` set (rank 0 has
                            done its setup by then)
torchrun                    every rank at once: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
                            ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ``TORCHELASTIC_RUN_ID``
SLURM (``srun``)            every task at once: ``SLURM_PROCID``, ``SLURM_LOCALID``,
                            ``SLURM_NODEID``, ``SLURM_NTASKS`` and **no** ``RANK``
LSF, MPI                    their own variables (Lightning's LSF/MPI environments)
==========================  =====================================================================

:func:`detect_launch` picks the environment with Lightning's own classes
(``lightning.fabric.plugins.environments``) in the Trainer's priority order (torchrun first, since
it can run inside SLURM; then SLURM, LSF, MPI; else Lightning's environment), so the rank known
before the Trainer exists is the one the Trainer uses. ``SLURM_JOB_NAME=bash`` or
``interactive`` (an interactive allocation) is not a SLURM launch, as for Lightning.

The **launch id** names one start of the job: ``slurm-JOB.STEP-rRESTARTS``,
``torchrun-RUNID-rRESTARTS``, ``lsf-JOB``, or a random id that rank 0 of Lightning's own launcher
puts in ``PROTLOC_LAUNCH_ID`` so the ranks it starts inherit it (:func:`ensure_launch_id`).
``PROTLOC_LAUNCH_ID`` set by the user wins. A static multi-node torchrun without ``--rdzv-id``
has the run id ``none``: the id then adds the master address and port and is marked not unique.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass

__all__ = ["Launch", "detect_launch", "ensure_launch_id", "is_main_process", "parse_devices", "ENV_LAUNCH_ID"]

#: the launch id protloc gives the ranks of Lightning's own launcher (and that a user may set)
ENV_LAUNCH_ID = "PROTLOC_LAUNCH_ID"


@dataclass(frozen=True)
class Launch:
    """This process's place in a (possibly distributed) launch.

    Attributes
    ----------
    launcher : str        ``torchelastic``, ``slurm``, ``lsf``, ``mpi`` or ``lightning``
    global_rank, local_rank, node_rank : int
    world_size : int or None   None while Lightning's own launcher has not started the other ranks
    launch_id : str       names this start of the job ('' before Lightning's launcher has one)
    external : bool       the launcher started every rank (they all run the setup code at once)
    unique : bool         the id cannot repeat in a later start (else a handshake also checks content)

    Examples
    --------
    >>> Launch("slurm", 3, 1, 1, 4, "slurm-7.0-r0", True, True).describe()
    'rank 3 of 4 (slurm, node 1, local rank 1)'
    """

    launcher: str
    global_rank: int
    local_rank: int
    node_rank: int
    world_size: int | None
    launch_id: str
    external: bool
    unique: bool

    @property
    def is_main(self) -> bool:
        """The process that writes files (global rank 0)."""
        return self.global_rank == 0

    def describe(self) -> str:
        of = f" of {self.world_size}" if self.world_size else ""
        return f"rank {self.global_rank}{of} ({self.launcher}, node {self.node_rank}, local rank {self.local_rank})"

    @property
    def safe_id(self) -> str:
        """The launch id as a file-name part.

        Examples
        --------
        >>> Launch("lightning", 0, 0, 0, None, "torchrun-none-r0-10.0.0.1:29500", True, False).safe_id
        'torchrun-none-r0-10.0.0.1_29500'
        """
        return re.sub(r"[^A-Za-z0-9._-]", "_", self.launch_id) or "local"


def _environment():
    """The cluster environment Lightning's Trainer would choose (same classes, same order)."""
    from lightning.fabric.plugins.environments import (LightningEnvironment, LSFEnvironment, MPIEnvironment,
                                                       SLURMEnvironment, TorchElasticEnvironment)

    for cls in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment):
        if cls.detect():
            try:
                return cls()
            except (RuntimeError, ValueError) as e:  # e.g. srun --ntasks without --ntasks-per-node
                from protloc.core.errors import InputError

                raise InputError(f"{cls.__name__}: {e}", fix="correct the launcher's settings (job script)") from None
    return LightningEnvironment()


def _int(name: str, default: int | None = None) -> int | None:
    v = os.environ.get(name, "").strip()
    return int(v) if v.lstrip("-").isdigit() else default


def _master() -> str:
    return f"{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}"


def detect_launch(*, devices_per_node: int | None = None) -> Launch:
    """This process's :class:`Launch`, read from the environment (see the module docstring).

    ``devices_per_node``: processes per node, used only to number the ranks of a manual
    multi-node launch under Lightning's environment (``NODE_RANK`` > 0 without ``RANK``); by
    default ``LOCAL_WORLD_SIZE``, else ``WORLD_SIZE``.

    Examples
    --------
    >>> detect_launch().global_rank  # a plain process, no launcher variables
    0
    """
    env = _environment()
    name = type(env).__name__.replace("Environment", "").lower()
    user_id = os.environ.get(ENV_LAUNCH_ID, "").strip()
    if name == "lightning":
        external = bool(env.creates_processes_externally)  # LOCAL_RANK set: a launched rank
        local, node = int(env.local_rank()), int(env.node_rank())
        world = _int("WORLD_SIZE") if external else None
        per_node = devices_per_node or _int("LOCAL_WORLD_SIZE") or world or 1
        rank = node * per_node + local
        lid, unique = (user_id, True) if user_id else ((f"lightning-{_master()}", False) if external else ("", False))
        return Launch("lightning", rank, local, node, world, lid, external, unique)
    rank, local, node, world = (int(env.global_rank()), int(env.local_rank()), int(env.node_rank()),
                                int(env.world_size()))
    if name == "torchelastic":
        rid, restarts = os.environ.get("TORCHELASTIC_RUN_ID", "none"), _int("TORCHELASTIC_RESTART_COUNT", 0)
        unique = rid.strip().lower() not in ("", "none")
        lid = f"torchrun-{rid}-r{restarts}" + ("" if unique else f"-{_master()}")
    elif name == "slurm":
        job = os.environ.get("SLURM_JOB_ID", "")
        lid = f"slurm-{job}.{os.environ.get('SLURM_STEP_ID', 'batch')}-r{_int('SLURM_RESTART_COUNT', 0)}"
        unique = bool(job)
    elif name == "lsf":
        job = os.environ.get("LSB_JOBID", "")
        lid, unique = f"lsf-{job}", bool(job)
    else:
        ns = os.environ.get("PMIX_NAMESPACE") or os.environ.get("OMPI_MCA_ess_base_jobid", "")
        lid, unique = (f"{name}-{ns}", True) if ns else (f"{name}-{_master()}", False)
    if user_id:
        lid, unique = user_id, True
    return Launch(name, rank, local, node, world, lid, True, unique)


def ensure_launch_id(*, devices_per_node: int | None = None) -> Launch:
    """:func:`detect_launch`, after giving a fresh launch id to the ranks Lightning will start.

    In the process that starts a run itself (no launcher variables), a new random
    ``PROTLOC_LAUNCH_ID`` is put in the environment, which the ranks Lightning's launcher starts
    at ``trainer.fit`` inherit; call it once per run, before the Trainer exists.
    """
    launch = detect_launch(devices_per_node=devices_per_node)
    if launch.launcher == "lightning" and not launch.external:
        os.environ[ENV_LAUNCH_ID] = f"lightning-{uuid.uuid4().hex[:16]}"
        launch = detect_launch(devices_per_node=devices_per_node)
    return launch


def is_main_process(*, devices_per_node: int | None = None) -> bool:
    """True on the process that writes files (global rank 0) under every launcher, also before
    Lightning's own launcher has started the other ranks.

    Examples
    --------
    >>> is_main_process()
    True
    """
    return detect_launch(devices_per_node=devices_per_node).is_main


def parse_devices(spec, *, flag: str = "--devices"):
    """Lightning's ``devices`` from text: ``"2"`` -> 2, ``"0,1"`` -> [0, 1], ``"auto"`` and -1 as is.

    Examples
    --------
    >>> parse_devices("2"), parse_devices("0,1"), parse_devices("auto"), parse_devices(-1)
    (2, [0, 1], 'auto', -1)
    >>> parse_devices("two")
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: --devices: expected a count >= 1, auto, -1 (all) or device indices like 0,1, got 'two'. Fix: e.g. --devices 2.
    """
    if isinstance(spec, (list, tuple)):
        return [int(v) for v in spec]
    s = str(spec).strip()
    if s == "-1" or (s.isascii() and s.isdigit() and int(s) >= 1):
        return int(s)
    if s == "auto":
        return s
    parts = [v.strip() for v in s.split(",")]
    if "," in s and all(v.isascii() and v.isdigit() for v in parts if v) and any(parts):
        return [int(v) for v in parts if v]
    from protloc.core.errors import InputError

    raise InputError(flag, expected="a count >= 1, auto, -1 (all) or device indices like 0,1", got=repr(s),
                     fix=f"e.g. {flag} 2")
