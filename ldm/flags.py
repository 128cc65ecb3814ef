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
            if f.metadata["aliases"]:
                options["action"] = _OneNameStore
        parser.add_argument(flag_name(f), *f.metadata["aliases"], **options)


class _OneNameStore(argparse.Action):
    """A flag with older names: given under two of its names with other values, it is refused (else the last
    would silently win, `--init A --resume B` training from B)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option=None):
        given = getattr(namespace, f"_given_{self.dest}", None)
        if given is not None and given[0] != option and given[1] != values:
            parser.error(f"{given[0]} {given[1]} and {option} {values} name one setting twice; give only one")
        setattr(namespace, f"_given_{self.dest}", (option, values))
        setattr(namespace, self.dest, values)


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


def typed_fields(cls: type, node: dict[str, Any], source: str) -> dict[str, Any]:
    """`node`'s values checked against the field types of the settings dataclass `cls`, as the flags check theirs:
    a YAML value of another type is refused naming the file and key (`hflip: "false"` never reads as true). An int
    is a float where a float belongs, and a number written as text ("1e-5", which YAML 1.1 reads as a string) is
    read as that float."""
    hints = typing.get_type_hints(cls)
    checked = {}
    for name, value in node.items():
        kind = hints.get(name)
        checked[name] = value if kind is None else _typed(kind, value, f"{source}: {name}")
    return checked


def _typed(kind: Any, value: Any, where: str) -> Any:
    args = typing.get_args(kind)
    if type(None) in args:  # X | None
        if value is None:
            return None
        kind = next(a for a in args if a is not type(None))
    origin = typing.get_origin(kind) or kind
    if origin is bool:
        ok = isinstance(value, bool)
    elif origin is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif origin is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif origin in (str, dict, list):
        ok = isinstance(value, origin)
    else:
        ok = True
    if not ok:
        raise ValueError(
            f"{where} must be {_type_name(kind)}, got {value!r} ({type(value).__name__}); write it as YAML "
            f"{_example(origin)}"
        )
    return value


def _type_name(kind: Any) -> str:
    origin = typing.get_origin(kind) or kind
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text", dict: "a mapping"}.get(
        origin, str(kind)
    )


def _example(origin: Any) -> str:
    return {bool: "true or false, without quotes", int: "a number without quotes", float: "a number"}.get(
        origin, "of that type"
    )
