"""The run plan `_runs.yml`: which runs each document requested when it last executed (committed, like `_freeze`).

`lab render` rewrites it after executing documents, from the run log the document cache recorded
(`{"name" or "config", "overrides"}` per run, `{"sweep", "overrides"}` for the members of a sweep: the
call, not the key, so an entry stays valid under another profile (LAB_SMOKE, which keeps fewer sweep
members) or after a change of the training code). Before executing documents, `lab render` asks
for the requests of the documents about to execute (those, plus the literal `experiments.run` / `sweep`
calls in their code: a dry pass that finds what an edited page asks for) and has `experiments` train the
missing ones first, with progress bars and an ETA (lab/render.py passes that trainer in: publish never
imports experiments). A stale entry is harmless: at worst a run is trained that no document uses any more,
and a document that needs a run the plan lacks (one whose call is computed) trains it itself.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import yaml

from publish import cache
from publish.sources import Document

PLAN_FILE = "_runs.yml"
HEADER = """\
# Runs each document requested when it last executed: written by `lab render`, commit it.
# On a fresh clone `lab render` first trains the runs listed here that the store lacks (a bar per run and
# an ETA), then executes the documents, which find their runs stored. Entries are calls (preset name and
# overrides), not keys, so they hold for LAB_SMOKE=1 and after changes to the training code alike.
"""


class PlanError(Exception):
    """_runs.yml cannot be read; the message names the file (and line)."""


def plan_path(root: Path | str) -> Path:
    return Path(root) / PLAN_FILE


def _valid(request) -> bool:
    if not isinstance(request, dict):
        return False
    head = (isinstance(request.get("name"), str) or isinstance(request.get("config"), dict)
            or isinstance(request.get("sweep"), (str, dict)))
    return head and isinstance(request.get("overrides", {}), dict)


def load(root: Path | str) -> dict[str, list[dict]]:
    """{source path: [request, ...]} from _runs.yml ({} when there is none)."""
    path = plan_path(root)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise PlanError(f"{path}{f':{mark.line + 1}' if mark else ''}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PlanError(f"{path}: expected a mapping of source path -> list of runs")
    plan = {}
    for rel, requests in data.items():
        if not isinstance(requests, list) or not all(_valid(r) for r in requests):
            raise PlanError(f"{path}: {rel}: expected a list of {{name: PRESET, overrides: {{...}}}} entries")
        plan[str(rel)] = requests
    return plan


def _canonical(request: dict) -> str:
    return json.dumps(request, sort_keys=True, default=str)


def _unique(requests) -> list[dict]:
    seen, out = set(), []
    for request in requests:
        key = _canonical(request)
        if key not in seen:
            seen.add(key)
            out.append(request)
    return out


def recorded_requests(doc: Document) -> list[dict] | None:
    """The requests of the document's cache entry, or None when it has no entry or one written before
    requests were logged (then the plan's entry is kept)."""
    record = cache.load_record(doc)
    if record is None:
        return None
    runs = record.get("runs") or []
    if any(not _valid(r.get("request")) for r in runs):
        return None
    # a sweep is planned as the sweep call, not its members: the members differ between profiles
    return _unique(r["sweep"] if _valid(r.get("sweep")) else r["request"] for r in runs)


# --- the dry pass: runs a document's code asks for in calls whose arguments are all written out -----------
_CALLS = {"run": "name", "sweep": "sweep"}  # experiments.<call> -> the request's head
_NOT_OVERRIDES = {"progress", "jobs"}  # keyword arguments of run / sweep that are not config overrides


def _literal_call(call: ast.Call, head: str) -> dict | None:
    """{head: preset, "overrides": {...}} for `run("preset", key=value, **{"a.b": value})` with every argument
    a literal; None for anything computed (a variable, an f-string, a dict built elsewhere)."""
    if not call.args or not isinstance(call.args[0], ast.Constant) or not isinstance(call.args[0].value, str):
        return None
    overrides = {}
    try:
        for kw in call.keywords:
            if kw.arg in _NOT_OVERRIDES:
                continue
            if kw.arg is not None:
                overrides[kw.arg] = ast.literal_eval(kw.value)
            elif isinstance(kw.value, ast.Dict) and all(isinstance(k, ast.Constant) for k in kw.value.keys):
                overrides.update(ast.literal_eval(kw.value))
            else:
                return None
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    request = {head: call.args[0].value}
    return {**request, "overrides": overrides} if overrides else request


def static_requests(doc: Document) -> list[dict]:
    """The runs a document's code asks for with literal arguments, found without executing it: a page edited
    since its last execution is planned (bars, ETA) before its kernel starts, not trained inside it.

    Calls are `experiments.run` / `experiments.sweep` (also under `import experiments as x` or
    `from experiments import run`); chunks with `eval: false` and code that does not parse are passed over.
    A call inside a branch that never runs is planned all the same: at worst one run more is trained."""
    execute = doc.meta.get("execute")
    if isinstance(execute, dict) and execute.get("eval") is False:
        return []
    modules, names, calls = {"experiments"}, {}, []
    for chunk in doc.chunks:
        if chunk.kind != "code" or chunk.options.get("eval") is False:
            continue
        try:
            tree = ast.parse(chunk.text)
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules.update(a.asname for a in node.names if a.name == "experiments" and a.asname)
            elif isinstance(node, ast.ImportFrom) and node.module == "experiments" and not node.level:
                names.update((a.asname or a.name, a.name) for a in node.names if a.name in _CALLS)
            elif isinstance(node, ast.Call):
                calls.append(node)
    out = []
    for call in calls:  # imports anywhere in the document count: chunks run in one kernel
        f = call.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in modules:
            which = f.attr
        elif isinstance(f, ast.Name):
            which = names.get(f.id)
        else:
            continue
        request = _literal_call(call, _CALLS[which]) if which in _CALLS else None
        if request is not None:
            out.append(request)
    return _unique(out)


def requests_for(root: Path | str, docs: list[Document]) -> list[dict]:
    """Every run the documents need, as far as it is known before they execute: what each requested last time
    (its cache entry where it knows, else the plan), and what its code asks for in literal calls."""
    plan = load(root)
    out = []
    for doc in docs:
        recorded = recorded_requests(doc)
        out.extend(recorded if recorded is not None else plan.get(doc.rel, []))
        out.extend(static_requests(doc))
    return _unique(out)


def dumps(plan: dict[str, list[dict]]) -> str:
    body = {rel: plan[rel] for rel in sorted(plan) if plan[rel]}
    text = yaml.safe_dump(body, sort_keys=False, default_flow_style=None, width=1 << 16, allow_unicode=True)
    return HEADER + ("\n" + text if body else "")


def update(root: Path | str, docs: list[Document]) -> bool:
    """Rewrite _runs.yml from the cache entries of `docs` (entries of vanished sources dropped, documents
    without a usable entry keep theirs). Returns whether the file changed."""
    path = plan_path(root)
    try:
        old = load(root)
    except PlanError:
        old = {}  # a damaged plan is replaced by what the cache knows
    new = {}
    for doc in docs:
        recorded = recorded_requests(doc)
        requests = recorded if recorded is not None else old.get(doc.rel, [])
        if requests:
            new[doc.rel] = requests
    text = dumps(new)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    if not new and not path.is_file():
        return False
    cache.atomic_write(path, text.encode("utf-8"))
    return True
