"""What every command shares: option types, the --threads option, one-line errors, timestamped progress."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Callable

import click

from rar_deploy.errors import RARDeployError

BACKEND_CHOICE = click.Choice(["onnxruntime", "torch", "tensorrt"])
PATH_TYPE = click.Path(path_type=Path)


def _threads(context, parameter, value: int | None) -> int | None:
    from rar_deploy.contract.checks import check_threads

    try:
        return check_threads(value)
    except RARDeployError as exc:
        raise click.BadParameter(str(exc)) from None


THREADS_OPTION = click.option("--threads", type=int, callback=_threads,
                              help="CPU threads of ONNX Runtime's and torch's pools, at most this machine's cores "
                                   "[default: every core].")
INT8_ACTIVATIONS_OPTION = click.option(
    "--int8-activations", is_flag=True,
    help="A folder exported with --weights int8|int4, on onnxruntime: its fast MatMulNBits kernels, which round "
         "activations to int8 at run time (about 2x faster steps on CPU; an approximation of the folder's model, "
         "its cost measured in the README) [default: float32 compute, exactly the folder's model].")


def friendly_errors(command: Callable) -> Callable:
    """Turn RARDeployError into click's one-line 'Error: ...' and exit status 1; so too an OS error no output
    layer named (a file that cannot be read or written), with the file and the reason."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except RARDeployError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            raise click.ClickException(f"cannot use{where}: {exc.strerror or exc}") from None

    return wrapper


def progress_printer() -> Callable[[str], None]:
    start = time.perf_counter()
    return lambda message: click.echo(f"[{time.perf_counter() - start:7.1f}s] {message}", err=True)
