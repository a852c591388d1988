from __future__ import annotations

import datetime as dt

import pytest

from publish.sources import SourceError, discover, find_root, read_all, read_document

QMD = """
---
title: "Flannel 1: first look"
date: 2026-11-22 05:48
categories: [flannel, adam]
description: The first look.
order: 2
---

Some prose with $x^2$.

````markdown
```{python}
this is an example, not a chunk
```
````

```{python}
#| label: fig-loss
#| fig-cap: "Loss: falling"
#| echo: fenced
#| code-fold: true
x = 1
print(x)
```

Closing words.
"""


def test_qmd_chunks_options_and_lines(project, put):
    path = put(project, "log/2026-11-22-0548-flannel-1-first-look.qmd", QMD)
    doc = read_document(path, project)
    assert doc.kind == "log"
    assert doc.rel == "log/2026-11-22-0548-flannel-1-first-look.qmd"
    assert doc.slug == "2026-11-22-0548-flannel-1-first-look"
    assert doc.meta["title"] == "Flannel 1: first look"
    assert doc.meta["date"] == dt.datetime(2026, 11, 22, 5, 48)
    assert doc.meta["categories"] == ["flannel", "adam"]
    kinds = [c.kind for c in doc.chunks]
    assert kinds == ["markdown", "code", "markdown"]
    first, code, last = doc.chunks
    assert first.line == 9 and first.text.startswith("Some prose")
    assert "this is an example, not a chunk" in first.text  # plain fences stay markdown
    assert code.line == 17  # the opening fence
    assert code.text == "x = 1\nprint(x)"
    assert code.options == {"label": "fig-loss", "fig-cap": "Loss: falling", "echo": "fenced",
                            "code-fold": True}
    assert last.line == 26 and last.text == "Closing words."


def test_unknown_chunk_option_names_file_and_line(project, put):
    path = put(project, "lore/card.qmd", """
        ---
        title: Card
        ---

        ```{python}
        #| label: a
        #| fig-width: 3
        1
        ```
        """)
    with pytest.raises(SourceError) as err:
        read_document(path, project)
    assert err.value.line == 7
    assert str(err.value).startswith(f"{path}:7:")
    assert "fig-width" in str(err.value)


def test_bad_option_value_is_an_error(project, put):
    path = put(project, "lore/card.qmd", "---\ntitle: C\n---\n```{python}\n#| echo: sometimes\n1\n```\n")
    with pytest.raises(SourceError, match="echo") as err:
        read_document(path, project)
    assert err.value.line == 5


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("---\ntitle: Entry\n---\nbody\n", 1, "date"),  # log entries need a date
        ("---\ntitle: Entry\ndate: last tuesday\n---\n", 3, "malformed date"),
        ("---\ntitle: Entry\ndate: 2026-01-01 10:00\ncategories: [a, b\n---\n", 4, "malformed YAML"),
        ("---\ndate: 2026-01-01 10:00\n---\n", 1, "title"),
        ("---\ntitle: Entry\ndate: 2026-01-01 10:00\n", 1, "never closed"),
    ],
)
def test_front_matter_errors_have_line_numbers(project, put, text, line, needle):
    path = put(project, "log/2026-01-01-1000-entry.qmd", text)
    with pytest.raises(SourceError, match=needle) as err:
        read_document(path, project)
    assert err.value.line == line
    assert err.value.path == path


def test_unclosed_python_chunk(project, put):
    path = put(project, "lore/x.qmd", "---\ntitle: X\n---\n\n```{python}\nx = 1\n")
    with pytest.raises(SourceError, match="never closed") as err:
        read_document(path, project)
    assert err.value.line == 5


PERCENT = """
# ---
# title: Percent entry
# date: "2026-11-22 07:00"
# categories: [thimble]
# ---

# %% [markdown]
# Intro with a [link](../lore/card.qmd).
#
# Second paragraph.

# %%
#| label: setup
#| echo: false
import math

x = math.pi


# %%
print(x)
"""


def test_percent_script_with_header(project, put):
    path = put(project, "log/2026-11-22-0700-percent-entry.py", PERCENT)
    doc = read_document(path, project)
    assert doc.meta["title"] == "Percent entry"
    assert doc.meta["categories"] == ["thimble"]
    assert doc.meta["date"] == dt.datetime(2026, 11, 22, 7, 0)
    md, setup, show = doc.chunks
    assert md.kind == "markdown" and md.line == 8
    assert md.text == "Intro with a [link](../lore/card.qmd).\n\nSecond paragraph."
    assert setup.kind == "code" and setup.line == 12
    assert setup.options == {"label": "setup", "echo": False}
    assert setup.text == "import math\n\nx = math.pi"
    assert show.line == 20 and show.text == "print(x)"


def test_percent_front_matter_in_first_markdown_cell(project, put):
    path = put(project, "lore/card.py", """
        # %% [markdown]
        # ---
        # title: Card
        # ---
        # Body text.

        # %%
        #| bogus: 1
        1
        """)
    with pytest.raises(SourceError, match="bogus") as err:
        read_document(path, project)
    assert err.value.line == 8
    path.write_text(path.read_text().replace("#| bogus: 1\n", ""))
    doc = read_document(path, project)
    assert doc.meta["title"] == "Card"
    assert doc.chunks[0].text == "Body text." and doc.chunks[0].line == 5


def test_discover_and_duplicate_slugs(project, put):
    put(project, "index.qmd", "---\ntitle: Home\n---\n")
    put(project, "lore/a.qmd", "---\ntitle: A\n---\n")
    put(project, "lore/b.py", "# %% [markdown]\n# ---\n# title: B\n# ---\n")
    put(project, "notes.qmd", "---\ntitle: not rendered\n---\n")
    rels = [p.relative_to(project).as_posix() for p in discover(project)]
    assert rels == ["index.qmd", "lore/a.qmd", "lore/b.py"]
    assert [d.kind for d in read_all(project)] == ["page", "lore", "lore"]
    put(project, "lore/a.py", "# %% [markdown]\n# ---\n# title: A again\n# ---\n")
    with pytest.raises(SourceError, match="slug 'a'") as err:
        read_all(project)
    assert "a.qmd" in str(err.value) and "a.py" in str(err.value)


def test_find_root_walks_up(project):
    (project / "log").mkdir()
    assert find_root(project / "log") == project.resolve()
    with pytest.raises(FileNotFoundError):
        find_root(project.parent)


def test_brace_options_and_other_engines(project, put):
    path = put(project, "lore/x.qmd", "---\ntitle: X\n---\n```{python echo=false, label=\"setup\"}\n"
                                      "#| output: asis\nprint(1)\n```\n")
    (chunk,) = read_document(path, project).chunks
    assert chunk.options == {"echo": False, "label": "setup", "output": "asis"}
    assert chunk.text == "print(1)"
    path.write_text("---\ntitle: X\n---\n\n```{r}\n1\n```\n")
    with pytest.raises(SourceError, match=r"\{r\}") as err:
        read_document(path, project)
    assert err.value.line == 5


def test_same_stem_pages_in_different_folders_are_fine(project, put):
    put(project, "_quarto.yml", "project:\n  render: ['*.qmd', 'notes/*.qmd']\n")
    put(project, "index.qmd", "---\ntitle: Home\n---\n")
    put(project, "notes/index.qmd", "---\ntitle: Notes\n---\n")
    assert [d.rel for d in read_all(project)] == ["index.qmd", "notes/index.qmd"]


def test_unsupported_front_matter_and_project_keys_name_the_key(project, put):
    path = put(project, "lore/x.qmd", "---\ntitle: X\ntoc-depth: 2\n---\n\nText.\n")
    with pytest.raises(SourceError, match="'toc-depth' is not supported") as err:
        read_document(path, project)
    assert err.value.line == 3
    path = put(project, "lore/y.qmd", "---\ntitle: Y\nlisting:\n  contents: lore\n---\n\nText.\n")
    with pytest.raises(SourceError, match="listing"):
        read_document(path, project)
    from publish.sources import load_project

    (project / "_quarto.yml").write_text((project / "_quarto.yml").read_text() + "execute:\n  freeze: auto\n")
    with pytest.raises(SourceError, match="freeze: 'auto' is not supported"):
        load_project(project)
