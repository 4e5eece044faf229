"""The ``ddsm`` command: the one place that composes every package's commands.

``ddsm_core.cli`` brings the method's commands (flops, train, sample, search, ...), ``api`` the service's
(up, serve, migrate, demo), ``workers`` the worker. Nothing else imports across packages for commands.
"""

from __future__ import annotations

import sys

from api import demo, service_cmds
from ddsm_core.cli import app, run_app
from workers import cli as worker_cmds

for commands in (service_cmds, worker_cmds, demo):
    commands.register(app)


def main() -> None:
    from ddsm_core.threads import passive_openmp

    passive_openmp()  # before any command imports torch (workers started here inherit it)
    sys.exit(run_app(app))


if __name__ == "__main__":
    main()
