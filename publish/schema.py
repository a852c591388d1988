"""`_quarto.yml` and front matter checked against Quarto's own schema, closed, plus the lab's own keys.

publish/quarto_schema.json is Quarto's schema in standard JSON Schema (scripts/quarto_schema.py makes it
from a Quarto install; Quarto is MIT-licensed), validated with `jsonschema`. Quarto treats an unknown key as
free metadata; here every mapping Quarto closes is closed, and so are the top level, `execute:` and
`format: html:`, so `websiteX:` or `website: serach:` is an error naming the file, the line and the nearest
valid key, never a setting that silently does nothing. Navbar and sidebar links must name files that exist.

Which Quarto keys `lab render` implements is decided elsewhere (publish/sources.py, publish/site.py): this
module only says whether a key exists at all.
"""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import json
import re
from pathlib import Path

import yaml

from publish.sources import SourceError

SCHEMA_FILE = Path(__file__).with_name("quarto_schema.json")

# Keys the lab reads that Quarto does not define (Quarto ignores them; a typo of them is still an error).
LAB_EXECUTE_KEYS = {
    # seconds a chunk may run without progress (publish/execute.py); 0 = no limit
    "timeout": {"type": "number", "minimum": 0},
}
LAB_FRONT_MATTER_KEYS = {
    # Quarto reads it (listings, title block) without declaring it in its schema; the lab's blog does too
    "categories": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": ["string", "number"]}}]},
}
LAB_PROJECT_KEYS: dict[str, dict] = {}


class ConfigError(SourceError):
    """A key that does not exist, a value of the wrong kind, or a link to a missing page (exit status 2)."""


@functools.cache
def _schemas() -> dict:
    data = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    defs = dict(data["$defs"])
    execute = json.loads(json.dumps(data["execute"]))
    execute["properties"].update(LAB_EXECUTE_KEYS)
    defs["lab-execute"] = execute
    other_formats = {p: True for p in data["formats"] if "html" not in p}
    defs["lab-format"] = {
        "type": ["string", "object"],
        "properties": {"html": {"anyOf": [{"enum": ["default"]}, data["html"]]}},
        "patternProperties": other_formats,
        "additionalProperties": False,
    }
    out = {}
    for name, lab_keys in (("front_matter", LAB_FRONT_MATTER_KEYS), ("project", LAB_PROJECT_KEYS)):
        top = json.loads(json.dumps(data[name]))
        top["properties"].update(lab_keys)
        out[name] = {"$schema": "https://json-schema.org/draft/2020-12/schema", **top, "$defs": defs}
    out["quarto"] = data["quarto"]
    return out


@functools.cache
def _validator(name: str):
    from jsonschema import Draft202012Validator

    return Draft202012Validator(_schemas()[name])


def _plain(value):
    """YAML's dates as the strings Quarto's YAML reader keeps them as."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat(sep=" ") if isinstance(value, dt.datetime) else value.isoformat()
    return value


# ------------------------------------------------------------------------------------------ where in the file


def _node_at(root, path: list) -> tuple[object, object]:
    """(key node, value node) of a path in a composed YAML tree; the deepest that exists."""
    key_node, node = None, root
    for part in path:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(part):
                    key_node, node = k, v
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            key_node, node = None, node.value[part]
        else:
            break
    return key_node, node


def _line(tree, path: list, first_line: int) -> int:
    key_node, node = _node_at(tree, path)
    mark = (key_node or node).start_mark if (key_node or node) is not None else None
    return first_line + mark.line if mark is not None else first_line


def _dotted(path: list) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def nearest(key: str, valid) -> str | None:
    """The valid key a misspelt one most likely meant (also code_fold / codeFold for code-fold)."""
    valid = sorted(set(valid))
    folded = re.sub(r"(?<=[a-z])([A-Z])", r"-\1", key).replace("_", "-").lower()
    if folded in valid and folded != key:
        return folded
    found = difflib.get_close_matches(folded, valid, n=1, cutoff=0.6)
    return found[0] if found else None


# ------------------------------------------------------------------------------------------ validation


def _message(error, instance_path: list) -> tuple[list, str]:
    """(path the message is about, message) for one jsonschema error."""
    where = _dotted(instance_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        schema = error.schema
        props = set(schema.get("properties") or {})
        patterns = list(schema.get("patternProperties") or {})
        unknown = [k for k in error.instance if k not in props and not any(re.search(p, str(k)) for p in patterns)]
        key = str(unknown[0]) if unknown else "?"
        guess = nearest(key, props)
        hint = f"; did you mean {guess!r}?" if guess else ""
        full = f"{where}.{key}" if where else key
        return [*instance_path, key], f"unknown key {full!r} (Quarto {_schemas()['quarto']} has no such key{hint})"
    value = json.dumps(error.instance, default=str)
    value = value if len(value) <= 60 else value[:57] + "..."
    if error.validator == "type":
        kinds = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return instance_path, f"{where or 'value'}: {value} must be {' or '.join(kinds)}"
    if error.validator == "enum":
        allowed = ", ".join(json.dumps(v) for v in error.validator_value)
        return instance_path, f"{where or 'value'}: {value} must be one of {allowed}"
    if error.validator in ("anyOf", "oneOf"):
        return instance_path, f"{where or 'value'}: {value} is not a value this key accepts"
    return instance_path, f"{where or 'value'}: {error.message}"


def _deepest(error):
    """Inside anyOf, the alternative that got furthest (an object with a misspelt key beats 'not a string')."""
    from jsonschema.exceptions import best_match

    while error.context:
        error = best_match(error.context)
        if error is None:
            break
    return error


_PASSED: set[tuple[str, str]] = set()


def check(data: dict, text: str, path: Path, first_line: int, which: str) -> None:
    """Raise ConfigError for the first problem of `data` (parsed from `text`, which starts at `first_line` of
    `path`) against the `front_matter` or `project` schema."""
    from jsonschema.exceptions import best_match

    if (which, text) in _PASSED:  # the cache reads _quarto.yml once per document: validate it once
        return
    error = best_match(_validator(which).iter_errors(_plain(data)))
    if error is None:
        if len(_PASSED) < 4096:
            _PASSED.add((which, text))
        return
    if error.validator in ("anyOf", "oneOf") and error.context:
        error = _deepest(error) or error
    try:
        tree = yaml.compose(text)
    except yaml.YAMLError:
        tree = None
    at, message = _message(error, list(error.absolute_path))
    raise ConfigError(path, _line(tree, at, first_line) if tree is not None else first_line, message)


def check_front_matter(meta: dict, text: str, path: Path, first_line: int) -> None:
    check(meta, text, path, first_line, "front_matter")


def check_project(config: dict, text: str, path: Path, root: Path) -> None:
    """`_quarto.yml`: the schema, then every navbar/sidebar link names a file of the project."""
    check(config, text, path, 1, "project")
    tree = yaml.compose(text)
    for link_path, href in _links(config.get("website") or {}, ["website"]):
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/?$", href):  # URLs, mailto:, anchors
            continue
        target = href.split("#", 1)[0].lstrip("/")
        if (root / target).is_file():
            continue
        sources = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.qmd")
                         if not any(part.startswith((".", "_")) for part in p.relative_to(root).parts))
        guess = nearest(target, sources)
        hint = f"; did you mean {guess!r}?" if guess else ""
        raise ConfigError(path, _line(tree, link_path, 1),
                          f"{_dotted(link_path)}: {href!r} links to a page that does not exist{hint}")


def _links(website: dict, base: list):
    """(path, href) of every navbar and sidebar item, menus and sections included."""
    navbar = website.get("navbar")
    if isinstance(navbar, dict):
        for side in ("left", "right"):
            yield from _items(navbar.get(side), [*base, "navbar", side])
    sidebar = website.get("sidebar")
    sidebars = sidebar if isinstance(sidebar, list) else [sidebar] if isinstance(sidebar, dict) else []
    for i, bar in enumerate(sidebars):
        where = [*base, "sidebar", i] if isinstance(sidebar, list) else [*base, "sidebar"]
        if isinstance(bar, dict):
            yield from _items(bar.get("contents"), [*where, "contents"])


def _items(items, where: list):
    if not isinstance(items, list):
        return
    for i, item in enumerate(items):
        if isinstance(item, str):
            if item not in ("auto",) and not item.startswith("---"):
                yield [*where, i], item
        elif isinstance(item, dict):
            for key in ("href", "file", "url"):
                if isinstance(item.get(key), str):
                    yield [*where, i, key], item[key]
            for nested in ("menu", "contents"):
                yield from _items(item.get(nested), [*where, i, nested])
