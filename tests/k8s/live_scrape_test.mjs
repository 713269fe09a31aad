// Runs the real poolside, configured as in k8s/base (only the upstream and
// the two addresses differ), in front of the demo upstream, and checks the
// manifests against what it really does:
//   - every metric the dashboard and the rules name is in its /metrics (or is
//     Prometheus' own `up`), with the labels and label values they use;
//   - its peak RSS under load fits the memory request and half the limit;
//   - on SIGTERM it exits 0, at once when no call is in flight (what the
//     native sidecar's terminationGracePeriodSeconds relies on);
//   - the example upstream's command line makes demo_upstream listen on every
//     interface, as a Service's backend must.
// Both processes are children of coreutils `timeout` and are stopped at the
// end, whatever happens.
import assert from "node:assert/strict";
import fs from "node:fs";
import test, { after, before } from "node:test";
import {
  Child,
  DEMO_UPSTREAM_BIN,
  SANITIZED,
  TARGET_LABELS,
  describeFailure,
  httpGet,
  parseExposition,
  poolsidePods,
  render,
  resolveEnvironment,
  run,
  runDemoClient,
  startPoolsideWithUpstream,
} from "./lib.mjs";
import { dashboardExpressions, references, ruleExpressions } from "./promql.mjs";

// Series Prometheus makes itself, which rules may use.
const PROMETHEUS_SERIES = new Set(["up"]);

const objects = render("base");
const [pod] = poolsidePods(objects);
const manifestEnv = Object.fromEntries(
  [...resolveEnvironment(pod.container, objects).env].map(([name, { value }]) => [name, value]),
);

function mebibytes(quantity) {
  const match = /^(\d+)(Mi|Gi|M|G)?$/.exec(String(quantity));
  assert.ok(match, `memory quantity ${quantity} is not in Mi/Gi/M/G`);
  const factor = { Mi: 1, Gi: 1024, M: 1e6 / 2 ** 20, G: 1e9 / 2 ** 20, undefined: 1 / 2 ** 20 }[match[2]];
  return Number(match[1]) * factor;
}

function peakRssMiB(pid) {
  const kib = Number(/VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]);
  return kib / 1024;
}

let running;
let scrape;

before(async () => {
  const { GRPC_UPSTREAM_TARGET, GRPC_LISTEN_ADDR, GRPC_ADMIN_ADDR, ...rest } = manifestEnv;
  running = await startPoolsideWithUpstream(rest);
  // Unary calls and a stream, so that every request series exists.
  const client = await runDemoClient(running.listen, 200, 8);
  assert.equal(client.code, 0, `demo_client failed:\n${client.output}`);
  const response = await httpGet(`http://${running.admin}/metrics`);
  assert.equal(response.status, 200);
  scrape = response.text;
});

after(async () => {
  if (!running) return;
  await running.poolside.stop("SIGKILL");
  await running.upstream.stop("SIGKILL");
});

test("the live /metrics passes promtool check metrics", () => {
  const result = run("promtool", ["check", "metrics"], { input: scrape });
  assert.equal(result.status, 0, describeFailure("promtool check metrics", result));
});

test("every metric, label and label value the dashboard and rules use is in the live /metrics", () => {
  const samples = parseExposition(scrape);
  const problems = [];
  for (const { where, expr, alert, label } of [...dashboardExpressions(), ...ruleExpressions()]) {
    const { metrics, groupingLabels } = references(expr);
    const known = new Set([...TARGET_LABELS, "le"]);
    for (const { name, matchers } of metrics) {
      if (!name) {
        problems.push(`${where}: a selector without a metric name: ${expr}`);
        continue;
      }
      if (PROMETHEUS_SERIES.has(name)) {
        if (!alert) problems.push(`${where}: uses Prometheus' ${name}; the dashboard shows poolside's metrics`);
        continue;
      }
      const labels = samples.get(name);
      if (!labels) {
        problems.push(`${where}: ${name} is not in poolside's /metrics`);
        continue;
      }
      for (const l of labels.keys()) known.add(l);
      for (const { label: matcherLabel, op, value } of matchers) {
        if (TARGET_LABELS.has(matcherLabel)) continue;
        if (!labels.has(matcherLabel)) {
          problems.push(`${where}: ${name} has no label ${matcherLabel}`);
        } else if ((op === "=" || op === "!=") && !labels.get(matcherLabel).has(value)) {
          problems.push(`${where}: ${name}{${matcherLabel}} is never "${value}" (seen: ${[...labels.get(matcherLabel)].join(", ")})`);
        }
      }
    }
    for (const grouping of [...groupingLabels, ...(label ? [label] : [])]) {
      if (!known.has(grouping)) problems.push(`${where}: groups by ${grouping}, which none of its metrics has`);
    }
  }
  assert.deepEqual(problems, []);
});

// Metric families poolside exports that neither the dashboard nor the rules
// use, each for a reason. Anything else new must be shown or alerted on.
const NOT_ON_THE_DASHBOARD = {
  poolside_forwarded_messages_total: "the forwarded bytes panel shows the traffic",
  poolside_pool_channel_age_seconds: "per connection: GET /pool shows it; Explore has it",
  poolside_pool_channel_healthy: "per connection: the pool panels show the sums",
  poolside_pool_channel_outstanding_calls: "per connection: the utilization panel shows the sum",
};

test("every metric family poolside exports is on the dashboard or in the rules, or deliberately left out", () => {
  const families = [...scrape.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => m[1]);
  assert.ok(families.length > 10, `only ${families.length} metric families in the scrape`);
  const used = new Set();
  for (const { expr } of [...dashboardExpressions(), ...ruleExpressions()]) {
    for (const { name } of references(expr).metrics) {
      if (name) used.add(name.replace(/_(bucket|sum|count)$/, ""));
    }
  }
  const unused = families.filter((f) => !used.has(f) && !Object.hasOwn(NOT_ON_THE_DASHBOARD, f));
  assert.deepEqual(unused, [], "metrics nobody would see: add a dashboard panel or an alert, or list them in NOT_ON_THE_DASHBOARD");
  const stale = Object.keys(NOT_ON_THE_DASHBOARD).filter((f) => used.has(f) || !families.includes(f));
  assert.deepEqual(stale, [], "NOT_ON_THE_DASHBOARD lists metrics that are used, or no longer exported");
});

test("a metric missing from the scrape is reported (a check of the check)", () => {
  const { metrics } = references('sum(rate(poolside_no_such_metric_total{pod=~".+"}[5m]))');
  assert.equal(parseExposition(scrape).has(metrics[0].name), false);
});

test("peak RSS under load fits the manifest's memory request, and twice that in its limit", { skip: SANITIZED && "sanitizer build" }, async () => {
  const { requests, limits } = pod.container.resources;
  const pid = running.poolside.programPid();
  for (const [concurrency, budgetMiB, what] of [
    [64, mebibytes(requests.memory), `requests.memory ${requests.memory}`],
    [256, mebibytes(limits.memory) / 2, `half of limits.memory ${limits.memory}`],
  ]) {
    const client = await runDemoClient(running.listen, 20000, concurrency);
    assert.equal(client.code, 0, `demo_client failed:\n${client.output}`);
    const peak = peakRssMiB(pid);
    console.log(`# poolside peak RSS after 20000 calls at concurrency ${concurrency}: ${peak.toFixed(1)} MiB (budget ${budgetMiB} MiB: ${what})`);
    assert.ok(peak <= budgetMiB, `peak RSS ${peak.toFixed(1)} MiB exceeds ${what}: resize k8s/base/deployment.yaml`);
  }
});

test("SIGTERM with no call in flight: poolside exits 0 within 5 seconds", async () => {
  const { code, elapsedMs } = await running.poolside.stop("SIGTERM", 30_000);
  assert.equal(code, 0, `poolside exited ${code}:\n${running.poolside.output}`);
  assert.ok(elapsedMs < 5_000, `poolside took ${elapsedMs} ms to exit`);
});

// Ports in LISTEN state on the wildcard address (0.0.0.0 or ::).
function wildcardListeners() {
  const ports = new Set();
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    for (const line of fs.readFileSync(file, "utf8").split("\n").slice(1)) {
      const [, local, , state] = line.trim().split(/\s+/);
      if (state !== "0A" || !local) continue;
      const [address, port] = local.split(":");
      if (/^0+$/.test(address)) ports.add(parseInt(port, 16));
    }
  }
  return ports;
}

test("the example upstream's command makes demo_upstream listen on every interface", async () => {
  const deployment = render("examples/echo-upstream").find((o) => o.kind === "Deployment");
  const [program, ...args] = deployment.spec.template.spec.containers[0].command;
  assert.equal(program, "demo_upstream");
  const upstream = new Child("example upstream", DEMO_UPSTREAM_BIN, args.map((a) => a.replace(/^--port=\d+$/, "--port=0")));
  try {
    const [, port] = await upstream.waitFor(/^PORT=(\d+)$/m);
    assert.ok(wildcardListeners().has(Number(port)), `demo_upstream ${args.join(" ")} does not listen on all interfaces: a Service could not reach it`);
  } finally {
    await upstream.stop("SIGKILL");
  }
});
