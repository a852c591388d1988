"""The dependency fingerprint, end to end with real kernels: what re-executes after which edit."""

from __future__ import annotations

import json

from publish import cache
from publish.pages import build_pages
from publish.sources import read_all


def build(root, **kwargs) -> dict[str, str]:
    pages = build_pages(root, read_all(root), jobs=2, **kwargs)
    assert all(p.status != "failed" for p in pages), [p.error for p in pages]
    return {p.doc.rel: p for p in pages}


def statuses(pages) -> dict[str, str]:
    return {rel: p.status for rel, p in pages.items()}


def make_project(project, put):
    put(project, "mymod/__init__.py", "")
    put(project, "mymod/a.py", "VALUE = 1\n")
    put(project, "mymod/b.py", "OTHER = 1\n")
    put(project, "mymod/c.py", "DYNAMIC = 'c1'\n")
    put(project, "data/numbers.txt", "1 2 3\n")
    put(project, "store/r-abc.h5", "pretend run")
    put(project, "index.qmd", "---\ntitle: Home\n---\nNo code here: see [a](lore/uses-a.qmd).\n")
    put(project, "lore/uses-a.qmd", """
        ---
        title: Uses a
        ---

        ```{python}
        import mymod.a
        print("value", mymod.a.VALUE)
        ```

        ```{python}
        #| eval: false
        import mymod.b  # never runs, still a dependency
        ```
        """)
    put(project, "log/2026-01-01-0000-reader.py", """
        # ---
        # title: Reader
        # date: 2026-01-01 00:00
        # ---

        # %%
        import importlib, json, os
        print("data", open("../data/numbers.txt").read().strip())
        name = "mymod." + "c"  # invisible to static scanning
        print(importlib.import_module(name).DYNAMIC)
        with open(os.environ["LAB_RUN_LOG"], "a") as log:
            log.write(json.dumps({"name": "r", "key": "abc", "path": "../store/r-abc.h5"}) + "\\n")
        """)


def test_dependency_fingerprint(project, put, monkeypatch):
    make_project(project, put)
    monkeypatch.chdir(project)
    reader, user = "log/2026-01-01-0000-reader.py", "lore/uses-a.qmd"

    first = build(project)
    assert statuses(first) == {"index.qmd": "static", user: "executed", reader: "executed"}
    assert "value 1" in first[user].markdown and "data 1 2 3" in first[reader].markdown
    docs = {d.rel: d for d in read_all(project)}
    record = cache.load_record(docs[user])
    assert set(record["modules"]) == {"mymod/__init__.py", "mymod/a.py", "mymod/b.py"}
    assert record["files"] == {}
    record = cache.load_record(docs[reader])
    assert set(record["modules"]) == {"mymod/__init__.py", "mymod/c.py"}  # found while it ran
    assert set(record["files"]) == {"data/numbers.txt"}
    assert [(r["name"], r["key"], r["exists"]) for r in record["runs"]] == [("r", "abc", True)]
    assert first[reader].runs == [{"name": "r", "key": "abc"}]
    assert first[reader].executed_at
    assert cache.used_run_keys(project) == {"abc"}

    # nothing changed: nothing executes
    assert set(statuses(build(project)).values()) == {"static", "reused"}

    # editing the imported module re-executes only its importer
    put(project, "mymod/a.py", "VALUE = 2\n")
    pages = build(project)
    assert statuses(pages) == {"index.qmd": "static", user: "executed", reader: "reused"}
    assert pages[user].reason == "mymod/a.py changed"
    assert "value 2" in pages[user].markdown

    # a module imported in an eval: false chunk still counts
    put(project, "mymod/b.py", "OTHER = 2\n")
    assert statuses(build(project))[user] == "executed"

    # editing the data file re-executes its reader only
    put(project, "data/numbers.txt", "4 5 6\n")
    pages = build(project)
    assert statuses(pages) == {"index.qmd": "static", user: "reused", reader: "executed"}
    assert "data 4 5 6" in pages[reader].markdown

    # a module found only at run time (importlib) is a dependency too
    put(project, "mymod/c.py", "DYNAMIC = 'c2'\n")
    pages = build(project)
    assert statuses(pages)[reader] == "executed" and "c2" in pages[reader].markdown

    # the run file vanishing makes the reader stale; its key stays recorded until it re-executes
    (project / "store/r-abc.h5").unlink()
    assert cache.stale_reason(docs[reader]) == "run r-abc is gone"
    assert cache.is_fresh(docs[user])
    assert cache.used_run_keys(project) == {"abc"}

    # force re-executes a fresh document
    (project / "store/r-abc.h5").write_text("pretend run")
    pages = build(project, force=["lore/*"])
    assert statuses(pages) == {"index.qmd": "static", user: "executed", reader: "executed"}

    # its own source changing re-executes it
    path = project / user
    path.write_text(path.read_text() + "\nMore prose.\n")
    pages = build(project)
    assert statuses(pages)[user] == "executed" and pages[user].reason == "source changed"


def test_cache_entry_is_atomic_and_self_checking(project, put):
    make_project(project, put)
    build(project)
    docs = {d.rel: d for d in read_all(project)}
    doc = docs["lore/uses-a.qmd"]
    record_path, notebook_path = cache.entry_paths(doc)
    assert record_path.parent == project / ".lab" / "cache" / "lore"
    assert not list(record_path.parent.glob("*.tmp"))  # temp files were renamed away
    assert json.loads(record_path.read_text())["source"] == "lore/uses-a.qmd"
    # a notebook that does not match its record (torn write) is never reused
    notebook_path.write_text(notebook_path.read_text().replace("value 1", "value 9"))
    assert cache.load(doc) is None
    assert build(project)["lore/uses-a.qmd"].status == "executed"


def test_an_edit_during_execution_is_not_mistaken_for_the_executed_source(project, put):
    """The cache records the text that ran: a source saved while its kernel works is stale afterwards."""
    from publish.sources import read_document

    path = put(project, "lore/busy.qmd", '''
        ---
        title: Busy
        ---

        ```{python}
        with open("busy.qmd", "a", encoding="utf-8") as f:  # the author saves an edit meanwhile
            f.write("\\nEdited while running.\\n")
        ```
        ''')
    pages = build_pages(project, [read_document(path, project)])
    assert pages[0].status == "executed"
    assert cache.stale_reason(read_document(path, project)) == "source changed"


def test_lab_store_naming_the_default_store_is_no_change(project, put, monkeypatch):
    """LAB_STORE set to <root>/store is the store the cache was made with; another store is not."""
    make_project(project, put)
    monkeypatch.delenv("LAB_STORE", raising=False)
    pages = build(project)
    doc = pages["lore/uses-a.qmd"].doc
    assert cache.stale_reason(doc) is None
    monkeypatch.setenv("LAB_STORE", str(project / "store"))
    assert cache.stale_reason(doc) is None
    monkeypatch.setenv("LAB_STORE", str(project / "other-store"))
    assert cache.stale_reason(doc) == f"LAB_STORE changed (unset -> {project / 'other-store'})"
