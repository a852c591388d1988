"""The publishing machinery: read notebook sources, execute them, cache the results, build the site.

Modules, one concept each:
  sources   read `.qmd` / percent `.py` documents (front matter, chunks, options) and discover them
  layout    where each source lands in the mkdocs docs tree
  links     find, check and rewrite links between pages
  execute   run one document in its own Jupyter kernel, recording what it depended on
  cache     the document cache under `.lab/cache/` (executed notebook + dependency record)
  pages     documents -> mkdocs markdown pages, executing stale ones in parallel
  newentry  `lab new`: dated log entries and lore cards
  site, generated, render   the mkdocs site, generated pages, `lab render`
  preview   `lab preview`: serve the site, re-render what an edit touched
The command line itself (argument parsing, exit statuses) is in `lab/`.
This package never imports `experiments` (ARCHITECTURE.md): the two meet through LAB_RUN_LOG and run files.
"""
