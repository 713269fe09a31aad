// A small, strict subset of kustomize, for machines without kubectl (kubectl
// and kustomize are in neither Debian 12's archive, at a usable version, nor
// the npm registry as anything but a prebuilt binary). It implements exactly
// what the kustomizations under k8s/ and the overlay snippets of
// k8s/README.md use, as kustomize v5 does it, and throws on anything else:
//
//   resources         YAML files (several documents each) and directories
//                     holding a kustomization.yaml, built recursively
//   configMapGenerator  envs, files, literals; behavior create or merge;
//                     options.disableNameSuffixHash, options.labels,
//                     options.annotations; kustomize's content-hash suffix,
//                     with references from pod specs renamed to match
//   patches           path or inline patch, with or without a target
//                     (group, version, kind, name, namespace; regexes as in
//                     kustomize); JSON 6902 (add, remove, replace, move,
//                     copy, test) and strategic merge limited to maps and
//                     `$patch: delete` of a whole object
//   namespace         on every namespaced object
//   images            name, newName, newTag, digest, on the containers and
//                     init containers of pod templates
//
// Output is in kustomize's default ("legacy") order. When kubectl is on PATH
// the tests render with `kubectl kustomize` and render_validate_test.mjs
// checks that this module's objects equal kubectl's, kustomization by
// kustomization, so the subset cannot drift from the real thing unnoticed.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import YAML from "yaml";

const SUPPORTED = {
  kustomization: ["apiVersion", "kind", "resources", "configMapGenerator", "images", "namespace", "patches"],
  configMapGenerator: ["name", "behavior", "envs", "files", "literals", "options"],
  generatorOptions: ["disableNameSuffixHash", "labels", "annotations"],
  patch: ["path", "patch", "target"],
  target: ["group", "version", "kind", "name", "namespace"],
  image: ["name", "newName", "newTag", "digest"],
};

// Kinds without a namespace (the core API's; custom resources are taken to
// be namespaced, as kustomize does without their CRD).
const CLUSTER_SCOPED = new Set([
  "Namespace", "Node", "PersistentVolume", "StorageClass", "CSIDriver", "CSINode", "VolumeAttachment",
  "ClusterRole", "ClusterRoleBinding", "PriorityClass", "RuntimeClass", "IngressClass",
  "CustomResourceDefinition", "APIService", "MutatingWebhookConfiguration",
  "ValidatingWebhookConfiguration", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
  "CertificateSigningRequest", "FlowSchema", "PriorityLevelConfiguration",
]);

// Kinds in which kustomize's namespace transformer changes more than
// metadata.namespace (subjects, webhook services). The subset renderer
// refuses them with an error rather than render them differently.
const NAMESPACE_SPECIAL = new Set([
  "RoleBinding", "ClusterRoleBinding", "MutatingWebhookConfiguration",
  "ValidatingWebhookConfiguration", "APIService", "CustomResourceDefinition",
]);

export class UnsupportedError extends Error {}

function unsupported(where, what) {
  throw new UnsupportedError(`${where}: ${what} is not supported by tests/k8s/kustomize.mjs, a subset of kustomize (install kubectl, or extend the subset and its comparison with kubectl)`);
}

function checkKeys(object, allowed, where) {
  if (object === null || typeof object !== "object" || Array.isArray(object)) {
    throw new Error(`${where}: expected a mapping, got ${JSON.stringify(object)}`);
  }
  for (const key of Object.keys(object)) {
    if (!allowed.includes(key)) unsupported(where, `the field "${key}"`);
  }
}

const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);

// --- resources ----------------------------------------------------------------

// A resource of the accumulator: the object, and for generated ConfigMaps
// whether kustomize would add its content hash to the name at the end.
function resourceId(object) {
  const [group, version] = object.apiVersion.includes("/") ? object.apiVersion.split("/") : ["", object.apiVersion];
  return { group, version, kind: object.kind, name: object.metadata.name, namespace: object.metadata.namespace ?? "" };
}

const idText = (object) => {
  const id = resourceId(object);
  return `${id.group ? `${id.group}/` : ""}${id.version} ${id.kind} ${id.namespace ? `${id.namespace}/` : ""}${id.name}`;
};

function sameId(a, b) {
  const x = resourceId(a);
  const y = resourceId(b);
  return x.group === y.group && x.version === y.version && x.kind === y.kind && x.name === y.name && x.namespace === y.namespace;
}

function addResource(accumulator, entry, where) {
  if (accumulator.some((other) => sameId(other.object, entry.object))) {
    throw new Error(`${where}: ${idText(entry.object)} is defined more than once`);
  }
  accumulator.push(entry);
}

function readDocuments(file) {
  const docs = YAML.parseAllDocuments(fs.readFileSync(file, "utf8"));
  const objects = [];
  for (const doc of docs) {
    if (doc.errors.length) throw new Error(`${file}: ${doc.errors[0].message}`);
    const object = doc.toJS();
    if (object === null || object === undefined) continue;
    if (!isObject(object) || !object.apiVersion || !object.kind || !object.metadata?.name) {
      throw new Error(`${file}: a document without apiVersion, kind and metadata.name`);
    }
    if (object.kind === "List" || object.kind.endsWith("List")) unsupported(file, `a ${object.kind}`);
    if (object.kind === "Kustomization") throw new Error(`${file}: a Kustomization listed as a resource file`);
    objects.push(object);
  }
  return objects;
}

// A file a kustomization reads must be inside its directory (kustomize's
// default load restriction).
function fileInRoot(root, relative, where) {
  const file = path.resolve(root, relative);
  if (file !== root && !file.startsWith(root + path.sep)) {
    throw new Error(`${where}: ${relative} is outside the kustomization's directory (kustomize refuses it)`);
  }
  if (!fs.existsSync(file)) throw new Error(`${where}: ${relative} does not exist`);
  return file;
}

function readKustomization(dir) {
  const names = ["kustomization.yaml", "kustomization.yml", "Kustomization"].filter((n) => fs.existsSync(path.join(dir, n)));
  if (names.length !== 1) throw new Error(`${dir}: expected one kustomization.yaml, found ${names.length}`);
  const file = path.join(dir, names[0]);
  const k = YAML.parse(fs.readFileSync(file, "utf8")) ?? {};
  checkKeys(k, SUPPORTED.kustomization, file);
  if (k.apiVersion !== undefined && k.apiVersion !== "kustomize.config.k8s.io/v1beta1") unsupported(file, `apiVersion ${k.apiVersion}`);
  if (k.kind !== undefined && k.kind !== "Kustomization") unsupported(file, `kind ${k.kind}`);
  return { file, k };
}

// --- configMapGenerator -------------------------------------------------------

// kustomize's env file reading (api/kv): leading white space dropped, "#"
// comments and empty lines skipped, KEY=VALUE split at the first "=", the
// value kept as is (trailing spaces and quotes included).
function envFilePairs(file) {
  const pairs = [];
  let text = fs.readFileSync(file, "utf8");
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  const lines = text.split("\n");
  if (lines.at(-1) === "") lines.pop();
  lines.forEach((raw, index) => {
    const line = raw.replace(/\r$/, "").replace(/^\s+/, "");
    if (line === "" || line.startsWith("#")) return;
    const eq = line.indexOf("=");
    if (eq < 0) unsupported(`${file}:${index + 1}`, `"${line}" without "=" (kustomize takes its value from the environment)`);
    const key = line.slice(0, eq);
    if (!/^[-._a-zA-Z][-._a-zA-Z0-9]*$/.test(key)) throw new Error(`${file}:${index + 1}: "${key}" is not a valid variable name`);
    pairs.push([key, line.slice(eq + 1)]);
  });
  return pairs;
}

function literalPair(source, where) {
  const text = String(source);
  const eq = text.indexOf("=");
  if (eq <= 0) throw new Error(`${where}: literal "${text}" is not KEY=VALUE`);
  let value = text.slice(eq + 1);
  // kustomize drops one pair of matching surrounding quotes.
  if (value.length >= 2 && value[0] === value.at(-1) && (value[0] === '"' || value[0] === "'")) value = value.slice(1, -1);
  return [text.slice(0, eq), value];
}

function filePair(root, source, where) {
  const text = String(source);
  const eq = text.indexOf("=");
  const [key, relative] = eq >= 0 ? [text.slice(0, eq), text.slice(eq + 1)] : [path.basename(text), text];
  const bytes = fs.readFileSync(fileInRoot(root, relative, where));
  const value = new TextDecoder("utf-8", { fatal: false }).decode(bytes);
  if (!Buffer.from(value, "utf8").equals(bytes)) unsupported(`${where}: ${relative}`, "a file that is not UTF-8 (binaryData)");
  return [key, value];
}

function generateConfigMap(root, generator, where) {
  checkKeys(generator, SUPPORTED.configMapGenerator, where);
  if (!generator.name) throw new Error(`${where}: a configMapGenerator without a name`);
  const options = generator.options ?? {};
  checkKeys(options, SUPPORTED.generatorOptions, `${where}.options`);
  const behavior = generator.behavior ?? "create";
  if (behavior !== "create" && behavior !== "merge") unsupported(where, `behavior "${behavior}"`);

  // kustomize's order: env files, literals, files; a key may appear once.
  const pairs = [
    ...(generator.envs ?? []).flatMap((env) => envFilePairs(fileInRoot(root, env, where))),
    ...(generator.literals ?? []).map((literal) => literalPair(literal, where)),
    ...(generator.files ?? []).map((file) => filePair(root, file, where)),
  ];
  const data = {};
  for (const [key, value] of pairs) {
    if (Object.hasOwn(data, key)) throw new Error(`${where}: key ${key} is defined twice`);
    data[key] = value;
  }
  const metadata = { name: generator.name };
  if (options.labels) metadata.labels = stringMap(options.labels);
  if (options.annotations) metadata.annotations = stringMap(options.annotations);
  const object = { apiVersion: "v1", kind: "ConfigMap", metadata };
  if (Object.keys(data).length) object.data = data;
  return { behavior, entry: { object, needsHash: options.disableNameSuffixHash !== true } };
}

function stringMap(map) {
  return Object.fromEntries(Object.entries(map).map(([k, v]) => [k, String(v)]));
}

function applyGenerator(accumulator, root, generator, where) {
  const { behavior, entry } = generateConfigMap(root, generator, where);
  if (behavior === "create") {
    addResource(accumulator, entry, where);
    return;
  }
  // merge: into the ConfigMap of that name from the resources; the new
  // data, labels and annotations win.
  const old = accumulator.find((r) => r.object.kind === "ConfigMap" && r.object.metadata.name === entry.object.metadata.name);
  if (!old) throw new Error(`${where}: behavior merge, but no ConfigMap ${entry.object.metadata.name} among the resources`);
  const merged = structuredClone(old.object);
  for (const field of ["labels", "annotations"]) {
    if (entry.object.metadata[field]) merged.metadata[field] = { ...merged.metadata[field], ...entry.object.metadata[field] };
  }
  if (entry.object.data) merged.data = { ...merged.data, ...entry.object.data };
  old.object = merged;
  old.needsHash = entry.needsHash;
}

// kustomize's name suffix (api/hasher): SHA-256 of Go's JSON encoding of
// {data, kind, name}, first 10 hex digits with 0 1 3 a e replaced so that
// the suffix can be no word. The name is always "" there: kustomize looks it
// up as yaml.Lookup("metadata/name"), a single field of that name, which
// does not exist (checked against kubectl's kustomize v5.5).
function goJson(value) {
  if (typeof value === "string") {
    return JSON.stringify(value).replace(/[<>&\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
  }
  if (isObject(value)) {
    // Go sorts map keys by their bytes.
    const keys = Object.keys(value).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    return `{${keys.map((k) => `${goJson(k)}:${goJson(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

export function configMapHash(configMap) {
  if (configMap.binaryData || configMap.immutable) unsupported(`ConfigMap ${configMap.metadata.name}`, "binaryData or immutable");
  const encoded = goJson({ kind: "ConfigMap", name: "", data: configMap.data ?? "" });
  const hex = crypto.createHash("sha256").update(encoded).digest("hex");
  const swap = { 0: "g", 1: "h", 3: "k", a: "m", e: "t" };
  return [...hex.slice(0, 10)].map((c) => swap[c] ?? c).join("");
}

// --- pod specs ------------------------------------------------------------------

function podSpecsOf(object) {
  const specs = [];
  if (object.kind === "Pod" && object.spec) specs.push(object.spec);
  if (object.spec?.template?.spec) specs.push(object.spec.template.spec);
  if (object.spec?.jobTemplate?.spec?.template?.spec) specs.push(object.spec.jobTemplate.spec.template.spec);
  return specs;
}

function containersOf(spec) {
  return [...(spec.initContainers ?? []), ...(spec.containers ?? [])];
}

// Every place a pod spec names a ConfigMap, as [holder, key] pairs.
function configMapReferences(spec) {
  const refs = [];
  for (const c of [...containersOf(spec), ...(spec.ephemeralContainers ?? [])]) {
    for (const from of c.envFrom ?? []) if (from.configMapRef) refs.push([from.configMapRef, "name"]);
    for (const env of c.env ?? []) if (env.valueFrom?.configMapKeyRef) refs.push([env.valueFrom.configMapKeyRef, "name"]);
  }
  for (const volume of spec.volumes ?? []) {
    if (volume.configMap) refs.push([volume.configMap, "name"]);
    for (const source of volume.projected?.sources ?? []) if (source.configMap) refs.push([source.configMap, "name"]);
  }
  return refs;
}

// --- patches ----------------------------------------------------------------------

function selectorMatches(target, object) {
  const id = resourceId(object);
  for (const field of SUPPORTED.target) {
    if (target[field] === undefined) continue;
    if (!new RegExp(`^(?:${target[field]})$`).test(id[field])) return false;
  }
  return true;
}

function decodePointer(pointer, where) {
  if (pointer === "") return [];
  if (!pointer.startsWith("/")) throw new Error(`${where}: "${pointer}" is not a JSON pointer`);
  return pointer.slice(1).split("/").map((token) => token.replaceAll("~1", "/").replaceAll("~0", "~"));
}

function pointerParent(document, tokens, where) {
  let node = document;
  for (const token of tokens.slice(0, -1)) {
    node = Array.isArray(node) ? node[arrayIndex(node, token, where, false)] : isObject(node) && Object.hasOwn(node, token) ? node[token] : undefined;
    if (node === undefined) throw new Error(`${where}: path does not exist`);
  }
  return node;
}

function arrayIndex(array, token, where, forAdd) {
  if (forAdd && token === "-") return array.length;
  if (!/^(0|[1-9][0-9]*)$/.test(token)) throw new Error(`${where}: "${token}" is not an array index`);
  const index = Number(token);
  if (index > array.length || (!forAdd && index === array.length)) throw new Error(`${where}: index ${index} is out of range`);
  return index;
}

function pointerGet(document, pointer, where) {
  const tokens = decodePointer(pointer, where);
  if (tokens.length === 0) return document;
  const parent = pointerParent(document, tokens, where);
  const last = tokens.at(-1);
  if (Array.isArray(parent)) return parent[arrayIndex(parent, last, where, false)];
  if (!isObject(parent) || !Object.hasOwn(parent, last)) throw new Error(`${where}: path does not exist`);
  return parent[last];
}

function pointerRemove(document, pointer, where) {
  const tokens = decodePointer(pointer, where);
  if (tokens.length === 0) throw new Error(`${where}: cannot remove the whole document`);
  const parent = pointerParent(document, tokens, where);
  const last = tokens.at(-1);
  if (Array.isArray(parent)) return parent.splice(arrayIndex(parent, last, where, false), 1)[0];
  if (!isObject(parent) || !Object.hasOwn(parent, last)) throw new Error(`${where}: path does not exist`);
  const value = parent[last];
  delete parent[last];
  return value;
}

function pointerAdd(document, pointer, value, where, replace = false) {
  const tokens = decodePointer(pointer, where);
  if (tokens.length === 0) unsupported(where, "replacing the whole object");
  const parent = pointerParent(document, tokens, where);
  const last = tokens.at(-1);
  if (Array.isArray(parent)) {
    const index = arrayIndex(parent, last, where, !replace);
    parent.splice(index, replace ? 1 : 0, value);
  } else if (isObject(parent)) {
    if (replace && !Object.hasOwn(parent, last)) throw new Error(`${where}: path does not exist`);
    parent[last] = value;
  } else {
    throw new Error(`${where}: the parent is not an object or array`);
  }
}

function deepEqual(a, b) {
  if (a === b) return true;
  if (Array.isArray(a)) return Array.isArray(b) && a.length === b.length && a.every((x, i) => deepEqual(x, b[i]));
  if (isObject(a)) {
    if (!isObject(b)) return false;
    const keys = Object.keys(a);
    return keys.length === Object.keys(b).length && keys.every((k) => Object.hasOwn(b, k) && deepEqual(a[k], b[k]));
  }
  return false;
}

// RFC 6902 on `object`, in place.
function applyJsonPatch(object, operations, where) {
  operations.forEach((op, index) => {
    const at = `${where}, operation ${index} (${op.op} ${op.path})`;
    if (!isObject(op) || typeof op.path !== "string") throw new Error(`${at}: not a JSON patch operation`);
    switch (op.op) {
      case "add":
        pointerAdd(object, op.path, structuredClone(op.value), at);
        break;
      case "remove":
        pointerRemove(object, op.path, at);
        break;
      case "replace":
        pointerAdd(object, op.path, structuredClone(op.value), at, true);
        break;
      case "move": {
        if (op.path.startsWith(`${op.from}/`)) throw new Error(`${at}: cannot move into itself`);
        pointerAdd(object, op.path, pointerRemove(object, op.from, at), at);
        break;
      }
      case "copy":
        pointerAdd(object, op.path, structuredClone(pointerGet(object, op.from, at)), at);
        break;
      case "test":
        if (!deepEqual(pointerGet(object, op.path, at), op.value)) {
          throw new Error(`${at}: test failed: the value is ${JSON.stringify(pointerGet(object, op.path, at))}, not ${JSON.stringify(op.value)}`);
        }
        break;
      default:
        throw new Error(`${at}: unknown operation "${op.op}"`);
    }
  });
}

// Strategic merge, limited to what needs no schema: maps merge, null
// deletes, scalars replace. Lists (whose merge keys come from the schema)
// and $-directives other than a whole-object delete are refused.
function strategicMerge(target, patch, where) {
  for (const [key, value] of Object.entries(patch)) {
    if (key.startsWith("$")) unsupported(where, `the directive ${key}`);
    if (value === null) {
      delete target[key];
    } else if (Array.isArray(value)) {
      unsupported(`${where}.${key}`, "a list in a strategic-merge patch (use a JSON 6902 patch)");
    } else if (isObject(value)) {
      if (!isObject(target[key])) target[key] = {};
      strategicMerge(target[key], value, `${where}.${key}`);
    } else {
      target[key] = value;
    }
  }
}

function applyPatch(accumulator, root, spec, where) {
  checkKeys(spec, SUPPORTED.patch, where);
  if ((spec.path === undefined) === (spec.patch === undefined)) throw new Error(`${where}: give exactly one of path and patch`);
  const text = spec.path !== undefined ? fs.readFileSync(fileInRoot(root, spec.path, where), "utf8") : spec.patch;
  const docs = YAML.parseAllDocuments(text).filter((d) => d.contents !== null);
  if (docs.length !== 1) unsupported(where, "a patch with other than one YAML document");
  if (docs[0].errors.length) throw new Error(`${where}: ${docs[0].errors[0].message}`);
  const patch = docs[0].toJS();
  if (spec.target !== undefined) checkKeys(spec.target, SUPPORTED.target, `${where}.target`);

  if (Array.isArray(patch)) {
    if (!spec.target) throw new Error(`${where}: a JSON 6902 patch needs a target`);
    const matched = accumulator.filter((r) => selectorMatches(spec.target, r.object));
    if (matched.length === 0) throw new Error(`${where}: the target matches no object`);
    for (const r of matched) {
      const object = structuredClone(r.object);
      applyJsonPatch(object, patch, `${where} on ${idText(r.object)}`);
      r.object = object;
    }
    return;
  }
  if (!isObject(patch)) throw new Error(`${where}: a patch is a list of JSON 6902 operations or an object`);

  let matched;
  if (spec.target) {
    matched = accumulator.filter((r) => selectorMatches(spec.target, r.object));
  } else {
    if (!patch.apiVersion || !patch.kind || !patch.metadata?.name) throw new Error(`${where}: a patch without target needs apiVersion, kind and metadata.name`);
    const { group, version } = resourceId(patch);
    matched = accumulator.filter((r) => {
      const id = resourceId(r.object);
      return id.group === group && id.version === version && id.kind === patch.kind && id.name === patch.metadata.name &&
        (patch.metadata.namespace === undefined || id.namespace === patch.metadata.namespace);
    });
  }
  if (matched.length === 0) throw new Error(`${where}: the patch matches no object`);
  const { $patch: directive, apiVersion, kind, ...rest } = patch;
  if (directive === "delete") {
    if (Object.keys(rest).some((key) => key !== "metadata")) unsupported(where, "$patch: delete with fields besides metadata");
    for (const r of matched) accumulator.splice(accumulator.indexOf(r), 1);
    return;
  }
  if (directive !== undefined) unsupported(where, `$patch: ${directive}`);
  const { name, namespace, ...metadata } = rest.metadata ?? {};
  for (const r of matched) {
    const object = structuredClone(r.object);
    strategicMerge(object, { ...rest, metadata }, `${where} on ${idText(r.object)}`);
    r.object = object;
  }
}

// --- images -----------------------------------------------------------------------

function splitImage(image) {
  let name = image;
  let digest = "";
  let tag = "";
  const at = name.indexOf("@");
  if (at >= 0) [name, digest] = [name.slice(0, at), name.slice(at + 1)];
  const colon = name.lastIndexOf(":");
  if (colon > name.lastIndexOf("/")) [name, tag] = [name.slice(0, colon), name.slice(colon + 1)];
  return { name, tag, digest };
}

function applyImages(accumulator, images, where) {
  for (const [index, image] of images.entries()) checkKeys(image, SUPPORTED.image, `${where}.images[${index}]`);
  for (const r of accumulator) {
    for (const spec of podSpecsOf(r.object)) {
      for (const container of containersOf(spec)) {
        if (typeof container.image !== "string") continue;
        const parts = splitImage(container.image);
        const rule = images.find((i) => i.name === parts.name);
        if (!rule) continue;
        let { name, tag, digest } = parts;
        if (rule.newName !== undefined) name = String(rule.newName);
        if (rule.newTag !== undefined && rule.digest !== undefined) [tag, digest] = [String(rule.newTag), String(rule.digest)];
        else if (rule.newTag !== undefined) [tag, digest] = [String(rule.newTag), ""];
        else if (rule.digest !== undefined) [tag, digest] = ["", String(rule.digest)];
        container.image = `${name}${tag ? `:${tag}` : ""}${digest ? `@${digest}` : ""}`;
      }
    }
  }
}

// --- namespace ----------------------------------------------------------------------

function applyNamespace(accumulator, namespace, where) {
  for (const r of accumulator) {
    if (NAMESPACE_SPECIAL.has(r.object.kind)) unsupported(where, `namespace with a ${r.object.kind}`);
    if (CLUSTER_SCOPED.has(r.object.kind)) continue;
    r.object.metadata.namespace = String(namespace);
  }
}

// --- the build ------------------------------------------------------------------------

// The resources of the kustomization in `dir`, transformed by it, before
// name hashes (which only the outermost build adds).
function accumulate(dir, stack) {
  const root = fs.realpathSync(dir);
  if (stack.includes(root)) throw new Error(`${dir}: kustomizations refer to each other in a cycle`);
  const { file, k } = readKustomization(root);
  const accumulator = [];

  for (const [index, resource] of (k.resources ?? []).entries()) {
    const where = `${file}: resources[${index}]`;
    if (typeof resource !== "string" || /^[a-z]+:\/\/|^github\.com\/|^git@/.test(resource)) unsupported(where, `remote resource ${resource}`);
    const target = path.resolve(root, resource);
    if (!fs.existsSync(target)) throw new Error(`${where}: ${resource} does not exist`);
    if (fs.statSync(target).isDirectory()) {
      for (const entry of accumulate(target, [...stack, root])) addResource(accumulator, entry, where);
    } else {
      for (const object of readDocuments(fileInRoot(root, resource, where))) addResource(accumulator, { object, needsHash: false }, where);
    }
  }
  for (const [index, generator] of (k.configMapGenerator ?? []).entries()) {
    applyGenerator(accumulator, root, generator, `${file}: configMapGenerator[${index}]`);
  }
  // kustomize's transformer order: patches, namespace, ..., images.
  for (const [index, patch] of (k.patches ?? []).entries()) applyPatch(accumulator, root, patch, `${file}: patches[${index}]`);
  if (k.namespace !== undefined) applyNamespace(accumulator, k.namespace, file);
  if (k.images !== undefined) applyImages(accumulator, k.images, file);
  return accumulator;
}

// kustomize's "legacy" output order: some kinds first, webhooks last, the
// rest by group_version_kind, then namespace|name.
const ORDER_FIRST = [
  "Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition", "ServiceAccount", "PodSecurityPolicy",
  "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ConfigMap", "Secret", "Endpoints", "Service",
  "LimitRange", "PriorityClass", "PersistentVolume", "PersistentVolumeClaim", "Deployment", "StatefulSet",
  "CronJob", "PodDisruptionBudget",
];
const ORDER_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"];

function legacyKey(object) {
  const id = resourceId(object);
  const first = ORDER_FIRST.indexOf(id.kind);
  const last = ORDER_LAST.indexOf(id.kind);
  const rank = first >= 0 ? first - ORDER_FIRST.length : last >= 0 ? last + 1 : 0;
  const gvk = [id.group || "~G", id.version || "~V", id.kind || "~K"].join("_");
  const namespace = CLUSTER_SCOPED.has(id.kind) ? "_non_namespaceable_" : id.namespace || "default";
  return { rank, gvk, rest: `${namespace}|${id.name}` };
}

function legacyCompare(a, b) {
  const x = legacyKey(a);
  const y = legacyKey(b);
  if (x.gvk !== y.gvk) return x.rank !== y.rank ? x.rank - y.rank : x.gvk < y.gvk ? -1 : 1;
  return x.rest < y.rest ? -1 : x.rest > y.rest ? 1 : 0;
}

// The objects `kustomize build dir` would print, as plain JS objects.
export function build(dir) {
  const accumulator = accumulate(dir, []);
  // Name hashes last, then every reference from a pod spec in the same
  // namespace follows the rename.
  for (const r of accumulator.filter((x) => x.needsHash)) {
    if (r.object.kind !== "ConfigMap") unsupported(idText(r.object), "a name hash on anything but a ConfigMap");
    const before = r.object.metadata.name;
    const after = `${before}-${configMapHash(r.object)}`;
    r.object.metadata.name = after;
    for (const other of accumulator) {
      if ((other.object.metadata.namespace ?? "") !== (r.object.metadata.namespace ?? "")) continue;
      for (const spec of podSpecsOf(other.object)) {
        for (const [holder, key] of configMapReferences(spec)) if (holder[key] === before) holder[key] = after;
      }
    }
  }
  return accumulator.map((r) => r.object).sort(legacyCompare);
}

// The same as YAML text, documents separated by "---".
export function buildText(dir) {
  return build(dir).map((object) => YAML.stringify(object, { lineWidth: 0 })).join("---\n");
}
