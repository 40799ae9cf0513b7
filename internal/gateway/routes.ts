/**
 * The gateway's route table, built at start-up from the http bindings of the services (no route
 * is written by hand). A request path picks the most specific template that matches it; then the
 * verb either finds its binding there or the answer is 405 with the verbs that template allows.
 *
 * A request is matched only against the templates that could take it: those indexed under its
 * number of segments and its first two segments (or a wildcard there), and those ending in "**".
 */
import { ScalarType, type DescMessage } from "@bufbuild/protobuf";
import type { HttpBinding } from "../contract/index.ts";
import { matchPathTemplate, parsePathTemplate, type PathTemplate } from "./path-template.ts";

export type RouteMatch =
  | { kind: "match"; binding: HttpBinding; template: PathTemplate; variables: Map<string, string> }
  | { kind: "not_found" }
  /** The path exists but not for this verb: answer 405 with `Allow: allow.join(", ")`. */
  | { kind: "method_not_allowed"; allow: string[] };

export interface RouteTable {
  match(verb: string, pathname: string): RouteMatch;
  routes: readonly { binding: HttpBinding; template: PathTemplate }[];
}

interface Route {
  binding: HttpBinding;
  template: PathTemplate;
  /** Templates with the same shape (ignoring variable names) match the same paths. */
  shape: string;
}

/**
 * Builds the table. Throws when two bindings share a verb and a template shape (one of them could
 * never be reached), or when a path variable does not name a string field of the request.
 * HEAD is answered by the GET route of the path.
 */
export function createRouteTable(bindings: readonly HttpBinding[]): RouteTable {
  const routes: Route[] = [];
  for (const binding of bindings) {
    const template = parsePathTemplate(binding.path);
    for (const variable of template.variables) checkVariableField(binding, variable.fieldPath);
    const shape = shapeOf(template);
    const clash = routes.find((r) => r.binding.verb === binding.verb && r.shape === shape);
    if (clash) {
      throw new Error(`${binding.verb} ${binding.path} (${binding.method.parent.typeName}.${binding.method.name}) clashes with ${clash.binding.verb} ${clash.binding.path} (${clash.binding.method.parent.typeName}.${clash.binding.method.name})`);
    }
    routes.push({ binding, template, shape });
  }

  const candidates = createCandidateIndex(routes);
  return {
    routes: routes.map(({ binding, template }) => ({ binding, template })),
    match(verb, pathname) {
      // The most specific matching templates decide, whatever their verb: "GET /v1/jobs/x:cancel"
      // is a 405 for the :cancel route, not a GetJob of a job named "x:cancel".
      let best: { route: Route; variables: Map<string, string> }[] = [];
      for (const route of candidates(pathname)) {
        const variables = matchPathTemplate(route.template, pathname);
        if (!variables) continue;
        const order = best.length === 0 ? 1 : compareSpecificity(route.template, best[0]!.route.template);
        if (order > 0) best = [{ route, variables }];
        else if (order === 0) best.push({ route, variables });
      }
      if (best.length === 0) return { kind: "not_found" };
      const hit = best.find(({ route }) => route.binding.verb === verb) ?? (verb === "HEAD" ? best.find(({ route }) => route.binding.verb === "GET") : undefined);
      if (hit) return { kind: "match", binding: hit.route.binding, template: hit.route.template, variables: hit.variables };
      const allow = new Set(best.map(({ route }) => route.binding.verb));
      if (allow.has("GET")) allow.add("HEAD");
      return { kind: "method_not_allowed", allow: [...allow].sort() };
    },
  };
}

/** How many leading segments key the index: "/v1/{name=jobs/*}" is found under (3, "v1", "jobs"). */
const indexedSegments = 2;

/**
 * The routes a path could match, in table order: matchPathTemplate still decides, so the index
 * only has to keep every route that might. A template without "**" matches only paths with as
 * many "/"-separated segments (its custom verb rides on the last one), and one whose leading
 * segments are literals only paths whose leading segments decode to them; a custom verb or a
 * percent-encoded ":" never makes a literal match (a literal holds no ":"), so a segment's text
 * before any ":" is its key. A path is looked up under its own leading segments and under "*"
 * in each place, for the templates with a wildcard there.
 */
function createCandidateIndex(routes: readonly Route[]): (pathname: string) => readonly Route[] {
  const byKey = new Map<string, Route[]>();
  const deep: Route[] = [];
  // JSON keeps the parts apart: a decoded segment may hold any character, "/" included.
  const keyOf = (segments: number, parts: readonly string[]) => JSON.stringify([segments, ...parts]);
  for (const route of routes) {
    const { segments } = route.template;
    if (segments.some((s) => s.kind === "deep_wildcard")) {
      deep.push(route);
      continue;
    }
    const key = keyOf(segments.length, segments.slice(0, indexedSegments).map((s) => (s.kind === "literal" ? s.value : "*")));
    byKey.set(key, [...(byKey.get(key) ?? []), route]);
  }
  const order = new Map(routes.map((route, i) => [route, i]));
  const cache = new Map<string, readonly Route[]>();
  return (pathname) => {
    const raw = (pathname.startsWith("/") ? pathname.slice(1) : pathname).split("/");
    // undefined: malformed percent-encoding, which no literal matches (a wildcard refuses it later).
    const leading = raw.slice(0, indexedSegments).map((segment) => {
      const colon = segment.indexOf(":");
      try {
        return decodeURIComponent(colon === -1 ? segment : segment.slice(0, colon));
      } catch {
        return undefined;
      }
    });
    const cacheKey = JSON.stringify([raw.length, ...leading.map((part) => part ?? null)]);
    const known = cache.get(cacheKey);
    if (known) return known;
    const found: Route[] = [];
    for (let wildcards = 0; wildcards < 1 << leading.length; wildcards++) {
      const parts = leading.map((part, i) => (wildcards & (1 << i) ? "*" : part));
      if (parts.includes(undefined)) continue;
      found.push(...(byKey.get(keyOf(raw.length, parts as string[])) ?? []));
    }
    found.push(...deep);
    found.sort((a, b) => order.get(a)! - order.get(b)!);
    // Keys come from request paths: keep only those of real routes, so a client cannot grow the cache.
    if (found.length > deep.length && cache.size < 1024) cache.set(cacheKey, found);
    return found;
  };
}

/**
 * > 0 when `a` is more specific than `b`: a template with a verb beats one without (it consumed
 * the ":verb" the other would take into a value); then, segment by segment, a literal beats a
 * wildcard, which beats "**"; then the longer template.
 */
function compareSpecificity(a: PathTemplate, b: PathTemplate): number {
  if ((a.verb === undefined) !== (b.verb === undefined)) return a.verb === undefined ? -1 : 1;
  const rank = { literal: 2, wildcard: 1, deep_wildcard: 0 } as const;
  const n = Math.min(a.segments.length, b.segments.length);
  for (let i = 0; i < n; i++) {
    const d = rank[a.segments[i]!.kind] - rank[b.segments[i]!.kind];
    if (d !== 0) return d;
  }
  return a.segments.length - b.segments.length;
}

function shapeOf(template: PathTemplate): string {
  const segments = template.segments.map((s) => (s.kind === "literal" ? `=${s.value}` : s.kind === "wildcard" ? "*" : "**"));
  return `/${segments.join("/")}${template.verb === undefined ? "" : `:${template.verb}`}`;
}

function checkVariableField(binding: HttpBinding, fieldPath: string): void {
  let message: DescMessage = binding.method.input;
  const names = fieldPath.split(".");
  names.forEach((name, i) => {
    const field = message.fields.find((f) => f.name === name);
    const last = i === names.length - 1;
    const where = `${binding.verb} ${binding.path}: path variable "${fieldPath}"`;
    if (!field) throw new Error(`${where}: ${message.typeName} has no field "${name}"`);
    if (!last) {
      if (field.fieldKind !== "message") throw new Error(`${where}: "${name}" is not a message field`);
      message = field.message;
    } else if (field.fieldKind !== "scalar" || field.scalar !== ScalarType.STRING) {
      throw new Error(`${where}: "${name}" must be a singular string field`);
    }
  });
}
