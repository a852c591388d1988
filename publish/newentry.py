"""`lab new`: create a dated log entry (or a lore card) with front matter and a starter chunk.

Files are created with open(..., "x"), so an existing file is never overwritten, even when two `lab new`
calls race; entries made in the same minute get -2, -3, ... suffixes.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata
from pathlib import Path

MAX_SUFFIX = 1000  # more entries than this in one minute with one title is a runaway script, not a user


def slugify(title: str) -> str:
    """"Flannel 1: first look" -> "flannel-1-first-look" (lowercase ascii, punctuation dropped)."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    ascii_title = re.sub(r"['’]", "", ascii_title.lower())  # "Adam's" -> "adams", not "adam-s"
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_title).strip("-")
    if not slug:
        raise ValueError(f"title {title!r} has no letters or digits to make a file name from")
    return slug


def _parse_when(value: dt.datetime | dt.date | str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    try:
        return dt.datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError(f"date {value!r}: use \"YYYY-MM-DD HH:MM\" or ISO 8601") from None


def entry_text(title: str, when: dt.datetime | None, categories: tuple[str, ...] | list[str]) -> str:
    # JSON strings are valid YAML scalars and escape quotes/colons in titles safely
    lines = ["---", f"title: {json.dumps(title, ensure_ascii=False)}"]
    if when is not None:
        lines.append(f'date: "{when:%Y-%m-%d %H:%M}"')
    lines.append(f"categories: {json.dumps(list(categories), ensure_ascii=False)}")
    lines.append('description: ""')
    lines.append("---")
    if when is not None:  # a log entry: what happened at this sitting
        body = [
            "",
            "What question does this entry ask, and why now?",
            "",
            "```{python}",
            "import experiments",
            "",
            '# run = experiments.run("flannel-1")',
            "```",
            "",
        ]
    else:  # a lore page: one finding, stated for a reader who arrives cold
        body = [
            "",
            "**The question.** What does this page establish?",
            "",
            "```{python}",
            "#| label: setup",
            "#| echo: false",
            "import experiments",
            "",
            '# run = experiments.run("flannel-1")',
            "```",
            "",
            "```{python}",
            "#| label: fig-main",
            '#| fig-cap: "What the figure shows."',
            "```",
            "",
            "## What it means",
            "",
            "## Open questions",
            "",
        ]
    return "\n".join(lines + body)


def new_entry(
    root: Path | str,
    title: str,
    *,
    lore: bool = False,
    date: dt.datetime | dt.date | str | None = None,
    categories: tuple[str, ...] | list[str] = (),
    now: dt.datetime | None = None,
) -> Path:
    """Create `log/YYYY-MM-DD-HHMM-<slug>.qmd` (or `lore/<slug>.qmd`) and return its path.

    `date` overrides the entry's timestamp; `now` stands in for the clock (tests). Lore cards are not dated,
    and an existing card is an error (FileExistsError) rather than a silent -2 twin.
    """
    root = Path(root)
    if not title or not title.strip():
        raise ValueError("an entry needs a title")
    if isinstance(categories, str):
        categories = [categories]
    slug = slugify(title)
    if lore:
        folder = root / "lore"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{slug}.qmd"
        with open(path, "x", encoding="utf-8") as f:
            f.write(entry_text(title, None, categories))
        return path

    when = _parse_when(date) if date is not None else (now or dt.datetime.now())
    when = when.replace(second=0, microsecond=0)
    folder = root / "log"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{when:%Y-%m-%d-%H%M}-{slug}"
    text = entry_text(title, when, categories)
    for n in range(1, MAX_SUFFIX + 1):
        path = folder / (f"{stem}.qmd" if n == 1 else f"{stem}-{n}.qmd")
        try:
            with open(path, "x", encoding="utf-8") as f:
                f.write(text)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{folder}: {MAX_SUFFIX} entries named {stem}* already exist")
