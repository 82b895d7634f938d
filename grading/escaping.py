"""Text a submission controls, made safe for each place it is written.

    printable(text, newlines=True) -> str     control characters, lone surrogates, bidi overrides as escapes
    display_name(path) -> str                 a file name on one printable line (undecodable bytes as \\xNN)
    csv_cell(value)                           one printable line, never a spreadsheet formula
    markdown_cell(value) -> str               one printable line, Markdown's table and markup characters escaped
    folder_name(name) -> str                  one safe path component (no separator, no `..`, no leading dot)
    folder_names(names) -> [str]              folder_name of each, made unique (case-insensitively)

printable is the base of the others: lone surrogates (an undecodable file name, "\\udcff" sent back as
JSON) and control characters (terminal escape codes, carriage returns, bidirectional overrides, zero
widths) become visible escapes such as \\x1b, so no writer raises and no terminal is repainted.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

FOLDER_BYTES = 120  # longest results folder name

# C0 and C1 controls (tab and newline are decided by the caller), DEL, lone surrogates, and the
# invisible format characters that reorder or hide text (bidi overrides and isolates, zero widths).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def _escape_char(m: re.Match) -> str:
    c = m.group()
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:  # a byte os.fsdecode could not decode (surrogateescape): show the byte
        return f"\\x{o - 0xDC00:02x}"
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def printable(text: object, newlines: bool = True) -> str:
    """Any text a submission controls -> text every writer accepts and no terminal acts on:
    control characters, lone surrogates and invisible format characters as visible escapes (\\x1b,
    \\udcff, \\u202e). Newlines are kept when `newlines`, else shown as \\n; tabs become spaces."""
    s = text if isinstance(text, str) else str(text)
    s = s.replace("\r\n", "\n").replace("\t", "    ")
    if not newlines:
        s = s.replace("\n", "\\n")
    return _UNSAFE.sub(_escape_char, s)


def display_name(path: Path) -> str:
    """A file name as one printable line: undecodable bytes (a Latin-1 `m\\xfcller.py`) as \\xNN."""
    return printable(os.fsdecode(Path(path).name), newlines=False)


_FORMULA = tuple("=+-@\uff1d\uff0b\uff0d\uff20")  # and their full-width forms, which some spreadsheets accept


def csv_cell(value: object) -> object:
    """A summary.csv cell: numbers as they are; text printable on one line, never a formula."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    s = printable(value, newlines=False)
    return "'" + s if s.lstrip(" ").startswith(_FORMULA) else s


# What can break out of a table cell or start markup inside one: the cell separator, code spans,
# emphasis, links and images, raw HTML, strikethrough, the escape itself.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>!|~])")


def markdown_cell(value: object) -> str:
    """Text for a Markdown table cell: one printable line, Markdown's own characters escaped."""
    return _MD_SPECIAL.sub(r"\\\1", printable(value, newlines=False))


def folder_name(name: str) -> str:
    """One path component that stays inside the results folder: no separator, no `..`, no leading
    dot, no control character, at most FOLDER_BYTES bytes."""
    s = unicodedata.normalize("NFC", printable(name, newlines=False)).replace("\\", "_")
    s = re.sub(r"[/\x00]", "_", s).strip(" ")
    s = s.lstrip(".")
    while len(s.encode("utf-8")) > FOLDER_BYTES:
        s = s[:-1]
    return s or "_"


def folder_names(names: list[str], reserved: tuple[str, ...] = ("summary.csv", "summary.md")) -> list[str]:
    """folder_name of each, unique in the batch even on a case-insensitive file system: a clash
    gets _2, _3, ...; `reserved` names (the class files beside the folders) are never used."""
    taken: set[str] = {n.casefold() for n in reserved}
    out = []
    for raw in names:
        base = folder_name(raw)
        name, k = base, 2
        while name.casefold() in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name.casefold())
        out.append(name)
    return out
