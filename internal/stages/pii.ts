/**
 * PII detection: emails, phone numbers (libphonenumber-js), payment card numbers (Luhn) and
 * IBANs (country length + ISO 7064 mod-97). A finding carries offsets and a masked value only;
 * the raw value must not reach logs or results.
 */
import { findPhoneNumbersInText, getCountries, Metadata, type CountryCode } from "libphonenumber-js";

/** The kinds of PII findPii looks for. */
export type PiiKind = "email" | "phone" | "card" | "iban";

/** One match: where it is in the text and a masked form safe to show. */
export interface PiiFinding {
  kind: PiiKind;
  start: number;
  end: number;
  masked: string;
}

const EMAIL = /(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}\b/g;
const CARD = /(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])/g;
const IBAN = /\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,31}/g;

// Registered IBAN lengths by country (SWIFT IBAN registry); other prefixes are not IBANs.
const IBAN_LENGTHS: Record<string, number> = Object.fromEntries(
  ("AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BI27 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DJ27 DK18 " +
    "DO28 EE20 EG29 ES24 FI18 FK18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HN28 HR21 HU28 IE22 IL23 " +
    "IQ23 IS26 IT27 JO30 KW30 KZ20 LB28 LC32 LI21 LT20 LU20 LV21 LY25 MC27 MD24 ME22 MK19 MN20 MR27 " +
    "MT31 MU30 NI28 NL18 NO15 OM23 PK24 PL28 PS29 PT25 QA29 RO24 RS22 RU33 SA24 SC31 SD18 SE24 SI19 " +
    "SK24 SM27 SO23 ST25 SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20 YE30")
    .split(" ").map((e) => [e.slice(0, 2), Number(e.slice(2))]),
);

/** Luhn checksum over a digit string (payment cards, ISO/IEC 7812). */
export function isLuhnValid(digits: string): boolean {
  if (!/^\d+$/.test(digits)) return false;
  let sum = 0;
  for (let i = 0; i < digits.length; i++) {
    let d = digits.charCodeAt(digits.length - 1 - i) - 48;
    if (i % 2 === 1) d = d * 2 > 9 ? d * 2 - 9 : d * 2;
    sum += d;
  }
  return sum % 10 === 0;
}

/** An IBAN (spaces allowed) with its country's registered length and a valid mod-97 check. */
export function isValidIban(iban: string): boolean {
  const compact = iban.replace(/ /g, "").toUpperCase();
  if (!/^[A-Z]{2}\d{2}[A-Z0-9]+$/.test(compact) || IBAN_LENGTHS[compact.slice(0, 2)] !== compact.length) return false;
  const rearranged = compact.slice(4) + compact.slice(0, 4);
  let remainder = 0;
  for (const ch of rearranged) {
    const value = ch >= "A" ? String(ch.charCodeAt(0) - 55) : ch;
    for (const digit of value) remainder = (remainder * 10 + Number(digit)) % 97;
  }
  return remainder === 1;
}

/** Replaces the characters matching `which` with '*', except the first `lead` and the last `visible`. */
function maskTail(value: string, which: RegExp, visible: number, lead = 0): string {
  const total = [...value].filter((c) => which.test(c)).length;
  let seen = 0;
  return [...value].map((c) => {
    if (!which.test(c)) return c;
    seen++;
    return seen <= lead || seen > total - visible ? c : "*";
  }).join("");
}

function maskEmail(email: string): string {
  const at = email.lastIndexOf("@");
  return `${email[0]}***${email.slice(at)}`;
}

/** Shortest national significant number of a region, or of every region for undefined. */
const shortestNumber = (() => {
  const metadata = new Metadata();
  const byRegion = new Map<string, number>();
  for (const region of getCountries()) {
    metadata.selectNumberingPlan(region);
    byRegion.set(region, Math.min(...metadata.numberingPlan!.possibleLengths()));
  }
  const anywhere = Math.min(...byRegion.values());
  return (region: string | undefined) => (region && byRegion.get(region)) || anywhere;
})();

/** Digits in a row, with what phone numbers put between them. */
const DIGIT_RUN = /\d(?:[\s().\-/]*\d)*/g;

/**
 * Whether a text can hold a phone number at all. libphonenumber costs a fraction of a
 * millisecond per short text, most of it refusing numbers like "2291" or "3.50"; a text whose
 * longest run of digits is shorter than any number it could find (one written in the region, or
 * one with a country code: at least one digit more than the shortest number anywhere) is skipped.
 */
function mayHoldPhoneNumber(text: string, region: string | undefined): boolean {
  const fewest = Math.min(shortestNumber(region), shortestNumber(undefined) + 1);
  for (const m of text.matchAll(DIGIT_RUN)) {
    let digits = 0;
    for (const c of m[0]) if (c >= "0" && c <= "9") digits++;
    if (digits >= fewest) return true;
  }
  return false;
}

/** Finds PII; overlapping matches go to the most specific kind (IBAN, card, email, phone). */
export function findPii(text: string, phoneRegion?: string): PiiFinding[] {
  const candidates: PiiFinding[] = [];
  for (const m of text.matchAll(IBAN)) {
    const compact = m[0].replace(/ /g, "");
    const length = IBAN_LENGTHS[compact.slice(0, 2)];
    if (!length || compact.length < length) continue;
    // The pattern can run on into a following word; cut the match at the registered length.
    let end = m.index;
    for (let chars = 0; chars < length; end++) if (text[end] !== " ") chars++;
    const value = text.slice(m.index, end);
    if (/[A-Z0-9]/.test(text[end] ?? "") || !isValidIban(value)) continue;
    candidates.push({ kind: "iban", start: m.index, end, masked: maskTail(value, /[A-Z0-9]/, 4, 4) });
  }
  for (const m of text.matchAll(CARD)) {
    const digits = m[0].replace(/\D/g, "");
    if (digits.length < 13 || /^(\d)\1+$/.test(digits) || !isLuhnValid(digits)) continue;
    candidates.push({ kind: "card", start: m.index, end: m.index + m[0].length, masked: maskTail(m[0], /\d/, 4) });
  }
  for (const m of text.matchAll(EMAIL)) {
    candidates.push({ kind: "email", start: m.index, end: m.index + m[0].length, masked: maskEmail(m[0]) });
  }
  const region = phoneRegion as CountryCode | undefined;
  const phones = mayHoldPhoneNumber(text, region) ? findPhoneNumbersInText(text, region ? { defaultCountry: region } : undefined) : [];
  for (const p of phones) {
    const raw = text.slice(p.startsAt, p.endsAt);
    candidates.push({ kind: "phone", start: p.startsAt, end: p.endsAt, masked: maskTail(raw, /\d/, 2) });
  }
  return withoutOverlaps(candidates);
}

const PRIORITY: Record<PiiKind, number> = { iban: 0, card: 1, email: 2, phone: 3 };

/**
 * The candidates that overlap no candidate of a more specific kind (or an earlier one of the
 * same kind), sorted by start. One sort and one sweep per kind, so a document with hundreds of
 * thousands of findings costs O(n log n), not the O(n²) of checking each against all accepted.
 */
function withoutOverlaps(candidates: readonly PiiFinding[]): PiiFinding[] {
  let accepted: PiiFinding[] = [];
  for (const kind of Object.keys(PRIORITY) as PiiKind[]) {
    const ofKind = candidates.filter((c) => c.kind === kind).sort((a, b) => a.start - b.start);
    if (ofKind.length === 0) continue;
    // `accepted` never overlaps itself, so sorted by start it is sorted by end too: the one
    // accepted finding that can overlap a candidate is the first that ends after its start.
    const kept: PiiFinding[] = [];
    let i = 0;
    let keptEnd = -1;
    for (const c of ofKind) {
      while (i < accepted.length && accepted[i]!.end <= c.start) i++;
      const clashes = (i < accepted.length && accepted[i]!.start < c.end) || c.start < keptEnd;
      if (clashes) continue;
      kept.push(c);
      keptEnd = c.end;
    }
    accepted = mergeByStart(accepted, kept);
  }
  return accepted;
}

/** Two arrays sorted by start, merged into one sorted by start. */
function mergeByStart(a: readonly PiiFinding[], b: readonly PiiFinding[]): PiiFinding[] {
  const out: PiiFinding[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (j >= b.length || (i < a.length && a[i]!.start <= b[j]!.start)) out.push(a[i++]!);
    else out.push(b[j++]!);
  }
  return out;
}

const PLACEHOLDERS: Record<PiiKind, string> = { email: "[EMAIL]", phone: "[PHONE]", card: "[CARD]", iban: "[IBAN]" };

/** The text with every finding replaced by its placeholder ([EMAIL], [PHONE], [CARD], [IBAN]). */
export function redactPii(text: string, findings: readonly PiiFinding[]): string {
  let out = "";
  let at = 0;
  for (const f of [...findings].sort((a, b) => a.start - b.start)) {
    if (f.start < at) continue;
    out += text.slice(at, f.start) + PLACEHOLDERS[f.kind];
    at = f.end;
  }
  return out + text.slice(at);
}

/** Matches the placeholders redactPii writes, so later steps can skip them. */
export const PLACEHOLDER_PATTERN = /\[(?:EMAIL|PHONE|CARD|IBAN)\]/g;
