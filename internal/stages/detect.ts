/**
 * The detect stage: media type from magic bytes (file-type), text formats by sniffing, the text
 * encoding, and the language of a text sample.
 */
import chardet from "chardet";
import { fileTypeFromBuffer } from "file-type";
import { identifyLanguage } from "./language.ts";
import { stripScriptsAndStyles, stripTags } from "./parsed-document.ts";
import { resolveDetectOptions, type DetectOptions, type StageContext } from "./options.ts";
import { sniffTextType, textTypeHint, TEXT_MEDIA_TYPES } from "./sniff-text.ts";

/** What detect needs of the ingest result (an IngestResult fits). */
export interface DetectInput {
  bytes: Uint8Array;
  filename?: string;
  mediaTypeHint?: string;
}

/** What detect hands to parse. */
export interface DetectResult {
  /** e.g. "application/pdf", "text/markdown"; "application/octet-stream" when unknown binary. */
  mediaType: string;
  /** WHATWG encoding label (lowercase) for text types, e.g. "utf-8", "windows-1252". */
  encoding?: string;
  /** ISO 639-3 code (e.g. "eng") of text types, when a sample is long enough to tell. */
  language?: string;
}

/** The media type of a binary nothing recognised; parse refuses it. */
export const OCTET_STREAM = "application/octet-stream";
const SAMPLE_BYTES = 64 * 1024;

/**
 * Detects the media type, encoding and language. Never throws for content: an unknown binary is
 * reported as application/octet-stream and rejected by parse.
 */
export async function detectStage(input: DetectInput, options: DetectOptions, ctx: StageContext): Promise<DetectResult> {
  const { skipLanguage } = resolveDetectOptions(options);
  ctx.signal.throwIfAborted();
  const magic = await fileTypeFromBuffer(input.bytes);
  ctx.signal.throwIfAborted();
  // file-type also recognises some XML-based text (e.g. SVG); those are documents we don't parse.
  if (magic) return { mediaType: magic.mime };
  const sample = input.bytes.subarray(0, SAMPLE_BYTES);
  const encoding = detectEncoding(sample);
  if (!encoding) return { mediaType: OCTET_STREAM };
  const text = decodeText(input.bytes, encoding);
  const mediaType = sniffTextType(text, textTypeHint(input.filename, input.mediaTypeHint));
  if (skipLanguage) return { mediaType, encoding };
  ctx.signal.throwIfAborted();
  const language = identifyLanguage(languageSample(text, mediaType));
  return language ? { mediaType, encoding, language } : { mediaType, encoding };
}

/** The encoding of a text sample, or undefined when the bytes do not look like text. */
export function detectEncoding(sample: Uint8Array): string | undefined {
  if (sample[0] === 0xef && sample[1] === 0xbb && sample[2] === 0xbf) return "utf-8";
  if (sample[0] === 0xff && sample[1] === 0xfe) return "utf-16le";
  if (sample[0] === 0xfe && sample[1] === 0xff) return "utf-16be";
  if (looksBinary(sample)) return undefined;
  try {
    // stream: true so a multi-byte character cut at the sample's end is not an error.
    new TextDecoder("utf-8", { fatal: true }).decode(sample, { stream: true });
    return "utf-8";
  } catch {
    const guess = chardet.detect(sample)?.toLowerCase();
    // UTF-16/32 without a BOM would have had NUL bytes, so such a guess is wrong; text that is
    // not UTF-8 and that chardet cannot place is most often legacy Western.
    if (!guess || guess.startsWith("utf-16") || guess.startsWith("utf-32")) return "windows-1252";
    return guess;
  }
}

/** Control bytes other than tab, newlines, form feed and escape mark a binary file. */
function looksBinary(sample: Uint8Array): boolean {
  let control = 0;
  for (const b of sample) {
    if (b === 0) return true;
    if (b < 0x20 && b !== 0x09 && b !== 0x0a && b !== 0x0c && b !== 0x0d && b !== 0x1b) control++;
  }
  return control > sample.length * 0.02;
}

/** Decodes bytes with a detected encoding; an encoding the runtime lacks falls back to UTF-8. */
export function decodeText(bytes: Uint8Array, encoding = "utf-8"): string {
  let decoder: TextDecoder;
  try {
    decoder = new TextDecoder(encoding);
  } catch {
    decoder = new TextDecoder("utf-8");
  }
  return decoder.decode(bytes);
}

/** Strips markup that would otherwise dominate a language guess. */
function languageSample(text: string, mediaType: string): string {
  const head = text.slice(0, 20_000);
  if (mediaType === TEXT_MEDIA_TYPES.html) {
    return stripTags(stripScriptsAndStyles(head, " "), " ");
  }
  if (mediaType === TEXT_MEDIA_TYPES.json) {
    return [...head.matchAll(/"((?:[^"\\]|\\.)*)"\s*(?=[,}\]])/g)].map((m) => m[1]).join(". ");
  }
  return head;
}
