"""A cold build that cannot die late (issue 11): the installed `lab render` in a subprocess, real kernels.

* a failed page is published under a banner, the others too, exit 1; `--strict` leaves the old site as it was;
* a chunk is stopped only after `--timeout` seconds without progress (output, or training heartbeats in
  LAB_PROGRESS), with a message naming file, line and chunk;
* the plan `_runs.yml` is trained before documents execute; a run killed mid-training never reads as
  complete and the next render continues where it stopped;
* Ctrl-C stops the kernels and keeps the previous site and every finished cache entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from publish import cache
from publish.sources import read_document

REPO = Path(__file__).resolve().parents[2]
LAB = Path(sys.executable).with_name("lab")  # the console script installed next to the interpreter

pytestmark = pytest.mark.slow


@pytest.fixture
def project(project: Path) -> Path:
    """The conftest project plus the `website:` block a site build needs."""
    quarto = project / "_quarto.yml"
    quarto.write_text(quarto.read_text(encoding="utf-8") + "website:\n  title: Cold\n", encoding="utf-8")
    return project


def lab_env(store: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LAB_RUN_LOG", "LAB_PROGRESS")}
    env.update(LAB_STORE=str(store), LAB_SMOKE="1", PYTHONPATH=str(REPO), **extra)
    return env


def lab_render(root: Path, store: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LAB), "render", "--root", str(root), *args], env=lab_env(store, **extra),
                          capture_output=True, text=True, timeout=600)


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def page(root: Path, stem: str) -> str:
    return (root / "site" / "lore" / f"{stem}.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------- failures


def test_a_failed_page_is_published_under_a_banner_and_strict_keeps_the_old_site(project, put, tmp_path):
    store = tmp_path / "store"
    put(project, "index.qmd", "---\ntitle: Home\n---\n\nHome.\n")
    put(project, "value.txt", "7\n")
    put(project, "lore/reads.qmd", """
        ---
        title: Reads
        ---

        ```{python}
        #| label: check
        value = int(open("../value.txt").read())
        assert value == 7, f"value is {value}"
        print(f"GOOD-VALUE-{value}")
        ```
        """)
    other = put(project, "lore/other.qmd", "---\ntitle: Other\n---\n\n```{python}\nprint('OTHER-1')\n```\n")
    first = lab_render(project, store, "-j", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "GOOD-VALUE-7" in page(project, "reads")

    # the data breaks one page, another page changes: the other is published, the broken one keeps its
    # last good outputs under a banner naming the chunk and the error, and the command fails
    put(project, "value.txt", "8\n")
    other.write_text(other.read_text().replace("OTHER-1", "OTHER-2"))
    before_strict = None
    second = lab_render(project, store, "-j", "2")
    assert second.returncode == 1, second.stdout + second.stderr
    assert "OTHER-2" in page(project, "other")
    reads = page(project, "reads")
    assert "This page failed to execute" in reads
    assert "chunk &#39;check&#39; failed" in reads or "chunk 'check' failed" in reads
    assert "value is 8" in reads
    assert "GOOD-VALUE-7" in reads and "last good execution" in reads
    assert "lore/reads.qmd" in second.stderr and "published under a banner" in second.stderr

    # --strict: all or nothing, the site stays byte-identical
    before_strict = tree_digest(project / "site")
    other.write_text(other.read_text().replace("OTHER-2", "OTHER-3"))
    strict = lab_render(project, store, "-j", "1", "--strict")
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "site not updated" in strict.stderr and "value is 8" in strict.stderr
    assert tree_digest(project / "site") == before_strict


def test_a_kernel_that_dies_mid_chunk_fails_its_page_and_the_render_finishes(project, put, tmp_path):
    """A kernel killed under a chunk (OOM killer, segfault, SIGKILL) is noticed: the page fails under a
    banner naming the chunk, the other pages publish, the command exits 1 instead of waiting forever."""
    store = tmp_path / "store"
    put(project, "index.qmd", "---\ntitle: Home\n---\n\nHome.\n")
    put(project, "lore/dies.qmd", """
        ---
        title: Dies
        ---

        ```{python}
        #| label: fatal
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
        ```
        """)
    put(project, "lore/lives.qmd", "---\ntitle: Lives\n---\n\n```{python}\nprint('ALIVE-1')\n```\n")
    started = time.monotonic()
    done = lab_render(project, store, "-j", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    assert time.monotonic() - started < 300  # it used to hang until the test's timeout
    assert "ALIVE-1" in page(project, "lives")
    dies = page(project, "dies")
    assert "This page failed to execute" in dies and "the kernel died" in dies
    assert "lore/dies.qmd" in done.stderr and "the kernel died" in done.stderr


# --------------------------------------------------------------------------------------------- progress


def test_timeout_counts_time_without_progress_not_the_chunk_length(project, put, tmp_path):
    """--timeout 1: a chunk beating into LAB_PROGRESS for 4 s runs to the end; a silent one is stopped."""
    put(project, "lore/beats.qmd", """
        ---
        title: Beats
        ---

        ```{python}
        #| label: beating
        import os, time
        for _ in range(16):  # 4 s, silent on the page, a heartbeat every 0.25 s
            with open(os.environ["LAB_PROGRESS"], "a") as f:
                f.write('{"state": "training"}\\n')
            time.sleep(0.25)
        print("BEAT-DONE")
        ```
        """)
    put(project, "lore/silent.qmd", """
        ---
        title: Silent
        ---

        Some prose first.

        ```{python}
        #| label: stuck
        import time
        time.sleep(120)
        ```
        """)
    r = lab_render(project, tmp_path / "store", "-j", "2", "--timeout", "1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "BEAT-DONE" in page(project, "beats")
    assert re.search(r"silent\.qmd:7: chunk 'stuck' failed\nno progress for 1 s, stopped", r.stderr), r.stderr
    assert "no progress for 1 s" in page(project, "silent")


def test_a_run_that_trains_longer_than_the_timeout_still_renders(project, put, tmp_path):
    """A real training, silent on the page, longer than `execute: timeout`: its heartbeats keep it alive."""
    put(project, "lore/trains.qmd", """
        ---
        title: Trains
        execute:
          timeout: 4
        ---

        ```{python}
        #| label: load
        import experiments
        print("imported")
        ```

        ```{python}
        #| label: train
        run = experiments.run({"name": "slowpoke", "model": {"d_model": 512, "n_layers": 24, "d_ff": 2048}})
        print("TRAINED", run.steps_total)
        ```
        """)
    r = lab_render(project, tmp_path / "store", "-j", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "TRAINED 20" in page(project, "trains")
    record = cache.load_record(read_document(project / "lore/trains.qmd", project))
    (logged,) = record["runs"]
    assert logged["request"] == {"config": {"name": "slowpoke", "model": {"d_model": 512, "n_layers": 24,
                                                                          "d_ff": 2048}}}
    # it did train past the timeout (else the test proves nothing); 6 layers took 2.5-4 s, 24 take ~4x
    assert logged["train_seconds"] > 4
    # the time breakdown names the page and puts the training where it belongs
    m = re.search(r"^  lore/trains\.qmd\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", r.stdout, re.M)
    assert m and float(m[1]) == pytest.approx(logged["train_seconds"], abs=0.1), r.stdout
    assert re.search(r"^time: total [\d.]+ s, training [\d.]+ s, analyses [\d.]+ s, rendering [\d.]+ s$",
                     r.stdout, re.M)


# --------------------------------------------------------------------------------------------- the plan


PLANNED_DOC = """
---
title: Planned
---

```{python}
#| label: use
import experiments
a = experiments.run("flannel-1", **{"optim.lr": 3e-4})
b = experiments.run("flannel-1", **{"optim.lr": 1e-4})
print("KEYS", a.key, b.key)
```
"""


def test_the_plan_trains_before_documents_and_an_interrupted_training_resumes(project, put, tmp_path):
    put(project, "lore/planned.qmd", PLANNED_DOC)
    put(project, "_runs.yml", """
        lore/planned.qmd:
        - {name: flannel-1, overrides: {optim.lr: 0.0003}}
        - {name: flannel-1, overrides: {optim.lr: 0.0001}}
        - {name: no-such-preset}
        lore/gone.qmd:
        - {name: flannel-2}
        """)
    store = tmp_path / "store"

    # killed (the whole process group, SIGKILL) while the plan trains: nothing half-written reads as complete
    proc = subprocess.Popen([str(LAB), "render", "--root", str(project), "-j", "1"], env=lab_env(store),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list(store.glob("flannel-1-*.h5.tmp-*")):
            time.sleep(0.05)
        assert list(store.glob("flannel-1-*.h5.tmp-*")), "no training started"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        out = proc.communicate()[0]
    assert "plan: 1 document to execute need 3 runs" in out  # a stale entry is planned too ...
    complete = list(store.glob("flannel-1-*.h5"))
    assert len(complete) <= 1  # at most the first run finished before the kill
    from experiments.store.runs import list_runs

    assert all(r["status"] == "complete" for r in list_runs(store))

    r = lab_render(project, store, "-j", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "plan: 1 document to execute need 3 runs" in out
    assert f"training {2 - len(complete)} runs" in out  # a run finished before the kill is reused
    assert "plan: skipped a stale entry" in out and "no-such-preset" in out  # ... and skipped, harmlessly
    assert out.index("training ") < out.index("running   lore/planned.qmd")
    assert len(list(store.glob("flannel-1-*.h5"))) == 2 and not list(store.glob("*.tmp-*"))
    # the document found both runs stored: it trained nothing itself
    record = cache.load_record(read_document(project / "lore/planned.qmd", project))
    assert [run["train_seconds"] for run in record["runs"]] == [0, 0]
    # the plan is rewritten from what the document requested; the stale entry is gone
    plan_text = (project / "_runs.yml").read_text()
    assert "gone.qmd" not in plan_text and "no-such-preset" not in plan_text
    assert plan_text.count("name: flannel-1") == 2


def test_an_edited_page_has_its_new_runs_trained_by_the_plan(project, put, tmp_path):
    """A page whose run is in neither _runs.yml nor its cache entry (written or edited since it last ran): the
    dry pass finds the literal call, so the plan trains it with its bar and ETA before the kernel starts."""
    put(project, "lore/edited.qmd", """
        ---
        title: Edited
        ---

        ```{python}
        import experiments
        run = experiments.run("flannel-1", progress=False, **{"optim.lr": 2e-4})
        print("KEY", run.key)
        ```
        """)
    store = tmp_path / "store"
    r = lab_render(project, store, "-j", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "plan: 1 document to execute need 1 runs" in r.stdout
    assert r.stdout.index("training 1 runs") < r.stdout.index("running   lore/edited.qmd")
    record = cache.load_record(read_document(project / "lore/edited.qmd", project))
    assert [run["train_seconds"] for run in record["runs"]] == [0]  # found stored: the kernel trained nothing
    assert "optim.lr: 0.0002" in (project / "_runs.yml").read_text()


# --------------------------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_stops_the_kernels_and_keeps_the_site_and_finished_entries(project, put, tmp_path, monkeypatch):
    import psutil

    store, runtime = tmp_path / "store", tmp_path / "runtime"
    put(project, "lore/a-done.qmd", "---\ntitle: Done\n---\n\n```{python}\nprint('DONE-1')\n```\n")
    first = lab_render(project, store, "-j", "1")
    assert first.returncode == 0, first.stdout + first.stderr
    before = tree_digest(project / "site")

    done = put(project, "lore/a-done.qmd", "---\ntitle: Done\n---\n\n```{python}\nprint('DONE-2')\n```\n")
    put(project, "lore/b-loop.qmd", """
        ---
        title: Loop
        ---

        ```{python}
        #| label: forever
        import time
        while True:
            time.sleep(0.1)
        ```
        """)
    proc = subprocess.Popen([str(LAB), "render", "--root", str(project), "-j", "1"],
                            env=lab_env(store, JUPYTER_RUNTIME_DIR=str(runtime)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kernels = []
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("running   lore/b-loop.qmd"):
                break
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not kernels:
            kernels = [p for p in psutil.Process(proc.pid).children(recursive=True)
                       if "ipykernel_launcher" in " ".join(p.cmdline())]
            time.sleep(0.1)
        assert kernels, "".join(lines)
        time.sleep(1)  # inside the loop
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, "".join(lines) + rest + err
    assert "interrupted" in err
    gone, alive = psutil.wait_procs(kernels, timeout=5)
    assert not alive, alive
    assert not list(runtime.glob("kernel-*.json")), list(runtime.iterdir())
    assert tree_digest(project / "site") == before
    doc = read_document(done, project)
    for key, value in lab_env(store).items():  # freshness is judged under the render's environment
        if key in cache.ENV_KEYS:
            monkeypatch.setenv(key, value)
    assert cache.stale_reason(doc) is None and "DONE-2" in json.dumps(cache.load(doc).notebook.cells[0].outputs)
