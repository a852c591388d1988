"""The site engine: the ONLY module that knows we build with mkdocs-material.

Everything else hands this module a docs tree (markdown + assets) and site settings read from
`_quarto.yml`. mkdocs-material announces its end of life for 2027 with Zensical (which reads the
same mkdocs.yml) as successor, so swapping the engine means rewriting this one file.

The mkdocs configuration is derived at build time from `_quarto.yml`; it is written into the
temporary build directory (for debugging a failed build), never into the repository.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ASSETS_DIR = Path(__file__).parent / "assets"
# Where things land inside the built site (and the docs tree).
LAB_ASSETS = "assets/lab"
MATHJAX_DIR = "assets/mathjax"
FEED_FILE = "feed_rss_created.xml"
BLOG_DIR = "log"


class SiteError(Exception):
    """Bad site settings or a failed site build; the message names the file / key."""


@dataclass(frozen=True)
class NavItem:
    text: str
    href: str  # source path as written in _quarto.yml, e.g. "log.qmd"


@dataclass(frozen=True)
class SiteSettings:
    title: str
    description: str = ""
    site_url: str | None = None
    search: bool = True
    navbar: tuple[NavItem, ...] = field(default_factory=tuple)
    output_dir: str = "site"  # project.output-dir, relative to the root


# --------------------------------------------------------------------------- settings


def load_settings(root: Path) -> SiteSettings:
    """Read the `website:` block of <root>/_quarto.yml, validating every key we use."""
    path = Path(root) / "_quarto.yml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SiteError(f"{path}: not found (the project root holds _quarto.yml)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise SiteError(f"{path}{where}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SiteError(f"{path}: expected a mapping at top level")
    web = data.get("website")
    if not isinstance(web, dict):
        raise SiteError(f"{path}: key 'website' missing or not a mapping")

    def text(key: str, required: bool = False) -> str | None:
        value = web.get(key)
        if value is None:
            if required:
                raise SiteError(f"{path}: key 'website.{key}' is required")
            return None
        if not isinstance(value, str) or not value.strip():
            raise SiteError(f"{path}: key 'website.{key}' must be a non-empty string, got {value!r}")
        return value.strip()

    search = web.get("search", True)
    if not isinstance(search, bool):
        raise SiteError(f"{path}: key 'website.search' must be true or false, got {search!r}")
    site_url = text("site-url")
    if site_url is not None and not site_url.startswith(("http://", "https://")):
        raise SiteError(f"{path}: key 'website.site-url' must start with http:// or https://")

    project = data.get("project") or {}
    if not isinstance(project, dict):
        raise SiteError(f"{path}: key 'project' must be a mapping")
    output_dir = project.get("output-dir", "site")
    if not isinstance(output_dir, str) or not output_dir.strip() or Path(output_dir).is_absolute() \
            or ".." in Path(output_dir).parts:
        raise SiteError(f"{path}: key 'project.output-dir' must be a relative folder name, got {output_dir!r}")

    items = []
    navbar = web.get("navbar") or {}
    if not isinstance(navbar, dict):
        raise SiteError(f"{path}: key 'website.navbar' must be a mapping")
    for side in ("left", "right"):
        entries = navbar.get(side) or []
        if not isinstance(entries, list):
            raise SiteError(f"{path}: key 'website.navbar.{side}' must be a list")
        for i, entry in enumerate(entries):
            key = f"website.navbar.{side}[{i}]"
            if isinstance(entry, str):
                entry = {"href": entry}
            if not isinstance(entry, dict) or not isinstance(entry.get("href"), str):
                raise SiteError(f"{path}: key '{key}.href' must be a string")
            href = entry["href"]
            if href.startswith(("http://", "https://")):
                raise SiteError(f"{path}: key '{key}.href': external links are not supported in the nav")
            label = entry.get("text") or Path(href).stem.replace("-", " ").title()
            if not isinstance(label, str):
                raise SiteError(f"{path}: key '{key}.text' must be a string")
            items.append(NavItem(text=label, href=href))

    return SiteSettings(
        title=text("title", required=True),
        description=text("description") or "",
        site_url=site_url,
        search=search,
        navbar=tuple(items),
        output_dir=output_dir.strip(),
    )


# --------------------------------------------------------------------------- mkdocs config


def mkdocs_config(
    settings: SiteSettings, docs_dir: Path, site_dir: Path, nav: list, *, cache_dir: Path
) -> dict:
    """The complete mkdocs configuration as plain data.

    `nav` is a list of {text: docs path or [docs paths]} entries, already mapped to the docs tree.
    """
    plugins: list = []
    if settings.search:
        plugins.append("search")
    plugins.append(
        {
            "blog": {
                "blog_dir": BLOG_DIR,
                "blog_toc": True,
                # A lab log is read by time of day as much as by date.
                "post_date_format": "yyyy-MM-dd HH:mm",
                "post_url_date_format": "yyyy/MM/dd",
                # log/<file stem>.html: Quarto's URL for log/<stem>.qmd (publish/layout.py)
                "post_url_format": "{file}",
                "post_excerpt": "optional",
                "post_readtime": False,
                "archive": True,
                "archive_date_format": "yyyy MMMM",
                "archive_url_date_format": "yyyy/MM",
                "categories": True,
                "authors": False,
                "pagination_per_page": 20,
            }
        }
    )
    plugins.append(
        {
            "rss": {
                "enabled": True,
                "use_git": False,  # dates come from front matter; CI clones are shallow
                "use_material_blog": True,
                "use_material_social_cards": False,
                "match_path": rf"{BLOG_DIR}/posts/.*",
                "date_from_meta": {"as_creation": "date", "as_update": "date",
                                   "datetime_format": "%Y-%m-%d %H:%M"},
                "feed_title": settings.title,
                "feed_description": settings.description or settings.title,
                "json_feed_enabled": False,
                "rss_feed_enabled": True,
                # The plugin caches remote images here; keep it out of the working directory.
                "cache_dir": str(cache_dir),
                "abstract_chars_count": 300,
                "length": 50,
            }
        }
    )
    config = {
        "site_name": settings.title,
        "site_description": settings.description,
        "docs_dir": str(docs_dir),
        "site_dir": str(site_dir),
        "use_directory_urls": False,  # <x>.html, as Quarto publishes <x>.qmd
        "nav": nav,
        "theme": {
            "name": "material",
            "font": False,  # no Google Fonts: the site must work offline
            "features": [
                "navigation.tabs",
                "navigation.indexes",
                "navigation.top",
                "search.highlight",
                "content.code.copy",
            ],
            "palette": [
                {
                    "media": "(prefers-color-scheme: light)",
                    "scheme": "default",
                    "primary": "blue grey",
                    "accent": "deep orange",
                    "toggle": {"icon": "material/weather-night", "name": "Dark mode"},
                },
                {
                    "media": "(prefers-color-scheme: dark)",
                    "scheme": "slate",
                    "primary": "blue grey",
                    "accent": "deep orange",
                    "toggle": {"icon": "material/weather-sunny", "name": "Light mode"},
                },
            ],
        },
        "markdown_extensions": [
            "admonition",
            "pymdownx.details",
            "pymdownx.superfences",
            "md_in_html",
            "attr_list",
            {"pymdownx.arithmatex": {"generic": True}},
            "tables",
            # Pandoc's `smart` extension, which Quarto renders with: curly quotes and apostrophes, -- and ---
            # as dashes, ... as an ellipsis (titles too: they are the page's H1)
            "smarty",
            "footnotes",  # Pandoc's [^1] footnotes (publish/pages.py places the list under "Footnotes")
            {"toc": {"permalink": True}},
        ],
        "plugins": plugins,
        # Local paths only: MathJax is copied into the site at build time.
        "extra_javascript": [f"{LAB_ASSETS}/mathjax-config.js", f"{MATHJAX_DIR}/tex-svg.js"],
        "extra_css": [f"{LAB_ASSETS}/lab.css"],
        "validation": {
            "nav": {"omitted_files": "ignore"},
            "links": {"not_found": "warn", "anchors": "ignore", "unrecognized_links": "ignore"},
        },
    }
    if settings.site_url:
        config["site_url"] = settings.site_url
    return config


# --------------------------------------------------------------------------- assets


def mathjax_source() -> Path:
    """The es5 directory of MathJax 3 shipped by the PyPI package django-static-mathjax."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise SiteError(
            "MathJax not found: install the PyPI package 'django-static-mathjax' (MathJax 3, served offline)"
        )
    es5 = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax" / "es5"
    if not (es5 / "tex-svg.js").is_file():
        raise SiteError(f"{es5}/tex-svg.js missing: reinstall 'django-static-mathjax'")
    return es5


# Only what tex-svg.js loads lazily (TeX extensions, menu, accessibility); the other combined
# bundles and the CHTML web fonts are never requested by the page.
_MATHJAX_KEEP = ("tex-svg.js", "input", "output/svg", "ui", "a11y", "sre", "adaptors")


def copy_mathjax(dest: Path) -> None:
    src = mathjax_source()
    for part in _MATHJAX_KEEP:
        s = src / part
        if s.is_dir():
            shutil.copytree(s, dest / part, dirs_exist_ok=True)
        elif s.is_file():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s, dest / part)
    licence = src.parent / "LICENSE"
    if licence.is_file():
        shutil.copy2(licence, dest / "LICENSE")


def copy_lab_assets(docs_dir: Path) -> None:
    """Our own CSS / JS (publish/assets) go into the docs tree so mkdocs copies them."""
    shutil.copytree(ASSETS_DIR, docs_dir / LAB_ASSETS, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.py"))


# --------------------------------------------------------------------------- build


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def redirect_html(target: str) -> str:
    """A page that sends the browser to `target` (a relative URL), for URLs the site no longer serves."""
    import html as _html

    t = _html.escape(target, quote=True)
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Redirect</title>'
            f'<link rel="canonical" href="{t}"><meta http-equiv="refresh" content="0; url={t}">'
            f'</head><body><a href="{t}">{t}</a></body></html>\n')


def write_redirects(site_dir: Path, redirects: dict[str, str]) -> None:
    """site path -> site path of the page it now is; never replaces a file the build made."""
    import posixpath

    for path, target in sorted(redirects.items()):
        dest = Path(site_dir) / path
        if dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(redirect_html(posixpath.relpath(target, posixpath.dirname(path) or ".")), encoding="utf-8")


def build(settings: SiteSettings, docs_dir: Path, site_dir: Path, nav: list, *, cache_dir: Path,
          redirects: dict[str, str] | None = None) -> list[str]:
    """Build `docs_dir` into `site_dir` (created / emptied). Returns the engine's warnings.

    `redirects`: site path -> site path, written as redirect pages after the build.

    Raises SiteError when the engine fails; `site_dir` is then incomplete and the caller discards it.
    """
    from mkdocs.commands.build import build as mkdocs_build
    from mkdocs.config import load_config
    from mkdocs.exceptions import MkDocsException

    docs_dir, site_dir = Path(docs_dir), Path(site_dir)
    copy_lab_assets(docs_dir)
    config = mkdocs_config(settings, docs_dir, site_dir, nav, cache_dir=cache_dir)
    config_file = docs_dir.parent / "mkdocs.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")

    collect = _Collect()
    logger = logging.getLogger("mkdocs")
    logger.addHandler(collect)
    old_level = logger.level
    logger.setLevel(logging.WARNING)  # mkdocs INFO chatter would drown our one-line-per-page report
    try:
        cfg = load_config(str(config_file))
        # The mkdocs CLI brackets a build with these events; some plugins (rss) initialise there.
        cfg.plugins.on_startup(command="build", dirty=False)
        try:
            mkdocs_build(cfg)
        finally:
            # mkdocs keeps one instance of a plugin with startup/shutdown hooks per process (for `serve`);
            # material's blog plugin makes its temp dir once and removes it at every shutdown, so a second
            # build in this process of a site with no posts (nothing re-creates it) would fail there
            for plugin in cfg.plugins.values():
                temp_dir = getattr(plugin, "temp_dir", None)
                if isinstance(temp_dir, str):
                    os.makedirs(temp_dir, exist_ok=True)
            cfg.plugins.on_shutdown()
    except (MkDocsException, OSError, ValueError) as e:
        raise SiteError(f"site build failed ({config_file}): {e}") from e
    finally:
        logger.removeHandler(collect)
        logger.setLevel(old_level)
    copy_mathjax(site_dir / MATHJAX_DIR)
    write_redirects(site_dir, redirects or {})
    return collect.messages


def tree_digest(paths: list[Path], extra: str = "") -> str:
    """Hash of a set of directory trees (names + bytes), for 'nothing changed' short cuts."""
    h = hashlib.sha256(extra.encode())
    for base in paths:
        for dirpath, dirnames, filenames in sorted(os.walk(base)):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                h.update(str(p.relative_to(base)).encode() + b"\0")
                h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def engine_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("mkdocs", "mkdocs-material", "mkdocs-rss-plugin", "pymdown-extensions", "django-static-mathjax"):
        try:
            out.append(f"{dist}={version(dist)}")
        except PackageNotFoundError:
            out.append(f"{dist}=?")
    return ";".join(out)


def staging_dir(site_dir: Path) -> Path:
    """A fresh temporary directory next to `site/` (same filesystem, so the swap is a rename)."""
    site_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{site_dir.name}-build-", dir=site_dir.parent))


def swap_into_place(built: Path, site_dir: Path) -> None:
    """Replace `site_dir` by `built`: old → backup, new → site, remove backup.

    If the second rename fails, the backup is renamed back so the previous site stays intact.
    """
    backup = None
    if site_dir.exists():
        backup = site_dir.with_name(f".{site_dir.name}-old-{os.getpid()}")
        if backup.exists():
            shutil.rmtree(backup)
        os.rename(site_dir, backup)
    try:
        os.rename(built, site_dir)
    except OSError:
        if backup is not None:
            os.rename(backup, site_dir)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
