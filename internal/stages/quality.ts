/**
 * A 0–1 quality score of extracted text with the reasons it lost points. It flags text that
 * is probably not worth indexing or summarising: empty or tiny, mostly symbols (a scan without
 * OCR, a binary mis-decoded), mojibake, or a word list without sentences.
 */
import type { TextCounts } from "./text-units.ts";

/** Stable codes of what lowered a quality score. */
export type QualityReason =
  | "empty"
  | "too_short"
  | "mostly_non_letters"
  | "replacement_characters"
  | "control_characters"
  | "no_sentences"
  | "repetitive";

/** Score (1 = nothing wrong) and the stable reason codes behind any deduction. */
export interface QualityAssessment {
  score: number;
  reasons: QualityReason[];
}

/** Below this many words a text rarely carries a document's worth of content. */
const SHORT_WORDS = 50;

/** Scores text; `counts` are the text's own counts from countText. */
export function assessQuality(text: string, counts: TextCounts, uniqueWords: number): QualityAssessment {
  if (text.trim() === "" || counts.words === 0) return { score: 0, reasons: ["empty"] };
  const reasons: QualityReason[] = [];
  let score = 1;
  const penalise = (reason: QualityReason, points: number): void => {
    reasons.push(reason);
    score -= points;
  };

  if (counts.words < SHORT_WORDS) penalise("too_short", counts.words < 5 ? 0.5 : 0.25);

  let visible = 0;
  let letters = 0;
  let replacement = 0;
  let control = 0;
  for (const ch of text) {
    if (ch === "\uFFFD") replacement++;
    else if (/[\p{Cc}]/u.test(ch) && ch !== "\n" && ch !== "\t" && ch !== "\r") control++;
    if (/\s/u.test(ch)) continue;
    visible++;
    if (/\p{L}/u.test(ch)) letters++;
  }
  if (visible > 0 && letters / visible < 0.5) penalise("mostly_non_letters", 0.3);
  // One U+FFFD is a stray byte; more than 1 in 1000 characters is a wrong encoding.
  if (replacement > 0) penalise("replacement_characters", replacement / counts.characters > 0.001 ? 0.3 : 0.1);
  if (control > 0) penalise("control_characters", 0.1);
  if (!/[.!?。！？؟।]/u.test(text)) penalise("no_sentences", 0.2);
  if (counts.words >= SHORT_WORDS && uniqueWords / counts.words < 0.15) penalise("repetitive", 0.2);

  return { score: Math.max(0, Math.round(score * 100) / 100), reasons };
}
