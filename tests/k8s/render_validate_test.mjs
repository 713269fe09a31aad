// Renders every kustomization under k8s/ (with `kubectl kustomize` where
// kubectl is on PATH, else with the kustomize subset of kustomize.mjs; where
// kubectl is there, both, checking that they agree) and validates every
// rendered object against the Kubernetes and Prometheus Operator schemas,
// offline, twice over:
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
  K8S,
  KUBECTL,
  RENDERER,
  TESTS_DIR,
  YAML,
  acceptedVariables,
  kustomizations,
  kustomizeVersion,
  parseRendered,
  render,
  renderTextWith,
  run,
  tempDir,
} from "./lib.mjs";
import { UnsupportedError } from "./kustomize.mjs";

// apiVersion -> module path prefix of its models.
function modelModule(apiVersion, kind) {
  if (apiVersion.startsWith("monitoring.coreos.com/")) {
    return `@kubernetes-models/prometheus-operator/${apiVersion}/${kind}`;
  }
  return `kubernetes-models/${apiVersion}/${kind}`;
}

const name = (object) => `${object.kind}/${object.metadata?.name}`;

const noKubectl = !KUBECTL && "kubectl is not on PATH (or POOLSIDE_NO_KUBECTL=1): the manifests are rendered by tests/k8s/kustomize.mjs alone";

test(`the renderer in use: ${RENDERER}`, () => {
  console.log(`# rendering with ${RENDERER}`);
});

test("kubectl's kustomize is recent enough for these kustomizations", { skip: noKubectl }, () => {
  const version = kustomizeVersion();
  const major = Number(/^v?(\d+)/.exec(version)?.[1] ?? 0);
  assert.ok(major >= 5, `kubectl kustomize is ${version || "unknown"}; v5 or later is needed (patches, the subset's name hashes)`);
});

// --- the kustomize subset (kustomize.mjs) -----------------------------------

// A kustomization in a temporary directory: `kustomization` (an object) plus
// `files` (name -> text). Returns the directory; the caller removes it.
function scratchKustomization(kustomization, files = {}) {
  const dir = tempDir("kustomization");
  fs.writeFileSync(path.join(dir, "kustomization.yaml"), YAML.stringify(kustomization));
  for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
  return dir;
}

// The overlays that k8s/README.md tells readers to write: its yaml blocks
// that are kustomization fragments, each on top of k8s/base.
function readmeOverlaySnippets() {
  const readme = fs.readFileSync(path.join(K8S, "README.md"), "utf8");
  const snippets = [];
  for (const [, text] of readme.matchAll(/^```yaml\n([\s\S]*?)^```$/gm)) {
    const fragment = YAML.parse(text);
    if (fragment?.configMapGenerator || fragment?.patches) snippets.push(fragment);
  }
  return snippets;
}

function withOverlay(fragment, body) {
  const dir = tempDir("overlay");
  try {
    const kustomization = { resources: [path.relative(dir, path.join(K8S, "base"))], ...fragment };
    fs.writeFileSync(path.join(dir, "kustomization.yaml"), YAML.stringify(kustomization));
    return body(dir);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

// What both renderers must agree on: every kustomization under k8s/ and the
// README's overlays.
function comparisonCases() {
  return [
    ...kustomizations().map((dir) => ({ where: `k8s/${dir}`, absDir: path.join(K8S, dir) })),
    ...readmeOverlaySnippets().map((fragment, i) => ({ where: `k8s/README.md overlay snippet ${i + 1}`, fragment })),
  ];
}

test("the kustomize subset renders exactly what kubectl kustomize does", { skip: noKubectl }, () => {
  const ids = (objects) => objects.map((o) => `${o.apiVersion} ${o.kind} ${o.metadata?.namespace ?? ""}/${o.metadata?.name}`);
  for (const { where, absDir, fragment } of comparisonCases()) {
    const both = (dir) => ({
      kubectl: parseRendered(renderTextWith("kubectl", dir), `${where} (kubectl)`),
      subset: parseRendered(renderTextWith("subset", dir), `${where} (subset)`),
    });
    const { kubectl, subset } = fragment ? withOverlay(fragment, both) : both(absDir);
    assert.deepEqual(ids(subset), ids(kubectl), `${where}: the subset renders other objects, or in another order, than kubectl`);
    kubectl.forEach((expected, i) => assert.deepEqual(subset[i], expected, `${where}: ${ids(kubectl)[i]} differs`));
  }
});

test("the overlay snippets of k8s/README.md render on top of k8s/base and do what they say", () => {
  const snippets = readmeOverlaySnippets();
  assert.ok(snippets.length >= 2, "k8s/README.md's TLS and configuration overlays were not found");
  const accepted = acceptedVariables();
  const base = render("base");
  const baseConfig = base.find((o) => o.kind === "ConfigMap" && o.metadata.name.startsWith("poolside-config-"));
  for (const [i, fragment] of snippets.entries()) {
    const where = `k8s/README.md overlay snippet ${i + 1}`;
    const objects = withOverlay(fragment, (dir) => parseRendered(renderTextWith(KUBECTL ? "kubectl" : "subset", dir), where));
    const deployment = objects.find((o) => o.kind === "Deployment");
    for (const generator of fragment.configMapGenerator ?? []) {
      const config = objects.find((o) => o.kind === "ConfigMap" && o.metadata.name.startsWith(`${generator.name}-`));
      assert.ok(config, `${where}: no ConfigMap ${generator.name}-<hash>`);
      for (const literal of generator.literals ?? []) {
        const [key, value] = [literal.slice(0, literal.indexOf("=")), literal.slice(literal.indexOf("=") + 1)];
        assert.ok(accepted.has(key), `${where}: ${key} is not a variable poolside accepts`);
        assert.equal(config.data[key], value, `${where}: ${key} is not merged`);
      }
      assert.notEqual(config.metadata.name, baseConfig.metadata.name, `${where}: the ConfigMap's hash did not change, so pods would not roll`);
      const refs = JSON.stringify(deployment.spec.template.spec);
      assert.ok(refs.includes(`"${config.metadata.name}"`), `${where}: the Deployment does not refer to ${config.metadata.name}`);
    }
    for (const patch of fragment.patches ?? []) {
      for (const op of YAML.parse(patch.patch).filter((o) => o.op === "add")) {
        const value = op.path.split("/").slice(1).reduce((node, key) => node?.[key], deployment);
        assert.deepEqual(value, op.value, `${where}: ${op.path} is not in the rendered Deployment`);
      }
    }
  }
});

test("a JSON 6902 test operation that fails makes the render fail", () => {
  const fragment = {
    patches: [{
      target: { kind: "Deployment", name: "demo-app" },
      patch: YAML.stringify([{ op: "test", path: "/spec/template/spec/initContainers/0/name", value: "not-poolside" }]),
    }],
  };
  withOverlay(fragment, (dir) => {
    assert.throws(() => renderTextWith("subset", dir), /test failed/);
    if (KUBECTL) assert.throws(() => renderTextWith("kubectl", dir), /kubectl kustomize .* exited/);
  });
});

test("the kustomize subset refuses, loudly, what it does not implement", () => {
  const base = path.join(K8S, "base");
  const cases = [
    { what: /"namePrefix"/, kustomization: { namePrefix: "x-", resources: ["deployment.yaml"] }, files: { "deployment.yaml": fs.readFileSync(path.join(base, "deployment.yaml"), "utf8") } },
    { what: /"secretGenerator"/, kustomization: { secretGenerator: [{ name: "s", literals: ["A=b"] }] } },
    { what: /"commonLabels"/, kustomization: { commonLabels: { a: "b" }, configMapGenerator: [{ name: "c", literals: ["A=b"] }] } },
    { what: /a list in a strategic-merge patch/, kustomization: {
      resources: ["deployment.yaml"],
      patches: [{ patch: YAML.stringify({ apiVersion: "apps/v1", kind: "Deployment", metadata: { name: "demo-app" }, spec: { template: { spec: { containers: [{ name: "app", image: "other" }] } } } }) }],
    }, files: { "deployment.yaml": fs.readFileSync(path.join(base, "deployment.yaml"), "utf8") } },
    { what: /without "="/, kustomization: { configMapGenerator: [{ name: "c", envs: ["c.env"] }] }, files: { "c.env": "FROM_THE_ENVIRONMENT\n" } },
  ];
  for (const { what, kustomization, files } of cases) {
    const dir = scratchKustomization(kustomization, files);
    try {
      assert.throws(() => renderTextWith("subset", dir), (error) => error instanceof UnsupportedError && what.test(error.message), `${JSON.stringify(kustomization)}`);
      // Each is real kustomize, which renders it.
      if (KUBECTL) assert.doesNotThrow(() => renderTextWith("kubectl", dir), `kubectl kustomize: ${JSON.stringify(kustomization)}`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
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
