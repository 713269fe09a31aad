// Checks the rendered manifests against the built poolside binary: the
// GRPC_* variables are exactly the ones poolside accepts and their values pass
// `poolside --check-config`; every "default:" written in the manifests and in
// k8s/README.md is the binary's default; probes, ports, shutdown timing,
// security context, image tag and scrape configuration agree with poolside's
// configuration; README.md's variable table agrees with `poolside --help`.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import test from "node:test";
import {
  K8S,
  REPO,
  acceptedVariables,
  checkConfig,
  deployables,
  poolsidePods,
  poolsideVersion,
  render,
  resolveEnvironment,
} from "./lib.mjs";

const accepted = acceptedVariables();
const SHUTDOWN_MARGIN_SECS = 5;

// Every deployable kustomization with the poolside pods it renders.
const rendered = deployables().map((dir) => {
  const objects = render(dir);
  return { dir, objects, pods: poolsidePods(objects) };
});

// The names in `a` that are not in `b`, sorted.
function difference(a, b) {
  const other = new Set(b);
  return [...a].filter((x) => !other.has(x)).sort();
}

function environmentOf(pod, objects) {
  const { env, duplicates } = resolveEnvironment(pod.container, objects);
  return { env, duplicates, values: new Map([...env].map(([name, { value }]) => [name, value])) };
}

function portNumber(address) {
  return Number(/:(\d+)$/.exec(address)?.[1]);
}

// A container port by name or number.
function containerPort(container, port) {
  return (container.ports ?? []).find((p) => p.name === port || p.containerPort === port);
}

function preStopSleepSecs(container) {
  const handler = container.lifecycle?.preStop;
  if (!handler) return 0;
  if (handler.sleep) return Number(handler.sleep.seconds);
  const command = handler.exec?.command ?? [];
  if (command.length === 2 && /(^|\/)sleep$/.test(command[0]) && /^\d+$/.test(command[1])) return Number(command[1]);
  throw new Error(`${container.name}: preStop is not a plain sleep; the shutdown check cannot time it`);
}

test("every deployable kustomization runs poolside", () => {
  assert.ok(rendered.some(({ dir }) => dir === "base"));
  for (const { dir, pods } of rendered) {
    assert.ok(pods.length > 0, `k8s/${dir} renders no pod with a poolside container`);
  }
});

test("the GRPC_* variables given to poolside are exactly the ones it accepts", () => {
  for (const { dir, objects, pods } of rendered) {
    for (const pod of pods) {
      const { env, duplicates } = environmentOf(pod, objects);
      assert.deepEqual(duplicates, [], `k8s/${dir}: variables defined twice`);
      const given = [...env.keys()].filter((name) => name.startsWith("GRPC_"));
      assert.deepEqual(difference(accepted.keys(), given), [], `k8s/${dir}: variables poolside accepts but the manifest lacks`);
      assert.deepEqual(difference(given, accepted.keys()), [], `k8s/${dir}: variables poolside does not accept`);
      const others = [...env.keys()].filter((name) => !name.startsWith("GRPC_"));
      assert.deepEqual(others, [], `k8s/${dir}: variables poolside does not read`);
    }
  }
});

test("poolside --check-config accepts the rendered values and reads them back unchanged", () => {
  for (const { dir, objects, pods } of rendered) {
    for (const pod of pods) {
      const { values } = environmentOf(pod, objects);
      const result = checkConfig(values);
      assert.equal(result.status, 0, `k8s/${dir}: poolside --check-config rejects the manifest's values: ${result.stderr}`);
      for (const [name, value] of values) {
        assert.equal(result.config.get(name), value, `k8s/${dir}: ${name}=${value} reads back as ${result.config.get(name)}`);
      }
    }
  }
});

// The "default: X" stated in the comment block just above each variable.
function statedDefaults(lines, nameOfLine) {
  const stated = new Map();
  for (let i = 0; i < lines.length; ++i) {
    const name = nameOfLine(lines[i]);
    if (!name) continue;
    let comment = "";
    for (let j = i - 1; j >= 0 && /^\s*#/.test(lines[j]); --j) comment = `${lines[j].replace(/^\s*#\s?/, "")} ${comment}`;
    const match = /default: (\(empty\)|[^\s)(]+)/.exec(comment);
    stated.set(name, match ? (match[1] === "(empty)" ? "" : match[1]) : undefined);
  }
  return stated;
}

test("every default stated in k8s/base is poolside's real default", () => {
  const envFile = fs.readFileSync(path.join(K8S, "base", "poolside.env"), "utf8").split("\n");
  const fromEnvFile = statedDefaults(envFile, (line) => /^(GRPC_[A-Z0-9_]+)=/.exec(line)?.[1]);
  const deployment = fs.readFileSync(path.join(K8S, "base", "deployment.yaml"), "utf8").split("\n");
  const fromDeployment = statedDefaults(deployment, (line) => /^\s*- name: (GRPC_[A-Z0-9_]+)\s*$/.exec(line)?.[1]);
  const stated = new Map([...fromEnvFile, ...fromDeployment]);
  assert.deepEqual(difference(accepted.keys(), stated.keys()), [], "variables missing from poolside.env + deployment.yaml");
  assert.deepEqual(difference(stated.keys(), accepted.keys()), [], "variables in poolside.env + deployment.yaml that poolside does not accept");
  for (const [name, { required, default: actual }] of accepted) {
    if (required) {
      assert.match(envFile.join("\n"), new RegExp(`Required[^\\n]*\\n${name}=`), `${name}: say it is required`);
      continue;
    }
    assert.equal(stated.get(name), actual, `${name}: the comment says default ${stated.get(name)}, poolside says ${actual}`);
  }
});

// Checks a `| variable | default | in k8s/base | meaning |` table.
function checkVariableTable(text, where) {
  // The first `code` of a cell, or "(empty)".
  const cell = (value) => {
    const code = /`([^`]*)`/.exec(value);
    return code ? code[1] : value.trim() === "(empty)" ? "" : value.trim();
  };
  const rows = new Map();
  for (const match of text.matchAll(/^\|\s*`(GRPC_[A-Z0-9_]+)`\s*\|([^|]*)\|([^|]*)\|/gm)) {
    rows.set(match[1], { default: match[2].trim(), base: cell(match[3]) });
  }
  assert.deepEqual(difference(accepted.keys(), rows.keys()), [], `${where}: variables missing from the table`);
  assert.deepEqual(difference(rows.keys(), accepted.keys()), [], `${where}: variables in the table that poolside does not accept`);
  for (const [name, { required, default: actual }] of accepted) {
    const expected = required ? "required" : actual === "" ? "(empty)" : `\`${actual}\``;
    assert.equal(rows.get(name).default, expected, `${where}: ${name}'s default`);
  }
  const base = rendered.find(({ dir }) => dir === "base");
  const { values } = environmentOf(base.pods[0], base.objects);
  for (const [name, row] of rows) {
    assert.equal(row.base, values.get(name), `${where}: ${name}'s value in k8s/base`);
  }
}

test("the variable table in k8s/README.md matches poolside --help and k8s/base", () => {
  checkVariableTable(fs.readFileSync(path.join(K8S, "README.md"), "utf8"), "k8s/README.md");
});

// A "## TITLE" section of README.md, or undefined.
function readmeSection(title) {
  const readme = fs.readFileSync(path.join(REPO, "README.md"), "utf8");
  const start = readme.indexOf(`\n## ${title}\n`);
  if (start < 0) return undefined;
  const end = readme.indexOf("\n## ", start + 1);
  return readme.slice(start, end < 0 ? undefined : end);
}

test("README.md's table under \"Running it\" lists every variable with poolside's flag and default", () => {
  const section = readmeSection("Running it");
  assert.ok(section, "README.md has no \"Running it\" section");
  const rows = new Map();
  for (const match of section.matchAll(/^\|\s*`(GRPC_[A-Z0-9_]+)`\s*\|([^|]*)\|([^|]*)\|([^|]*)\|/gm)) {
    assert.ok(!rows.has(match[1]), `README.md: ${match[1]} is listed twice`);
    rows.set(match[1], { flag: match[2].trim(), default: match[3].trim(), meaning: match[4].trim() });
  }
  assert.deepEqual(difference(accepted.keys(), rows.keys()), [], "README.md: variables missing from the table");
  assert.deepEqual(difference(rows.keys(), accepted.keys()), [], "README.md: variables in the table that poolside does not accept");
  for (const [name, { flag, required, default: actual }] of accepted) {
    const row = rows.get(name);
    assert.equal(row.flag, `\`--${flag}\``, `README.md: ${name}'s flag`);
    // "required", "(empty)", or the default in code, perhaps followed by what it means.
    const stated = row.default === "required" ? "required" : row.default === "(empty)" ? "" : /^`([^`]*)`/.exec(row.default)?.[1];
    assert.equal(stated, required ? "required" : actual, `README.md: ${name}'s default (the cell says ${row.default})`);
    assert.ok(row.meaning, `README.md: ${name} has no meaning`);
  }
});

test("README.md's \"Deploy as a sidecar\" section points to k8s/README.md, and the k8s/ paths it names exist", () => {
  const section = readmeSection("Deploy as a sidecar");
  assert.ok(section, "README.md has no \"Deploy as a sidecar\" section");
  assert.match(section, /\]\(k8s\/README\.md\)/, "the section links to k8s/README.md");
  const paths = [...new Set([...section.matchAll(/\bk8s\/[A-Za-z0-9_./-]*[A-Za-z0-9_]/g)].map((m) => m[0]))];
  assert.ok(paths.length > 0);
  for (const named of paths) assert.ok(fs.existsSync(path.join(REPO, named)), `README.md names ${named}, which does not exist`);
  assert.match(section, new RegExp(`poolside:${poolsideVersion().replaceAll(".", "\\.")}\\b`), "the image tag in the section is poolside's version");
});

test("probes, ports and the app's target follow GRPC_ADMIN_ADDR and GRPC_LISTEN_ADDR", () => {
  for (const { dir, objects, pods } of rendered) {
    for (const pod of pods) {
      const { values } = environmentOf(pod, objects);
      const c = pod.container;
      const adminPort = portNumber(values.get("GRPC_ADMIN_ADDR"));
      const listenPort = portNumber(values.get("GRPC_LISTEN_ADDR"));
      assert.ok(!values.get("GRPC_ADMIN_ADDR").startsWith("127."), `k8s/${dir}: the kubelet cannot probe a loopback admin address`);
      const expectations = [
        ["livenessProbe", "/healthz"],
        ["readinessProbe", "/readyz"],
        ["startupProbe", "/healthz"],
      ];
      for (const [probe, probePath] of expectations) {
        const get = c[probe]?.httpGet;
        assert.ok(get, `k8s/${dir}: poolside has no ${probe} httpGet`);
        assert.equal(get.path, probePath, `k8s/${dir}: ${probe} path`);
        assert.equal(containerPort(c, get.port)?.containerPort, adminPort, `k8s/${dir}: ${probe} port is not GRPC_ADMIN_ADDR's`);
      }
      assert.equal(containerPort(c, "grpc-proxy")?.containerPort, listenPort, `k8s/${dir}: grpc-proxy port`);
      // The demo app must point at the port poolside listens on.
      for (const app of pod.spec.containers.filter((x) => x.name !== "poolside")) {
        const text = [...(app.command ?? []), ...(app.args ?? [])].join(" ");
        for (const target of text.matchAll(/--target=(\S+)/g)) {
          assert.equal(portNumber(target[1]), listenPort, `k8s/${dir}: ${app.name} targets ${target[1]}`);
        }
      }
    }
  }
});

test("poolside is a native sidecar, except in the classic overlay", () => {
  for (const { dir, pods } of rendered) {
    for (const pod of pods) {
      if (dir === "overlays/classic-sidecar") {
        assert.equal(pod.native, false, `k8s/${dir}: poolside should be a regular container`);
        assert.equal(pod.spec.containers[0].name, "poolside", `k8s/${dir}: poolside should start first`);
        assert.equal(pod.container.restartPolicy, undefined);
      } else {
        assert.equal(pod.native, true, `k8s/${dir}: poolside should be an init container`);
        assert.equal(pod.container.restartPolicy, "Always", `k8s/${dir}: a native sidecar needs restartPolicy: Always`);
      }
    }
  }
});

test("terminationGracePeriodSeconds covers the preStop sleeps and GRPC_SHUTDOWN_GRACE_SECS", () => {
  for (const { dir, objects, pods } of rendered) {
    for (const pod of pods) {
      const grace = Number(environmentOf(pod, objects).values.get("GRPC_SHUTDOWN_GRACE_SECS"));
      const total = pod.spec.terminationGracePeriodSeconds ?? 30;
      const sidecarSleep = preStopSleepSecs(pod.container);
      const appSleep = Math.max(0, ...pod.spec.containers.filter((c) => c.name !== "poolside").map(preStopSleepSecs));
      if (pod.native) {
        // The app stops first (after its own preStop); then poolside.
        assert.ok(total >= appSleep + sidecarSleep + grace + SHUTDOWN_MARGIN_SECS,
          `k8s/${dir}: terminationGracePeriodSeconds ${total} < app preStop ${appSleep} + poolside preStop ${sidecarSleep} + grace ${grace} + ${SHUTDOWN_MARGIN_SECS}`);
      } else {
        // All containers stop at once: poolside must outlast the app's preStop.
        assert.ok(sidecarSleep > appSleep, `k8s/${dir}: poolside's preStop (${sidecarSleep}s) must outlast the app's (${appSleep}s)`);
        assert.ok(total >= sidecarSleep + grace + SHUTDOWN_MARGIN_SECS,
          `k8s/${dir}: terminationGracePeriodSeconds ${total} < poolside preStop ${sidecarSleep} + grace ${grace} + ${SHUTDOWN_MARGIN_SECS}`);
      }
    }
  }
});

test("every container runs non-root, unprivileged, read-only, with no capabilities (restricted)", () => {
  const dockerfile = fs.readFileSync(path.join(REPO, "Dockerfile"), "utf8");
  const imageUser = Number(/^USER (\d+)(:\d+)?\s*$/m.exec(dockerfile)?.[1]);
  assert.ok(imageUser > 0, "the Dockerfile's USER is a numeric non-root uid");
  for (const { dir, objects } of rendered) {
    for (const object of objects) {
      const spec = object.spec?.template?.spec;
      if (!spec) continue;
      const podContext = spec.securityContext ?? {};
      assert.equal(spec.automountServiceAccountToken, false, `k8s/${dir}: ${object.metadata.name} mounts a token it does not need`);
      for (const c of [...(spec.initContainers ?? []), ...spec.containers]) {
        const where = `k8s/${dir}: ${object.metadata.name}/${c.name}`;
        const sc = c.securityContext ?? {};
        assert.equal(sc.runAsNonRoot ?? podContext.runAsNonRoot, true, `${where}: runAsNonRoot`);
        assert.equal(sc.runAsUser ?? podContext.runAsUser, imageUser, `${where}: runAsUser is not the image's USER`);
        assert.equal(sc.allowPrivilegeEscalation, false, `${where}: allowPrivilegeEscalation`);
        assert.equal(sc.readOnlyRootFilesystem, true, `${where}: readOnlyRootFilesystem`);
        assert.deepEqual(sc.capabilities?.drop, ["ALL"], `${where}: capabilities.drop`);
        assert.equal(sc.capabilities?.add, undefined, `${where}: capabilities.add`);
        assert.notEqual(sc.privileged, true, `${where}: privileged`);
        assert.equal((sc.seccompProfile ?? podContext.seccompProfile)?.type, "RuntimeDefault", `${where}: seccompProfile`);
        assert.ok(c.resources?.requests?.memory && c.resources?.limits?.memory, `${where}: memory request and limit`);
      }
    }
  }
});

test("poolside has CPU and memory requests and limits", () => {
  for (const { dir, pods } of rendered) {
    for (const pod of pods) {
      const { requests, limits } = pod.container.resources ?? {};
      for (const key of ["cpu", "memory"]) {
        assert.ok(requests?.[key], `k8s/${dir}: poolside requests.${key}`);
        assert.ok(limits?.[key], `k8s/${dir}: poolside limits.${key}`);
      }
    }
  }
});

test("images are tagged with poolside's version", () => {
  const version = poolsideVersion();
  for (const { dir, objects } of rendered) {
    for (const object of objects) {
      const spec = object.spec?.template?.spec;
      for (const c of [...(spec?.initContainers ?? []), ...(spec?.containers ?? [])]) {
        assert.match(c.image, /(^|\/)poolside:/, `k8s/${dir}: ${c.name} runs an image other than poolside's`);
        assert.equal(c.image.split(":").pop(), version, `k8s/${dir}: ${c.name}'s image tag`);
      }
    }
  }
});

test("scrape annotations and the PodMonitor point at poolside's /metrics", () => {
  for (const { dir, objects, pods } of rendered) {
    const podMonitors = objects.filter((o) => o.kind === "PodMonitor");
    if (dir !== "overlays/without-prometheus-operator") {
      assert.equal(podMonitors.length, 1, `k8s/${dir}: one PodMonitor`);
    }
    for (const pod of pods) {
      const adminPort = portNumber(environmentOf(pod, objects).values.get("GRPC_ADMIN_ADDR"));
      const annotations = pod.template.metadata?.annotations ?? {};
      assert.equal(annotations["prometheus.io/scrape"], "true", `k8s/${dir}: prometheus.io/scrape`);
      assert.equal(Number(annotations["prometheus.io/port"]), adminPort, `k8s/${dir}: prometheus.io/port`);
      assert.equal(annotations["prometheus.io/path"], "/metrics", `k8s/${dir}: prometheus.io/path`);
      const labels = pod.template.metadata?.labels ?? {};
      for (const monitor of podMonitors) {
        const selected = Object.entries(monitor.spec.selector.matchLabels ?? {}).every(([k, v]) => labels[k] === v);
        assert.ok(selected, `k8s/${dir}: the PodMonitor does not select ${pod.object.metadata.name}'s pods`);
        assert.equal(monitor.metadata.namespace, pod.object.metadata.namespace, `k8s/${dir}: PodMonitor in another namespace`);
        for (const endpoint of monitor.spec.podMetricsEndpoints) {
          assert.equal(containerPort(pod.container, endpoint.port)?.containerPort, adminPort, `k8s/${dir}: PodMonitor port`);
          assert.equal(endpoint.path, "/metrics", `k8s/${dir}: PodMonitor path`);
        }
      }
    }
  }
});

test("a dns:/// upstream target names a rendered Service and one of its ports", () => {
  for (const { dir, objects, pods } of rendered) {
    for (const pod of pods) {
      const target = environmentOf(pod, objects).values.get("GRPC_UPSTREAM_TARGET");
      const match = /^dns:\/\/\/([a-z0-9-]+):(\d+)$/.exec(target);
      const services = objects.filter((o) => o.kind === "Service");
      if (!match || services.length === 0) continue; // the upstream lives elsewhere
      const service = services.find((s) => s.metadata.name === match[1]);
      assert.ok(service, `k8s/${dir}: GRPC_UPSTREAM_TARGET ${target} names no rendered Service`);
      assert.ok(service.spec.ports.some((p) => p.port === Number(match[2])), `k8s/${dir}: ${target}: no such port`);
    }
  }
});
