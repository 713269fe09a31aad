// Every PromQL expression of the Grafana dashboard and the PrometheusRule, and
// what each one references, read with the Prometheus project's own PromQL
// grammar (@prometheus-io/lezer-promql).
import fs from "node:fs";
import path from "node:path";
import { parser } from "@prometheus-io/lezer-promql";
import { K8S, render } from "./lib.mjs";

export const DASHBOARD_FILE = path.join(K8S, "monitoring", "dashboards", "poolside.json");

export function dashboard() {
  return JSON.parse(fs.readFileSync(DASHBOARD_FILE, "utf8"));
}

// Panels, rows' nested panels included.
export function panelsOf(board) {
  const all = [];
  const walk = (panels) => {
    for (const panel of panels ?? []) {
      all.push(panel);
      walk(panel.panels);
    }
  };
  walk(board.panels);
  return all;
}

// What Grafana would put in place of its variables, for checking. The
// dashboard's own variables are regex-matched label values: ".+" stands in.
export function substituteVariables(expr, board) {
  const own = (board.templating?.list ?? []).map((v) => v.name);
  let text = expr
    .replaceAll("$__rate_interval", "5m")
    .replaceAll("${__rate_interval}", "5m")
    .replaceAll("$__interval", "1m")
    .replaceAll("${__interval}", "1m")
    .replaceAll("$__range", "1h")
    .replaceAll("${__range}", "1h");
  for (const name of own) {
    text = text.replaceAll(`\${${name}}`, ".+").replace(new RegExp(`\\$${name}\\b`, "g"), ".+");
  }
  if (text.includes("$")) throw new Error(`unknown variable left in: ${expr}`);
  return text;
}

// { where, expr } for every expression of the dashboard: panel targets and
// the selectors inside label_values(...) variable queries.
export function dashboardExpressions(board = dashboard()) {
  const found = [];
  for (const panel of panelsOf(board)) {
    for (const target of panel.targets ?? []) {
      if (target.expr) found.push({ where: `dashboard panel "${panel.title}" ${target.refId}`, expr: substituteVariables(target.expr, board) });
    }
  }
  for (const variable of board.templating?.list ?? []) {
    if (variable.type !== "query") continue;
    const query = typeof variable.query === "string" ? variable.query : variable.query?.query;
    const match = /^label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$/.exec(query ?? "");
    if (!match) throw new Error(`dashboard variable ${variable.name}: only label_values(selector, label) is understood`);
    found.push({ where: `dashboard variable ${variable.name}`, expr: substituteVariables(match[1], board), label: match[2] });
  }
  return found;
}

export function ruleExpressions() {
  const rule = render("base").find((o) => o.kind === "PrometheusRule");
  return rule.spec.groups.flatMap((group) =>
    group.rules.map((r) => ({ where: `rule ${r.alert ?? r.record}`, expr: r.expr.trim(), alert: Boolean(r.alert) })),
  );
}

// What `expr` references: { metrics: [{ name, matchers: [{ label, op, value }] }],
// groupingLabels: [...], errors: [...] }.
export function references(expr) {
  const tree = parser.parse(expr);
  const result = { metrics: [], groupingLabels: [], errors: [] };
  const text = (node) => expr.slice(node.from, node.to);
  tree.iterate({
    enter(ref) {
      if (ref.type.isError) result.errors.push(`syntax error at ${ref.from}: ${expr.slice(ref.from, ref.from + 20)}`);
      if (ref.name === "VectorSelector") {
        const node = ref.node;
        const identifier = node.getChild("Identifier");
        const metric = { name: identifier ? text(identifier) : undefined, matchers: [] };
        const matchers = node.getChild("LabelMatchers");
        for (let m = matchers?.firstChild; m; m = m.nextSibling) {
          if (m.name !== "UnquotedLabelMatcher" && m.name !== "QuotedLabelMatcher") continue;
          const label = m.getChild("LabelName") ?? m.getChild("QuotedLabelName");
          const op = m.getChild("MatchOp");
          const value = m.getChild("StringLiteral");
          metric.matchers.push({
            label: label ? text(label).replace(/^"|"$/g, "") : undefined,
            op: op ? text(op) : undefined,
            value: value ? JSON.parse(text(value).replace(/^'|'$/g, '"')) : undefined,
          });
        }
        result.metrics.push(metric);
      }
      if (ref.name === "GroupingLabels") {
        for (let l = ref.node.firstChild; l; l = l.nextSibling) {
          if (l.name === "LabelName") result.groupingLabels.push(text(l));
        }
      }
    },
  });
  return result;
}
