import t, { type Test } from "tap";
import { InvalidAuditFilterError } from "./errors.ts";
import { auditFilterConditions } from "./filter.ts";

/** The conditions and parameters a filter becomes (the tenant is $1, as in the domain). */
function sql(filter: string) {
  const params: unknown[] = ["tenant"];
  const conditions = auditFilterConditions(filter, (v) => `$${params.push(v)}`);
  return { conditions, params: params.slice(1) };
}

function refusal(t: Test, filter: string, term: string, why: RegExp) {
  try {
    sql(filter);
    t.fail(`${filter} was accepted`);
  } catch (error) {
    t.ok(error instanceof InvalidAuditFilterError, `${filter}: an InvalidAuditFilterError`);
    t.equal((error as InvalidAuditFilterError).term, term, `${filter}: names the term`);
    t.match((error as Error).message, why);
    t.ok((error as Error).message.includes(JSON.stringify(term)), `${filter}: the message names the term`);
  }
}

void t.test("filter - empty is no condition", async (t) => {
  t.same(sql(""), { conditions: [], params: [] });
  t.same(sql("   "), { conditions: [], params: [] });
});

void t.test("filter - text fields: =, != and : (prefix with *, else substring), values as parameters", async (t) => {
  t.same(sql('actor = "users/x"'), { conditions: ["actor_subject = $2"], params: ["users/x"] });
  t.same(sql("resource != jobs/abc"), { conditions: ["resource IS DISTINCT FROM $2"], params: ["jobs/abc"] });
  t.same(sql('action:"jobmesh.v1.JobService.*"'), { conditions: ["action LIKE $2"], params: ["jobmesh.v1.JobService.%"] });
  t.same(sql('action : "Login"'), { conditions: ["action LIKE $2"], params: ["%Login%"] });
  // LIKE's own wildcards in a value are literal.
  t.same(sql('resource:"a_b%*"'), { conditions: ["resource LIKE $2"], params: ["a\\_b\\%%"] });
  t.same(sql('resource_type = "jobmesh.dev/Job"').conditions, ["resource_type = $2"]);
});

void t.test("filter - a quoted value holding AND or quotes stays one value", async (t) => {
  t.same(sql('resource = "a AND b" AND actor = "users/\\"q\\""'), {
    conditions: ["resource = $2", "actor_subject = $3"],
    params: ["a AND b", 'users/"q"'],
  });
});

void t.test("filter - actor_kind by short or full name", async (t) => {
  t.same(sql("actor_kind = USER").params, [1]);
  t.same(sql("actor_kind = PRINCIPAL_KIND_API_KEY").params, [2]);
  t.same(sql("actor_kind != unspecified"), { conditions: ["actor_kind IS DISTINCT FROM $2"], params: [0] });
  refusal(t, "actor_kind = ROBOT", "actor_kind = ROBOT", /USER, API_KEY/);
  refusal(t, "actor_kind > USER", "actor_kind > USER", /= or !=/);
});

void t.test("filter - code as a number or a canonical name, with comparisons", async (t) => {
  t.same(sql("code = 0"), { conditions: ["code = $2"], params: [0] });
  t.same(sql("code != 0"), { conditions: ["code IS DISTINCT FROM $2"], params: [0] });
  t.same(sql("code = UNAUTHENTICATED").params, [16]);
  t.same(sql("code = not_found").params, [5]);
  t.same(sql("code >= 3").conditions, ["code >= $2"]);
  refusal(t, "code = nope", "code = nope", /canonical name/);
});

void t.test("filter - event_time and sequence ranges", async (t) => {
  t.same(sql('event_time >= "2025-01-01T00:00:00Z" AND event_time < "2025-02-01T00:00:00.5+01:00" AND sequence > 10'), {
    conditions: ["event_time >= $2::timestamptz", "event_time < $3::timestamptz", "sequence > $4::bigint"],
    params: ["2025-01-01T00:00:00Z", "2025-02-01T00:00:00.5+01:00", "10"],
  });
  refusal(t, 'event_time > "yesterday"', 'event_time > "yesterday"', /RFC 3339/);
  refusal(t, "sequence < -1", "sequence < -1", /whole number/);
});

void t.test("filter - every bad term is refused by name", async (t) => {
  refusal(t, 'actor = "users/x" AND colour = red', "colour = red", /unknown field/);
  refusal(t, 'actor = "users/x" OR action = y', 'OR action = y', /joined by AND/);
  refusal(t, "actor < users/x", "actor < users/x", /=, != or :/);
  refusal(t, 'actor = "unterminated', 'actor = "unterminated', /cannot read/);
  refusal(t, "AND", "AND", /cannot read/);
  refusal(t, 'actor = "a" AND', "AND", /.*/);
  refusal(t, 'resource = "\\u0000"', 'resource = "\\u0000"', /NUL/);
});

void t.test("filter - an injection attempt is only ever a parameter", async (t) => {
  const { conditions, params } = sql(`actor = "x' OR 1=1 --"`);
  t.same(conditions, ["actor_subject = $2"]);
  t.same(params, ["x' OR 1=1 --"]);
});
