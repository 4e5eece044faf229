"""The full ``ddsm`` command: the core commands plus the service commands."""

from __future__ import annotations

import sys

from ddsm_core.cli import app, register_all, run_app

register_all(app, ("api.service_cmds",))


def main() -> None:
    from ddsm_core.threads import passive_openmp

    passive_openmp()  # before any command imports torch (workers started here inherit it)
    sys.exit(run_app(app))


if __name__ == "__main__":
    main()
