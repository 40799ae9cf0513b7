/**
 * Words and sentences by Unicode segmentation (Intl.Segmenter, UAX #29), so counting works
 * for scripts without spaces too and needs no tokenizer dependency.
 */

const wordSegmenter = new Intl.Segmenter(undefined, { granularity: "word" });
const sentenceSegmenter = new Intl.Segmenter(undefined, { granularity: "sentence" });

/** A sentence with its offsets in the text it came from. */
export interface Sentence {
  text: string;
  start: number;
  end: number;
}

/** The word-like segments of a text (punctuation and spaces dropped), as written. */
export function wordsOf(text: string): string[] {
  const words: string[] = [];
  for (const s of wordSegmenter.segment(text)) if (s.isWordLike) words.push(s.segment);
  return words;
}

/** Sentences that contain a letter or digit; a line break also ends a sentence (UAX #29). */
export function sentencesOf(text: string): Sentence[] {
  const sentences: Sentence[] = [];
  for (const s of sentenceSegmenter.segment(text)) {
    const trimmed = s.segment.trim();
    if (!/[\p{L}\p{N}]/u.test(trimmed)) continue;
    // The leading whitespace's length (an indexOf of the trimmed text could cost its length times that).
    const start = s.index + s.segment.length - s.segment.trimStart().length;
    sentences.push({ text: trimmed, start, end: start + trimmed.length });
  }
  return sentences;
}

/** Counts the enrich stage reports. */
export interface TextCounts {
  /** Unicode code points. */
  characters: number;
  words: number;
  sentences: number;
  /** Blocks separated by blank lines. */
  paragraphs: number;
}

/** Counts of a text; pass sentences and words when the caller has already segmented them. */
export function countText(
  text: string,
  sentences: readonly Sentence[] = sentencesOf(text),
  words: readonly string[] = wordsOf(text),
): TextCounts {
  let characters = 0;
  for (const _ of text) characters++;
  return {
    characters,
    words: words.length,
    sentences: sentences.length,
    paragraphs: text.split(/\n\s*\n/).filter((p) => p.trim() !== "").length,
  };
}
