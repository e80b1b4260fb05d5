"""Id lists as the command line writes them ('0,1,4', '0-9', '0-2,5'): task ids, initial-state ids."""

from __future__ import annotations

from .config import ConfigError


def parse_ids(text: str, flag: str = "--tasks", what: str = "task ids") -> list[int]:
    """'0,1,4', '0-9' or both mixed ('0-2,5') -> distinct ids >= 0 in the order written; anything else is a
    ConfigError naming `flag`, the text and the form expected."""
    ids: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if "-" in part[1:]:  # a range; a leading '-' alone is a negative id, refused below
                lo, hi = (int(x) for x in part.split("-"))
                if hi < lo:
                    raise ConfigError(
                        f"{flag} range {part!r} is empty (it ends before it starts); expected e.g. '0-9'."
                    )
                ids.extend(range(lo, hi + 1))
            else:
                ids.append(int(part))
        except ConfigError:
            raise
        except ValueError:
            raise ConfigError(f"{flag} must look like '0,1,4' or '0-9', got {text!r}.") from None
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise ConfigError(f"{flag} must name distinct {what} >= 0 like '0,1,4' or '0-9', got {text!r}.")
    return ids


def format_ids(ids) -> str:
    """The inverse of parse_ids for a written command: runs of consecutive ids as ranges ([10..49] -> '10-49')."""
    parts: list[str] = []
    ids = list(ids)
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if j == i else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)
