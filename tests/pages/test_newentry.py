from __future__ import annotations

import datetime as dt

import pytest

from publish.newentry import new_entry, slugify
from publish.sources import read_document

NOW = dt.datetime(2026, 11, 22, 5, 48, 31)


@pytest.mark.parametrize(
    ("title", "slug"),
    [
        ("Flannel 1: first look", "flannel-1-first-look"),
        ("  Adam's ε & the Sneeze!!  ", "adams-the-sneeze"),
        ("Café — Über", "cafe-uber"),
        ("thimble_7 (re-run)", "thimble-7-re-run"),
    ],
)
def test_slugify(title, slug):
    assert slugify(title) == slug


def test_slugify_rejects_titles_without_letters():
    with pytest.raises(ValueError):
        slugify("!!! ---")


def test_new_entry_is_dated_to_the_minute_and_readable(project):
    path = new_entry(project, "Flannel 1: first look", categories=["flannel"], now=NOW)
    assert path == project / "log" / "2026-11-22-0548-flannel-1-first-look.qmd"
    doc = read_document(path, project)  # the starter file is a valid source
    assert doc.meta["title"] == "Flannel 1: first look"
    assert doc.meta["date"] == dt.datetime(2026, 11, 22, 5, 48)
    assert doc.meta["categories"] == ["flannel"]
    assert doc.meta["description"] == ""
    code = [c for c in doc.chunks if c.kind == "code"]
    assert code and code[0].text.startswith("import experiments")


def test_same_minute_gives_distinct_files_and_never_overwrites(project):
    first = new_entry(project, "Same title", now=NOW)
    first.write_text(first.read_text() + "\nmy notes\n")
    mine = first.read_text()
    second = new_entry(project, "Same title", now=NOW.replace(second=59))
    third = new_entry(project, "Same title", now=NOW)
    assert first.name == "2026-11-22-0548-same-title.qmd"
    assert second.name == "2026-11-22-0548-same-title-2.qmd"
    assert third.name == "2026-11-22-0548-same-title-3.qmd"
    assert first.read_text() == mine  # untouched


def test_date_override_and_bad_date(project):
    path = new_entry(project, "Back-dated", date="2025-11-19 09:38", now=NOW)
    assert path.name == "2025-11-19-0938-back-dated.qmd"
    assert read_document(path, project).meta["date"] == dt.datetime(2025, 11, 19, 9, 38)
    with pytest.raises(ValueError, match="date"):
        new_entry(project, "Bad", date="yesterday")


def test_lore_card_and_no_overwrite(project):
    path = new_entry(project, "Frozen smoke", lore=True)
    assert path == project / "lore" / "frozen-smoke.qmd"
    doc = read_document(path, project)
    assert doc.kind == "lore" and "date" not in doc.meta
    path.write_text(path.read_text() + "\nfindings\n")
    before = path.read_text()
    with pytest.raises(FileExistsError):
        new_entry(project, "Frozen Smoke!", lore=True)
    assert path.read_text() == before


def test_a_future_dated_entry_is_rendered_with_a_warning(project, put):
    """`lab render` in a fresh process: the entry dated next year still publishes, and the user is told."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    quarto = project / "_quarto.yml"
    quarto.write_text(quarto.read_text(encoding="utf-8") + "website:\n  title: Dates\n", encoding="utf-8")
    put(project, "index.qmd", "---\ntitle: Home\n---\n\nHello.\n")
    put(project, "log/2026-11-22-0548-now.qmd", "---\ntitle: Now\ndate: 2026-11-22 05:48\n---\n\nToday.\n")
    put(project, "log/2099-01-05-0900-typo.qmd", "---\ntitle: Typo\ndate: 2099-01-05 09:00\n---\n\nLater.\n")
    lab = Path(sys.executable).with_name("lab")
    out = subprocess.run([str(lab), "render"], cwd=project, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, TQDM_DISABLE="1"))
    assert out.returncode == 0, out.stderr
    warned = [ln for ln in out.stderr.splitlines() if "in the future" in ln]
    assert warned == [f"warning: log/2099-01-05-0900-typo.qmd: dated 2099-01-05 09:00, in the future (today is "
                      f"{dt.date.today():%Y-%m-%d}); listings sort it above every other entry"], out.stderr
    assert (project / "site").is_dir()
