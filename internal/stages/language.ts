/**
 * Language identification shared by detect and enrich: franc-min (the ~80 most spoken
 * languages, trigram model, no network) on a bounded sample.
 */
import { franc } from "franc-min";

/** Characters looked at; more adds time, not accuracy. */
const SAMPLE_CHARS = 4000;
/** Below this many letters franc's guesses are mostly noise. */
const MIN_LETTERS = 20;

/** ISO 639-3 code of the text's language, or undefined when it cannot be told. */
export function identifyLanguage(text: string): string | undefined {
  const sample = text.slice(0, SAMPLE_CHARS);
  const letters = sample.match(/\p{L}/gu)?.length ?? 0;
  if (letters < MIN_LETTERS) return undefined;
  const code = franc(sample, { minLength: MIN_LETTERS });
  return code === "und" ? undefined : code;
}

/**
 * The BCP 47 tag of a language code, as the API promises ("eng" → "en", "cmn" → "zh"; a tag
 * already canonical stays as it is). Stages work with franc's ISO 639-3 codes (stopword lists
 * are keyed by them); results speak BCP 47. Intl canonicalises with CLDR's alias data, which
 * maps every ISO 639-3 code that has a two-letter form to it.
 */
export function bcp47Tag(code: string): string {
  try {
    return Intl.getCanonicalLocales(code)[0] ?? code;
  } catch {
    return code;
  }
}
