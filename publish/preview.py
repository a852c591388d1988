"""`lab preview`: serve the site, re-render what an edit touched, reload the browser page (as `quarto preview`).

The document cache records what every executed document read (publish/cache.py: project modules, files,
runs), so the watch list is: `_quarto.yml`, every source, and each source's recorded dependencies. When one
of them changes, the documents it belongs to (plus the listing pages, when a source changed) are rendered
with `lab render`'s own machinery, the others kept as cached; a changed `_quarto.yml` or a source added or
removed renders everything. The served HTML pages carry a small script that polls `/__lab/version` and
reloads the page when a render changed the site. Ctrl-C stops the render in progress the way `lab render`
does (kernels interrupted and shut down, cache entries kept), then the server, and the KeyboardInterrupt
goes on to the caller (`lab preview` turns SIGTERM into one too and exits 130, or 143 for SIGTERM).
"""

from __future__ import annotations

import functools
import http.server
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from publish import cache, site
from publish.render import STAMP, error_line, render
from publish.sources import SourceError, discover, read_document

VERSION_URL = "/__lab/version"
# polled by every served page; reloads it when the site was rebuilt since the page was served
RELOAD_SCRIPT = """<script>/* lab preview */(function(){var v=%s;function poll(){fetch("%s",{cache:"no-store"})
.then(function(r){return r.text()}).then(function(t){if(t!==v){location.reload();return}setTimeout(poll,500)})
.catch(function(){setTimeout(poll,1000)})}setTimeout(poll,500)})();</script>"""


class Site:
    """The served folder and its version: a number that grows whenever the site changed (its build stamp,
    written by every build that changed it), checked when a page asks, so it reloads as soon as the new
    site is in place."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._version = 0
        self._stamp = self.stamp()
        self._lock = threading.Lock()

    def stamp(self) -> str:
        try:
            return (self.folder / STAMP).read_text()
        except OSError:
            return ""

    @property
    def version(self) -> int:
        self.rendered()
        return self._version

    def rendered(self) -> bool:
        """Bump the version if the site changed since the last look. Returns whether it did."""
        stamp = self.stamp()
        with self._lock:
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            self._version += 1
            return True


class Handler(http.server.SimpleHTTPRequestHandler):
    """Static files from the site folder (looked up per request: a render swaps the folder), HTML pages with
    the reload script, and the version endpoint."""

    def __init__(self, *args, served: Site, **kwargs):
        self.served = served
        super().__init__(*args, directory=str(served.folder), **kwargs)

    def log_message(self, *args) -> None:  # the terminal is for render output
        pass

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == VERSION_URL:
            self._send(str(self.served.version).encode(), "text/plain; charset=utf-8")
            return
        path = Path(self.translate_path(self.path))
        if path.is_dir() and self.path.split("?", 1)[0].endswith("/"):
            path = path / "index.html"
        if path.suffix == ".html" and path.is_file():
            try:
                page = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                self.send_error(404)
                return
            script = RELOAD_SCRIPT % (json.dumps(str(self.served.version)), VERSION_URL)
            page = page.replace("</body>", script + "</body>", 1) if "</body>" in page else page + script
            self._send(page.encode("utf-8"), "text/html; charset=utf-8")
            return
        super().do_GET()

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


# --------------------------------------------------------------------------- what to watch


def _signature(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def watch_list(root: Path) -> tuple[dict[str, set[str]], set[str]]:
    """({source: its dependencies (project-relative paths, itself included)}, every path to watch)."""
    deps: dict[str, set[str]] = {}
    for path in discover(root):
        rel = path.relative_to(root).as_posix()
        mine = {rel}
        try:
            record = cache.load_record(read_document(path, root))
        except SourceError:
            record = None  # a source that does not parse yet: watch its text, render reports the error
        for kind in ("modules", "files"):
            mine.update((record or {}).get(kind) or {})
        deps[rel] = mine
    watched = {"_quarto.yml", "_environment"}.union(*deps.values()) if deps else {"_quarto.yml"}
    return deps, watched


def snapshot(root: Path, watched: set[str]) -> dict[str, tuple | None]:
    return {rel: _signature(root / rel) for rel in sorted(watched)}


def affected(root: Path, deps: dict[str, set[str]] | None, changed: set[str]) -> tuple[list[str], list[str]] | None:
    """(sources to render for these changed paths, listing pages to render after them), or None: everything
    (settings changed, a source came or went)."""
    if deps is None or "_quarto.yml" in changed or "_environment" in changed:
        return None
    try:
        sources = {p.relative_to(root).as_posix() for p in discover(root)}
    except SourceError:
        return None
    if sources != set(deps):
        return None
    chosen = [rel for rel, mine in deps.items() if mine & changed]
    listings = []
    if any(rel in changed for rel in deps):  # a source changed: the listing pages show its title, date, ...
        for rel in deps:
            try:
                listing = (read_document(root / rel, root).meta.get("execute") or {}).get("freeze") is False
            except SourceError:
                listing = False
            if listing and rel not in chosen:
                listings.append(rel)
    return chosen, listings


# --------------------------------------------------------------------------- the loop


def serve(served: Site, host: str, port: int) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer((host, port), functools.partial(Handler, served=served))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="lab-preview-http", daemon=True).start()
    return server


def preview(root: Path | str, *, host: str = "127.0.0.1", port: int = 4200, jobs: int = 1,
            poll: float = 0.5, timeout: float | None = None,
            train_runs: Callable[[list[dict], int], dict | None] | None = None, prog: str | None = None) -> int:
    """Render, serve, and re-render on changes until Ctrl-C: the server is closed and the KeyboardInterrupt
    raised on. Returns 2 when the settings do not load or the port is taken (`prog`: the command an error
    line names, as in publish.render.render)."""
    root = Path(root).resolve()
    try:
        settings = site.load_settings(root)
    except site.SiteError as e:
        print(error_line(e, prog), file=sys.stderr)
        return 2
    served = Site(root / settings.output_dir)

    def rerender(targets: list[str] | None) -> None:
        before = served.version
        status = render(root, targets, jobs=jobs, timeout=timeout, train_runs=train_runs, prog=prog)
        if served.version != before:
            print(f"preview: site rebuilt (render exit status {status}); open pages reload", flush=True)
        elif status:
            print(f"preview: render exit status {status}; the site is as it was", flush=True)

    try:
        server = serve(served, host, port)
    except OSError as e:
        print(error_line(f"cannot serve on {host}:{port}: {e.strerror or e} (try --port 0 for any free port)", prog),
              file=sys.stderr)
        return 2
    url = f"http://{host}:{server.server_address[1]}/"
    try:
        print(f"preview: serving {url} (Ctrl-C stops)", flush=True)
        deps, watched = _watch_or_nothing(root)
        state = snapshot(root, watched)
        todo: list[list[str] | None] = [None]  # renders to do, in order; None = everything
        while True:
            if todo:
                for targets in todo:
                    rerender(targets)
                todo = []
                # edits made while it rendered are compared against `state`, taken before it started
                deps, watched = _watch_or_nothing(root)
                state = {**snapshot(root, watched - state.keys()), **{k: v for k, v in state.items() if k in watched}}
                print(f"preview: watching {len(watched)} files"
                      f"{f' of {len(deps)} sources' if deps is not None else ''}", flush=True)
            time.sleep(poll)
            new = snapshot(root, watched)
            changed = {rel for rel in new if new[rel] != state.get(rel)}
            if deps is not None:
                changed |= _sources_changed(root, deps)
            if not changed:
                continue
            state = new
            found = affected(root, deps, changed)
            # the edited page first (it is the one on screen), then the listing pages that show its title
            todo = [None] if found is None else [t for t in found if t]
            shown = ", ".join(sorted(changed)[:3]) + (" ..." if len(changed) > 3 else "")
            what = "everything" if found is None else " then ".join(", ".join(t) for t in todo) or "nothing"
            print(f"preview: {shown} changed: rendering {what}", flush=True)
    except KeyboardInterrupt:
        print("preview: stopped", file=sys.stderr, flush=True)
        raise
    finally:
        server.shutdown()
        server.server_close()


def _sources_changed(root: Path, deps: dict[str, set[str]]) -> set[str]:
    """Sources added or removed since the watch list was made (discover() is a few globs)."""
    try:
        now = {p.relative_to(root).as_posix() for p in discover(root)}
    except SourceError:
        return {"_quarto.yml"}
    return now ^ set(deps)


def _watch_or_nothing(root: Path) -> tuple[dict[str, set[str]] | None, set[str]]:
    try:
        return watch_list(root)
    except SourceError:  # a broken _quarto.yml (the render said so): watch it alone until it is fixed
        return None, {"_quarto.yml", "_environment"}
