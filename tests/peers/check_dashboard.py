"""Checks a Grafana dashboard JSON file: the JSON schema of
grafana_dashboard.schema.json (Grafana's dashboard model), then what a schema
cannot say: panel ids unique, each panel's refIds unique, panels inside the
24-column grid and not overlapping. Prints every PromQL expression, one per
line as JSON strings, for the caller to check with promtool.

Usage: check_dashboard.py DASHBOARD.json
"""
import json
import os
import sys

import jsonschema


def main() -> int:
    path = sys.argv[1]
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "grafana_dashboard.schema.json")) as f:
        schema = json.load(f)
    with open(path) as f:
        dash = json.load(f)
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(dash), key=lambda e: list(e.path)
    )
    problems = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]
    seen_ids = set()
    cells = {}
    exprs = []
    for p in dash.get("panels", []):
        pid = p.get("id")
        if pid in seen_ids:
            problems.append(f"panel id {pid} used twice")
        seen_ids.add(pid)
        g = p.get("gridPos", {})
        x, y, w, h = g.get("x", 0), g.get("y", 0), g.get("w", 1), g.get("h", 1)
        if x + w > 24:
            problems.append(f"panel {pid} '{p.get('title')}' runs past the 24 columns")
        for cx in range(x, x + w):
            for cy in range(y, y + h):
                if (cx, cy) in cells:
                    problems.append(
                        f"panel {pid} '{p.get('title')}' overlaps panel {cells[(cx, cy)]}"
                    )
                    break
                cells[(cx, cy)] = pid
            else:
                continue
            break
        refs = [t.get("refId") for t in p.get("targets", [])]
        if len(refs) != len(set(refs)):
            problems.append(f"panel {pid}: refIds repeat: {refs}")
        exprs += [t["expr"] for t in p.get("targets", []) if "expr" in t]
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    for e in exprs:
        print(json.dumps(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
