import t from "tap";
import { enrichStage, findPii, isLuhnValid, isValidIban, redactPii } from "../internal/stages/index.ts";
import { PROSE } from "./stages-fixtures.ts";

const ctx = () => ({ signal: new AbortController().signal });
const kinds = (text: string) => findPii(text, "US").map((f) => `${f.kind}:${text.slice(f.start, f.end)}`);

t.test("pii - a Luhn-valid card is found, an invalid one is not", async (t) => {
  t.ok(isLuhnValid("4111111111111111"));
  t.notOk(isLuhnValid("4111111111111112"));
  t.same(kinds("pay with 4111 1111 1111 1111 today"), ["card:4111 1111 1111 1111"]);
  t.same(kinds("pay with 5555-5555-5555-4444."), ["card:5555-5555-5555-4444"]);
  t.same(kinds("pay with 4111 1111 1111 1112 today"), [], "fails Luhn");
  t.same(kinds("serial 0000000000000000"), [], "a run of one digit passes Luhn but is no card");
  const [card] = findPii("card 4111 1111 1111 1111", "US");
  t.equal(card?.masked, "**** **** **** 1111");
});

t.test("pii - IBANs are validated by country length and mod-97", async (t) => {
  t.ok(isValidIban("DE89 3704 0044 0532 0130 00"));
  t.ok(isValidIban("GB82WEST12345698765432"));
  t.notOk(isValidIban("DE89 3704 0044 0532 0130 01"), "check digits fail");
  t.notOk(isValidIban("DE89 3704 0044 0532 0130 0"), "too short for DE");
  t.same(kinds("IBAN DE89 3704 0044 0532 0130 00 NOW PAY"), ["iban:DE89 3704 0044 0532 0130 00"], "cut at DE's length");
  t.same(kinds("to GB82WEST12345698765432."), ["iban:GB82WEST12345698765432"]);
  t.same(kinds("IBAN DE89 3704 0044 0532 0130 01"), [], "invalid IBAN not reported");
  t.equal(findPii("DE89370400440532013000", "US")[0]?.masked, "DE89**************3000");
});

t.test("pii - emails and phone numbers, with offsets and masks", async (t) => {
  const text = "Mail jane.doe+work@mail.example.co.uk or call (415) 555-0132 / +44 20 7946 0958.";
  const findings = findPii(text, "US");
  t.same(findings.map((f) => [f.kind, text.slice(f.start, f.end)]), [
    ["email", "jane.doe+work@mail.example.co.uk"],
    ["phone", "(415) 555-0132"],
    ["phone", "+44 20 7946 0958"],
  ]);
  t.same(findings.map((f) => f.masked), ["j***@mail.example.co.uk", "(***) ***-**32", "+** ** **** **58"]);
  t.notMatch(JSON.stringify(findings), /jane\.doe|555-0132|7946/, "no raw value in the findings");
  t.same(kinds("call 555-0132 tomorrow"), [], "too short for a US number");
  t.same(findPii("call (415) 555-0132", undefined), [], "without a region only international numbers count");
});

t.test("pii - redaction replaces every finding with its placeholder", async (t) => {
  const text = "a@b.io, 4111111111111111, GB82 WEST 1234 5698 7654 32, +1 202-456-1111 end";
  t.equal(redactPii(text, findPii(text, "US")), "[EMAIL], [CARD], [IBAN], [PHONE] end");
});

t.test("enrich - PII off by default, on and redacted on request", async (t) => {
  const text = `${PROSE} Write to ops@example.com for access.`;
  const plain = await enrichStage({ text }, {}, ctx());
  t.notOk("pii" in plain);
  t.notOk("redactedText" in plain);
  const detected = await enrichStage({ text }, { detectPii: true }, ctx());
  t.same(detected.pii?.counts, { email: 1, phone: 0, card: 0, iban: 0 });
  t.notOk("redactedText" in detected);
  const redacted = await enrichStage({
    text,
    tables: [{ rows: [["contact"], ["ops@example.com"]] }],
    links: [{ href: "mailto:ops@example.com", text: "ops@example.com" }],
    headings: [{ level: 1, text: "Access" }],
  }, { redactPii: true, summarySentences: 20 }, ctx());
  t.equal(redacted.redactedText, `${PROSE} Write to [EMAIL] for access.`);
  t.same(redacted.redactedStructure, {
    headings: [{ level: 1, text: "Access" }],
    tables: [{ rows: [["contact"], ["[EMAIL]"]] }],
    links: [{ href: "mailto:[EMAIL]", text: "[EMAIL]" }],
  });
  t.notMatch(JSON.stringify(redacted), /ops@example/, "the raw address appears nowhere in the result");
  t.notOk(redacted.keywords.some((k) => k.term === "email"), "placeholders are not keywords");
});

t.test("enrich - counts, language, stopword-filtered keywords", async (t) => {
  const r = await enrichStage({ text: `Heading\n\n${PROSE}` }, { keywordCount: 3 }, ctx());
  t.same(r.counts, { characters: 9 + PROSE.length, words: 32, sentences: 4, paragraphs: 2 });
  t.equal(r.language, "eng");
  t.same(r.keywords.map((k) => [k.term, k.count]), [["pipelines", 2], ["text", 2], ["heading", 1]]);
  t.notOk(r.keywords.some((k) => ["the", "and", "at"].includes(k.term)));
  t.same((await enrichStage({ text: PROSE }, { keywordCount: 0 }, ctx())).keywords, []);
  const german = await enrichStage({
    text: "Die Verarbeitung der Dokumente ist schnell. Die Dokumente werden von den Arbeitern gelesen und die Ergebnisse werden gespeichert.",
  }, {}, ctx());
  t.equal(german.language, "deu");
  t.equal(german.keywords[0]?.term, "dokumente");
  t.notOk(german.keywords.some((k) => ["die", "der", "werden", "und"].includes(k.term)), "German stopwords");
});

t.test("enrich - the summary keeps the highest-scoring sentences in document order", async (t) => {
  const text = [
    "Weather was mild.",
    "Pipelines move documents through pipelines of workers.",
    "Lunch was pasta.",
    "Workers parse documents in pipelines.",
    "Nothing else happened.",
  ].join(" ");
  const r = await enrichStage({ text }, { summarySentences: 2 }, ctx());
  t.same(r.summary, ["Pipelines move documents through pipelines of workers.", "Workers parse documents in pipelines."]);
  t.same((await enrichStage({ text }, { summarySentences: 0 }, ctx())).summary, []);
  t.equal((await enrichStage({ text }, { summarySentences: 20 }, ctx())).summary.length, 5);
});

t.test("quality - scores and reasons", async (t) => {
  const long = Array.from({ length: 12 }, () => PROSE).join(" ");
  t.same((await enrichStage({ text: long.replace(/(\w+)/g, (w, _m, i) => `${w}${i}`) }, {}, ctx())).quality, { score: 1, reasons: [] });
  t.same((await enrichStage({ text: "   " }, {}, ctx())).quality, { score: 0, reasons: ["empty"] });
  t.same((await enrichStage({ text: PROSE }, {}, ctx())).quality, { score: 0.75, reasons: ["too_short"] });
  t.same((await enrichStage({ text: "1234 5678 9012 #### %%%% ab" }, {}, ctx())).quality.reasons, ["too_short", "mostly_non_letters", "no_sentences"]);
  t.match((await enrichStage({ text: `${long} caf\uFFFD \uFFFD\uFFFD` }, {}, ctx())).quality, { reasons: ["replacement_characters"] });
  t.same((await enrichStage({ text: long }, {}, ctx())).quality.reasons, ["repetitive"]);
});
