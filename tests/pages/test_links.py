from __future__ import annotations

import pytest

from publish.layout import docs_path, figure_dir, source_for
from publish.links import LinkError, check_links, find_links, page_links
from publish.sources import SourceError, read_all


@pytest.mark.parametrize(
    ("source", "docs"),
    [
        ("index.qmd", "index.md"),
        ("log.qmd", "log/index.md"),
        ("log/2026-11-22-0548-flannel-1-first-look.qmd", "log/posts/2026-11-22-0548-flannel-1-first-look.md"),
        ("log/2026-11-22-0600-x.py", "log/posts/2026-11-22-0600-x.md"),
        ("lore.qmd", "lore.md"),
        ("lore/inhale.py", "lore/inhale.md"),
        ("runs.qmd", "runs.md"),
    ],
)
def test_layout_round_trip(source, docs):
    assert docs_path(source) == docs
    assert source_for(docs, [source, "other.qmd"]) == source


def test_figure_dir():
    # where Quarto puts them, so both renderers publish a figure at the same URL
    assert figure_dir("log/2026-11-22-0600-x.py") == "log/2026-11-22-0600-x_files/figure-html/"
    assert figure_dir("lore/inhale.qmd") == "lore/inhale_files/figure-html/"
    assert figure_dir("index.qmd") == "index_files/figure-html/"


def test_find_links_skips_code_and_knows_images():
    text = ("See [a](../lore/inhale.qmd#onset) and ![pic](img/p.png \"title\").\n"
            "`[not](code.qmd)`\n```\n[not](fenced.qmd)\n```\n[ref]: <lore/x.qmd>\n")
    links = find_links(text, first_line=10)
    assert [(k.line, k.target, k.image) for k in links] == [
        (10, "../lore/inhale.qmd#onset", False),
        (10, "img/p.png", True),
        (15, "lore/x.qmd", False),
    ]


def _project(project, put, entry_body):
    put(project, "index.qmd", "---\ntitle: Home\n---\nRead [inhale](lore/inhale.py) and "
                              "[the web](https://example.org/x.qmd).\n")
    put(project, "lore/inhale.py", "# %% [markdown]\n# ---\n# title: Inhale\n# ---\n# The contraction.\n")
    put(project, "lore/pics/p.png", "not really a png")
    put(project, "log/2026-01-02-0300-e.qmd", "---\ntitle: E\ndate: 2026-01-02 03:00\n---\n\n" + entry_body)


def test_rewrites_source_links_to_docs_links(project, put):
    _project(project, put, "Intro.\n\nSee [inhale](../lore/inhale.py#onset), [home](/index.qmd), "
                           "![p](../lore/pics/p.png) and [top](#here) and [mail](mailto:a@b.c).\n")
    docs = read_all(project)
    entry = next(d for d in docs if d.kind == "log")
    out = page_links(entry, {d.rel for d in docs})
    assert out.text == ("Intro.\n\nSee [inhale](../../lore/inhale.md#onset), [home](../../index.md), "
                        "![p](../../lore/pics/p.png) and [top](#here) and [mail](mailto:a@b.c).")
    assert out.links_to == ["lore/inhale.md", "index.md"]
    assert out.files == {"lore/pics/p.png": project / "lore/pics/p.png"}
    graph = check_links(docs)
    assert graph["index.md"] == ["lore/inhale.md"]  # external links are not pages
    assert graph["lore/inhale.md"] == []


@pytest.mark.parametrize(
    ("body", "line", "target"),
    [
        ("Line one.\n\nA [dead link](../lore/exhale.qmd) here.\n", 8, "../lore/exhale.qmd"),
        ("x\n\n\n![missing](figs/none.png)\n", 9, "figs/none.png"),
        ("[escape](../../../etc/passwd)\n", 6, "../../../etc/passwd"),
    ],
)
def test_broken_links_name_file_and_line(project, put, body, line, target):
    _project(project, put, body)
    docs = read_all(project)
    with pytest.raises(LinkError) as err:
        check_links(docs)
    assert isinstance(err.value, SourceError)
    assert err.value.line == line
    assert err.value.path.name == "2026-01-02-0300-e.qmd"
    assert target in str(err.value) and str(err.value).startswith(f"{err.value.path}:{line}:")


def test_link_to_unrendered_qmd_is_an_error(project, put):
    put(project, "drafts/idea.qmd", "---\ntitle: Idea\n---\n")
    _project(project, put, "[idea](../drafts/idea.qmd)\n")
    with pytest.raises(LinkError, match="not rendered"):
        check_links(read_all(project))
