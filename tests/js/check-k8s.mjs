// check-k8s.mjs KIND=FILE...: validates documented Kubernetes resources
// with the models generated from the Istio and Traefik CRD schemas: their
// ajv validators (types, enums, required fields) and, because CRD schemas
// allow unknown fields, their TypeScript types under `tsc --strict` (excess
// property checks catch a misspelled or invented field). KIND is one of
// istio-authorization-policy, istio-operator, traefik-middleware and
// traefik-file (a file-provider dynamic configuration: each of its
// middlewares is checked as a Middleware spec). Prints one JSON line per
// file; exits 1 on any finding.
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import YAML from "yaml";
import { AuthorizationPolicy } from "@kubernetes-models/istio/security.istio.io/v1";
import { IstioOperator } from "@kubernetes-models/istio/install.istio.io/v1alpha1";
import { Middleware } from "@kubernetes-models/traefik/traefik.io/v1alpha1";

const here = dirname(fileURLToPath(import.meta.url));
const kinds = {
  "istio-authorization-policy": {
    model: AuthorizationPolicy,
    type: ["IAuthorizationPolicy", "@kubernetes-models/istio/security.istio.io/v1/AuthorizationPolicy"],
  },
  "istio-operator": {
    model: IstioOperator,
    // The CRD keeps `spec` schemaless (the operator validates it itself), so
    // only apiVersion, kind and metadata are checked here.
    type: null,
  },
  "traefik-middleware": {
    model: Middleware,
    type: ["IMiddleware", "@kubernetes-models/traefik/traefik.io/v1alpha1/Middleware"],
  },
};

// The resources a KIND=FILE argument stands for, as [kind, object].
function resources(kind, doc) {
  if (kind !== "traefik-file") return [[kind, doc]];
  const mws = doc?.http?.middlewares ?? {};
  if (Object.keys(mws).length === 0) throw new Error("no http.middlewares");
  return Object.entries(mws).map(([name, spec]) => [
    "traefik-middleware",
    { apiVersion: "traefik.io/v1alpha1", kind: "Middleware", metadata: { name }, spec },
  ]);
}

// Type-checks `objs` ([typeName, module, object]) with tsc --strict;
// returns tsc's complaints, or "".
function typecheck(objs) {
  if (objs.length === 0) return "";
  // Inside this directory, so the types resolve from its node_modules.
  const work = mkdtempSync(join(here, "check-"));
  const file = join(work, "check.ts");
  const imports = [...new Set(objs.map(([t, m]) => `import type { ${t} } from "${m}";`))];
  const consts = objs.map(([t, , o], i) => `export const r${i}: ${t} = ${JSON.stringify(o)};`);
  writeFileSync(file, [...imports, ...consts].join("\n") + "\n");
  try {
    execFileSync(process.execPath, [
      join(here, "node_modules/typescript/lib/tsc.js"),
      "--noEmit", "--strict", "--module", "node16", "--moduleResolution", "node16",
      "--skipLibCheck", file,
    ], { cwd: here, encoding: "utf8" });
    return "";
  } catch (e) {
    return String(e.stdout || e.message).trim();
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

let failed = false;
for (const arg of process.argv.slice(2)) {
  const [kind, file] = arg.split("=");
  const out = { file, kind, ok: true, errors: [], typed: 0 };
  try {
    const doc = YAML.parse(readFileSync(file, "utf8"));
    const typed = [];
    for (const [k, obj] of resources(kind, doc)) {
      const spec = kinds[k];
      if (!spec) throw new Error(`unknown kind ${k}`);
      new spec.model(obj).validate();
      if (spec.type) typed.push([...spec.type, obj]);
    }
    out.typed = typed.length;
    const t = typecheck(typed);
    if (t) throw new Error("tsc: " + t);
  } catch (e) {
    out.ok = false;
    out.errors.push(String(e.message ?? e));
  }
  failed ||= !out.ok;
  console.log(JSON.stringify(out));
}
process.exit(failed ? 1 : 0);
