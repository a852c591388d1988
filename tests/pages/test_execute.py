"""Execution in real kernels (nbclient + ipykernel): options, figures, hidden cells, errors."""

from __future__ import annotations

import struct

import pytest

from publish.execute import ExecutionError, execute
from publish.pages import build_pages
from publish.sources import read_document

SHOWCASE = '''
---
title: Showcase
---

Intro with $x^2$.

```{python}
#| label: setup
#| code-fold: true
#| code-summary: "Show the setup"
import os, warnings
print("cwd", os getcwd() if False else os.getcwd())
```

```{python}
#| echo: false
print("only output")
```

```{python}
#| output: false
print("SHOULD-NOT-APPEAR-1")
```

```{python}
#| include: false
hidden_value = 41
print("SHOULD-NOT-APPEAR-2")
```

```{python}
#| eval: false
raise RuntimeError("never evaluated")
```

```{python}
#| warning: false
warnings.warn("QUIET-WARNING")
print("after quiet", hidden_value + 1)
```

```{python}
warnings.warn("LOUD-WARNING")
```

```{python}
#| output: asis
print("**bold from code**")
```

```{python}
#| error: true
#| label: oops
{}["missing-key"]
```

```{python}
from IPython.display import HTML
HTML("<table class='t'><tr><td>cell</td></tr></table>")
```

```{python}
#| label: fig-curve
#| fig-cap: "A curve, at 200 dpi"
#| fig-alt: "a rising line"
import matplotlib.pyplot as plt
plt.plot([0, 1, 4, 9])
plt.show()
```
'''


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_a_figure_is_named_by_its_output_index_as_quarto_names_it(project, put):
    """Quarto names a figure <label>-output-<n> with n counting every output of the cell: a warning printed
    before the figure makes it output-2 (so both renderers write, and link, the same file)."""
    path = put(project, "lore/warned.qmd", """---
title: Warned
---

```{python}
#| label: fig-warned
#| fig-cap: "A figure after a warning"
import warnings
import matplotlib.pyplot as plt
warnings.warn("SHOWN-FIRST")
plt.plot([0, 1, 4, 9])
plt.show()
```
""")
    (page,) = build_pages(project, [read_document(path, project)], jobs=1)
    assert page.status == "executed", page.error
    assert page.figures == ["lore/warned_files/figure-html/fig-warned-output-2.png"]
    assert "UserWarning: SHOWN-FIRST" in page.markdown
    assert "![A figure after a warning](warned_files/figure-html/fig-warned-output-2.png)" in page.markdown


def test_options_figures_and_hidden_cells(project, put):
    path = put(project, "lore/showcase.qmd", SHOWCASE.replace('os getcwd() if False else ', ''))
    doc = read_document(path, project)
    pages = build_pages(project, [doc], jobs=1)
    (page,) = pages
    assert page.status == "executed", page.error
    md = page.markdown

    assert "Intro with $x^2$." in md  # math passes through verbatim
    assert f"cwd {path.parent}" in md  # the kernel runs in the document's folder, like Quarto
    assert '??? note "Show the setup"\n\n    ```python\n    import os, warnings' in md
    assert '<a id="setup"></a>' in md
    assert "only output" in md and 'print("only output")' not in md
    assert "SHOULD-NOT-APPEAR" not in md.replace('print("SHOULD-NOT-APPEAR-1")', "")
    assert "hidden_value = 41" not in md
    assert 'raise RuntimeError("never evaluated")' in md and "RuntimeError: never" not in md
    assert "after quiet 42" in md and "QUIET-WARNING" not in md.replace('warnings.warn("QUIET-WARNING")', "")
    assert "UserWarning: LOUD-WARNING" in md
    assert "\n**bold from code**\n" in md and "```text\n**bold" not in md
    assert "KeyError: 'missing-key'" in md and "\x1b[" not in md
    assert "<table class='t'><tr><td>cell</td></tr></table>" in md

    # the figure: a PNG asset next to the page, referenced relatively, with caption and alt text
    assert page.figures == ["lore/showcase_files/figure-html/fig-curve-output-1.png"]
    width, _ = png_size(page.assets["lore/showcase_files/figure-html/fig-curve-output-1.png"])
    assert width > 800  # 200 dpi: a default 6.4-inch figure is ~1000+ px wide (72 dpi would be ~450)
    assert ('<figure markdown="span">\n![a rising line](showcase_files/figure-html/fig-curve-output-1.png)\n'
            '<figcaption markdown="span">Figure&nbsp;1: A curve, at 200 dpi</figcaption>\n</figure>') in md

    # no hidden cell leaks into the cached notebook
    from publish import cache

    entry = cache.load(doc)
    assert len(entry.notebook.cells) == len(doc.chunks)
    for cell in entry.notebook.cells:
        assert "_lab_" not in cell.source
        for output in cell.get("outputs", []):
            assert "__lab_report__" not in str(output)


def test_failing_chunk_names_document_and_label(project, put):
    path = put(project, "lore/broken.qmd", """
        ---
        title: Broken
        ---

        ```{python}
        x = 1
        ```

        ```{python}
        #| label: divide
        x / 0
        ```
        """)
    with pytest.raises(ExecutionError) as err:
        execute(read_document(path, project))
    message = str(err.value)
    assert err.value.path == path and err.value.line == 9
    assert str(path) in message and "'divide'" in message
    assert "ZeroDivisionError" in message and "\x1b[" not in message
    assert not kernels_left()  # the kernel is shut down even when a chunk fails


def kernels_left() -> list:
    import psutil

    def cmdline(p) -> str:
        try:
            return " ".join(p.cmdline())
        except (psutil.ZombieProcess, psutil.NoSuchProcess):  # another test's child, exited, not yet reaped
            return ""

    return [p for p in psutil.Process().children(recursive=True) if "ipykernel_launcher" in cmdline(p)]


def test_failure_keeps_the_good_cache_entry_and_stops_scheduling(project, put):
    from publish import cache

    good = put(project, "lore/a.qmd", "---\ntitle: A\n---\n```{python}\nprint('good')\n```\n")
    put(project, "lore/b.qmd", "---\ntitle: B\n---\n```{python}\nprint('b')\n```\n")
    docs = [read_document(project / "lore/a.qmd", project), read_document(project / "lore/b.qmd", project)]
    assert [p.status for p in build_pages(project, docs[:1], jobs=1)] == ["executed"]
    record_before = cache.entry_paths(docs[0])[0].read_text()

    # both documents now fail; without keep_going the first failure stops scheduling the second
    good.write_text("---\ntitle: A\n---\n\nText.\n\n```{python}\nraise ValueError('bad')\n```\n")
    (project / "lore/b.qmd").write_text("---\ntitle: B\n---\n```{python}\nraise ValueError('b')\n```\n")
    docs = [read_document(project / "lore/a.qmd", project), read_document(project / "lore/b.qmd", project)]
    seen = []
    pages = build_pages(project, docs, jobs=1, on_page=seen.append)
    assert [(p.doc.rel, p.status) for p in pages] == [("lore/a.qmd", "failed")]
    assert seen == pages
    assert "ValueError: bad" in pages[0].error and "line 7" in pages[0].error
    assert cache.entry_paths(docs[0])[0].read_text() == record_before  # the good entry survives
    assert "good" in str(cache.load(docs[0]).notebook.cells[0].outputs)
    assert not cache.is_fresh(docs[0])


def test_chunk_timeout_and_fenced_echo(project, put):
    path = put(project, "lore/slow.qmd", """
        ---
        title: Slow
        ---

        ```{python}
        #| echo: fenced
        #| label: quick
        print("fast")
        ```

        ```{python}
        import time
        time.sleep(60)
        ```
        """)
    doc = read_document(path, project)
    with pytest.raises(ExecutionError, match="no progress for 3 s") as err:
        execute(doc, timeout=3)
    assert err.value.line == 11 and "at line 11" in str(err.value)
    assert not kernels_left()

    path.write_text(path.read_text().replace("time.sleep(60)", "time.sleep(0)"))
    (page,) = build_pages(project, [read_document(path, project)], timeout=30)
    assert "````markdown\n```{python}\n#| echo: fenced\n#| label: quick\nprint(\"fast\")\n```\n````" in page.markdown


def test_asis_markdown_keeps_stderr_out_and_rewrites_links(project, put):
    """Printed markdown (`output: asis`) is part of the page; what went to stderr is shown apart from it."""
    put(project, "lore/target.qmd", "---\ntitle: Target\n---\n\nHere.\n")
    doc = read_document(put(project, "lore/asis.qmd", '''
        ---
        title: Asis
        ---

        ```{python}
        #| output: asis
        #| echo: false
        import sys
        print("| a | b |\\n|---|---|")
        sys.stderr.write("progress 50%\\n")
        print("| 1 | [two](target.qmd) |")
        ```
        '''), project)
    pages = build_pages(project, [doc, read_document(project / "lore/target.qmd", project)])
    md = pages[0].markdown
    blocks = md.split("\n\n")
    table = next(b for b in blocks if b.startswith("| a | b |"))
    assert "progress 50%" not in table  # the table stays whole ...
    assert "[two](target.md)" in table  # ... with its link rewritten like the prose's
    assert any("progress 50%" in b and b.startswith("```") for b in blocks), md  # stderr in its own block
