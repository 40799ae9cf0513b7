/**
 * The enrich stage: counts, language, keywords, an extractive summary, PII findings (and
 * optionally redaction) and a quality score for the parsed text.
 */
import { identifyLanguage } from "./language.ts";
import type { Heading, Link, Table } from "./parsed-document.ts";
import { termFrequencies, topKeywords, type Keyword } from "./keywords.ts";
import { resolveEnrichOptions, type EnrichOptions, type StageContext } from "./options.ts";
import { findPii, PLACEHOLDER_PATTERN, redactPii, type PiiFinding, type PiiKind } from "./pii.ts";
import { assessQuality, type QualityAssessment } from "./quality.ts";
import { summarize } from "./summary.ts";
import { countText, sentencesOf, wordsOf, type TextCounts } from "./text-units.ts";

/** What enrich needs: the parsed document (a ParsedDocument fits) and detect's language. */
export interface EnrichInput {
  text: string;
  /** Redacted alongside the text when redaction is on. */
  headings?: Heading[];
  tables?: Table[];
  links?: Link[];
  /** Fallback when the parsed text is too short to identify. */
  language?: string;
  /**
   * The language of this very text, identified before (detect read the same plain text): not
   * identified a second time.
   */
  textLanguage?: string;
}

/** Headings, tables and links with PII replaced, as the text is. */
export type RedactedStructure = Required<Pick<EnrichInput, "headings" | "tables" | "links">>;

/** PII found in the text (offsets into the parsed, unredacted text); masked values only. */
export interface PiiReport {
  findings: PiiFinding[];
  counts: Record<PiiKind, number>;
}

/** What enrich hands to output. */
export interface EnrichResult {
  counts: TextCounts;
  /** ISO 639-3 code, from the parsed text or else detect's guess. */
  language?: string;
  keywords: Keyword[];
  /** Summary sentences in document order (from the redacted text when redacting). */
  summary: string[];
  /** Present when PII detection is on. */
  pii?: PiiReport;
  /** The text with PII replaced by placeholders; present when redaction is on. */
  redactedText?: string;
  /** The structure with PII replaced; present when redaction is on. */
  redactedStructure?: RedactedStructure;
  quality: QualityAssessment;
}

/**
 * Enriches text. Counts and quality describe the text as parsed; keywords and summary are
 * taken from the redacted text when redaction is on, so they cannot leak what it removed.
 */
export async function enrichStage(input: EnrichInput, options: EnrichOptions, ctx: StageContext): Promise<EnrichResult> {
  const opts = resolveEnrichOptions(options);
  const { text } = input;
  ctx.signal.throwIfAborted();
  const sentences = sentencesOf(text);
  const words = wordsOf(text);
  const counts = countText(text, sentences, words);
  const language = input.textLanguage ?? identifyLanguage(text) ?? input.language;
  ctx.signal.throwIfAborted();

  let pii: PiiReport | undefined;
  let redactedText: string | undefined;
  let redactedStructure: RedactedStructure | undefined;
  if (opts.detectPii) {
    const findings = findPii(text, opts.phoneRegion);
    const byKind: Record<PiiKind, number> = { email: 0, phone: 0, card: 0, iban: 0 };
    for (const f of findings) byKind[f.kind]++;
    pii = { findings, counts: byKind };
    if (opts.redactPii) {
      redactedText = redactPii(text, findings);
      redactedStructure = redactStructure(input, opts.phoneRegion);
    }
    ctx.signal.throwIfAborted();
  }

  const visibleText = redactedText ?? text;
  const freq = termFrequencies(visibleText.replace(PLACEHOLDER_PATTERN, " "), language);
  const keywords = topKeywords(freq, opts.keywordCount);
  const summary = summarize(redactedText === undefined ? sentences : sentencesOf(redactedText), freq, opts.summarySentences);
  ctx.signal.throwIfAborted();
  const uniqueWords = new Set(words.map((w) => w.toLowerCase())).size;
  const quality = assessQuality(text, counts, uniqueWords);

  const result: EnrichResult = { counts, keywords, summary, quality };
  if (language) result.language = language;
  if (pii) result.pii = pii;
  if (redactedText !== undefined) result.redactedText = redactedText;
  if (redactedStructure) result.redactedStructure = redactedStructure;
  return result;
}

function redactStructure(input: EnrichInput, phoneRegion: string): RedactedStructure {
  const redact = (s: string): string => redactPii(s, findPii(s, phoneRegion));
  return {
    headings: (input.headings ?? []).map((h) => ({ level: h.level, text: redact(h.text) })),
    tables: (input.tables ?? []).map((t) => ({ rows: t.rows.map((row) => row.map(redact)) })),
    // A mailto: href is an email address with a prefix; the pattern finds it inside.
    links: (input.links ?? []).map((l) => ({ href: redact(l.href), text: redact(l.text) })),
  };
}
