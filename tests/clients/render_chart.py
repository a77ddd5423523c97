"""Renders a Helm chart with Helm's own engine (PyPI helm-python-sdk), as `helm template` would.

    render_chart.py CHART NAME NAMESPACE VALUES_JSON OUT.yaml

Writes every rendered manifest into OUT.yaml (documents separated by ---), then prints one JSON
line: the templates rendered, `helm lint`'s errors and messages, and the rendered objects.
"""

import json
import sys

import helm_python as helm
import yaml

chart_dir, name, namespace, values, out = sys.argv[1:6]
chart = helm.Chart.load(chart_dir)
rendered = chart.render(json.loads(values), name=name, namespace=namespace)
docs = []
for path in sorted(rendered):
    text = rendered[path]
    if isinstance(text, str) and text.strip():
        docs.append(f"# Source: {path}\n{text.strip()}\n")
with open(out, "w") as f:
    f.write("---\n".join(docs))
lint = helm.lint(chart_dir)
objects = [o for d in docs for o in yaml.safe_load_all(d) if o]
print(json.dumps({"templates": sorted(rendered), "lint": lint, "objects": objects}))
