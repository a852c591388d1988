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


# ---------------------------------------------------------------------------------------------- Quarto markdown

PAGE_HEAD = '---\ntitle: "Q"\n{extra}---\n\n'


def page_markdown(project, put, body: str, extra: str = "", files: dict | None = None) -> str:
    """The page `lore/q.qmd` with `body` converted as `lab render` converts it (no execution)."""
    from publish.pages import notebook_markdown
    from publish.sources import load_project

    for rel, text in (files or {}).items():
        put(project, rel, text)
    path = put(project, "lore/q.qmd", PAGE_HEAD.format(extra=extra) + body)
    doc = read_document(path, project)
    return notebook_markdown(doc, None, {doc.rel}, load_project(project)).markdown


BIB = """
@book{knuth1984,
  title = {The TeXbook},
  author = {Knuth, Donald E.},
  publisher = {Addison-Wesley},
  year = {1984}
}
"""


def test_sections_number_from_the_top_level_and_resolve(project, put):
    md = page_markdown(project, put, "See @sec-b, [-@sec-c] and @sec-d.\n\n## A {#sec-a}\n\n### B {#sec-b}\n\n"
                                     "## Skipped {.unnumbered}\n\n## C {#sec-c}\n\n#### D {#sec-d}\n")
    assert "[Section&nbsp;1.1](#sec-b)" in md and "[2](#sec-c)" in md and "[Section&nbsp;2.0.1](#sec-d)" in md  # as Quarto 1.10 numbers a skipped level
    assert "## A {#sec-a}" in md and "## Skipped\n" in md


def test_callouts_become_admonitions_with_titles_and_collapse(project, put):
    md = page_markdown(project, put, '::: {.callout-tip title="Try"}\nBody *one*.\n:::\n\n'
                                     '::: callout-caution\n## From heading\nTwo.\n:::\n\n'
                                     '::: {.callout-important collapse="false"}\nThree.\n:::\n')
    assert '!!! tip "Try"\n\n    Body *one*.' in md
    assert '!!! caution "From heading"\n\n    Two.' in md
    assert "???+ important\n\n    Three." in md


def test_inline_footnotes_are_numbered_footnotes(project, put):
    md = page_markdown(project, put, "Text.^[A [linked](https://example.org) note.] More.[^x]\n\n[^x]: Named.\n")
    assert "Text.[^lab-fn-1] More.[^x]" in md
    assert "[^lab-fn-1]: A [linked](https://example.org) note." in md
    assert md.rstrip().endswith("///Footnotes Go Here///")


def test_citations_from_front_matter_or_project_bibliography(project, put):
    md = page_markdown(project, put, "As [@knuth1984, p. 12] and @knuth1984 say.\n",
                       extra="bibliography: refs.bib\n", files={"lore/refs.bib": BIB})
    assert "(<a href=\"#ref-knuth1984\" role=\"doc-biblioref\">Knuth 1984, 12</a>)" in md
    assert 'Knuth (<a href="#ref-knuth1984" role="doc-biblioref">1984</a>)' in md
    assert 'id="ref-knuth1984"' in md and ">References</h2>" in md
    quarto = project / "_quarto.yml"
    quarto.write_text(quarto.read_text() + "bibliography: refs.bib\n")
    put(project, "refs.bib", BIB)
    assert "Knuth 1984" in page_markdown(project, put, "[@knuth1984]\n")


@pytest.mark.parametrize("body,extra,line,needle", [
    ("Text.\n\nSee @sec-nowhere.\n", "", 7, "@sec-nowhere"),
    ("Cite [@knuth1984].\n", "", 5, "no bibliography"),
    ("Cite [@nobody2000].\n", "bibliography: refs.bib\n", 6, "no entry 'nobody2000'"),
    ("Text.\n\n::: {.column-margin}\nAside.\n:::\n", "", 7, "fenced div"),
    ("::: {.callout-note appearance=\"simple\"}\nX.\n:::\n", "", 5, "'appearance'"),
    ("Text.\n\n::: {.callout-note}\nNever closed.\n", "", 7, "not closed"),
    ("Value `{r} 1 + 1`.\n", "", 5, "{r}"),
    ("A shortcode {{< video x.mp4 >}}.\n", "", 5, "shortcode"),
    ("## Heading {.smaller}\n", "", 5, "'smaller'"),
])
def test_unsupported_or_broken_quarto_markdown_names_file_and_line(project, put, body, extra, line, needle):
    with pytest.raises(SourceError) as err:
        page_markdown(project, put, body, extra=extra, files={"lore/refs.bib": BIB})
    assert f"lore/q.qmd:{line}:" in str(err.value) and needle in str(err.value), str(err.value)


@pytest.mark.parametrize("option,needle", [("fig-width: 3", "front matter"), ("fig-subcap: one", "list"),
                                           ("layout-ncol: two", "whole number"), ("layout-nrow: 2", "layout-nrow")])
def test_figure_layout_options_are_checked(project, put, option, needle):
    path = put(project, "lore/q.qmd", f'---\ntitle: "Q"\n---\n\n```{{python}}\n#| label: fig-a\n#| {option}\n1\n```\n')
    with pytest.raises(SourceError) as err:
        read_document(path, project)
    assert "q.qmd:7:" in str(err.value) and needle in str(err.value), str(err.value)


def test_nested_callouts_code_inside_and_headings_in_callouts_are_not_sections(project, put):
    md = page_markdown(project, put, "See @sec-b.\n\n## A {#sec-a}\n\n:::: {.callout-note}\n## Outer\nText.\n\n"
                                     "::: {.callout-tip}\nInner.\n:::\n\n```text\n::: not a div\n"
                                     "`{python} not evaluated`\n```\n::::\n\n## B {#sec-b}\n")
    assert "[Section&nbsp;2](#sec-b)" in md  # the callout's heading is its title, not a section
    assert '!!! note "Outer"\n\n    Text.' in md and "    !!! tip\n\n        Inner." in md
    assert "    ::: not a div\n    `{python} not evaluated`" in md
