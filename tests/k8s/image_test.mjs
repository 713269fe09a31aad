// The Dockerfile cannot be built here (no container engine), so its claims
// are checked statically against the project: the runtime stage installs
// exactly scripts/runtime-deps.txt, which is exactly the set of Debian
// packages owning the shared libraries the real binaries load (per ldd), and
// which scripts/install-deps also installs; user, ports, stop signal and the
// binaries the manifests run agree with the manifests and poolside's defaults.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import test from "node:test";
import {
  DEMO_CLIENT_BIN,
  DEMO_UPSTREAM_BIN,
  POOLSIDE_BIN,
  REPO,
  SANITIZED,
  acceptedVariables,
  deployables,
  describeFailure,
  render,
  run,
} from "./lib.mjs";

const dockerfile = fs.readFileSync(path.join(REPO, "Dockerfile"), "utf8");
const installDeps = fs.readFileSync(path.join(REPO, "scripts", "install-deps"), "utf8");
const RUNTIME_DEPS = path.join(REPO, "scripts", "runtime-deps.txt");

// scripts/install-deps' parsing: '#' comments, blank lines, first word.
function packageList(file) {
  return fs
    .readFileSync(file, "utf8")
    .split("\n")
    .map((line) => line.replace(/#.*/, "").trim().split(/\s+/)[0])
    .filter(Boolean);
}

// The stages of the Dockerfile: [{ from, name, lines }].
function stages() {
  const result = [];
  const joined = dockerfile.replace(/\\\n/g, " ");
  for (const line of joined.split("\n")) {
    if (/^\s*(#|$)/.test(line)) continue;
    const from = /^FROM\s+(\S+)(?:\s+AS\s+(\S+))?/i.exec(line);
    if (from) result.push({ from: from[1], name: from[2], lines: [] });
    else result.at(-1).lines.push(line.trim());
  }
  return result;
}

// Library path -> owning Debian package, with one dpkg-query per path form.
function owningPackages(libraries) {
  const owners = new Map();
  // Debian 12 is usr-merged: dpkg may know a file by its /lib path.
  const forms = [(l) => fs.realpathSync(l), (l) => fs.realpathSync(l).replace(/^\/usr/, ""), (l) => l, (l) => l.replace(/^\/usr/, "")];
  for (const form of forms) {
    const missing = libraries.filter((l) => !owners.has(l));
    if (missing.length === 0) break;
    const byPath = new Map(missing.map((l) => [form(l), l]));
    const result = run("dpkg-query", ["-S", ...byPath.keys()]);
    for (const line of result.stdout.split("\n")) {
      const match = /^([^:,\s]+)(?::[a-z0-9]+)?: (\/\S+)$/.exec(line);
      if (match && byPath.has(match[2])) owners.set(byPath.get(match[2]), match[1]);
    }
  }
  const unowned = libraries.filter((l) => !owners.has(l));
  if (unowned.length) throw new Error(`no Debian package owns ${unowned.join(", ")}`);
  return owners;
}

test("the build stage is debian:12 and uses the project's scripts; the runtime stage is debian:12-slim", () => {
  const [build, runtime, ...rest] = stages();
  assert.equal(rest.length, 0, "two stages");
  assert.equal(build.from, "debian:12");
  assert.equal(runtime.from, "debian:12-slim");
  assert.ok(build.lines.some((l) => /scripts\/install-deps/.test(l)), "the build stage runs scripts/install-deps");
  assert.ok(build.lines.some((l) => /cmake --preset release/.test(l)), "the build stage uses the release preset");
});

test("the build stage installs only what the build needs, not the test tooling", () => {
  const build = stages()[0].lines.join("\n");
  assert.match(build, /scripts\/install-deps --build-only/, "install-deps --build-only");
  assert.ok(!/scripts\/deps\.txt/.test(build), "deps.txt (tests, benchmarks) stays out of the image");
  const buildOnly = packageList(path.join(REPO, "scripts", "build-deps.txt"));
  for (const tooling of ["prometheus", "nginx-light", "haproxy", "python3-matplotlib", "clang"]) {
    assert.ok(!buildOnly.includes(tooling), `${tooling} is not a build dependency`);
  }
});

test("the runtime stage installs scripts/runtime-deps.txt, parsed as scripts/install-deps parses it", () => {
  const runtime = stages()[1].lines.join("\n");
  assert.match(runtime, /^COPY scripts\/runtime-deps\.txt (\S+)$/m);
  const copiedTo = /^COPY scripts\/runtime-deps\.txt (\S+)$/m.exec(runtime)[1];
  const sed = "sed -e 's/#.*//' -e '/^[[:space:]]*$/d'";
  assert.ok(runtime.includes(`${sed} ${copiedTo}`), "the runtime stage parses the list with install-deps' sed");
  assert.ok(installDeps.includes(sed), "install-deps parses its lists with the same sed");
  assert.match(installDeps, /"\$here\/runtime-deps\.txt"/, "install-deps also reads runtime-deps.txt");
  assert.match(runtime, /xargs apt-get install -y --no-install-recommends/);
  assert.ok(!/apt-get install[^\n]*\blib[a-z0-9+.-]+[0-9]/.test(runtime), "no package named in the Dockerfile itself");
});

test("scripts/runtime-deps.txt is exactly the packages owning the libraries the binaries load", () => {
  const all = packageList(RUNTIME_DEPS);
  assert.equal(new Set(all).size, all.length, "runtime-deps.txt lists a package twice");
  // Lines marked "not a library" (e.g. CA certificates) are outside ldd's view.
  const notLibraries = fs
    .readFileSync(RUNTIME_DEPS, "utf8")
    .split("\n")
    .filter((line) => /#\s*not a library\b/.test(line))
    .map((line) => line.trim().split(/\s+/)[0]);
  const listed = all.filter((name) => !notLibraries.includes(name)).sort();
  const libraries = new Set();
  for (const binary of [POOLSIDE_BIN, DEMO_UPSTREAM_BIN, DEMO_CLIENT_BIN]) {
    const result = run("ldd", [binary]);
    assert.equal(result.status, 0, describeFailure(`ldd ${binary}`, result));
    for (const match of result.stdout.matchAll(/=>\s+(\/\S+)/g)) libraries.add(match[1]);
  }
  const needed = new Set(owningPackages([...libraries]).values());
  if (SANITIZED) {
    // Sanitizer builds also load their runtimes (libasan, libubsan, ...).
    for (const name of needed) if (/^lib(a|ub|t|l)san\d/.test(name)) needed.delete(name);
  }
  assert.deepEqual(listed, [...needed].sort(), "scripts/runtime-deps.txt vs. ldd of the built binaries");
});

test("non-root numeric user, the two ports, SIGTERM, poolside as the entrypoint", () => {
  const runtime = stages()[1].lines.join("\n");
  const user = /^USER (\d+):(\d+)$/m.exec(runtime);
  assert.ok(user && Number(user[1]) > 0, "USER uid:gid, numeric and not root (runAsNonRoot needs a number)");
  const variables = acceptedVariables();
  const port = (name) => /:(\d+)$/.exec(variables.get(name).default)[1];
  const exposed = /^EXPOSE (.+)$/m.exec(runtime)?.[1].split(/\s+/).sort();
  assert.deepEqual(exposed, [port("GRPC_LISTEN_ADDR"), port("GRPC_ADMIN_ADDR")].sort(), "EXPOSE the default ports");
  assert.match(runtime, /^STOPSIGNAL SIGTERM$/m);
  assert.match(runtime, /^ENTRYPOINT \["\/usr\/local\/bin\/poolside"\]$/m);
  assert.doesNotMatch(runtime, /^(VOLUME|HEALTHCHECK)\b/m, "nothing needs a writable volume or a HEALTHCHECK binary");
});

test("the image holds every program the manifests run", () => {
  const runtime = stages()[1].lines.join("\n");
  const installed = new Set(["poolside"]);
  for (const match of runtime.matchAll(/^COPY --from=build (.+) \/usr\/local\/bin\/(\S*)$/gm)) {
    const sources = match[1].split(/\s+/);
    if (match[2]) installed.add(match[2]);
    else for (const source of sources) installed.add(path.basename(source));
  }
  // What debian:12-slim itself has (dash and coreutils are essential).
  const base = new Set(["/bin/sh", "sh", "sleep", "/bin/sleep"]);
  for (const dir of deployables()) {
    for (const object of render(dir)) {
      const spec = object.spec?.template?.spec;
      for (const c of [...(spec?.initContainers ?? []), ...(spec?.containers ?? [])]) {
        const programs = [c.command?.[0], c.lifecycle?.preStop?.exec?.command?.[0]].filter(Boolean);
        const script = c.command?.[0] === "/bin/sh" ? (c.args ?? []).join("\n") : "";
        for (const word of script.matchAll(/\b(demo_[a-z]+|poolside)\b/g)) programs.push(word[1]);
        for (const program of programs) {
          assert.ok(installed.has(program) || base.has(program), `k8s/${dir}: ${c.name} runs ${program}, which the image lacks`);
        }
      }
    }
  }
});

test(".dockerignore keeps build trees and node_modules out of the context", () => {
  const ignored = fs.readFileSync(path.join(REPO, ".dockerignore"), "utf8").split("\n");
  for (const entry of ["build", "build-*", ".git", "**/node_modules"]) {
    assert.ok(ignored.includes(entry), `.dockerignore lacks ${entry}`);
  }
});
