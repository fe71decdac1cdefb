"""The master process of ``asgictl start``: listeners, forked workers, signals, policy.

The dependency direction is cli -> supervisor -> worker. The pieces, from the outside in
(docs/architecture.md has a line per module):

* :mod:`~asgictl.supervisor.wiring` builds the master from its parts and subscribes
  what follows its life (:mod:`~asgictl.supervisor.hooks`): sd_notify, the file watcher,
  the samplers, the control socket, the metrics listener, the Pub/Sub broker;
* :mod:`~asgictl.supervisor.master` acts on signals, forks and reaps workers and takes
  every decision (the pure ones are :mod:`~asgictl.supervisor.policy`'s), in the loop of
  :mod:`~asgictl.supervisor.loop`;
* :mod:`~asgictl.supervisor.workers` and :mod:`~asgictl.supervisor.slots` are the
  master's table and the shared-memory cells the workers report into;
* :mod:`~asgictl.supervisor.listeners` binds every listener before any fork;
  :mod:`~asgictl.supervisor.child` is what runs in a forked worker.
"""

from __future__ import annotations

from asgictl.supervisor.master import Master
from asgictl.supervisor.wiring import exit_process, run_master

__all__ = ["Master", "exit_process", "run_master"]
