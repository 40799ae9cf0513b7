/**
 * The text of a large result, read out of its stored JobResult JSON chunk by chunk: the bytes of
 * the top-level "text" string, unescaped, without ever holding the object (tens of MiB) or the
 * text whole. The JSON is what resultObjectJson wrote (protobuf JSON, JSON.stringify's escapes),
 * but any valid JSON object is read correctly: nested "text" keys (links) are skipped by depth.
 */

const quote = 0x22;
const backslash = 0x5c;
/** U+FFFD in UTF-8: what TextEncoder writes for a lone surrogate, so the bytes match encoding the whole text. */
const replacement = Uint8Array.of(0xef, 0xbf, 0xbd);
const simpleEscapes: Record<number, number> = { 0x22: 0x22, 0x5c: 0x5c, 0x2f: 0x2f, 0x62: 0x08, 0x66: 0x0c, 0x6e: 0x0a, 0x72: 0x0d, 0x74: 0x09 };
const textKey = "text";

/** Incremental extractor: push() chunks of the JSON, get back pieces of the text's UTF-8 bytes. */
export class ResultTextExtractor {
  #state: "scan" | "text" | "done" = "scan";
  // Scanning the structure around the text.
  #depth = 0;
  #inString = false;
  #escaped = false;
  #expectKey = false;
  #keyBytes: number[] | undefined;
  #lastKey: string | undefined;
  #afterColon = false;
  // Inside the text: an escape sequence split across chunks, and a high surrogate awaiting its pair.
  #escape: number[] | undefined;
  #highSurrogate: number | undefined;

  /** True once the text's closing quote was read (or the object has no text). */
  get done(): boolean {
    return this.#state === "done";
  }

  /** The text bytes this chunk holds, in order (views into `chunk` where nothing was escaped). */
  push(chunk: Uint8Array): Uint8Array[] {
    const out: Uint8Array[] = [];
    let i = 0;
    while (i < chunk.length && this.#state !== "done") {
      if (this.#state === "scan") i = this.#scan(chunk, i);
      else i = this.#text(chunk, i, out);
    }
    return out;
  }

  /** Walks the JSON structure until the value of the top-level "text" key begins. */
  #scan(chunk: Uint8Array, start: number): number {
    for (let i = start; i < chunk.length; i++) {
      const b = chunk[i];
      if (this.#inString) {
        if (this.#escaped) this.#escaped = false;
        else if (b === backslash) this.#escaped = true;
        else if (b === quote) {
          this.#inString = false;
          if (this.#keyBytes) {
            this.#lastKey = String.fromCharCode(...this.#keyBytes);
            this.#keyBytes = undefined;
          }
        } else if (this.#keyBytes && this.#keyBytes.length <= textKey.length) this.#keyBytes.push(b);
        continue;
      }
      if (b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09) continue;
      if (this.#afterColon) {
        this.#afterColon = false;
        if (b === quote && this.#depth === 1 && this.#lastKey === textKey) {
          this.#state = "text";
          return i + 1;
        }
      }
      if (b === quote) {
        this.#inString = true;
        // A key of the top-level object (a longer one is only collected far enough to differ).
        this.#keyBytes = this.#depth === 1 && this.#expectKey ? [] : undefined;
        if (this.#keyBytes) this.#lastKey = undefined;
        this.#expectKey = false;
      } else if (b === 0x7b || b === 0x5b) {
        this.#depth++;
        this.#expectKey = b === 0x7b && this.#depth === 1;
      } else if (b === 0x7d || b === 0x5d) {
        this.#depth--;
        if (this.#depth === 0) {
          this.#state = "done"; // The object ended without a text (an empty text is left out).
          return chunk.length;
        }
      } else if (b === 0x2c) {
        this.#expectKey = this.#depth === 1;
      } else if (b === 0x3a) {
        this.#afterColon = this.#depth === 1;
      }
    }
    return chunk.length;
  }

  /** Copies the text's bytes up to the closing quote, decoding escapes. */
  #text(chunk: Uint8Array, start: number, out: Uint8Array[]): number {
    let run = start;
    let i = start;
    const flush = (end: number) => {
      if (end > run) {
        this.#pending(out);
        out.push(chunk.subarray(run, end));
      }
    };
    for (; i < chunk.length; i++) {
      const b = chunk[i];
      if (this.#escape) {
        // Escape bytes are never text as they stand: the run starts after them.
        this.#escape.push(b);
        this.#escapeDone(out);
        run = i + 1;
        continue;
      }
      if (b === backslash) {
        flush(i);
        this.#escape = [];
        run = i + 1;
      } else if (b === quote) {
        flush(i);
        this.#pending(out);
        this.#state = "done";
        return chunk.length;
      }
    }
    flush(i);
    return chunk.length;
  }

  /** Decodes the escape in #escape once complete. */
  #escapeDone(out: Uint8Array[]): void {
    const e = this.#escape!;
    if (e[0] !== 0x75) {
      const byte = simpleEscapes[e[0]];
      if (byte === undefined) throw new Error(`invalid JSON escape \\${String.fromCharCode(e[0])} in a stored result`);
      this.#pending(out);
      out.push(Uint8Array.of(byte));
      this.#escape = undefined;
      return;
    }
    if (e.length < 5) return;
    const unit = parseInt(String.fromCharCode(...e.slice(1)), 16);
    if (Number.isNaN(unit)) throw new Error("invalid \\u escape in a stored result");
    this.#escape = undefined;
    if (unit >= 0xdc00 && unit <= 0xdfff && this.#highSurrogate !== undefined) {
      const code = 0x10000 + ((this.#highSurrogate - 0xd800) << 10) + (unit - 0xdc00);
      this.#highSurrogate = undefined;
      out.push(new TextEncoder().encode(String.fromCodePoint(code)));
      return;
    }
    this.#pending(out);
    if (unit >= 0xd800 && unit <= 0xdbff) this.#highSurrogate = unit;
    else if (unit >= 0xdc00 && unit <= 0xdfff) out.push(replacement);
    else out.push(new TextEncoder().encode(String.fromCharCode(unit)));
  }

  /** A high surrogate not followed by its low half: it stands alone. */
  #pending(out: Uint8Array[]) {
    if (this.#highSurrogate === undefined) return;
    this.#highSurrogate = undefined;
    out.push(replacement);
  }
}
