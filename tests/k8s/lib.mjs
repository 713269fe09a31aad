// Shared helpers of the Kubernetes packaging tests (tests/k8s/*_test.mjs):
// rendering the kustomizations, reading poolside's own idea of its
// configuration, and running poolside and the demo upstream as bounded child
// processes that never outlive the test.
//
// Paths come from the environment that tests/k8s/CMakeLists.txt sets:
//   POOLSIDE_SOURCE_DIR  the repository (default: two levels above this file)
//   POOLSIDE_BIN, DEMO_UPSTREAM_BIN, DEMO_CLIENT_BIN  the built binaries
//   POOLSIDE_SANITIZED   "1" in sanitizer builds (their RSS and libraries differ)
//   POOLSIDE_NO_KUBECTL  "1": render with tests/k8s/kustomize.mjs even where
//                        kubectl is installed (what a machine without it does)
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import YAML from "yaml";
import * as subsetKustomize from "./kustomize.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(process.env.POOLSIDE_SOURCE_DIR || path.join(here, "..", ".."));
export const K8S = path.join(REPO, "k8s");
export const TESTS_DIR = here;
export const POOLSIDE_BIN = process.env.POOLSIDE_BIN || path.join(REPO, "build", "poolside");
export const DEMO_UPSTREAM_BIN =
  process.env.DEMO_UPSTREAM_BIN || path.join(REPO, "build", "demo", "demo_upstream");
export const DEMO_CLIENT_BIN =
  process.env.DEMO_CLIENT_BIN || path.join(REPO, "build", "demo", "demo_client");
export const SANITIZED = process.env.POOLSIDE_SANITIZED === "1";

// Labels Prometheus itself attaches to every scraped series of a PodMonitor
// target (and `le` of histogram buckets is in the scrape already).
export const TARGET_LABELS = new Set(["namespace", "pod", "container", "job", "instance", "endpoint", "service"]);

// Runs a command to completion, bounded in time. Never throws for a non-zero
// exit: callers assert on status and print stderr.
export function run(command, args, { timeoutMs = 60_000, env, input, cwd } = {}) {
  const result = spawnSync(command, args, {
    encoding: "utf8",
    timeout: timeoutMs,
    killSignal: "SIGKILL",
    env: env ?? process.env,
    input,
    cwd,
    maxBuffer: 64 * 1024 * 1024,
  });
  if (result.error) {
    if (result.error.code === "ENOENT") {
      throw new Error(`${command}: not found (needed by this test; see k8s/README.md, "Tests")`);
    }
    throw new Error(`${command} ${args.join(" ")}: ${result.error.message}`);
  }
  return { status: result.status, signal: result.signal, stdout: result.stdout, stderr: result.stderr };
}

export function describeFailure(what, result) {
  return `${what} exited ${result.status ?? result.signal}\n--- stdout\n${result.stdout}\n--- stderr\n${result.stderr}`;
}

export function tempDir(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `poolside-k8s-${prefix}-`));
}

// Every directory under k8s/ that holds a kustomization, relative to k8s/.
export function kustomizations() {
  const found = [];
  const walk = (dir) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      if (!entry.isDirectory() || entry.name === "node_modules" || entry.name.startsWith(".")) continue;
      const sub = path.join(dir, entry.name);
      if (fs.existsSync(path.join(sub, "kustomization.yaml"))) found.push(path.relative(K8S, sub));
      walk(sub);
    }
  };
  walk(K8S);
  return found.sort();
}

// The directories a platform engineer applies: the base and every overlay.
export function deployables() {
  return kustomizations().filter((dir) => dir === "base" || dir.startsWith("overlays/"));
}

// The first executable `program` on PATH, or undefined.
export function findOnPath(program) {
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, program);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      if (fs.statSync(candidate).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

// Which kustomize renders k8s/: kubectl's built-in one when kubectl is on
// PATH (and POOLSIDE_NO_KUBECTL is not "1"), else tests/k8s/kustomize.mjs,
// the subset that a machine with only Debian's archive and npm has.
// render_validate_test.mjs checks that both give the same objects wherever
// kubectl is installed.
export const KUBECTL = process.env.POOLSIDE_NO_KUBECTL === "1" ? undefined : findOnPath("kubectl");
export const RENDERER = KUBECTL ? `kubectl kustomize (${KUBECTL})` : "tests/k8s/kustomize.mjs (kubectl not used)";

// The YAML text of the kustomization in the directory `absDir`, rendered by
// "kubectl" or by "subset". Throws with the renderer's message on failure.
export function renderTextWith(renderer, absDir) {
  if (renderer === "kubectl") {
    if (!KUBECTL) throw new Error("kubectl is not on PATH (or POOLSIDE_NO_KUBECTL=1)");
    const result = run(KUBECTL, ["kustomize", absDir], { timeoutMs: 60_000 });
    if (result.status !== 0) throw new Error(describeFailure(`kubectl kustomize ${absDir}`, result));
    return result.stdout;
  }
  if (renderer === "subset") return subsetKustomize.buildText(absDir);
  throw new Error(`unknown renderer ${renderer}`);
}

// Parses rendered YAML text into plain JS objects.
export function parseRendered(text, where) {
  const docs = YAML.parseAllDocuments(text);
  for (const doc of docs) {
    if (doc.errors.length) throw new Error(`${where}: rendered YAML does not parse: ${doc.errors[0].message}`);
  }
  return docs.map((doc) => doc.toJS()).filter((object) => object !== null && object !== undefined);
}

const renderCache = new Map();

// k8s/<dir> rendered by the renderer in use (RENDERER): the YAML text.
export function renderText(dir) {
  if (!renderCache.has(dir)) {
    const absDir = path.join(K8S, dir);
    try {
      renderCache.set(dir, renderTextWith(KUBECTL ? "kubectl" : "subset", absDir));
    } catch (error) {
      throw new Error(`rendering k8s/${dir} with ${RENDERER}: ${error.message}`);
    }
  }
  return renderCache.get(dir);
}

// The rendered objects of k8s/<dir>, as plain JS objects.
export function render(dir) {
  return parseRendered(renderText(dir), `k8s/${dir}`);
}

// kubectl's kustomize version, e.g. "v5.5.0".
export function kustomizeVersion() {
  const result = run(KUBECTL, ["version", "--client", "-o", "json"]);
  if (result.status !== 0) throw new Error(describeFailure("kubectl version --client", result));
  return JSON.parse(result.stdout).kustomizeVersion ?? "";
}

// The pod spec of a workload object, or undefined.
export function podSpecOf(object) {
  if (object.kind === "Pod") return object.spec;
  return object.spec?.template?.spec ?? object.spec?.jobTemplate?.spec?.template?.spec;
}

export function podTemplateOf(object) {
  return object.spec?.template ?? object.spec?.jobTemplate?.spec?.template;
}

// Every workload of `objects` that runs poolside (a container named
// "poolside"), with where the container is.
export function poolsidePods(objects) {
  const pods = [];
  for (const object of objects) {
    const spec = podSpecOf(object);
    if (!spec) continue;
    const init = (spec.initContainers ?? []).find((c) => c.name === "poolside");
    const regular = (spec.containers ?? []).find((c) => c.name === "poolside");
    if (init || regular) {
      pods.push({ object, spec, template: podTemplateOf(object), container: init ?? regular, native: Boolean(init) });
    }
  }
  return pods;
}

function ceilQuantity(quantity, divisor) {
  const cpu = (q) => {
    const text = String(q);
    if (text.endsWith("m")) return Number(text.slice(0, -1)) / 1000;
    return Number(text);
  };
  const value = Math.ceil(cpu(quantity) / cpu(divisor ?? "1") - 1e-9);
  if (!Number.isFinite(value)) throw new Error(`cannot resolve CPU quantity ${quantity} / ${divisor}`);
  return String(value);
}

// The environment the kubelet would give `container`: envFrom ConfigMaps
// (looked up in `objects`) first, then env, which wins. Returns a Map of
// name -> { value, source } and a list of names defined more than once.
export function resolveEnvironment(container, objects) {
  const env = new Map();
  const duplicates = [];
  const set = (name, value, source) => {
    if (env.has(name)) duplicates.push(`${name} (${env.get(name).source} and ${source})`);
    env.set(name, { value, source });
  };
  const configMap = (name) => {
    const found = objects.find((o) => o.kind === "ConfigMap" && o.metadata?.name === name);
    if (!found) throw new Error(`container ${container.name} refers to ConfigMap ${name}, which is not rendered`);
    return found;
  };
  for (const from of container.envFrom ?? []) {
    if (!from.configMapRef) throw new Error(`container ${container.name}: only envFrom.configMapRef is understood`);
    for (const [key, value] of Object.entries(configMap(from.configMapRef.name).data ?? {})) {
      set(`${from.prefix ?? ""}${key}`, String(value), `ConfigMap ${from.configMapRef.name}`);
    }
  }
  for (const variable of container.env ?? []) {
    if (variable.value !== undefined || !variable.valueFrom) {
      set(variable.name, String(variable.value ?? ""), "env");
    } else if (variable.valueFrom.resourceFieldRef) {
      const ref = variable.valueFrom.resourceFieldRef;
      if (ref.containerName && ref.containerName !== container.name) {
        throw new Error(`${variable.name}: resourceFieldRef of another container is not understood`);
      }
      const [kind, resource] = ref.resource.split(".");
      const quantity = container.resources?.[kind]?.[resource];
      if (resource !== "cpu" || quantity === undefined) {
        throw new Error(`${variable.name}: ${ref.resource} is not set on container ${container.name}`);
      }
      set(variable.name, ceilQuantity(quantity, ref.divisor), `env from ${ref.resource}`);
    } else if (variable.valueFrom.configMapKeyRef) {
      const ref = variable.valueFrom.configMapKeyRef;
      set(variable.name, String(configMap(ref.name).data?.[ref.key] ?? ""), `ConfigMap ${ref.name}`);
    } else {
      throw new Error(`${variable.name}: this kind of valueFrom is not understood by the test`);
    }
  }
  return { env, duplicates };
}

// poolside's own list of settings, from `poolside --help`:
// Map of GRPC_* name -> { flag, required, default }.
export function acceptedVariables() {
  const help = run(POOLSIDE_BIN, ["--help"], { env: { PATH: "/usr/bin:/bin" } });
  if (help.status !== 0) throw new Error(describeFailure("poolside --help", help));
  const variables = new Map();
  const line = /^\s+--([a-z0-9-]+), (GRPC_[A-Z0-9_]+) \((required|default: (.*))\)\s*$/;
  for (const text of help.stdout.split("\n")) {
    const match = line.exec(text);
    if (!match) continue;
    const defaultText = match[4];
    variables.set(match[2], {
      flag: match[1],
      required: match[3] === "required",
      default: defaultText === undefined ? undefined : defaultText === "empty" ? "" : defaultText,
    });
  }
  if (variables.size < 5) throw new Error(`poolside --help lists only ${variables.size} variables:\n${help.stdout}`);
  return variables;
}

// `poolside --check-config` with exactly `variables` in an otherwise empty
// environment: { status, config: Map name -> value, stderr }.
export function checkConfig(variables) {
  const env = { PATH: "/usr/bin:/bin" };
  for (const [name, value] of variables) env[name] = value;
  const result = run(POOLSIDE_BIN, ["--check-config"], { env });
  const config = new Map();
  for (const text of result.stdout.split("\n")) {
    const eq = text.indexOf("=");
    if (eq > 0) config.set(text.slice(0, eq), text.slice(eq + 1));
  }
  return { status: result.status, config, stderr: result.stderr, stdout: result.stdout };
}

export function poolsideVersion() {
  const result = run(POOLSIDE_BIN, ["--version"], { env: { PATH: "/usr/bin:/bin" } });
  if (result.status !== 0) throw new Error(describeFailure("poolside --version", result));
  return result.stdout.trim().replace(/^poolside\s+/, "");
}

// --- child processes ------------------------------------------------------

const children = new Set();

// `timeout` puts itself and the program in a process group of their own
// (its pid): killing the group kills both.
function killAll(signal = "SIGKILL") {
  for (const child of children) {
    try {
      process.kill(-child.pid, signal);
    } catch {
      // already gone
    }
  }
}
process.on("exit", () => killAll());
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(signal, () => {
    killAll();
    process.exit(128 + os.constants.signals[signal]);
  });
}

// A child process that cannot outlive this test: wrapped in coreutils
// `timeout` (gone after `lifetimeSecs` whatever happens), and both `timeout`
// and the program get SIGKILL from the kernel if their parent dies
// (util-linux `setpriv --pdeathsig`), so that even a SIGKILLed test leaves
// nothing behind. Collects stdout and stderr.
export class Child {
  constructor(name, command, args, { env, lifetimeSecs = 120 } = {}) {
    this.name = name;
    this.output = "";
    const orphanGuard = ["setpriv", "--pdeathsig", "SIGKILL", "--"];
    const argv = [...orphanGuard, "timeout", "--kill-after=5", String(lifetimeSecs), ...orphanGuard, command, ...args];
    this.exited = new Promise((resolve) => {
      this.process = spawn(argv[0], argv.slice(1), {
        env: env ?? process.env,
        stdio: ["ignore", "pipe", "pipe"],
      });
      this.process.on("exit", (code, signal) => {
        children.delete(this.process);
        resolve({ code, signal });
      });
    });
    children.add(this.process);
    this.process.stdout.on("data", (chunk) => (this.output += chunk));
    this.process.stderr.on("data", (chunk) => (this.output += chunk));
  }

  // The wrapped program's own pid (a child of `timeout`).
  programPid() {
    const pid = this.process.pid;
    const children = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/);
    if (!children[0]) throw new Error(`${this.name}: no process under timeout (${this.output})`);
    return Number(children[0]);
  }

  async waitFor(regex, timeoutMs = 10_000) {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const match = regex.exec(this.output);
      if (match) return match;
      if (this.process.exitCode !== null) break;
      await sleep(20);
    }
    throw new Error(`${this.name}: no ${regex} within ${timeoutMs} ms; output:\n${this.output}`);
  }

  // Sends `signal` to the program and waits for it to exit; SIGKILL after
  // `graceMs`. Returns { code, signal, elapsedMs }.
  async stop(signal = "SIGTERM", graceMs = 10_000) {
    const started = Date.now();
    if (this.process.exitCode === null && this.process.signalCode === null) {
      try {
        process.kill(this.programPid(), signal);
      } catch {
        this.process.kill(signal);
      }
    }
    const timer = setTimeout(() => {
      try {
        process.kill(-this.process.pid, "SIGKILL");
      } catch {
        // already gone
      }
    }, graceMs);
    const status = await this.exited;
    clearTimeout(timer);
    return { ...status, elapsedMs: Date.now() - started };
  }
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export async function httpGet(url, timeoutMs = 5_000) {
  const response = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  return { status: response.status, text: await response.text() };
}

// Starts the demo upstream on a free port and poolside in front of it, and
// waits until poolside answers /readyz with 200. Returns
// { upstream, poolside, listen, admin }; the caller stops both.
export async function startPoolsideWithUpstream(extraEnv = {}) {
  const upstream = new Child("demo_upstream", DEMO_UPSTREAM_BIN, ["--port=0"]);
  const [, upstreamPort] = await upstream.waitFor(/^PORT=(\d+)$/m);
  let lastError;
  for (let attempt = 0; attempt < 3; ++attempt) {
    const listen = `127.0.0.1:${await freePort()}`;
    const admin = `127.0.0.1:${await freePort()}`;
    const poolside = new Child("poolside", POOLSIDE_BIN, [], {
      env: {
        ...process.env,
        GRPC_UPSTREAM_TARGET: `127.0.0.1:${upstreamPort}`,
        GRPC_LISTEN_ADDR: listen,
        GRPC_ADMIN_ADDR: admin,
        GRPC_HEALTH_CHECK_INTERVAL_SECS: "1",
        ...extraEnv,
      },
    });
    try {
      const deadline = Date.now() + 15_000;
      for (;;) {
        if (poolside.process.exitCode !== null) throw new Error(`poolside exited early:\n${poolside.output}`);
        try {
          if ((await httpGet(`http://${admin}/readyz`, 1_000)).status === 200) break;
        } catch {
          // not listening yet
        }
        if (Date.now() > deadline) throw new Error(`poolside not ready within 15 s:\n${poolside.output}`);
        await sleep(50);
      }
      return { upstream, poolside, listen, admin };
    } catch (error) {
      lastError = error;
      await poolside.stop("SIGKILL");
    }
  }
  await upstream.stop("SIGKILL");
  throw lastError;
}

// Runs the demo client against `target`; resolves with its exit status.
export async function runDemoClient(target, calls, concurrency) {
  const client = new Child("demo_client", DEMO_CLIENT_BIN, [`--target=${target}`, `--calls=${calls}`, `--concurrency=${concurrency}`], {
    lifetimeSecs: 120,
  });
  const status = await client.exited;
  return { ...status, output: client.output };
}

// Prometheus text format: Map of sample name -> Map of label name -> Set of values.
export function parseExposition(text) {
  const samples = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+\S+/.exec(line);
    if (!match) throw new Error(`unparsable exposition line: ${line}`);
    if (!samples.has(match[1])) samples.set(match[1], new Map());
    const labels = samples.get(match[1]);
    for (const pair of (match[3] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      if (!labels.has(pair[1])) labels.set(pair[1], new Set());
      labels.get(pair[1]).add(pair[2]);
    }
  }
  return samples;
}

export function readYamlFile(file) {
  return YAML.parse(fs.readFileSync(file, "utf8"));
}

export { YAML };
