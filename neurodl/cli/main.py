"""The ``neurodl`` command: the Typer app and the one place errors become exit codes."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence
from typing import Annotated

import typer
from rich.text import Text

from neurodl import __version__
from neurodl.cli import (
    _help,
    autoencode,
    biomarkers,
    check,
    classify,
    generate,
    info,
    manifest,
    models,
    report,
    sample_data,
    segment,
    translate,
    tune,
)
from neurodl.cli._console import err_console
from neurodl.errors import ExitStatus, NeurodlError

app = typer.Typer(
    name="neurodl",
    help="Deep learning for brain imaging: biomarker tables and NIfTI volumes, from the terminal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"neurodl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show Python tracebacks and debug logs (anywhere on the line).")
    ] = False,
) -> None:
    """Deep learning for brain imaging: biomarker tables and NIfTI volumes, from the terminal."""


app.command("info")(info.info)
app.command("check")(check.check)
app.command("manifest")(manifest.manifest)
app.command("sample-data")(sample_data.sample_data)
app.command("models")(models.models)
app.add_typer(biomarkers.app, name="biomarkers")
app.add_typer(classify.app, name="classify")
app.add_typer(segment.app, name="segment")
app.add_typer(autoencode.app, name="autoencode")
app.command("train-ae", help="Same as `neurodl autoencode train`.")(autoencode.train)
app.add_typer(translate.app, name="translate")
app.add_typer(generate.app, name="generate")
app.command("report")(report.report)
app.command("compare")(report.compare)
app.command("tune", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(tune.tune)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status (see :class:`neurodl.errors.ExitStatus`).

    ``--debug`` is accepted anywhere on the line; with it, errors show their traceback.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not debug:
        # Deprecation notices from MONAI's internals are for its developers, not for neurodl's users.
        warnings.filterwarnings("ignore", category=FutureWarning, module="monai")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="monai")
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
    console = err_console()
    try:
        _help.apply()
        command = _help.tidy(typer.main.get_command(app))
        result = command.main(args=args, prog_name="neurodl", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        console.print("Interrupted.")
        return ExitStatus.INTERRUPTED
    except typer.TyperException as exc:  # bad option or argument: Typer's own message
        if getattr(exc, "possibilities", None):
            exc.possibilities = _help.without_help(exc.possibilities)  # type: ignore[attr-defined]
        show = getattr(exc, "show", None)
        if show is not None:
            show(file=sys.stderr)
        else:
            console.print(Text("Error: ", style="bold red") + Text(exc.format_message()))
        return ExitStatus.BAD_INPUT
    except NeurodlError as exc:
        if debug:
            console.print_exception()
        if exc.exit_status == ExitStatus.SUCCESS:  # nothing to do (e.g. --resume on a finished run)
            console.print(Text(exc.message))
        else:
            console.print(Text("Error: ", style="bold red") + Text(exc.message))
        if exc.fix:
            label = "Next: " if exc.exit_status == ExitStatus.SUCCESS else "Fix: "
            console.print(Text(label, style="bold") + Text(exc.fix))
        return exc.exit_status
    except KeyboardInterrupt:
        console.print("Interrupted.")
        return ExitStatus.INTERRUPTED
    except OSError as exc:
        # Disk full, permission denied, a path that vanished mid-run: the user can act on these.
        if debug:
            console.print_exception()
        where = f"{exc.filename}: " if exc.filename else ""
        console.print(Text("Error: ", style="bold red") + Text(f"{where}{exc.strerror or exc}"))
        return ExitStatus.BAD_INPUT
    except Exception as exc:  # a bug in neurodl, not the user's fault
        if debug:
            console.print_exception()
        else:
            console.print(
                Text("Internal error: ", style="bold red")
                + Text(f"{type(exc).__name__}: {exc}\nRe-run with --debug for the traceback and report it.")
            )
        return ExitStatus.RUN_FAILED
    return result if isinstance(result, int) else ExitStatus.SUCCESS
