#!/usr/bin/env python3
"""Static checks of deploy/ that helm and kubernetes-validate do not cover. Run by deploy/helm/validate with
the tools venv's Python (PyYAML from kubernetes-validate, promql-parser).

  checks.py rules FILE...   PrometheusRule expressions in rendered manifests parse and use known metrics
  checks.py dashboard FILE  the Grafana dashboard: structure, datasource, PromQL, known metrics
  checks.py compose FILE    the compose file: services, build targets, environment
  checks.py docker FILE     the Dockerfile: targets, COPY sources exist, cargo invocations

Exit status 1 with one line per problem.
"""

import json
import pathlib
import re
import sys

import promql_parser
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]

# The metrics the gateway and fanout-worker export (the interface the dashboard and the alerts build on),
# read from the Rust sources (`common-io` holds the shared ones) so the dashboard and the alerts can never name a metric the code lost.
def exported_metrics():
    kinds = re.compile(r'\b(counter|gauge|histogram)!\(\s*"((?:realtime|process)_[a-z0-9_]+)"')
    plain, hist = set(), set()
    for crate in ("common", "common/io", "gateway", "fanout-worker"):
        for f in (ROOT / crate / "src").rglob("*.rs"):
            for kind, name in kinds.findall(f.read_text()):
                (hist if kind == "histogram" else plain).add(name)
    return plain, hist


COUNTERS_GAUGES, HISTOGRAMS = exported_metrics()
NAME_RE = re.compile(r"\b((?:realtime|process)_[a-z0-9_]+)\b")

problems = []


def problem(msg):
    problems.append(msg)


def grafana_to_promql(expr):
    """Replace Grafana's variables so the expression is plain PromQL."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?(\w+)\}?", "x", expr)


def check_expr(where, expr):
    try:
        promql_parser.parse(expr)
    except Exception as e:  # the parser raises ValueError with the reason
        problem(f"{where}: PromQL does not parse ({e}): {expr}")
    for name in NAME_RE.findall(expr):
        base = name[: -len("_bucket")] if name.endswith("_bucket") else None
        if name in COUNTERS_GAUGES or (base and base in HISTOGRAMS) or name in (
                n + s for n in HISTOGRAMS for s in ("_sum", "_count")):
            continue
        if name in HISTOGRAMS:
            problem(f"{where}: histogram {name} used without _bucket/_sum/_count")
        else:
            problem(f"{where}: unknown metric {name}")


def cmd_rules(files):
    found = 0
    for f in files:
        for doc in yaml.safe_load_all(pathlib.Path(f).read_text()):
            if not doc or doc.get("kind") != "PrometheusRule":
                continue
            for group in doc["spec"]["groups"]:
                names = set()
                for rule in group["rules"]:
                    name = rule.get("alert") or rule.get("record")
                    where = f"{f}: {name}"
                    if name in names:
                        problem(f"{where}: duplicate rule name")
                    names.add(name)
                    check_expr(where, rule["expr"])
                    if "alert" in rule and "severity" not in rule.get("labels", {}):
                        problem(f"{where}: no severity label")
                    if "for" in rule and not re.fullmatch(r"([0-9]+(ms|s|m|h|d|w|y))+", str(rule["for"])):
                        problem(f"{where}: bad for: {rule['for']}")
                    found += 1
    if not found:
        problem("rules: no PrometheusRule rules found in " + " ".join(files))
    return found


def cmd_dashboard(path):
    d = json.loads(pathlib.Path(path).read_text())
    for key in ("title", "uid", "panels", "templating", "schemaVersion"):
        if key not in d:
            problem(f"dashboard: missing {key}")
    variables = {v["name"]: v for v in d["templating"]["list"]}
    for name in ("DS_PROMETHEUS", "namespace", "job"):
        if name not in variables:
            problem(f"dashboard: no template variable {name}")
    if variables.get("DS_PROMETHEUS", {}).get("type") != "datasource":
        problem("dashboard: DS_PROMETHEUS must be a datasource variable")
    if [i["name"] for i in d.get("__inputs", [])] != ["DS_PROMETHEUS"]:
        problem("dashboard: __inputs must declare DS_PROMETHEUS")
    ids = set()
    exprs = 0
    for p in d["panels"]:
        where = f"dashboard panel {p.get('title')!r}"
        if p["id"] in ids:
            problem(f"{where}: duplicate id {p['id']}")
        ids.add(p["id"])
        g = p["gridPos"]
        if g["x"] < 0 or g["x"] + g["w"] > 24:
            problem(f"{where}: gridPos outside the 24 columns")
        if p["type"] == "row":
            continue
        if p.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
            problem(f"{where}: datasource is not ${{DS_PROMETHEUS}}")
        for t in p.get("targets", []):
            if t.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
                problem(f"{where}: target datasource is not ${{DS_PROMETHEUS}}")
            expr = t["expr"]
            if "$namespace" not in expr or "$job" not in expr:
                problem(f"{where}: expression ignores $namespace/$job: {expr}")
            check_expr(where, grafana_to_promql(expr))
            exprs += 1
    # Panels asked for by the brief, by a metric each must show.
    shown = " ".join(t["expr"] for p in d["panels"] for t in p.get("targets", []))
    for m in sorted(COUNTERS_GAUGES | {h + "_bucket" for h in HISTOGRAMS}):
        if m not in shown:
            problem(f"dashboard: no panel shows {m}")
    return exprs


def cmd_compose(path):
    c = yaml.safe_load(pathlib.Path(path).read_text())
    services = c.get("services", {})
    for name in ("postgres", "redis", "gateway"):
        if name not in services:
            problem(f"compose: no service {name}")
    workers = [n for n, s in services.items() if s.get("build", {}).get("target") == "fanout-worker"]
    if len(workers) < 2:
        problem(f"compose: expected two fanout-worker services, found {workers}")
    pg = services.get("postgres", {})
    if "wal_level=logical" not in " ".join(map(str, pg.get("command", []))):
        problem("compose: postgres must run with wal_level=logical")
    if not str(pg.get("image", "")).startswith("postgres:15"):
        problem("compose: postgres image must be postgres:15")
    if not str(services.get("redis", {}).get("image", "")).startswith("redis:7"):
        problem("compose: redis image must be redis:7")
    dockerfile_targets = set()
    for name, s in services.items():
        b = s.get("build")
        if b:
            ctx = (pathlib.Path(path).parent / b["context"]).resolve()
            df = ctx / b["dockerfile"]
            if not df.exists():
                problem(f"compose: {name}: {df} does not exist")
                continue
            targets = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", df.read_text(), re.M | re.I))
            dockerfile_targets |= targets
            if b.get("target") not in targets:
                problem(f"compose: {name}: target {b.get('target')} not in {df.name}")
        env = s.get("environment", {})
        if isinstance(env, dict):
            for k, v in env.items():
                if isinstance(v, (dict, list)):
                    problem(f"compose: {name}: environment {k} is not a scalar")
        for v in s.get("volumes", []):
            if isinstance(v, str) and v.startswith("./"):
                src = pathlib.Path(path).parent / v.split(":")[0]
                if not src.exists():
                    problem(f"compose: {name}: volume source {src} missing")
        for dep in s.get("depends_on", {}):
            if dep not in services:
                problem(f"compose: {name}: depends on unknown service {dep}")
    gw = services.get("gateway", {}).get("environment", {})
    wk = services.get(workers[0], {}).get("environment", {}) if workers else {}
    if gw.get("REALTIME_SHARDS") != wk.get("REALTIME_SHARDS"):
        problem("compose: REALTIME_SHARDS differs between gateway and workers")
    return len(services)


def cmd_docker(path):
    text = pathlib.Path(path).read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
    names = {s[1] for s in stages if s[1]}
    for t in ("gateway", "fanout-worker"):
        if t not in names:
            problem(f"docker: no stage {t}")
    for src in re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.M):
        parts = src.split()
        for p in parts[:-1]:
            if not (ROOT / p).exists():
                problem(f"docker: COPY source {p} does not exist in the repository")
    for pkg in ("gateway", "fanout-worker"):
        want = f"cargo build --release --locked -p {pkg} --bin {pkg}"
        if want not in text:
            problem(f"docker: missing `{want}`")
    if not re.search(r"^USER\s+65532", text, re.M):
        problem("docker: runtime stages must run as USER 65532")
    ignore = pathlib.Path(str(path) + ".dockerignore")
    if not ignore.exists():
        problem(f"docker: {ignore.name} missing next to the Dockerfile")
    return len(stages)


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = sys.argv[1], sys.argv[2:]
    n = {"rules": lambda: cmd_rules(args), "dashboard": lambda: cmd_dashboard(args[0]),
         "compose": lambda: cmd_compose(args[0]), "docker": lambda: cmd_docker(args[0])}[cmd]()
    for p in problems:
        print("FAIL " + p, file=sys.stderr)
    if problems:
        return 1
    print(f"ok: {cmd} ({n} checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
