// Renders every kustomization under k8s/ with `kubectl kustomize` and
// validates every rendered object against the Kubernetes and Prometheus
// Operator schemas, offline, twice over:
//   1. the JSON schemas bundled with the kubernetes-models packages (types,
//      required fields, enums, patterns, formats);
//   2. the same packages' TypeScript declarations, by type-checking each
//      object as an object literal: this also rejects unknown fields (a
//      misspelt "livenessprobe" would silently be dropped by the schemas
//      above, and rejected by a real API server's strict field validation).
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import test from "node:test";
import {
  TESTS_DIR,
  describeFailure,
  kustomizations,
  kustomizeVersion,
  render,
  renderText,
  run,
} from "./lib.mjs";

// apiVersion -> module path prefix of its models.
function modelModule(apiVersion, kind) {
  if (apiVersion.startsWith("monitoring.coreos.com/")) {
    return `@kubernetes-models/prometheus-operator/${apiVersion}/${kind}`;
  }
  return `kubernetes-models/${apiVersion}/${kind}`;
}

const name = (object) => `${object.kind}/${object.metadata?.name}`;

test("kubectl's kustomize is recent enough for these kustomizations", () => {
  const version = kustomizeVersion();
  const major = Number(/^v?(\d+)/.exec(version)?.[1] ?? 0);
  assert.ok(major >= 4, `kubectl kustomize is ${version || "unknown"}; v4 or later is needed (patches, labels)`);
});

test("every kustomization renders, to objects that each have a kind and a name", () => {
  const dirs = kustomizations();
  for (const expected of ["base", "monitoring", "overlays/native-sidecar", "overlays/classic-sidecar"]) {
    assert.ok(dirs.includes(expected), `k8s/${expected} has no kustomization.yaml`);
  }
  for (const dir of dirs) {
    const objects = render(dir);
    assert.ok(objects.length > 0, `k8s/${dir} renders nothing`);
    const seen = new Set();
    for (const object of objects) {
      assert.ok(object.apiVersion && object.kind && object.metadata?.name, `k8s/${dir}: object without apiVersion/kind/name`);
      const key = `${object.apiVersion} ${name(object)} ${object.metadata.namespace ?? ""}`;
      assert.ok(!seen.has(key), `k8s/${dir}: ${key} is rendered twice`);
      seen.add(key);
    }
  }
});

test("every rendered object validates against its bundled JSON schema", async () => {
  const failures = [];
  for (const dir of kustomizations()) {
    for (const object of render(dir)) {
      let Model;
      try {
        Model = (await import(modelModule(object.apiVersion, object.kind)))[object.kind];
      } catch (error) {
        failures.push(`k8s/${dir}: ${object.apiVersion} ${object.kind}: no schema to validate it against (${error.message})`);
        continue;
      }
      try {
        new Model(object).validate();
      } catch (error) {
        failures.push(`k8s/${dir}: ${name(object)}: ${error.message}`);
      }
    }
  }
  assert.deepEqual(failures, []);
});

// Type-checks `entries` ({ where, object }) with tsc; returns tsc's exit
// status and its errors, each naming the object.
function typeCheck(entries) {
  // Inside node_modules so that the generated file resolves the packages.
  const work = fs.mkdtempSync(path.join(TESTS_DIR, "node_modules", ".poolside-tscheck-"));
  try {
    const imports = new Map();
    const lines = entries.map(({ object }, index) => {
      const module = modelModule(object.apiVersion, object.kind);
      if (!imports.has(module)) imports.set(module, { alias: `T${imports.size}`, kind: object.kind });
      return `export const o${index}: ${imports.get(module).alias} = ${JSON.stringify(object)};`;
    });
    const header = [...imports].map(([module, { alias, kind }]) => `import type { I${kind} as ${alias} } from "${module}";`);
    fs.writeFileSync(path.join(work, "objects.ts"), [...header, ...lines, ""].join("\n"));
    fs.writeFileSync(
      path.join(work, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: {
          strict: true,
          noEmit: true,
          module: "nodenext",
          moduleResolution: "nodenext",
          skipLibCheck: true,
          types: [],
        },
        files: ["objects.ts"],
      }),
    );
    const tsc = path.join(TESTS_DIR, "node_modules", "typescript", "bin", "tsc");
    const result = run(process.execPath, [tsc, "-p", work, "--pretty", "false"], { timeoutMs: 120_000 });
    // objects.ts(LINE,COL): error ...: the line names the object.
    const errors = (result.stdout + result.stderr).replace(/^\S*objects\.ts\((\d+),\d+\)/gm, (_, line) => {
      return entries[Number(line) - 1 - header.length]?.where ?? `objects.ts line ${line}`;
    });
    return { status: result.status, errors };
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

test("every rendered object type-checks against the declared types: no unknown or mistyped fields", () => {
  const entries = [];
  for (const dir of kustomizations()) {
    for (const object of render(dir)) entries.push({ where: `k8s/${dir}: ${name(object)}`, object });
  }
  const { status, errors } = typeCheck(entries);
  assert.equal(status, 0, `type errors in rendered objects:\n${errors}`);
});

test("the validators reject what they should (a check of the checks)", async () => {
  const { Deployment } = await import("kubernetes-models/apps/v1/Deployment");
  const deployment = render("base").find((o) => o.kind === "Deployment");

  const mistyped = structuredClone(deployment);
  mistyped.spec.template.spec.initContainers[0].ports[0].containerPort = "15090";
  assert.throws(() => new Deployment(mistyped).validate(), /containerPort/);

  const misspelt = structuredClone(deployment);
  misspelt.spec.template.spec.initContainers[0].livenessprobe = {};
  const podMonitor = structuredClone(render("base").find((o) => o.kind === "PodMonitor"));
  podMonitor.spec.podMetricsEndpoints[0].prot = "http-admin";
  const { status, errors } = typeCheck([
    { where: "misspelt Deployment", object: misspelt },
    { where: "misspelt PodMonitor", object: podMonitor },
  ]);
  assert.notEqual(status, 0);
  assert.match(errors, /misspelt Deployment.*'"livenessprobe"' does not exist/);
  assert.match(errors, /misspelt PodMonitor.*'"prot"' does not exist/);
});
