"""Settings dataclasses as command lines, like EDM's click options: a field carries its help text (`knob`), and
`add_flags` makes one flag per field, whose help shows the default the config resolves it to. A flag that is not
given leaves the setting as the config has it, so every script's defaults live in one place."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Iterable
from typing import Any


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring kept as written (its examples); every flag with a default says it (knob flags say the
    value their config resolves to, see `add_flags`), except switches that are off and settings that are unset."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, "", argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def knob(
    help: str,
    *,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    choices: tuple[str, ...] | None = None,
    parse: Callable[[str], Any] | None = None,
    cli: bool = True,
    default: Any = dataclasses.MISSING,
) -> Any:
    """A settings field: `help` is its flag's help text; `flag` overrides the name derived from the field, and
    `aliases` are older names of the same flag that keep working; `cli=False` keeps it off the command line."""
    metadata = {"help": help, "flag": flag, "aliases": aliases, "choices": choices, "parse": parse, "cli": cli}
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    defaults: Any = None,
    only: Iterable[str] | None = None,
) -> None:
    """One flag per `knob` field of a settings dataclass (those in `only`, when given). `defaults` (an instance)
    supplies the values the help shows; an absent flag leaves the setting to the config (see `given_flags`)."""
    hints = typing.get_type_hints(cls)
    wanted = None if only is None else set(only)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True) or "help" not in f.metadata or (wanted is not None and f.name not in wanted):
            continue
        kind = hints[f.name]
        if typing.get_origin(kind) is not None:  # `X | None`: the flag parses X
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        shown = f" (default: {_shown(getattr(defaults, f.name))})" if defaults is not None else ""
        options: dict[str, Any] = {"dest": f.name, "help": f.metadata["help"] + shown, "default": argparse.SUPPRESS}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = f.metadata["parse"] or kind
            if f.metadata["choices"]:
                options["choices"] = f.metadata["choices"]
        parser.add_argument(flag_name(f), *f.metadata["aliases"], **options)


def _shown(value: Any) -> str:
    # argparse formats help with %, so a literal percent sign must be doubled
    shown = "none" if value is None else '""' if value == "" else str(value)
    return shown.replace("%", "%%")


def given_flags(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` that were set on the command line (its flags; a `cli=False` field has none)."""
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if f.metadata.get("cli", True) and hasattr(args, f.name)
    }


def preparse(argv: list[str] | None, flag: str, default: Any) -> Any:
    """The value of one flag before the full parse (`--config`, which decides the other flags' defaults)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument(flag, default=default)
    known, _ = early.parse_known_args(argv)
    return getattr(known, flag.lstrip("-").replace("-", "_"))
