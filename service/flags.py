"""CLI flags generated from the settings models, and parsed back into them.

One flag per leaf field, from its type (int, float, str, Literal choices, lists, dicts, `None`-able values), its
default, bounds and description; the model keeps every default and does all validation, so a flag and the API
field it mirrors cannot drift apart. A flag the user did not give is left out of the data handed to the model,
which then fills its own default.

Names: `--` + the field's name with dashes; a field may name its flag (and aliases) in its
`json_schema_extra={"flag": ..., "aliases": [...]}` (`"flag": None`: no flag); a section may add a prefix
(`refine` -> `--refine-...`). Two fields mapping to one flag is an error when the flags are built.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

# Sections whose flags carry a prefix; every other section's flags are unprefixed.
SECTION_PREFIXES: Mapping[str, str] = {"refine": "refine-", "latency": "latency-"}
NONE_WORDS = ("all", "none", "null")
_DEST = "settings__"


class FlagError(ValueError):
    """The models map two fields to one flag (a programming error, found when a parser is built)."""


@dataclass(frozen=True)
class Flag:
    path: tuple[str, ...]  # where the value goes in the model's data: ("training", "learning_rate")
    names: tuple[str, ...]  # "--lr", "--learning-rate"
    info: FieldInfo
    annotation: Any
    nullable: bool

    @property
    def dest(self) -> str:
        return _DEST + "__".join(self.path)

    @property
    def name(self) -> str:
        return self.names[0]

    def default(self) -> Any:
        return self.info.get_default(call_default_factory=True)


def _strip_none(annotation: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None`, (annotation, False) otherwise."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(annotation)):
            return args[0], True
    return annotation, False


def _section(annotation: Any) -> type[BaseModel] | None:
    inner, _ = _strip_none(annotation)
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def _names(name: str, info: FieldInfo, prefix: str) -> tuple[str, ...] | None:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    main = extra.get("flag", name.replace("_", "-"))
    if main is None:
        return None
    return tuple(f"--{prefix}{n}" for n in (main, *extra.get("aliases", ())))


def model_flags(model: type[BaseModel], *, prefixes: Mapping[str, str] = SECTION_PREFIXES,
                skip: Iterable[str] = ()) -> list[Flag]:
    """The flags of every leaf field of `model` (nested sections included), but the top-level fields in `skip`."""
    flags: list[Flag] = []
    _walk(model, (), "", prefixes, set(skip), flags)
    seen: dict[str, Flag] = {}
    for flag in flags:
        for name in flag.names:
            if name in seen:
                raise FlagError(f"fields {'.'.join(seen[name].path)} and {'.'.join(flag.path)} both map to flag "
                                f"{name}; give one of them another name (json_schema_extra 'flag')")
            seen[name] = flag
    return flags


def _walk(model: type[BaseModel], path: tuple[str, ...], prefix: str, prefixes: Mapping[str, str], skip: set[str],
          out: list[Flag]) -> None:
    for name, info in model.model_fields.items():
        if not path and name in skip:
            continue
        section = _section(info.annotation)
        if section is not None:
            _walk(section, (*path, name), prefix + prefixes.get(name, ""), prefixes, skip, out)
            continue
        names = _names(name, info, prefix)
        if names is not None:
            annotation, nullable = _strip_none(info.annotation)
            out.append(Flag((*path, name), names, info, annotation, nullable))


def _none_or(convert: Callable[[str], Any], nullable: bool) -> Callable[[str], Any]:
    if not nullable:
        return convert

    def parse(text: str) -> Any:
        return None if text.strip().lower() in NONE_WORDS else convert(text)

    parse.__name__ = f"{getattr(convert, '__name__', 'value')} or 'all'"
    return parse


def _commas(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _kind(annotation: Any) -> tuple[Callable[[str], Any], tuple[Any, ...] | None, str]:
    """(converter, choices, metavar) for a leaf type."""
    if typing.get_origin(annotation) is typing.Annotated:  # kept inside `X | None`: the constraints are pydantic's
        annotation = typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return str, typing.get_args(annotation), ""
    if origin in (list, tuple):
        return _commas, None, "A[,B...]"
    if origin is dict or annotation is dict:
        return _json_object, None, "JSON"
    if annotation in (int, float, str):
        return annotation, None, annotation.__name__.upper()
    raise FlagError(f"no flag type for {annotation!r}")


def _shown(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "none"
    if isinstance(value, dict):
        return json.dumps(value)
    return "null" if value is None else str(value)


def _help(flag: Flag) -> str:
    parts = [flag.info.description or ""]
    bounds = [f"{word} {getattr(m, attr)}" for m in flag.info.metadata
              for attr, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if hasattr(m, attr)]
    if bounds:
        parts.append(", ".join(bounds))
    extra = flag.info.json_schema_extra if isinstance(flag.info.json_schema_extra, dict) else {}
    if flag.nullable and extra.get("none"):  # the field says what None means for it
        parts.append(f"'none': {extra['none']}")
    elif flag.nullable:  # a cap of None is no cap; any other None is "not set"
        parts.append("'all': no cap" if flag.annotation is int else "'none': not set")
    parts.append("required" if flag.info.is_required() else f"default: {_shown(flag.default())}")
    return "; ".join(p for p in parts if p).replace("%", "%%")


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, flags: Iterable[Flag]) -> None:
    """Add `flags` to `parser`; a flag not given leaves its field out of the parsed data (the model's default)."""
    for flag in flags:
        if flag.annotation is bool:
            parser.add_argument(*flag.names, dest=flag.dest, default=argparse.SUPPRESS, help=_help(flag),
                                action=argparse.BooleanOptionalAction)
            continue
        convert, choices, metavar = _kind(flag.annotation)
        kwargs: dict[str, Any] = {"choices": choices} if choices else {"metavar": metavar}
        if choices and flag.nullable:
            kwargs["choices"] = (*choices, None)
        parser.add_argument(*flag.names, dest=flag.dest, default=argparse.SUPPRESS, help=_help(flag),
                            type=_none_or(convert, flag.nullable), **kwargs)


def flag_data(flags: Iterable[Flag], args: argparse.Namespace) -> dict[str, Any]:
    """The given flags' values as nested model data."""
    data: dict[str, Any] = {}
    for flag in flags:
        if hasattr(args, flag.dest):
            node = data
            for key in flag.path[:-1]:
                node = node.setdefault(key, {})
            node[flag.path[-1]] = getattr(args, flag.dest)
    return data


def error_text(exc: ValidationError, flags: Iterable[Flag]) -> str:
    """A pydantic error in terms of flags: "argument --evaluations: Input should be greater than or equal to 1"."""
    by_path = {flag.path: flag for flag in flags}
    lines = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        flag = next((by_path[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in by_path), None)
        where = f"argument {flag.name}" if flag is not None else ".".join(loc)
        message = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        if flag is not None and not isinstance(value, dict):
            message += f" (got {value!r})"
        lines.append(f"{where}: {message}" if where else message)
    return "; ".join(lines)


class FlagValueError(ValueError):
    """A flag's value that the settings model refuses; the message names the flag."""


def parse_flags(model: type[BaseModel], flags: list[Flag], args: argparse.Namespace, **data: Any) -> Any:
    """`model` built from the flags given (and `data`); raises FlagValueError naming the flags it refuses (the
    CLI exits with status 2, as for argparse's own errors)."""
    try:
        return model.model_validate(data | flag_data(flags, args))
    except ValidationError as exc:
        raise FlagValueError(error_text(exc, flags)) from None
