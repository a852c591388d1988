"""`lab preview` as a user runs it: the installed command serving a copy of the fixture notebook.

One preview process for the module (its first render executes the fixture, the slow part): an edited entry
is served changed over real HTTP; an edited module re-renders only the page that imported it; a browser tab
on the page reloads by itself; Ctrl-C in the middle of a chunk exits 130 and leaves no kernel behind.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / ".venv" / "bin" / "lab"
FIXTURE = ROOT / "tests" / "fixtures" / "notebook"
ENTRY = "log/2026-11-21-1415-second-look.py"
ENTRY_URL = "log/2026-11-21-1415-second-look.html"

pytestmark = pytest.mark.slow


class Preview:
    def __init__(self, root: Path, store: Path):
        command = [str(LAB)] if LAB.is_file() else [sys.executable, "-m", "lab"]
        self.root = root
        self.proc = subprocess.Popen([*command, "preview", "--port", "0", "--root", str(root), "-j", "2"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "LAB_STORE": str(store)})
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = re.search(r"serving (http://\S+)", self.wait_for("preview: serving", 60)).group(1)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, needle: str, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.proc.poll() is None, "\n".join(self.log)
                continue
            self.log.append(line)
            if needle in line:
                return line
        raise AssertionError(f"no {needle!r} within {seconds} s:\n" + "\n".join(self.log[-40:]))

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return response.read().decode("utf-8", errors="replace")

    def wait_served(self, path: str, needle: str, seconds: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            if needle in self.get(path):
                return time.monotonic() - start
            time.sleep(0.25)
        raise AssertionError(f"{path} never showed {needle!r} within {seconds} s:\n" + "\n".join(self.log[-40:]))


@pytest.fixture(scope="module")
def preview(tmp_path_factory):
    root = tmp_path_factory.mktemp("preview") / "notebook"
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("site", ".lab", "store", "_freeze", "__pycache__"))
    running = Preview(root, root.parent / "store")
    running.wait_for("preview: watching", 600)  # the first render executed everything
    yield running
    if running.proc.poll() is None:
        running.proc.kill()
        running.proc.wait()


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_serves_the_site_with_the_reload_script(preview):
    page = preview.get(ENTRY_URL)
    assert "SECOND-ENTRY-OUTPUT 42" in page
    assert "/__lab/version" in page and "location.reload()" in page
    assert preview.get("__lab/version").strip().isdigit()


def test_edited_entry_is_served_changed(preview):
    version = int(preview.get("__lab/version"))
    edit(preview.root / ENTRY, "6 * 7", "6 * 8")
    seconds = preview.wait_served(ENTRY_URL, "SECOND-ENTRY-OUTPUT 48", 120)
    print(f"edited entry served changed after {seconds:.1f} s")
    assert int(preview.get("__lab/version")) > version
    preview.wait_for("preview: watching", 120)  # the listing pages that show its title, after it


def test_edited_module_rerenders_only_its_importers(preview):
    mark = len(preview.log)
    edit(preview.root / "helpers.py", "SCALE = 2.0", "SCALE = 3.0")
    preview.wait_for("preview: watching", 120)
    executed = [line.split()[1] for line in preview.log[mark:] if line.startswith("executed ")]
    # the two pages that import helpers (the document cache recorded it), not the other entry nor the lists
    assert sorted(executed) == ["log/2026-11-20-0930-first-look.qmd", "lore/curve.qmd"], preview.log[mark:]
    assert any("helpers.py changed" in line for line in preview.log[mark:])


def test_open_page_reloads_by_itself(preview):
    playwright_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        pytest.skip("Debian chromium not installed (bash scripts/setup.sh --tests)")
    from tests.pages.test_browser import FLAGS

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(preview.url + ENTRY_URL, wait_until="load")
            assert "SECOND-ENTRY-OUTPUT 48" in page.content()
            edit(preview.root / ENTRY, "6 * 8", "6 * 9")
            # no navigation from the test: the injected script reloads the tab when the site was rebuilt
            page.wait_for_function("document.body.innerText.includes('SECOND-ENTRY-OUTPUT 54')", timeout=120_000)
        finally:
            browser.close()
    preview.wait_for("preview: watching", 120)


def _kernels(proc: psutil.Process) -> list[psutil.Process]:
    return [c for c in proc.children(recursive=True) if "ipykernel" in " ".join(c.cmdline())]


def test_ctrl_c_in_a_running_chunk_stops_cleanly(preview):
    edit(preview.root / ENTRY, 'print("SECOND-ENTRY-OUTPUT"', 'import time; time.sleep(600)\nprint("SECOND-ENTRY-OUTPUT"')
    preview.wait_for(f"running   {ENTRY}", 60)
    proc = psutil.Process(preview.proc.pid)
    deadline = time.monotonic() + 30
    while not _kernels(proc) and time.monotonic() < deadline:
        time.sleep(0.2)
    kernels = _kernels(proc)
    assert kernels, "no kernel running the chunk"
    started = time.monotonic()
    preview.proc.send_signal(signal.SIGINT)
    assert preview.proc.wait(timeout=30) == 130
    print(f"exited {time.monotonic() - started:.1f} s after SIGINT")
    assert time.monotonic() - started < 10
    time.sleep(0.5)
    assert not [k for k in kernels if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
    with pytest.raises(OSError):
        urllib.request.urlopen(preview.url, timeout=2)


def test_sigterm_stops_it_like_ctrl_c(tmp_path):
    """`kill PID` (a closed terminal, a process manager): the server closes and the command exits 143."""
    root = tmp_path / "notebook"
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("site", ".lab", "store", "_freeze", "__pycache__"))
    running = Preview(root, tmp_path / "store")
    try:
        running.wait_for("preview: watching", 600)
        started = time.monotonic()
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(timeout=30) == 143
        assert time.monotonic() - started < 10
        running.wait_for("preview: stopped", 5)
        with pytest.raises(OSError):
            urllib.request.urlopen(running.url, timeout=2)
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()
