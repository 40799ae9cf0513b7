import t from "tap";
import { create, toJsonString } from "@bufbuild/protobuf";
import { JobResultSchema } from "../../gen/jobmesh/v1/jobs_pb.js";
import { ResultTextExtractor } from "./result-text.ts";

/** The text bytes the extractor reads from `json` fed in chunks of `size` bytes. */
function extract(json: Uint8Array, size: number): Buffer {
  const x = new ResultTextExtractor();
  const parts: Uint8Array[] = [];
  for (let at = 0; at < json.length; at += size) parts.push(...x.push(json.subarray(at, at + size)));
  t.ok(x.done, "the text ended");
  return Buffer.concat(parts);
}

const texts = [
  "plain words",
  'quotes " and \\ backslashes \\" and a slash /',
  "controls \n\r\t\b\f \u0000 \u001f and DEL \u007f",
  "non-ASCII é ü ß — 日本語, and astral 😀𝄞",
  "a lone high \ud800 and a lone low \udc00 surrogate, and a pair \ud83d\ude00",
  "",
];

void t.test("result text - every kind of character, split at every chunk size, equals the text's UTF-8", async (t) => {
  for (const text of texts) {
    const result = create(JobResultSchema, {
      name: "jobs/x/result",
      text,
      mediaType: "text/plain",
      // Nested "text" keys come after the top-level one and must not be read.
      structure: { headings: [{ text: "text" }], links: [{ url: "https://example.com/", text: "a link's text" }] },
    });
    const json = new TextEncoder().encode(toJsonString(JobResultSchema, result));
    for (const size of [1, 2, 3, 5, 7, 64, json.length]) {
      t.same(extract(json, size), Buffer.from(new TextEncoder().encode(text)), `${JSON.stringify(text.slice(0, 20))} in chunks of ${size}`);
    }
  }
});

void t.test("result text - a nested text key before the top-level one is skipped", async (t) => {
  const json = new TextEncoder().encode(JSON.stringify({ a: { text: "nested" }, b: [{ text: "in array" }], "text": "top" }));
  t.equal(extract(json, 3).toString(), "top");
});
