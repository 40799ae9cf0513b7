/**
 * Keywords by stopword-filtered term frequency. Stopword lists come from the `stopword`
 * package, keyed by the same ISO 639-3 codes franc returns; English is always filtered too,
 * since English boilerplate turns up in documents of every language.
 */
import * as stopwords from "stopword";
import { wordsOf } from "./text-units.ts";

/** A keyword: the lowercased term, how often it occurs, and its share of all content terms. */
export interface Keyword {
  term: string;
  count: number;
  score: number;
}

const lists = stopwords as unknown as Record<string, unknown>;
const cache = new Map<string, ReadonlySet<string>>();

/** Stopwords of a language (ISO 639-3) together with the English ones. */
export function stopwordsFor(language?: string): ReadonlySet<string> {
  const key = language ?? "eng";
  let set = cache.get(key);
  if (!set) {
    const own = Array.isArray(lists[key]) ? (lists[key] as string[]) : [];
    set = new Set([...(lists.eng as string[]), ...own].map((w) => w.toLowerCase()));
    cache.set(key, set);
  }
  return set;
}

/** True for a term worth counting: not a stopword, not a number, long enough to mean something. */
function isContentTerm(term: string, stop: ReadonlySet<string>): boolean {
  if (stop.has(term) || /^[\p{N}\p{P}_]+$/u.test(term)) return false;
  // Latin/Cyrillic/Greek words of one or two letters are almost never keywords; CJK ones can be.
  return term.length >= 3 || !/^[\p{Script=Latin}\p{Script=Cyrillic}\p{Script=Greek}]+$/u.test(term);
}

/** Frequency of every content term, in order of first occurrence. */
export function termFrequencies(text: string, language?: string): Map<string, number> {
  const stop = stopwordsFor(language);
  const freq = new Map<string, number>();
  for (const word of wordsOf(text)) {
    const term = word.toLowerCase();
    if (isContentTerm(term, stop)) freq.set(term, (freq.get(term) ?? 0) + 1);
  }
  return freq;
}

/** The `n` most frequent content terms; ties go to the term that appears first. */
export function topKeywords(freq: ReadonlyMap<string, number>, n: number): Keyword[] {
  if (n <= 0) return [];
  let total = 0;
  for (const c of freq.values()) total += c;
  // Array.prototype.sort is stable, so equal counts keep first-occurrence order.
  return [...freq]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([term, count]) => ({ term, count, score: Math.round((count / total) * 10_000) / 10_000 }));
}
