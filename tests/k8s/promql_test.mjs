// The Grafana dashboard parses and has what the issue asks for, and every
// PromQL expression in it and in the PrometheusRule is accepted by promtool:
// each becomes a recording rule of a generated rule file for `promtool check
// rules`. (That the metrics they name exist is live_scrape_test.mjs's job.)
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import test from "node:test";
import { YAML, describeFailure, render, run, tempDir } from "./lib.mjs";
import { DASHBOARD_FILE, dashboard, dashboardExpressions, panelsOf, references, ruleExpressions } from "./promql.mjs";

const board = dashboard();
const panels = panelsOf(board);
const allTargets = panels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p, target: t })));

test("the dashboard JSON parses and is the one the rendered ConfigMap carries", () => {
  const configMap = render("base").find((o) => o.kind === "ConfigMap" && o.metadata.labels?.grafana_dashboard === "1");
  assert.ok(configMap, "no ConfigMap labelled grafana_dashboard: \"1\"");
  assert.equal(configMap.data[path.basename(DASHBOARD_FILE)], fs.readFileSync(DASHBOARD_FILE, "utf8"));
  assert.equal(typeof board.title, "string");
  assert.ok(board.uid && board.uid.length <= 40, "dashboard uid (Grafana allows 40 characters)");
});

test("panels are well formed: unique ids, inside the 24-column grid, Prometheus targets", () => {
  const ids = panels.map((p) => p.id);
  assert.equal(new Set(ids).size, ids.length, "panel ids must be unique");
  for (const panel of panels) {
    assert.ok(panel.title, `panel ${panel.id} has no title`);
    const { x, y, w, h } = panel.gridPos ?? {};
    assert.ok(Number.isInteger(x) && Number.isInteger(y) && w > 0 && h > 0 && x + w <= 24, `panel "${panel.title}": gridPos`);
    if (panel.type === "row") continue;
    assert.ok(panel.targets?.length, `panel "${panel.title}" has no query`);
    for (const target of panel.targets) {
      assert.equal(target.datasource?.uid, "${datasource}", `panel "${panel.title}": use the datasource variable`);
      assert.ok(target.expr, `panel "${panel.title}" ${target.refId}: no expr`);
    }
  }
  const refIds = allTargets.map(({ panel, target }) => `${panel.id}/${target.refId}`);
  assert.equal(new Set(refIds).size, refIds.length, "refIds must be unique within a panel");
});

test("the dashboard shows what the issue lists", () => {
  const exprs = allTargets.map(({ target }) => target.expr);
  const has = (regex, what) => assert.ok(exprs.some((e) => regex.test(e)), `no panel shows ${what}`);
  has(/poolside_pool_available_connections/, "available connections");
  has(/poolside_pool_active_connections/, "healthy connections");
  has(/poolside_pool_connections\b/, "total connections");
  has(/poolside_pool_utilization/, "utilization");
  has(/sum by \(grpc_service, grpc_method, grpc_code\) \(rate\(poolside_requests_total/, "request rate by method and code");
  has(/grpc_code!="OK".*\/.*poolside_requests_total/s, "an error ratio");
  has(/histogram_quantile\(0\.5, .*poolside_request_duration_seconds_bucket/, "p50 latency");
  has(/histogram_quantile\(0\.99, .*poolside_request_duration_seconds_bucket/, "p99 latency");
  has(/sum by \(limit\) \(rate\(poolside_overflow_total/, "calls refused by circuit breaking, by limit");
  has(/poolside_pool_outlier_ejections_total/, "outlier ejections");
  const timeline = panels.find((p) => p.type === "state-timeline");
  assert.ok(timeline && /poolside_pool_health_status/.test(timeline.targets[0].expr), "no health status timeline");
});

test("the lezer PromQL grammar parses every expression without error", () => {
  for (const { where, expr } of [...dashboardExpressions(board), ...ruleExpressions()]) {
    assert.deepEqual(references(expr).errors, [], `${where}: ${expr}`);
  }
});

test("promtool accepts every expression of the dashboard and the rules", () => {
  const expressions = [...dashboardExpressions(board), ...ruleExpressions()];
  const rules = expressions.map(({ expr }, i) => ({ record: `poolside_check:expression_${i}`, expr }));
  const dir = tempDir("promql");
  try {
    const file = path.join(dir, "expressions.rules.yaml");
    fs.writeFileSync(file, YAML.stringify({ groups: [{ name: "dashboard-and-rule-expressions", rules }] }));
    const result = run("promtool", ["check", "rules", file]);
    const explained = result.stdout.replace(/poolside_check:expression_(\d+)/g, (_, i) => expressions[Number(i)].where);
    assert.equal(result.status, 0, describeFailure("promtool check rules", { ...result, stdout: explained }));
    assert.match(result.stdout, new RegExp(`SUCCESS: ${rules.length} rules found`));

    // A check of the check: a broken expression fails.
    fs.writeFileSync(file, YAML.stringify({ groups: [{ name: "g", rules: [{ record: "x", expr: "sum by (pod (up)" }] }] }));
    assert.notEqual(run("promtool", ["check", "rules", file]).status, 0);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
