/**
 * Fixture documents for the stage tests, made with real writer libraries (pdfkit, docx) or,
 * for PNG, by writing the format's chunks with node:zlib — never hand-typed bytes.
 */
import { crc32, deflateSync } from "node:zlib";
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
