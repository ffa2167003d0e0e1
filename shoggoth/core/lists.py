"""The one grammar for lists given on the command line: comma-separated items, and for numbers
inclusive ranges `a-b` (`3,17,40-45`). Every list flag (`--features`, `--layers`, `--labels`,
`--persona-names`) parses through here, so they accept the same things and say the same thing
when they do not."""

from __future__ import annotations

from collections.abc import Iterable

from shoggoth.core.errors import BadInput


def parse_numbers(text: str, flag: str, low: int = 0, high: int | None = None) -> list[int]:
    """'12,40-45' → [12, 40, 41, 42, 43, 44, 45] (sorted, each once); BadInput naming `flag`
    for a part that is not a number or a range, an empty list, or a number outside
    [low, high]."""
    out: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise BadInput(
                f"{flag} {text}: {part!r} is not a number or a range a-b (e.g. 3,17,40-45)"
            )
        a, b = int(first), int(last) if dash else int(first)
        if b < a:
            raise BadInput(f"{flag} {text}: the range {part!r} runs backwards")
        out.update(range(a, b + 1))
    if not out:
        raise BadInput(f"{flag} {text!r}: empty; give numbers like 3,17,40-45")
    outside = [n for n in sorted(out) if n < low or (high is not None and n > high)]
    if outside:
        allowed = f"{low} to {high}" if high is not None else f"at least {low}"
        raise BadInput(f"{flag} {text}: {outside[0]} is outside {allowed}")
    return sorted(out)


def parse_names(text: str, flag: str, known: Iterable[str] | None = None) -> list[str]:
    """'pirate, poet' → ['pirate', 'poet'] (in order, each once); BadInput naming `flag` for an
    empty list or, given `known`, a name not in it."""
    names = list(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    if not names:
        raise BadInput(f"{flag} {text!r}: empty; give names separated by commas")
    if known is not None:
        allowed = list(known)
        bad = [n for n in names if n not in allowed]
        if bad:
            shown = ", ".join(allowed[:8]) + (" …" if len(allowed) > 8 else "")
            raise BadInput(f"{flag} {text}: unknown '{bad[0]}' (known: {shown})")
    return names
