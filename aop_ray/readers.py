"""Reading what a user hands over: bounded bytes, normalised text, strict YAML, ASCII numbers.

Every reader of a user's file goes through here, so one place decides how far a compressed file
may inflate, what a byte-order mark or a CRLF means, which characters are digits and which YAML is
accepted. Each refusal is an `InputError` naming the file and, where there is one, the line.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from pathlib import Path
from typing import Any

import yaml

from aop_ray.errors import InputError, located

MAX_INPUT_ENV = "AOP_RAY_MAX_INPUT_MB"
DEFAULT_MAX_INPUT_MB = 256  # Pfam's largest seed alignments inflate to a few MB; a 256 MB input parses in ~3 GB
BOM = "\ufeff"
_ASCII_INT = re.compile(r"[+-]?[0-9]+")


def max_input_bytes() -> int:
    """The most bytes one input file may hold once decompressed (`AOP_RAY_MAX_INPUT_MB`, default 256)."""
    raw = os.environ.get(MAX_INPUT_ENV, "")
    if not raw:
        return DEFAULT_MAX_INPUT_MB * 2**20
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise InputError(f"{MAX_INPUT_ENV}={short(raw)}: expected a whole number of megabytes >= 1")
    return int(raw) * 2**20


def read_bytes(path: str | Path) -> bytes:
    """A file's bytes, gunzipped when it is gzip data, refused past `max_input_bytes()` without ever
    holding more than that limit in memory."""
    path = Path(path)
    limit = max_input_bytes()
    try:
        with path.open("rb") as handle:
            raw = handle.read(limit + 1)
            if raw[:2] == b"\x1f\x8b":
                return _gunzip(path, raw + handle.read(limit + 1), limit)
    except OSError as err:
        raise located(path, None, f"cannot read: {err.strerror or err}") from None
    if len(raw) > limit:
        raise located(path, None, f"larger than {limit // 2**20} MB ({MAX_INPUT_ENV} raises the limit)")
    return raw


def _gunzip(path: Path, data: bytes, limit: int) -> bytes:
    """Inflate every gzip member of `data`, stopping as soon as the output passes `limit`."""
    out = bytearray()
    while data:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(data, limit + 1 - len(out))
        except zlib.error as err:
            raise located(path, None, f"corrupt gzip data ({err})") from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise located(path, None, f"inflates to more than {limit // 2**20} MB ({MAX_INPUT_ENV} raises the limit)")
        if not inflater.eof:
            raise located(path, None, "corrupt gzip data (truncated)")
        data = inflater.unused_data.lstrip(b"\0")  # the next member, if any (gzip pads with NULs)
    return bytes(out)


def decode_text(path: str | Path, data: bytes) -> str:
    """UTF-8 text with a leading byte-order mark dropped and CRLF or CR line ends made `\\n`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise located(path, line, f"not UTF-8 text (byte 0x{data[err.start]:02x})") from None
    return text.removeprefix(BOM).replace("\r\n", "\n").replace("\r", "\n")


def read_text(path: str | Path) -> str:
    """A user's text file (plain or gzipped), bounded, decoded and normalised."""
    return decode_text(path, read_bytes(path))


def text_lines(text: str) -> list[str]:
    """The lines of normalised text, numbered as an editor numbers them: unlike `str.splitlines`,
    a form feed, `\\x1c`-`\\x1e` or `\\x85` inside a line does not end it."""
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def ascii_int(word: str) -> int | None:
    """`word` as an integer if it is ASCII digits with an optional sign, else None.

    `int()` also accepts `1_0`, Arabic-Indic and other Unicode digits, and surrounding spaces; a
    number in a file format is none of those."""
    return int(word) if _ASCII_INT.fullmatch(word) else None


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON file that must hold one object (a manifest, a run's saved state), or a one-line refusal."""
    text = read_text(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise located(path, err.lineno, f"corrupted {what} ({err.msg})") from None
    if not isinstance(value, dict):
        raise located(path, None, f"corrupted {what}: expected a JSON object, got {type(value).__name__}")
    return value


def short(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters, so an error message never prints an unbounded value."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(text)} characters)"


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML without aliases (a kilobyte of nested aliases expands to gigabytes) and without
    duplicate keys (the later one would silently win)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.MarkedYAMLError(problem="aliases (*name) are not accepted", problem_mark=mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):  # only scalar keys can be compared here
                continue
            if key in seen:
                raise yaml.MarkedYAMLError(problem=f"duplicate key {short(key)}", problem_mark=key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML strictly (`_StrictLoader`); a refusal names `where` and the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise InputError(f"{where}{line}: invalid YAML ({' '.join(str(problem).split())})") from None
