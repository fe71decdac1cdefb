"""The control client: ``asgictl status|reload|scale|stop`` and the protocol they speak.

* ``protocol.py``: the protocol, defined once (version, commands and their arguments,
  where sockets live); the standard library only, read by this client and by the
  master's side (``supervisor/control.py``);
* ``client.py``: one connection to a master, and finding the masters of the user;
* ``commands.py``: the four commands;
* ``render.py``: the status views and the progress line.

Nothing here imports the server (supervisor, worker, protocols): a control command
loads the option table and this package only.
"""
