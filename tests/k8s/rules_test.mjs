// The PrometheusRule, as rendered, through promtool: `promtool check rules`
// on its groups, and `promtool test rules` with
// k8s/monitoring/tests/*.test.yaml, which must make every alert fire on
// synthetic series and stay silent on healthy ones.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import test from "node:test";
import { K8S, YAML, deployables, describeFailure, readYamlFile, render, run, tempDir } from "./lib.mjs";

const TESTS = path.join(K8S, "monitoring", "tests");
const RULE_FILE = "poolside.rules.yaml";

// The list of alerts, by the names they have here.
const REQUIRED_ALERTS = {
  PoolsideUpstreamUnhealthy: "critical",
  PoolsideUpstreamDegraded: "warning",
  PoolsideConnectionErrors: "warning",
  PoolsideHealthCheckFailures: "warning",
  PoolsideSaturated: "warning",
  // Circuit breaking (GRPC_MAX_CONCURRENT_REQUESTS, GRPC_MAX_PENDING_REQUESTS) refusing calls.
  PoolsideOverflow: "warning",
  PoolsideScrapeTargetMissing: "warning",
};

const rule = render("base").find((o) => o.kind === "PrometheusRule");
const alerts = rule.spec.groups.flatMap((group) => group.rules.filter((r) => r.alert));
const testFiles = fs.readdirSync(TESTS).filter((f) => f.endsWith(".test.yaml"));

// A directory with the rule file and copies of the unit tests.
function ruleWorkspace() {
  const dir = tempDir("rules");
  fs.writeFileSync(path.join(dir, RULE_FILE), YAML.stringify({ groups: rule.spec.groups }));
  for (const file of testFiles) fs.copyFileSync(path.join(TESTS, file), path.join(dir, file));
  return dir;
}

test("every overlay that has the PrometheusRule renders the base's rules unchanged", () => {
  for (const dir of deployables()) {
    for (const other of render(dir).filter((o) => o.kind === "PrometheusRule")) {
      assert.deepEqual(other.spec, rule.spec, `k8s/${dir}: PrometheusRule differs from the base's`);
    }
  }
});

test("the alerts the issue asks for exist, with their severity, summary and description", () => {
  const byName = new Map(alerts.map((a) => [a.alert, a]));
  for (const [name, severity] of Object.entries(REQUIRED_ALERTS)) {
    assert.ok(byName.has(name), `alert ${name} is missing`);
    assert.equal(byName.get(name).labels?.severity, severity, `${name}'s severity`);
  }
  for (const alert of alerts) {
    assert.ok(["critical", "warning", "info"].includes(alert.labels?.severity), `${alert.alert}: severity`);
    assert.ok(alert.annotations?.summary && alert.annotations?.description, `${alert.alert}: summary and description`);
  }
  assert.equal(byName.get("PoolsideUpstreamDegraded").for, "5m");
  assert.equal(byName.get("PoolsideSaturated").for, "10m");
  assert.match(byName.get("PoolsideSaturated").expr, /poolside_pool_utilization\b.*> 0\.8\b/s);
});

test("promtool check rules accepts the rules", () => {
  const dir = ruleWorkspace();
  try {
    const result = run("promtool", ["check", "rules", path.join(dir, RULE_FILE)]);
    assert.equal(result.status, 0, describeFailure("promtool check rules", result));
    assert.match(result.stdout, new RegExp(`SUCCESS: ${alerts.length} rules found`));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("promtool test rules: every unit test passes", () => {
  assert.ok(testFiles.length > 0, "no unit tests in k8s/monitoring/tests");
  const dir = ruleWorkspace();
  try {
    for (const file of testFiles) {
      const tests = readYamlFile(path.join(TESTS, file));
      assert.deepEqual(tests.rule_files, [RULE_FILE], `${file}: rule_files must be [${RULE_FILE}]`);
      const result = run("promtool", ["test", "rules", file], { cwd: dir, timeoutMs: 120_000 });
      assert.equal(result.status, 0, describeFailure(`promtool test rules ${file}`, result));
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("every alert has a unit test where it fires and one where it stays silent", () => {
  const fires = new Set();
  const silent = new Set();
  const names = new Set(alerts.map((a) => a.alert));
  for (const file of testFiles) {
    for (const unit of readYamlFile(path.join(TESTS, file)).tests) {
      for (const check of unit.alert_rule_test ?? []) {
        assert.ok(names.has(check.alertname), `${file}: "${unit.name}" tests unknown alert ${check.alertname}`);
        (check.exp_alerts?.length ? fires : silent).add(check.alertname);
      }
    }
  }
  for (const name of names) {
    assert.ok(fires.has(name), `no unit test makes ${name} fire`);
    assert.ok(silent.has(name), `no unit test checks that ${name} stays silent`);
  }
});

test("a broken rule makes promtool fail (a check of the checks)", () => {
  const dir = ruleWorkspace();
  try {
    const file = path.join(dir, RULE_FILE);
    fs.writeFileSync(file, fs.readFileSync(file, "utf8").replace("> 0.8", "> 0.95"));
    const result = run("promtool", ["test", "rules", testFiles[0]], { cwd: dir, timeoutMs: 120_000 });
    assert.notEqual(result.status, 0, "promtool test rules passed with the saturation threshold at 0.95");
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
