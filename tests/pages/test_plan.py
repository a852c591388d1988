"""The plan's dry pass (publish.plan.static_requests): the runs a page asks for in literal calls are planned
before its kernel starts, in the request format the kernel itself logs; computed calls are left to the kernel.
The end-to-end check (an edited page's run trained by the plan, not inside the document) is in test_cold.py.
"""

from __future__ import annotations

from publish import plan
from publish.sources import read_document

PAGE = '''
---
title: Dry pass
---

```{python}
import experiments
import experiments as ex
from experiments import run as train_one, sweep
a = experiments.run("flannel-1", progress=False)
b = experiments.run("flannel-1", progress=False, **{"optim.lr": 3e-4, "record.steps": [0, 1, 2]})
c = ex.run("flannel-2", **{"model.tied": False})
d = train_one("flannel-7", **{"train.steps": -(-10 // 3)})
e = sweep("flannel-4", jobs=2, progress=False)
f = experiments.run("flannel-1", progress=False)  # the same call again
```

```{python}
for s in (1, 2):
    experiments.run("flannel-1", **{"train.init_seed": s})   # computed: the kernel trains it
experiments.run(name_of_preset)                              # computed
experiments.run("flannel-1", **overrides)                    # computed
experiments.run(f"flannel-{n}")                              # computed
experiments.plots.save("x")                                  # not a run
```

```{python}
#| eval: false
experiments.run("crucible-1")
```
'''


def test_literal_calls_become_the_requests_the_kernel_would_log(project, put):
    put(project, "lore/dry.qmd", PAGE)
    doc = read_document(project / "lore/dry.qmd", project)
    assert plan.static_requests(doc) == [
        {"name": "flannel-1"},
        {"name": "flannel-1", "overrides": {"optim.lr": 3e-4, "record.steps": [0, 1, 2]}},
        {"name": "flannel-2", "overrides": {"model.tied": False}},
        {"sweep": "flannel-4"},
    ]  # flannel-7's steps are an expression, not a literal: left to the kernel


def test_the_plan_asks_for_what_the_cache_does_not_know(project, put):
    put(project, "lore/dry.qmd", PAGE)
    put(project, "lore/other.qmd", """
        ---
        title: Other
        ---

        ```{python}
        import experiments
        x = experiments.run("flannel-1")
        ```
        """)
    put(project, "_runs.yml", """
        lore/other.qmd:
        - {name: flannel-5}
        """)
    docs = [read_document(project / rel, project) for rel in ("lore/dry.qmd", "lore/other.qmd")]
    requests = plan.requests_for(project, docs)
    assert {"name": "flannel-5"} in requests  # from _runs.yml
    assert requests.count({"name": "flannel-1"}) == 1  # both pages ask for it: planned once
    assert {"sweep": "flannel-4"} in requests and len(requests) == 5


def test_a_page_that_does_not_execute_or_parse_asks_for_nothing(project, put):
    put(project, "lore/off.qmd", """
        ---
        title: Not executed
        execute:
          eval: false
        ---

        ```{python}
        import experiments
        experiments.run("flannel-1")
        ```
        """)
    put(project, "lore/broken.qmd", """
        ---
        title: A broken chunk
        ---

        ```{python}
        import experiments
        experiments.run("flannel-1"
        ```

        ```{python}
        from experiments import run
        run("flannel-2")
        ```
        """)
    assert plan.static_requests(read_document(project / "lore/off.qmd", project)) == []
    assert plan.static_requests(read_document(project / "lore/broken.qmd", project)) == [{"name": "flannel-2"}]
