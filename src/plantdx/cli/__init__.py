"""The ``plantdx`` command: each command a thin shell over a library function, grouped by stage.

Stage modules are imported inside the command that needs them, so ``plantdx data check`` does not pay for torch.
"""

from __future__ import annotations

import sys

from plantdx.cli import data, federate, model, monitor, serve  # noqa: F401  (each registers its commands on ``app``)
from plantdx.cli.app import app, err_console
from plantdx.errors import PlantdxError

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point: domain errors, and the file-system and MLflow errors a person can act on (a folder
    where a file is wanted, an unusable tracking URI), become one line on stderr and a non-zero exit. Other errors
    are bugs or unnamed I/O failures and keep their traceback."""
    try:
        app()
    except PlantdxError as exc:
        _fail(str(exc), exc.exit_code)
    except OSError as exc:
        if exc.filename is None:  # not about a path the user gave (a truncated image, a socket): keep the traceback
            raise
        _fail(f"{exc.strerror or type(exc).__name__}: {exc.filename}", 1)
    except Exception as exc:
        # MlflowException by name: importing mlflow here would add two seconds to every command
        if not any(c.__name__ == "MlflowException" and c.__module__.startswith("mlflow") for c in type(exc).__mro__):
            raise
        _fail(f"MLflow: {getattr(exc, 'message', exc)}", 1)


def _fail(message: str, code: int) -> None:
    err_console.print(f"[red]error:[/red] {message}", soft_wrap=True, highlight=False)
    sys.exit(code)
