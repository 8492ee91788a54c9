"""The monitoring role's Grafana dashboards as Grafana runs their queries, for the tests that run them against a
real Prometheus (tests/integration/test_monitoring_lab.py, tests/gateway) and those that check them with promtool
(tests/monitoring/test_dashboards.py)."""
import json
import os
import re

DASHBOARDS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "roles", "monitoring", "files", "grafana", "dashboards")


def dashboard(name, text=None):
    """The dashboard `name` (inferops-gateway.json...), from `text` (as a host holds it) or from the role's files."""
    if text is None:
        with open(os.path.join(DASHBOARDS, name)) as handle:
            text = handle.read()
    return json.loads(text)


def substituted(expr, values):
    """The expression with Grafana's $variables replaced by `values` (name: text)."""
    return re.sub(r"\$(\w+)", lambda match: values[match.group(1)], expr)


def label_values_selector(query):
    """label_values(selector, label) -> (selector, label): Grafana's variable query, which is no PromQL itself."""
    match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
    assert match, "a variable query is label_values(selector, label): %s" % query
    return match.group(1), match.group(2)


def panel_queries(board, label_values, rate_interval="1m"):
    """[(where, expr)] for every panel target of `board`, its variables set the way Grafana sets them: All for a
    variable that offers it, else the first value. label_values(label, selector) asks the Prometheus; a variable
    without values fails the test, naming it."""
    values = {"__rate_interval": rate_interval}
    for variable in board["templating"]["list"]:
        selector, label = label_values_selector(variable["query"]["query"])
        found = label_values(label, substituted(selector, values))
        assert found, "%s: variable %s has no values" % (board["uid"], variable["name"])
        values[variable["name"]] = variable["allValue"] if variable["includeAll"] else found[0]
    return [("%s: %s (%s)" % (board["uid"], panel["title"], target["legendFormat"]),
             substituted(target["expr"], values))
            for panel in board["panels"] for target in panel["targets"]]
