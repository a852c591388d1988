"""Generate publish/quarto_schema.json from Quarto's own schema (run again when Quarto's version changes).

    python scripts/quarto_schema.py [QUARTO_SHARE] [--out FILE]
                        # QUARTO_SHARE default: the share/ folder next to `quarto` on PATH

Quarto compiles its YAML schemas (share/schema/*.yml, its own dialect) into
share/editor/tools/yaml/all-schema-definitions.json, the definitions its editor tooling validates with. This
script turns the part the lab needs into standard JSON Schema (draft 2020-12) for the `jsonschema` package:

- `front_matter`: Quarto's `front-matter` schema, its allOf parts merged into one object that is CLOSED
  (Quarto accepts unknown keys as free metadata; the lab makes them errors so a typo never does nothing);
- `project`: Quarto's `project-config` (`_quarto.yml`: project/website/... plus every front matter key),
  merged and closed the same way;
- `execute`: Quarto's `front-matter-execute`, closed; `html`: the html format's options, closed; `formats`:
  the name patterns of every other output format (so `format: pdf` is "not html", `format: hmtl` a typo);
- `$defs`: every definition those reach, objects closed where Quarto closes them.

Descriptions are dropped to keep the file small. Quarto is MIT-licensed (share/COPYING.md); the generated
file says so and names the version it came from.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "publish" / "quarto_schema.json"
HTML = "^(.+-)?html([-+].+)?$"


def convert(node, refs: set) -> dict | bool:
    """One schema of Quarto's compiled dialect → JSON Schema; `refs` collects the ids it references."""
    if not isinstance(node, dict):
        return True
    kind = node.get("type")
    if kind == "ref":
        refs.add(node["$ref"])
        return {"$ref": f"#/$defs/{node['$ref']}"}
    if kind in ("string", "number", "boolean", "null"):
        out = {"type": kind}
        if kind == "string" and "pattern" in node:
            out["pattern"] = node["pattern"]
        return out
    if kind == "enum":
        return {"enum": node["enum"]}
    if kind in ("anyOf", "allOf"):
        return {kind: [convert(x, refs) for x in node[kind]]}
    if kind == "array":
        return {"type": "array", "items": convert(node.get("items"), refs)}
    if kind == "object":
        out: dict = {"type": "object"}
        if node.get("properties"):
            out["properties"] = {k: convert(v, refs) for k, v in node["properties"].items()}
        if node.get("patternProperties"):
            out["patternProperties"] = {k: convert(v, refs) for k, v in node["patternProperties"].items()}
        if node.get("required"):
            out["required"] = list(node["required"])
        if node.get("closed"):
            out["additionalProperties"] = False
        elif "additionalProperties" in node:
            out["additionalProperties"] = convert(node["additionalProperties"], refs)
        # propertyNames is Quarto's case-convention hint (a lookahead regex), not a constraint: dropped
        return out
    return True  # "any"


def object_parts(node, defs: dict) -> list[dict]:
    """The object schemas an allOf/ref chain of Quarto's dialect stands for (anyOf with null: the object)."""
    kind = node.get("type")
    if kind == "ref":
        return object_parts(defs[node["$ref"]], defs)
    if kind == "allOf":
        return [p for x in node["allOf"] for p in object_parts(x, defs)]
    if kind == "anyOf":
        return [p for x in node["anyOf"] if x.get("type") != "null" for p in object_parts(x, defs)]
    if kind == "object":
        return [node]
    return []


def closed_union(node, defs: dict, refs: set) -> dict:
    """One closed object with the properties of every part (a key in several parts: all must hold)."""
    props: dict[str, list] = {}
    for part in object_parts(node, defs):
        for key, value in (part.get("properties") or {}).items():
            props.setdefault(key, []).append(convert(value, refs))
    merged = {k: v[0] if len(v) == 1 else {"allOf": v} for k, v in sorted(props.items())}
    return {"type": "object", "properties": merged, "additionalProperties": False}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("share", nargs="?", type=Path, help="Quarto's share/ folder")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write (default: {OUT.relative_to(REPO)})")
    args = parser.parse_args(argv)
    if args.share:
        share = args.share
    else:
        quarto = shutil.which("quarto")
        if not quarto:
            sys.exit("quarto is not on PATH: pass its share/ folder (e.g. .quarto-install/share)")
        share = Path(quarto).resolve().parent.parent / "share"
    source = share / "editor" / "tools" / "yaml" / "all-schema-definitions.json"
    version = (share / "version").read_text().strip() if (share / "version").is_file() else "unknown"
    defs = json.loads(source.read_text(encoding="utf-8"))

    refs: set[str] = set()
    front_matter = closed_union(defs["front-matter"], defs, refs)
    project = closed_union(defs["project-config"], defs, refs)
    for top in (front_matter, project):
        # filled in by publish/schema.py: the closed execute options plus the lab's own (timeout), and
        # format: html options (closed) or another format's name (front-matter-format is 700 KiB)
        top["properties"]["execute"] = {"$ref": "#/$defs/lab-execute"}
        top["properties"]["format"] = {"$ref": "#/$defs/lab-format"}
    refs.discard("front-matter-format")
    refs.discard("front-matter-execute")
    execute = closed_union(defs["front-matter-execute"], defs, refs)
    formats = defs["front-matter-format"]["anyOf"][2]["allOf"][0]["patternProperties"]
    html = closed_union(formats[HTML], defs, refs)

    out_defs: dict = {}
    todo = sorted(refs - {"lab-execute", "lab-format"})
    while todo:
        name = todo.pop()
        if name in out_defs:
            continue
        found: set[str] = set()
        out_defs[name] = convert(defs[name], found)
        todo.extend(sorted(found - set(out_defs)))
    data = {
        "comment": (f"Generated by scripts/quarto_schema.py from Quarto {version} "
                    "(share/editor/tools/yaml/all-schema-definitions.json). Quarto is MIT-licensed: "
                    "Copyright (c) 2020-2025 Posit Software, PBC; see https://github.com/quarto-dev/quarto-cli"),
        "quarto": version,
        "front_matter": front_matter,
        "project": project,
        "execute": execute,
        "html": html,
        "formats": sorted(formats),
        "$defs": dict(sorted(out_defs.items())),
    }
    args.out.write_text(json.dumps(data, separators=(",", ":"), sort_keys=False) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(out_defs)} definitions, {args.out.stat().st_size // 1024} KiB (Quarto {version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
