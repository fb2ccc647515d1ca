"""Ranks under every launcher and once-per-launch setup handshakes.

:mod:`protloc.cluster.launch` reads the global rank the way Lightning's Trainer will (its cluster
environments: torchrun, SLURM, LSF, MPI, else Lightning's own launcher), before and after the
Trainer exists, and names the launch (SLURM job/step, torchrun run id, or an id protloc gives
Lightning's own launcher). :mod:`protloc.cluster.handshake` lets rank 0 publish that it finished
work done once per data set (decode store checked, folds, channel statistics) and the other ranks
wait for it, with a timeout and a clear message.
"""

from __future__ import annotations

from protloc.cluster.handshake import SetupFailed, begin_setup, publish_setup, setup_key, wait_for_setup
from protloc.cluster.launch import Launch, detect_launch, ensure_launch_id, is_main_process, parse_devices

__all__ = ["Launch", "detect_launch", "ensure_launch_id", "is_main_process", "begin_setup", "publish_setup",
           "wait_for_setup", "setup_key", "SetupFailed", "parse_devices"]
