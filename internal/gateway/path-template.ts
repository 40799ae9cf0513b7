/**
 * google.api.http path templates: parsed once at start-up, matched against every request path.
 * The grammar is the one documented in google/api/http.proto:
 *
 *     Template = "/" Segments [ Verb ] ;
 *     Segments = Segment { "/" Segment } ;
 *     Segment  = "*" | "**" | LITERAL | Variable ;
 *     Variable = "{" FieldPath [ "=" Segments ] "}" ;
 *     FieldPath = IDENT { "." IDENT } ;
 *     Verb     = ":" LITERAL ;
 *
 * `{name}` means `{name=*}`; `**` matches zero or more segments and must come last.
 */

export type TemplateSegment = { kind: "literal"; value: string } | { kind: "wildcard" } | { kind: "deep_wildcard" };

/** A variable binds the request field `fieldPath` to the path segments [start, end). */
export interface TemplateVariable {
  /** The request field the variable sets, by proto name: "name", "user.name". */
  fieldPath: string;
  start: number;
  end: number;
}

export interface PathTemplate {
  /** The template as written in the http rule. */
  template: string;
  segments: TemplateSegment[];
  /** The custom verb after the last segment (`cancel` in `/v1/{name=jobs/*}:cancel`), or undefined. */
  verb: string | undefined;
  variables: TemplateVariable[];
}

// A literal is a run of RFC 3986 unreserved characters plus the sub-delims that cannot confuse
// the grammar; "{", "}", "/", ":", "=" and "*" are the grammar's own.
const literalPattern = /^[A-Za-z0-9\-._~!$&'()+,;@]+$/;
const identPattern = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Parses a path template; throws an Error naming the template and the problem on bad syntax. */
export function parsePathTemplate(template: string): PathTemplate {
  const fail = (problem: string): never => {
    throw new Error(`path template "${template}": ${problem}`);
  };
  if (!template.startsWith("/")) fail("must start with /");

  // The verb is a ":" outside braces after the last "/" outside braces.
  let depth = 0;
  let verbAt = -1;
  for (let i = 0; i < template.length; i++) {
    const c = template[i];
    if (c === "{") depth++;
    else if (c === "}") depth--;
    else if (depth === 0 && c === "/") verbAt = -1;
    else if (depth === 0 && c === ":" && verbAt === -1) verbAt = i;
    if (depth < 0 || depth > 1) fail("unbalanced or nested braces");
  }
  if (depth !== 0) fail("unbalanced braces");
  let verb: string | undefined;
  let body = template.slice(1);
  if (verbAt !== -1) {
    verb = template.slice(verbAt + 1);
    if (!literalPattern.test(verb)) fail(`bad verb "${verb}"`);
    body = template.slice(1, verbAt);
  }

  const segments: TemplateSegment[] = [];
  const variables: TemplateVariable[] = [];
  for (const part of splitOutsideBraces(body)) {
    if (part.startsWith("{")) {
      if (!part.endsWith("}")) fail(`bad variable "${part}"`);
      const inner = part.slice(1, -1);
      const eq = inner.indexOf("=");
      const fieldPath = eq === -1 ? inner : inner.slice(0, eq);
      if (!fieldPath.split(".").every((ident) => identPattern.test(ident))) fail(`bad field path "${fieldPath}"`);
      if (variables.some((v) => v.fieldPath === fieldPath)) fail(`field path "${fieldPath}" bound twice`);
      const start = segments.length;
      const inside = eq === -1 ? "*" : inner.slice(eq + 1);
      for (const sub of inside.split("/")) segments.push(segmentOf(sub, fail));
      variables.push({ fieldPath, start, end: segments.length });
    } else {
      segments.push(segmentOf(part, fail));
    }
  }
  const deep = segments.findIndex((s) => s.kind === "deep_wildcard");
  if (deep !== -1 && deep !== segments.length - 1) fail(`"**" must be the last segment`);
  return { template, segments, verb, variables };
}

function segmentOf(text: string, fail: (problem: string) => never): TemplateSegment {
  if (text === "*") return { kind: "wildcard" };
  if (text === "**") return { kind: "deep_wildcard" };
  if (text === "") fail("empty segment");
  if (text === "." || text === ".." || !literalPattern.test(text)) fail(`bad segment "${text}"`);
  return { kind: "literal", value: text };
}

function splitOutsideBraces(text: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let from = 0;
  for (let i = 0; i < text.length; i++) {
    if (text[i] === "{") depth++;
    else if (text[i] === "}") depth--;
    else if (text[i] === "/" && depth === 0) {
      parts.push(text.slice(from, i));
      from = i + 1;
    }
  }
  parts.push(text.slice(from));
  return parts;
}

/**
 * Matches a request path (URL.pathname, still percent-encoded) against a template. Returns each
 * variable's field path → value, or undefined when the path does not match.
 *
 * Values are percent-decoded segment by segment; a variable over several segments keeps its "/"
 * separators ("jobs/abc"). Refused (undefined), whatever the template: "." or ".." segments
 * (encoded or not), empty segments and malformed percent-encoding. A "%2F" would let a client
 * smuggle a separator into a value: a segment matched by a literal or "*" refuses it, and one
 * matched by "**" keeps it encoded (http.proto's rule for multi-segment variables), so it never
 * becomes a separator.
 */
export function matchPathTemplate(t: PathTemplate, pathname: string): Map<string, string> | undefined {
  if (!pathname.startsWith("/")) return undefined;
  let rest = pathname.slice(1);
  if (t.verb !== undefined) {
    const suffix = `:${t.verb}`;
    if (!rest.endsWith(suffix)) return undefined;
    rest = rest.slice(0, -suffix.length);
  }
  const raw = rest === "" ? [] : rest.split("/");
  const decoded: string[] = [];
  for (const segment of raw) {
    const value = decodeSegment(segment);
    if (value === undefined || value === "" || value === "." || value === "..") return undefined;
    decoded.push(value);
  }

  const { segments } = t;
  const deep = segments.length > 0 && segments[segments.length - 1]!.kind === "deep_wildcard";
  if (deep ? raw.length < segments.length - 1 : raw.length !== segments.length) return undefined;
  for (let i = 0; i < segments.length; i++) {
    const segment = segments[i]!;
    if (segment.kind === "literal" && decoded[i] !== segment.value) return undefined;
  }

  const variables = new Map<string, string>();
  for (const variable of t.variables) {
    const end = deep && variable.end === segments.length ? raw.length : variable.end;
    const parts: string[] = [];
    for (let i = variable.start; i < end; i++) {
      // Segments past the template's last one were taken by its trailing "**".
      const kind = i < segments.length ? segments[i]!.kind : "deep_wildcard";
      const part = kind === "deep_wildcard" ? decodeKeepingSlash(raw[i]!) : decoded[i]!;
      if (part === undefined || (kind !== "deep_wildcard" && part.includes("/"))) return undefined;
      parts.push(part);
    }
    variables.set(variable.fieldPath, parts.join("/"));
  }
  return variables;
}

function decodeSegment(segment: string): string | undefined {
  try {
    return decodeURIComponent(segment);
  } catch {
    return undefined;
  }
}

function decodeKeepingSlash(segment: string): string | undefined {
  const parts = segment.split(/%2F/i).map(decodeSegment);
  return parts.includes(undefined) ? undefined : parts.join("%2F");
}
