/**
 * Fixture documents for the stage tests, made with real writer libraries (pdfkit, docx) or,
 * for PNG, zip and hostile PDFs, by writing the format's records with node:zlib — never
 * hand-typed bytes.
 */
import { constants, crc32, createDeflate, deflateRawSync, deflateSync } from "node:zlib";
import {
  AlignmentType, Document, ExternalHyperlink, HeadingLevel, Packer, Paragraph, Table, TableCell, TableRow, TextRun,
} from "docx";
import PDFDocument from "pdfkit";

/** Paragraph text used in several fixtures: enough English for language identification. */
export const PROSE =
  "Document processing pipelines turn raw files into structured text. Every worker reads the job, " +
  "extracts the text and records the result. Reliable pipelines retry transient failures and stop " +
  "at permanent ones.";

/** A PDF with one paragraph per page, an outline entry per page and a link on the first page. */
export async function makePdf(pages: string[], link?: { text: string; url: string }): Promise<Uint8Array> {
  const doc = new PDFDocument({ autoFirstPage: false, compress: true, info: { Title: "fixture" } });
  const chunks: Buffer[] = [];
  doc.on("data", (c: Buffer) => chunks.push(c));
  const done = new Promise<void>((resolve, reject) => {
    doc.on("end", () => resolve());
    doc.on("error", reject);
  });
  pages.forEach((text, i) => {
    doc.addPage({ size: "A4" });
    doc.fontSize(12).text(text, { width: 450 });
    doc.outline.addItem(`Section ${i + 1}`);
    if (i === 0 && link) doc.moveDown().fillColor("blue").text(link.text, { link: link.url, underline: true });
  });
  doc.end();
  await done;
  return new Uint8Array(Buffer.concat(chunks));
}

/** A DOCX with a title heading, a subheading, a paragraph with a hyperlink and a 2×3 table. */
export async function makeDocx(): Promise<Uint8Array> {
  const cell = (text: string) => new TableCell({ children: [new Paragraph(text)] });
  const doc = new Document({
    sections: [{
      children: [
        new Paragraph({ text: "Quarterly Report", heading: HeadingLevel.HEADING_1 }),
        new Paragraph({ text: PROSE }),
        new Paragraph({ text: "Revenue by Region", heading: HeadingLevel.HEADING_2, alignment: AlignmentType.LEFT }),
        new Paragraph({
          children: [
            new TextRun("Details are on "),
            new ExternalHyperlink({ link: "https://example.com/report", children: [new TextRun({ text: "the report site", style: "Hyperlink" })] }),
            new TextRun("."),
          ],
        }),
        new Table({
          rows: [
            new TableRow({ children: [cell("Region"), cell("Revenue")] }),
            new TableRow({ children: [cell("North"), cell("120")] }),
            new TableRow({ children: [cell("South"), cell("95")] }),
          ],
        }),
      ],
    }],
  });
  return new Uint8Array(await Packer.toBuffer(doc));
}

/** A real 2×2 RGB PNG: signature, IHDR, zlib-compressed IDAT with filter bytes, IEND. */
export function makePng(): Uint8Array {
  const chunk = (type: string, data: Buffer): Buffer => {
    const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([len, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(2, 0);
  ihdr.writeUInt32BE(2, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit RGB, deflate, no filter method variants, no interlace
  const scanlines = Buffer.from([0, 255, 0, 0, 0, 255, 0, 0, 0, 0, 255, 255, 255, 255]);
  return new Uint8Array(Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(scanlines)),
    chunk("IEND", Buffer.alloc(0)),
  ]));
}

/** One zip entry: its name, its content, and optionally the uncompressed size its headers claim. */
export interface ZipEntry {
  name: string;
  data: Buffer;
  declaredSize?: number;
}

/**
 * A zip (deflated entries, local headers, central directory, end record) as APPNOTE 6.3 lays it
 * out. `declaredSize` lets a test write headers that lie, as a zip bomb's do.
 */
export function makeZip(entries: ZipEntry[]): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name, "utf8");
    const packed = deflateRawSync(e.data);
    const size = e.declaredSize ?? e.data.length;
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4); // version needed
    local.writeUInt16LE(0x0800, 6); // UTF-8 names
    local.writeUInt16LE(8, 8); // deflate
    local.writeUInt32LE(crc32(e.data), 14);
    local.writeUInt32LE(packed.length, 18);
    local.writeUInt32LE(size, 22);
    local.writeUInt16LE(name.length, 26);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE(20, 4);
    central.writeUInt16LE(20, 6);
    central.writeUInt16LE(0x0800, 8);
    central.writeUInt16LE(8, 10);
    central.writeUInt32LE(crc32(e.data), 16);
    central.writeUInt32LE(packed.length, 20);
    central.writeUInt32LE(size, 24);
    central.writeUInt16LE(name.length, 28);
    central.writeUInt32LE(offset, 42);
    locals.push(local, name, packed);
    centrals.push(central, name);
    offset += local.length + name.length + packed.length;
  }
  const directory = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(directory.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, directory, end]);
}

/** The parts of the smallest DOCX mammoth reads: one paragraph holding `text` (XML-safe). */
export function docxEntries(text: string | Buffer, declaredDocumentSize?: number): ZipEntry[] {
  const body = typeof text === "string" ? Buffer.from(text) : text;
  return [
    {
      name: "[Content_Types].xml",
      data: Buffer.from('<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">' +
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>' +
        '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'),
    },
    {
      name: "_rels/.rels",
      data: Buffer.from('<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">' +
        '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/></Relationships>'),
    },
    {
      name: "word/document.xml",
      data: Buffer.concat([
        Buffer.from('<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body><w:p><w:r><w:t>'),
        body,
        Buffer.from("</w:t></w:r></w:p></w:body></w:document>"),
      ]),
      declaredSize: declaredDocumentSize,
    },
  ];
}

/**
 * zlib data of `stored` in a stored (uncompressed) block, so its bytes appear as they are,
 * followed by `packed` compressed at the highest level.
 */
export async function deflateStoredThenPacked(stored: Buffer, packed: Buffer): Promise<Buffer> {
  const deflate = createDeflate({ level: 0 });
  const chunks: Buffer[] = [];
  deflate.on("data", (c: Buffer) => chunks.push(c));
  const ended = new Promise((resolve) => deflate.on("end", resolve));
  deflate.write(stored);
  await new Promise<void>((resolve) => deflate.params(9, constants.Z_DEFAULT_STRATEGY, () => resolve()));
  deflate.end(packed);
  await ended;
  return Buffer.concat(chunks);
}

/**
 * A one-page PDF whose page content is `content`, Flate-compressed `layers` times (each layer
 * one /FlateDecode of the filter chain; 0 when `content` is Flate data already), with a correct
 * xref table.
 */
export function makeFlatePdf(content: Buffer, layers = 1): Buffer {
  let data = content;
  for (let i = 0; i < layers; i++) data = deflateSync(data);
  const filter = layers <= 1 ? "/FlateDecode" : `[${Array(layers).fill("/FlateDecode").join(" ")}]`;
  const objects = [
    Buffer.from("<< /Type /Catalog /Pages 2 0 R >>"),
    Buffer.from("<< /Type /Pages /Kids [3 0 R] /Count 1 >>"),
    Buffer.from("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << >> >>"),
    Buffer.concat([Buffer.from(`<< /Length ${data.length} /Filter ${filter} >>\nstream\n`), data, Buffer.from("\nendstream")]),
  ];
  const parts: Buffer[] = [Buffer.from("%PDF-1.4\n")];
  const offsets: number[] = [];
  let at = parts[0]!.length;
  objects.forEach((body, i) => {
    const obj = Buffer.concat([Buffer.from(`${i + 1} 0 obj\n`), body, Buffer.from("\nendobj\n")]);
    offsets.push(at);
    parts.push(obj);
    at += obj.length;
  });
  const xref = `xref\n0 ${objects.length + 1}\n0000000000 65535 f \n` +
    offsets.map((o) => `${String(o).padStart(10, "0")} 00000 n \n`).join("") +
    `trailer\n<< /Size ${objects.length + 1} /Root 1 0 R >>\nstartxref\n${at}\n%%EOF\n`;
  parts.push(Buffer.from(xref));
  return Buffer.concat(parts);
}
