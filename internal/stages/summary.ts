/**
 * Extractive summary: the sentences that carry the most frequent content terms, given back in
 * the order they appear in the document.
 */
import { wordsOf, type Sentence } from "./text-units.ts";

/** Sentences this short (in words) are headings or fragments; used only if nothing else is left. */
const MIN_WORDS = 4;

/**
 * Picks `n` sentences. A sentence scores the summed frequency of its content terms divided by
 * the square root of its length, so long sentences gain from their terms but not from length.
 */
export function summarize(sentences: readonly Sentence[], weights: ReadonlyMap<string, number>, n: number): string[] {
  if (n <= 0 || sentences.length === 0) return [];
  const scored = sentences.map((sentence, index) => {
    const words = wordsOf(sentence.text);
    let weight = 0;
    for (const w of words) weight += weights.get(w.toLowerCase()) ?? 0;
    const score = words.length === 0 ? 0 : weight / Math.sqrt(words.length);
    return { sentence, index, score, short: words.length < MIN_WORDS };
  });
  const ranked = scored.sort((a, b) => Number(a.short) - Number(b.short) || b.score - a.score || a.index - b.index);
  return ranked
    .slice(0, n)
    .sort((a, b) => a.index - b.index)
    .map((s) => s.sentence.text);
}
