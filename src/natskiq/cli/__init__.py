"""The ``natskiq`` command: parse, build, run. The only package that prints.

::

    natskiq worker --app MODULE [--url URL] [--queue Q[:WEIGHT]]... [--concurrency N]
                   [--namespace NS] [--timeout S] [--replicas 1|3] [--metrics-port PORT]
    natskiq server [--port 4222] [--host 127.0.0.1] [--store DIR] [--cluster N]
    natskiq demo
    natskiq stats  [--json]
    natskiq nodes  [--json]
    natskiq queues [list | peek Q | clear Q] [--json]
    natskiq queue  pause Q [--until TIME] | resume Q [--json]
    natskiq retry     list|now|delete    [--queue Q] [--class C] [--jid J] [--error E]
    natskiq scheduled list|now|delete       [--since T] [--until T] [--all] [--json]
    natskiq failed    list|replay|delete
    natskiq periodic  list | remove NAME [--json]
    natskiq cancel    JID [--json]
    natskiq job       JID [--json]
    natskiq result    JID [--wait S]
    natskiq events    [--queue Q] [--class C] [--jid J] [--since T] [--limit N] [--follow] [--json]
    natskiq node      quiet|stop NODE_ID
    natskiq web       [--host 127.0.0.1] [--port 7878] [--auth A] [--read-only]

Every command that talks to NATS takes ``--url``, ``--namespace`` and the
authentication and TLS options ``--user``/``--password``, ``--token``,
``--nkey-seed FILE``, ``--creds FILE``, ``--tls-ca FILE``, ``--tls-cert FILE``,
``--tls-key FILE``, ``--tls-hostname NAME``; each has a ``NATSKIQ_*``
environment variable (see :func:`natskiq.enqueue.auth.auth_options`), the better
place for a password or token, which a command line shows to ``ps``.

Exit codes: 0 done, 1 nothing matched (or, for ``result``, a job that failed,
was cancelled or did not finish in time), 2 bad input or NATS unreachable.

Worker settings also come from ``[tool.natskiq]`` in ``./pyproject.toml`` or
from ``./natskiq.toml`` (or ``--config FILE``); flags win, then the
``NATSKIQ_URL`` / ``NATSKIQ_NAMESPACE`` / ``NATSKIQ_REPLICAS`` /
``NATSKIQ_EVENT_LOOP`` environment, then the file.

``command`` holds the parser and :func:`main`, which dispatches to the
command's module and maps errors to exit codes; ``config`` merges flags,
environment and config file into settings, auth options and a client;
``processes`` runs ``worker``, ``server``, ``demo`` and ``web``;
``inspection`` the commands that read and change a running natskiq
(``stats``, ``nodes``, ``queues``, ``periodic``, ``cancel``, ``node``);
``sets`` lists and acts on the retry, scheduled and failed sets; and
``output`` prints their tables. ``natskiq = "natskiq.cli:main"`` is the
entry point, and ``python -m natskiq`` runs it too.
"""

from __future__ import annotations

from natskiq.cli.command import _parser as _parser  # the tests parse a command line as main() does
from natskiq.cli.command import main
from natskiq.cli.config import UsageError, connection_auth, load_config, worker_settings
from natskiq.cli.processes import configure_logging

__all__ = ["UsageError", "configure_logging", "connection_auth", "load_config", "main", "worker_settings"]
