"""The ``stripe-streams`` command line: the parser, and one module per command.

Every setting is also a flag of every command (``--database-url``, ...); flags win over the
environment. A command module has ``add_arguments(parser)`` and ``run(settings, args)``
returning an exit code. Errors end a command with one line naming what went wrong: exit 1 for
a failure, 2 for a usage mistake, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, NoReturn

from streams.cli import (
    backfill,
    dlq,
    gateway,
    migrate,
    monitor,
    rebuild,
    reconcile,
    replay,
    services,
    settings,
    worker,
)
from streams.errors import StreamsError
from streams.settings import Settings

PROG = "stripe-streams"
COMMANDS: dict[str, ModuleType] = {
    "services": services,
    "migrate": migrate,
    "gateway": gateway,
    "worker": worker,
    "monitor": monitor,
    "replay": replay,
    "rebuild": rebuild,
    "dlq": dlq,
    "backfill": backfill,
    "reconcile": reconcile,
    "settings": settings,
}
Run = Callable[[Settings, argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """argparse with usage mistakes told in one line instead of the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def build_parser() -> Parser:
    """One sub-parser per command: its own options first, then every setting as a flag."""
    parser = Parser(prog=PROG, allow_abbrev=False)
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )
    for name, module in COMMANDS.items():
        summary = (module.run.__doc__ or "").strip().splitlines()[0]
        command = sub.add_parser(
            name, help=summary, description=summary, allow_abbrev=False,
            epilog=f"Every setting is also a flag (see '{PROG} {name} --help-settings' "
                   f"or '{PROG} settings').",
        )
        module.add_arguments(command)
        for accepting in (command, *_operations(command)):
            _add_setting_flags(accepting)
        command.set_defaults(run=module.run)
    return parser


def _operations(command: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The sub-commands of a command (``dlq list``, ...), which take the setting flags too."""
    return [
        parser
        for action in command._actions
        if isinstance(action, argparse._SubParsersAction)
        for parser in action.choices.values()
    ]


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """Add a flag per setting, listed only by ``--help-settings`` so ``--help`` stays short."""
    group = parser.add_argument_group("settings (each also an environment variable)")
    group.add_argument(
        "--help-settings", action=_HelpSettings, nargs=0,
        help="show the setting flags and exit",
    )
    _setting_flags(group, shown=False)


def _setting_flags(group: argparse._ActionsContainer, *, shown: bool) -> None:
    for field in dataclasses.fields(Settings):
        if field.name in ("webhook_secrets", "stripe_api_key"):
            continue  # Secrets stay out of flags so they never show in a process list.
        if field.metadata.get("per_family"):
            continue  # One variable per family (..._<FAMILY>): environment only.
        group.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=f"setting_{field.name}",
            metavar=field.metadata["env"],
            help=field.metadata["doc"] if shown else argparse.SUPPRESS,
            default=argparse.SUPPRESS,
        )


class _HelpSettings(argparse.Action):
    """Print the setting flags a command accepts, then exit."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        listing = argparse.ArgumentParser(
            prog=parser.prog, usage=f"{parser.prog} [SETTING FLAGS]", add_help=False
        )
        _setting_flags(listing.add_argument_group("settings"), shown=True)
        listing.print_help()
        parser.exit()


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment with the flags given on the command line applied."""
    overrides: dict[str, Any] = {}
    for field in dataclasses.fields(Settings):
        raw = getattr(args, f"setting_{field.name}", None)
        if raw is not None:
            try:
                overrides[field.name] = field.metadata["parse"](raw)
            except ValueError as exc:
                flag = "--" + field.name.replace("_", "-")
                raise StreamsError(f"{flag} {exc}") from None
    return Settings.from_env(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code."""
    args = build_parser().parse_args(argv)
    run: Run = args.run
    try:
        return run(settings_from(args), args)
    except StreamsError as exc:
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
