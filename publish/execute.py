"""Execute one document in its own Jupyter kernel and record what it depended on.

Like Quarto: the kernel is the venv's ipykernel, the working directory is the document's folder, and chunk
options (eval, echo, output, warning, error, include, ...) are honoured. Unlike Quarto's freeze, we also record
what the run *used*, so the document cache can tell when imported code or data changed:
  * a hidden first cell installs `sys.addaudithook`, recording every file under the project root opened for
    reading (data, configs, module sources);
  * a hidden last cell reports the project modules in `sys.modules` (exact: catches conditional imports);
  * the chunks' import statements are also scanned statically, transitively through project modules, so a
    module imported in an `eval: false` chunk or an untaken branch still counts;
  * `LAB_RUN_LOG` points at a temp file where `experiments` appends one JSON line per run it loads.
A chunk runs as long as it makes progress: it is stopped only after `timeout` seconds (`execute: timeout` in
_quarto.yml or the front matter, or `lab render --timeout`) without any. Progress is any output of the chunk
or any change of the file `LAB_PROGRESS` points at, where `experiments` appends a heartbeat while a run
trains (ARCHITECTURE.md), so a document that trains for hours is never killed for taking long.
Hidden cells never reach the returned notebook. Files read by C extensions (h5py, safetensors) are invisible
to the audit hook; runs are covered by the run log instead.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from publish.sources import Chunk, Document, load_project

# seconds a chunk may go without progress (output, or a training heartbeat in LAB_PROGRESS); not a limit
# on its length: a chunk that trains for hours while beating is never stopped
DEFAULT_TIMEOUT = 1800
STARTUP_TIMEOUT = 120
KILL_GRACE = 10  # seconds between interrupting a chunk past its timeout and killing its kernel
WATCH_EVERY = 0.25  # seconds between the watchdog's looks at the progress signals
DEFAULT_OPTIONS = {"echo": True, "eval": True, "output": True, "warning": True, "error": False,
                   "include": True, "code-fold": False, "code-summary": "Code"}
_EXECUTE_KEYS = ("echo", "eval", "output", "warning", "error", "include")
_FORMAT_KEYS = ("code-fold", "code-summary")
# never dependencies: caches, VCS, the venv, rendered output, bytecode
_EXCLUDED_PARTS = ("__pycache__",)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_REPORT_MARK = "__lab_report__"
_AST_LOCK = threading.Lock()


class ExecutionError(Exception):
    """A chunk raised (or timed out, or the kernel died); names the document and the chunk."""

    def __init__(self, path: Path, chunk: str, line: int | None, traceback: str):
        self.path = Path(path)
        self.chunk = chunk
        self.line = line
        self.traceback = traceback
        where = f"{self.path}:{line}" if line else str(self.path)
        super().__init__(f"{where}: chunk {chunk} failed\n{traceback}")


@dataclass
class Execution:
    notebook: nbformat.NotebookNode  # visible cells only; each cell's metadata["lab"]["chunk"] = chunk index
    modules: list[str] = field(default_factory=list)  # root-relative posix paths of project module sources
    files: list[str] = field(default_factory=list)  # root-relative posix paths of project files read
    runs: list[dict] = field(default_factory=list)  # {"name", "key", "path", "request", "train_seconds"}
    python: str = ""
    kernel: str = ""
    seconds: float = 0.0
    executed_at: str = ""


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def chunk_name(chunk: Chunk) -> str:
    label = chunk.options.get("label")
    return repr(label) if label else f"at line {chunk.line}"


# ---------------------------------------------------------------------------------------------- options


def options_for(doc: Document, chunk: Chunk, project: dict | None = None) -> dict:
    """Effective options of a chunk: defaults < _quarto.yml (execute:, format.html) < front matter < chunk."""
    project = load_project(doc.root) if project is None else project
    merged = dict(DEFAULT_OPTIONS)
    for layer in (project, doc.meta):
        execute = layer.get("execute") or {}
        merged.update({k: execute[k] for k in _EXECUTE_KEYS if isinstance(execute, dict) and k in execute})
        html = ((layer.get("format") or {}).get("html") or {}) if isinstance(layer.get("format"), dict) else {}
        merged.update({k: html[k] for k in _FORMAT_KEYS if isinstance(html, dict) and k in html})
        if layer is doc.meta:
            merged.update({k: layer[k] for k in _FORMAT_KEYS if k in layer})
    merged.update(chunk.options)
    if merged["include"] is False:  # Quarto: include: false = run it, show nothing
        merged["echo"] = False
        merged["output"] = False
    return merged


# ---------------------------------------------------------------------------------------------- hidden cells


def _setup_code(root: Path) -> str:
    return f'''
import os as _lab_os, sys as _lab_sys
_lab_opened = set()
def _lab_install(root, seen):
    realpath, fsdecode, prefix = _lab_os.path.realpath, _lab_os.fsdecode, root + _lab_os.sep
    write_flags = _lab_os.O_WRONLY | _lab_os.O_RDWR
    def hook(event, args):
        # keep this cheap: it runs for every audit event in the kernel
        if event != "open" or not args or isinstance(args[0], int):
            return
        mode = args[1] if len(args) > 1 else None
        if mode is None:
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            if flags & write_flags == _lab_os.O_WRONLY:
                return
        elif isinstance(mode, str) and "r" not in mode and "+" not in mode:
            return  # written, not read: an output, not a dependency
        try:
            path = realpath(fsdecode(args[0]))
        except Exception:
            return
        if path.startswith(prefix):
            seen.add(path)
    _lab_sys.addaudithook(hook)
_lab_install({str(root)!r}, _lab_opened)
del _lab_install
get_ipython().run_line_magic("matplotlib", "inline")
get_ipython().run_line_magic("config", "InlineBackend.figure_formats = ['png']")
import matplotlib as _lab_mpl
# the inline backend prints at figure.dpi, savefig() uses savefig.dpi: both at the lab's 200 dpi
_lab_mpl.rcParams["figure.dpi"] = 200
_lab_mpl.rcParams["savefig.dpi"] = 200
del _lab_mpl
'''


def _report_code(root: Path) -> str:
    return f'''
import json as _lab_json
def _lab_report(root, opened):
    import ipykernel
    prefix = root + _lab_os.sep
    modules = set()
    for module in list(_lab_sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            path = _lab_os.path.realpath(path)
            if path.startswith(prefix):
                modules.add(path)
    return {{"modules": sorted(modules), "opened": sorted(opened), "python": _lab_sys.version.split()[0],
            "kernel": "ipykernel " + ipykernel.__version__}}
print({_REPORT_MARK!r}, _lab_json.dumps(_lab_report({str(root)!r}, _lab_opened)))
'''


_WARN_OFF = ("import warnings as _lab_warnings\n_lab_wcm = _lab_warnings.catch_warnings()\n_lab_wcm.__enter__()\n"
             "_lab_warnings.simplefilter('ignore')")
_WARN_ON = "_lab_wcm.__exit__(None, None, None)"


# ---------------------------------------------------------------------------------------------- static imports


def _parse_python(text: str) -> ast.Module | None:
    # IPython magics and shell escapes are not Python; blank them so the rest still parses
    cleaned = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in text.splitlines())
    try:
        # one parse at a time: CPython 3.11's AST constructor is not thread-safe (documents execute in
        # threads; two parses at once raised "SystemError: AST constructor recursion depth mismatch")
        with _AST_LOCK:
            return ast.parse(cleaned)
    except SyntaxError:
        return None


def _imported_names(tree: ast.Module, package: str | None) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                if not package:
                    continue
                parts = package.split(".")
                if node.level - 1 > len(parts) - 1:
                    continue
                anchor = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{anchor}.{base}" if base else anchor
            if base:
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def _module_files(name: str, search: list[Path]) -> list[tuple[Path, str]]:
    """Source files of module `name` and its parent packages, found under the search folders."""
    for base in search:
        found = []
        parts = name.split(".")
        for n in range(1, len(parts) + 1):
            stem = base.joinpath(*parts[:n])
            if (stem / "__init__.py").is_file():
                found.append((stem / "__init__.py", ".".join(parts[:n])))
            elif stem.with_suffix(".py").is_file():
                found.append((stem.with_suffix(".py"), ".".join(parts[:n])))
                break
            else:
                break
        if found:
            return found
    return []


def static_imports(doc: Document) -> set[Path]:
    """Project module files imported by the document's chunks, followed transitively."""
    search = [doc.root.resolve(), doc.path.parent.resolve()]
    pending: list[tuple[str, str | None]] = []
    for chunk in doc.chunks:
        if chunk.kind == "code":
            tree = _parse_python(chunk.text)
            if tree is not None:
                pending.extend((n, None) for n in _imported_names(tree, None))
    seen_names: set[str] = set()
    files: set[Path] = set()
    while pending:
        name, _ = pending.pop()
        if name in seen_names:
            continue
        seen_names.add(name)
        for path, module in _module_files(name, search):
            if path in files:
                continue
            files.add(path)
            tree = _parse_python(path.read_text(encoding="utf-8", errors="replace"))
            if tree is not None:
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                pending.extend((n, None) for n in _imported_names(tree, package))
    return {p.resolve() for p in files}


# ---------------------------------------------------------------------------------------------- execution


def excluded_parts(root: Path) -> set[str]:
    """Top-level folders whose files are never document dependencies (output, run store)."""
    project = load_project(root)
    out = {(project.get("project") or {}).get("output-dir", "site"), "store"}
    store = os.environ.get("LAB_STORE")
    if store:
        try:
            out.add(Path(store).resolve().relative_to(root.resolve()).parts[0])
        except (ValueError, IndexError):
            pass
    return {str(x) for x in out}


def project_relative(paths, root: Path, skip_top: set[str]) -> list[str]:
    """Root-relative posix paths of files under `root`, minus hidden folders, caches and `skip_top`."""
    root = root.resolve()
    out = set()
    for raw in paths:
        path = Path(raw)
        try:
            rel = path.resolve().relative_to(root)
        except ValueError:
            continue
        parts = rel.parts
        if (not parts or parts[0] in skip_top or any(p.startswith(".") for p in parts)
                or any(p in _EXCLUDED_PARTS for p in parts) or rel.suffix in (".pyc", ".pyo")):
            continue
        if path.is_file():
            out.add(rel.as_posix())
    return sorted(out)


def build_notebook(doc: Document, project: dict | None = None) -> nbformat.NotebookNode:
    """The document as a notebook (no hidden cells); cell metadata carries chunk index and options."""
    project = load_project(doc.root) if project is None else project
    cells = []
    for index, chunk in enumerate(doc.chunks):
        meta = {"lab": {"chunk": index, "line": chunk.line, "options": options_for(doc, chunk, project)}}
        if chunk.kind == "markdown":
            cells.append(nbformat.v4.new_markdown_cell(chunk.text, metadata=meta))
        else:
            cells.append(nbformat.v4.new_code_cell(chunk.text, metadata=meta))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["lab"] = {"source": doc.rel, "title": doc.title}
    return nb


def _kernel_manager(socket_dir: Path):
    # The asynchronous manager (nbclient's own default), never the blocking one: with a blocking client,
    # nbclient's wait for the cell's output blocks the event loop, its kernel-alive poll never runs, and a
    # kernel that dies mid-chunk (killed, out of memory, segfault) hangs the render for good.
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpec

    class VenvKernelManager(AsyncKernelManager):
        """Always the ipykernel of the interpreter running `lab`, never a stray user-level kernelspec."""

        @property
        def kernel_spec(self):
            return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                              display_name="Python 3 (lab)", language="python", resource_dir="")

    # ipc transport: no TCP ports to collide between parallel kernels, and no plain-TCP warning. The socket
    # prefix must be absolute: the kernel runs in the document's folder, the client does not.
    if os.name != "posix":
        return VenvKernelManager(kernel_name="python3")
    return VenvKernelManager(kernel_name="python3", transport="ipc", ip=str(socket_dir / "kernel"))


def _error_text(cell) -> str:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return strip_ansi("\n".join(output.get("traceback") or [f"{output.ename}: {output.evalue}"]))
    return ""


def _read_run_log(path: Path) -> list[dict]:
    """Unique runs of the log, in first-use order; training seconds summed over every line of a run."""
    unique: dict[tuple, dict] = {}
    if not path.exists():
        return []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a half-written line from a killed run: nothing to depend on
        if not isinstance(entry, dict) or "key" not in entry:
            continue
        run = unique.setdefault((str(entry.get("name", "")), str(entry["key"])), {
            "name": str(entry.get("name", "")), "key": str(entry["key"]), "path": str(entry.get("path", "")),
            "train_seconds": 0.0})
        seconds = entry.get("train_seconds")
        if isinstance(seconds, (int, float)):
            run["train_seconds"] = round(run["train_seconds"] + float(seconds), 3)
        for extra in ("request", "sweep"):  # the call that fetches it again (publish.plan)
            if isinstance(entry.get(extra), dict) and extra not in run:
                run[extra] = entry[extra]
    return list(unique.values())


def timeout_for(doc: Document, project: dict | None = None) -> float | None:
    """`execute: timeout` of the front matter, else of _quarto.yml, else DEFAULT_TIMEOUT; 0 or less = none.

    Seconds without progress, not the chunk's length (see the module docstring)."""
    project = load_project(doc.root) if project is None else project
    value = DEFAULT_TIMEOUT
    for layer, where in ((project, "_quarto.yml"), (doc.meta, doc.rel)):
        execute = layer.get("execute")
        if isinstance(execute, dict) and "timeout" in execute:
            raw = execute["timeout"]
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                raise ExecutionError(doc.path, "(options)", None,
                                     f"{where}: execute: timeout must be a number of seconds, got {raw!r}")
            value = raw
    return float(value) if value and value > 0 else None


# Clients executing right now, so that Ctrl-C on `lab render` can stop their kernels (abort_all).
_ACTIVE: set = set()
_ACTIVE_LOCK = threading.Lock()


def _signal(client, signum: int) -> None:
    """Send `signum` to a document's kernel from any thread. The manager's methods are coroutines bound to
    nbclient's event loop in another thread; run_sync drives this one call on a loop of the caller's own
    (signalling the kernel's process group touches no loop state)."""
    import signal

    from jupyter_core.utils import run_sync

    if signum == signal.SIGINT:  # the manager's interrupt: SIGINT, or a message for kernels that want one
        run_sync(client.km.interrupt_kernel)()
    else:
        run_sync(client.km.signal_kernel)(signum)


def abort_all(kill: bool = False) -> int:
    """Interrupt (kill=False) or kill every running document kernel; returns how many there were.

    An aborted document stops after its current chunk even if the chunk swallows the interrupt, and its
    kernel is shut down at once (no graceful wait) with its connection file removed."""
    import signal

    with _ACTIVE_LOCK:
        clients = list(_ACTIVE)
    for client in clients:
        client.lab_aborted = True
        client.shutdown_kernel = "immediate"
        try:
            if kill:
                _signal(client, signal.SIGKILL)
            else:
                _signal(client, signal.SIGINT)
        except Exception:  # already gone: its worker is cleaning up
            pass
    return len(clients)


def active_count() -> int:
    with _ACTIVE_LOCK:
        return len(_ACTIVE)


class _Aborted(Exception):
    pass


def execute(doc: Document, *, timeout: float | None = None, startup_timeout: float = STARTUP_TIMEOUT,
            project: dict | None = None) -> Execution:
    """Run `doc` top to bottom in a fresh kernel; raise ExecutionError naming the failing chunk.

    `timeout`: seconds a chunk may go without progress (None: the document's `execute: timeout`; 0: none).
    """
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    root = doc.root.resolve()
    project = load_project(root) if project is None else project
    if timeout is None:
        timeout = timeout_for(doc, project)
    timeout = timeout if timeout and timeout > 0 else None
    nb = build_notebook(doc, project)
    started = time.monotonic()
    executed_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    with tempfile.TemporaryDirectory(prefix="lab-exec-") as tmp:
        run_log = Path(tmp) / "runs.jsonl"
        run_log.touch()
        progress = Path(tmp) / "progress.jsonl"
        progress.touch()
        env = dict(os.environ)
        env["LAB_RUN_LOG"] = str(run_log)
        env["LAB_PROGRESS"] = str(progress)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # silence debugpy's frozen-modules warning
        env.setdefault("JUPYTER_PLATFORM_DIRS", "1")
        # progress bars (a run trained on first use) are for a terminal, not for the page's output
        env["TQDM_DISABLE"] = "1"
        env.pop("MPLBACKEND", None)  # the hidden setup cell selects the inline backend

        # the kernel sees hidden cells around the visible ones; the visible cells are the same objects as
        # nb's, so their outputs land in nb, which never holds the hidden cells
        setup = nbformat.v4.new_code_cell(_setup_code(root))
        report = nbformat.v4.new_code_cell(_report_code(root))
        work = nbformat.v4.new_notebook(cells=[setup, *nb.cells, report], metadata=nb.metadata)
        # no nbclient timeout: a fixed per-cell limit would kill long trainings; _execute_cell's watchdog
        # stops a chunk only when it stops making progress
        client = _client_class()(work, timeout=None, startup_timeout=int(startup_timeout), allow_errors=False,
                                 km=_kernel_manager(Path(tmp)), record_timing=False,
                                 resources={"metadata": {"path": str(doc.path.parent)}})
        chunk: Chunk | None = None
        cell = setup
        with _ACTIVE_LOCK:
            _ACTIVE.add(client)
        try:
            # cleanup_kc: nbclient only shuts down kernels it created itself, and we pass our own manager
            with client.setup_kernel(env=env, cwd=str(doc.path.parent), cleanup_kc=True):
                client.execute_cell(setup, 0)
                size = figure_size(doc, project)  # fig-width / fig-height: matplotlib's default size
                if size:
                    client.execute_cell(nbformat.v4.new_code_cell(
                        f"import matplotlib as _lab_mpl\n_lab_mpl.rcParams['figure.figsize'] = {size!r}\n"
                        f"del _lab_mpl"), 0)
                for index, cell in enumerate(nb.cells, start=1):
                    if client.lab_aborted:
                        raise _Aborted()
                    if cell.cell_type == "markdown":  # its `{python} expr` values, after the chunks before it
                        chunk = doc.chunks[cell.metadata["lab"]["chunk"]]
                        _inline_values(client, doc, chunk, cell, index)
                        continue
                    if cell.cell_type != "code":
                        continue
                    chunk = doc.chunks[cell.metadata["lab"]["chunk"]]
                    options = cell.metadata["lab"]["options"]
                    if not options["eval"]:
                        continue
                    if options["error"]:
                        cell.metadata["tags"] = ["raises-exception"]  # nbclient lets such cells raise
                    if not options["warning"]:
                        client.execute_cell(nbformat.v4.new_code_cell(_WARN_OFF), index)
                    try:
                        _execute_cell(client, cell, index, timeout, progress)
                    finally:
                        cell.metadata.pop("tags", None)
                    if not options["warning"]:
                        client.execute_cell(nbformat.v4.new_code_cell(_WARN_ON), index)
                if client.lab_aborted:
                    raise _Aborted()
                chunk, cell = None, report
                client.execute_cell(report, len(work.cells) - 1)
        except Exception as e:
            if client.lab_aborted:  # Ctrl-C on `lab render`: whatever the kernel said, it was stopped
                raise _failure(doc, chunk, "interrupted") from None
            if isinstance(e, (CellTimeoutError, _Timeout)):
                raise _failure(doc, chunk, f"no progress for {timeout:g} s, stopped (execute: timeout; output and "
                                           f"training heartbeats count as progress)") from None
            if isinstance(e, DeadKernelError):
                raise _failure(doc, chunk, f"the kernel died: {e}") from None
            if isinstance(e, CellExecutionError):
                raise _failure(doc, chunk, _error_text(cell) or strip_ansi(str(e))) from None
            if isinstance(e, RuntimeError):  # the kernel failed to start
                raise _failure(doc, chunk, f"could not start the kernel: {e}") from None
            raise
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE.discard(client)
        runs = _read_run_log(run_log)

    info = _parse_report(report)
    skip = excluded_parts(root)
    modules = set(info.get("modules", [])) | {str(p) for p in static_imports(doc)}
    module_rels = project_relative(modules, root, skip)
    opened = [p for p in project_relative(info.get("opened", []), root, skip) if p not in module_rels]
    opened = [p for p in opened if p != doc.rel]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not _is_noise(o)]
    nb.metadata["language_info"] = {"name": "python", "version": info.get("python", "")}
    return Execution(notebook=nb, modules=module_rels, files=opened, runs=runs, python=info.get("python", ""),
                     kernel=info.get("kernel", ""), seconds=time.monotonic() - started, executed_at=executed_at)


class _Timeout(Exception):
    pass


def _client_class():
    from nbclient import NotebookClient

    class Client(NotebookClient):
        """NotebookClient that notes when the kernel last produced output (progress for the watchdog)."""

        lab_last_output = 0.0
        lab_aborted = False

        def output(self, outs, msg, display_id, cell_index):
            self.lab_last_output = time.monotonic()
            return super().output(outs, msg, display_id, cell_index)

    return Client


def _signature(path: Path) -> tuple:
    try:
        st = path.stat()
    except OSError:
        return ()
    return st.st_size, st.st_mtime_ns


def _execute_cell(client, cell, index: int, timeout: float | None, progress: Path) -> None:
    """execute_cell with a watchdog: after `timeout` s without progress (output, or a change of the
    `progress` file), interrupt the kernel (SIGINT); kill it if that is ignored for KILL_GRACE s."""
    import signal

    if timeout is None:
        client.execute_cell(cell, index)
        return
    fired = threading.Event()
    finished = threading.Event()

    def watch():
        last, seen, seen_output = time.monotonic(), _signature(progress), client.lab_last_output
        while not finished.wait(WATCH_EVERY):
            now = time.monotonic()
            signature = _signature(progress)
            if signature != seen or client.lab_last_output != seen_output:
                last, seen, seen_output = now, signature, client.lab_last_output
            if not fired.is_set() and now - last > timeout:
                fired.set()
                try:
                    _signal(client, signal.SIGINT)
                except Exception:  # the kernel may already be gone; nbclient will notice
                    pass
            elif fired.is_set() and now - last > timeout + KILL_GRACE:
                try:
                    _signal(client, signal.SIGKILL)
                except Exception:
                    pass
                return

    watchdog = threading.Thread(target=watch, name="lab-watchdog", daemon=True)
    watchdog.start()
    try:
        client.execute_cell(cell, index)
    except Exception as e:
        if fired.is_set():
            raise _Timeout() from e
        raise
    finally:
        finished.set()
        watchdog.join()
    if fired.is_set():  # interrupted inside an `error: true` chunk, which swallowed the KeyboardInterrupt
        raise _Timeout()


def figure_size(doc: Document, project: dict | None = None) -> tuple[float, float] | None:
    """(width, height) in inches when the front matter or _quarto.yml's `format: html:` sets `fig-width` /
    `fig-height` (the front matter wins); an unset one is Quarto's html default (7 x 5)."""
    layers = [doc.meta]
    fmt = (project or {}).get("format")
    if isinstance(fmt, dict) and isinstance(fmt.get("html"), dict):
        layers.append(fmt["html"])
    size = {}
    for key in ("fig-width", "fig-height"):
        for layer in layers:
            if key in layer:
                value = layer[key]
                if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                    raise ExecutionError(doc.path, "(options)", None,
                                         f"{key} must be a positive number of inches, got {value!r}")
                size[key] = float(value)
                break
    if not size:
        return None
    return size.get("fig-width", 7.0), size.get("fig-height", 5.0)


_INLINE_MARK = "__lab_inline__"
_INLINE_CODE = """
def _lab_inline_values(exprs):
    import json
    shell, values = get_ipython(), []
    for i, expr in enumerate(exprs):
        try:
            value = eval(expr, shell.user_ns)
        except BaseException as e:
            raise RuntimeError(f"inline expression {i}: {type(e).__name__}: {e}") from None
        if isinstance(value, str):  # Quarto shows a string as is, anything else as its text/plain repr
            values.append(value)
        else:
            data, _ = shell.display_formatter.format(value, include=["text/plain"])
            values.append(data.get("text/plain", repr(value)))
    print(%r, json.dumps(values))
try:
    _lab_inline_values(%r)
finally:
    del _lab_inline_values
"""


def _inline_values(client, doc: Document, chunk: Chunk, cell, index: int) -> None:
    """Evaluate the chunk's inline `{python} expr` in the kernel (as Quarto does, after the chunks before
    it) and keep the values in the cell's metadata (publish.pages shows them)."""
    from nbclient.exceptions import CellExecutionError

    from publish.markdown import inline_expressions

    spans = inline_expressions(chunk.text)
    if not spans or not cell.metadata["lab"]["options"]["eval"]:
        return
    hidden = nbformat.v4.new_code_cell(_INLINE_CODE % (_INLINE_MARK, [s.expr for s in spans]))
    try:
        client.execute_cell(hidden, index)
    except CellExecutionError:
        text = _error_text(hidden).strip().splitlines()
        m = re.search(r"inline expression (\d+): (.*)", "\n".join(text))
        span = spans[int(m.group(1))] if m else spans[0]
        raise ExecutionError(doc.path, f"inline `{{python}} {span.expr}`", chunk.line + span.line,
                             m.group(2) if m else "\n".join(text)) from None
    for output in hidden.get("outputs", []):
        if output.get("output_type") == "stream":
            for line in output.get("text", "").splitlines():
                if line.startswith(_INLINE_MARK + " "):
                    cell.metadata["lab"]["inline"] = json.loads(line[len(_INLINE_MARK) + 1:])


def _failure(doc: Document, chunk: Chunk | None, text: str) -> ExecutionError:
    if chunk is None:
        return ExecutionError(doc.path, "(hidden setup)", None, text)
    return ExecutionError(doc.path, chunk_name(chunk), chunk.line, text)


def _parse_report(cell) -> dict:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            for line in output.get("text", "").splitlines():
                if line.startswith(_REPORT_MARK + " "):
                    return json.loads(line[len(_REPORT_MARK) + 1:])
    return {}


def _is_noise(output) -> bool:
    # the debugger's frozen-modules notice is kernel chatter, not the document's output
    return output.get("output_type") == "stream" and output.get("name") == "stderr" and \
        "frozen modules" in output.get("text", "")
