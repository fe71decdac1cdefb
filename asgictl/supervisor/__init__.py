"""The master process of ``asgictl start``: listeners, forked workers, signals, policy.

Layout (the dependency direction is cli -> supervisor -> worker):

* :mod:`~asgictl.supervisor.listeners` parses ``--bind`` and binds every listener before
  any fork (or adopts listeners inherited over a USR2 re-exec);
* :mod:`~asgictl.supervisor.slots` is the shared-memory table the workers report into;
* :mod:`~asgictl.supervisor.policy` holds the pure decisions (back-off, recycle limits);
* :mod:`~asgictl.supervisor.child` is what runs in a forked worker;
* :mod:`~asgictl.supervisor.master` is the signal-and-select loop that ties them together.
"""

from __future__ import annotations

from asgictl.supervisor.master import Master, exit_process, run_master

__all__ = ["Master", "exit_process", "run_master"]
