"""Sphinx configuration of the diffusion_jax manual.

The source directory is the repository root, so that every page is read
where it lives (README.md, docs/, notebooks/*.ipynb, benchmarks/README.md)
and their relative links resolve to real files; no page is copied.

    sphinx-build -W --keep-going -c docs . docs/_build/html
    bash launch/quickstart.sh docs          # the same, with the docs extra
"""
from __future__ import annotations

import pathlib
import re
import sys

from sphinx.util import logging

logger = logging.getLogger(__name__)

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

project = "diffusion_jax"
author = "the diffusion_jax authors"
copyright = "2026, the diffusion_jax authors"  # noqa: A001

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon",
              "sphinx.ext.viewcode"]
root_doc = "README"
include_patterns = ["README.md", "docs/**", "notebooks/*.ipynb", "notebooks/README.md",
                    "benchmarks/README.md"]
exclude_patterns = ["docs/_build/**", "docs/conf.py"]

# MyST: GitHub-style heading anchors (README links "#tests"), dollar math.
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath", "colon_fence"]
# Notebooks are rendered from their saved outputs, never executed here.
nb_execution_mode = "off"

autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # a dataclass's "Attributes:" once, not beside its fields
# `name` in a docstring is code, as the docstrings mean it.
default_role = "code"

html_theme = "sphinx_book_theme"
html_title = "diffusion_jax"
html_theme_options = {"show_toc_level": 2, "use_download_button": False}
# docs/_build/html/index.html sends a visitor to the front page (README.html).
html_extra_path = ["_static_root"]  # relative to this folder

# The site's table of contents, added to README.md when the site is built
# (GitHub shows the README without it).
CONTENTS = """

```{toctree}
:hidden:
:caption: Getting started

docs/getting_started
```

```{toctree}
:hidden:
:caption: User guides

docs/training
docs/sampling
docs/text_and_editing
docs/evaluation
docs/openai_models
docs/launch
docs/scaling
docs/reliability
docs/core_api
```

```{toctree}
:hidden:
:caption: Measured

docs/models
docs/results
docs/recipe
docs/samplers
docs/guidance
docs/text2im
docs/editing
benchmarks/README
docs/comparison
```

```{toctree}
:hidden:
:caption: Notebooks

notebooks/README
notebooks/text2im
notebooks/inpaint
notebooks/clip_guided
notebooks/classifier_guidance
notebooks/train_from_scratch
```

```{toctree}
:hidden:
:caption: API reference

docs/api/index
```

```{toctree}
:hidden:
:caption: Contributing

docs/architecture
docs/style
docs/testing
docs/tests
docs/reference
docs/layout
```
"""


def _add_contents(app, docname, source):
  if docname == root_doc:
    source[0] += CONTENTS


# Every public function or class a page calls (`masks.cell(...)`,
# `diffusion_jax.load(...)`) must have an API entry: a call whose target the
# API reference does not document is a warning (an error under -W).
_MODULES = {"schedules": "diffusion_jax.schedules", "diffusion": "diffusion_jax.diffusion",
            "sampling": "diffusion_jax.sampling", "solvers": "diffusion_jax.solvers",
            "guidance": "diffusion_jax.guidance", "masks": "diffusion_jax.masks",
            "oracles": "diffusion_jax.oracles", "editing": "diffusion_jax.inference.editing",
            "evaluation": "diffusion_jax.evaluation", "metrics": "diffusion_jax.evaluation.metrics",
            "pretrained": "diffusion_jax.pretrained", "openai": "diffusion_jax.openai",
            "loading": "diffusion_jax.inference.loading", "diffusion_jax": "diffusion_jax"}
_CALL = re.compile(r"\b(" + "|".join(_MODULES) + r")\.([A-Za-z]\w*)\(")


def _check_api_entries(app, env):
  documented = set(env.domaindata["py"]["objects"])
  for docname in sorted(env.found_docs):
    if docname.startswith("docs/api/"):
      continue
    text = (ROOT / env.doc2path(docname, base=False)).read_text(errors="replace")
    for module, name in sorted(set(_CALL.findall(text))):
      if f"{_MODULES[module]}.{name}" not in documented:
        logger.warning(f"{docname} calls {module}.{name}, which has no API entry "
                       f"({_MODULES[module]}.{name}; docs/api/)", location=docname)


def setup(app):
  app.connect("source-read", _add_contents)
  app.connect("env-check-consistency", _check_api_entries)
