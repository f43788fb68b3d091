// Downloads: masks as PNG files in a ZIP archive (a small store-only writer, no library) and COCO JSON.

import { bboxXywh, fullBits } from "./masks.js";

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n += 1) {
    let c = n;
    for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 (the ZIP / PNG polynomial) of a byte array, as an unsigned 32-bit number. */
export function crc32(bytes) {
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i += 1) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

function dosDateTime(date) {
  const time = (date.getHours() << 11) | (date.getMinutes() << 5) | Math.floor(date.getSeconds() / 2);
  const day = ((date.getFullYear() - 1980) << 9) | ((date.getMonth() + 1) << 5) | date.getDate();
  return [time & 0xffff, day & 0xffff];
}

/**
 * A ZIP archive (method 0, "stored": PNGs are already compressed) of `files` [{name, bytes: Uint8Array}].
 * Returns a Blob. Names are UTF-8 (general-purpose flag bit 11). No ZIP64: fine below 4 GiB.
 */
export function zipStore(files, date = new Date()) {
  const encoder = new TextEncoder();
  const [time, day] = dosDateTime(date);
  const parts = [];
  const central = [];
  let offset = 0;
  for (const file of files) {
    const name = encoder.encode(file.name);
    const crc = crc32(file.bytes);
    const size = file.bytes.length;
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true); // local file header signature
    local.setUint16(4, 10, true); // version needed: 1.0 (stored)
    local.setUint16(6, 0x0800, true); // UTF-8 names
    local.setUint16(8, 0, true); // method: stored
    local.setUint16(10, time, true);
    local.setUint16(12, day, true);
    local.setUint32(14, crc, true);
    local.setUint32(18, size, true); // compressed size
    local.setUint32(22, size, true); // uncompressed size
    local.setUint16(26, name.length, true);
    local.setUint16(28, 0, true); // extra field length
    parts.push(local.buffer, name, file.bytes);
    const entry = new DataView(new ArrayBuffer(46));
    entry.setUint32(0, 0x02014b50, true); // central directory signature
    entry.setUint16(4, 20, true); // version made by
    entry.setUint16(6, 10, true);
    entry.setUint16(8, 0x0800, true);
    entry.setUint16(10, 0, true);
    entry.setUint16(12, time, true);
    entry.setUint16(14, day, true);
    entry.setUint32(16, crc, true);
    entry.setUint32(20, size, true);
    entry.setUint32(24, size, true);
    entry.setUint16(28, name.length, true);
    // 30: extra length, 32: comment length, 34: disk number, 36: internal attributes: all 0
    entry.setUint32(38, 0, true); // external attributes
    entry.setUint32(42, offset, true); // where the local header starts
    central.push(entry.buffer, name);
    offset += 30 + name.length + size;
  }
  const centralSize = central.reduce((total, part) => total + part.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true); // end of central directory signature
  end.setUint16(8, files.length, true); // entries on this disk
  end.setUint16(10, files.length, true); // entries in total
  end.setUint32(12, centralSize, true);
  end.setUint32(16, offset, true); // where the central directory starts
  return new Blob([...parts, ...central, end.buffer], { type: "application/zip" });
}

/** A mask as a PNG the size of the image: white (255) where set, black elsewhere. Uint8Array of the file. */
export async function maskPngBytes(mask) {
  const canvas = document.createElement("canvas");
  canvas.width = mask.width;
  canvas.height = mask.height;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(mask.width, mask.height);
  const bits = fullBits(mask);
  for (let i = 0; i < bits.length; i += 1) {
    const value = bits[i] ? 255 : 0;
    pixels.data[4 * i] = value;
    pixels.data[4 * i + 1] = value;
    pixels.data[4 * i + 2] = value;
    pixels.data[4 * i + 3] = 255;
  }
  context.putImageData(pixels, 0, 0);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  return new Uint8Array(await blob.arrayBuffer());
}

/** `entries` [{mask, label, source}] -> ZIP Blob of mask_000.png, ... and masks.json describing them. */
export async function masksZip(entries, imageName) {
  const files = [];
  const index = [];
  for (const [i, entry] of entries.entries()) {
    const name = `mask_${String(i).padStart(3, "0")}.png`;
    files.push({ name, bytes: await maskPngBytes(entry.mask) });
    index.push({ file: name, score: entry.mask.score, area: entry.mask.area, bbox: bboxXywh(entry.mask),
      source: entry.source, label: entry.label || null });
  }
  const about = { image: imageName, width: entries[0]?.mask.width, height: entries[0]?.mask.height, masks: index };
  files.push({ name: "masks.json", bytes: new TextEncoder().encode(JSON.stringify(about, null, 2)) });
  return zipStore(files);
}

/** COCO instance-segmentation JSON (one image, RLE segmentations as the server sent them). */
export function cocoJson(entries, imageName, width, height) {
  const labels = [...new Set(entries.map((entry) => entry.label || "object"))];
  const categories = labels.map((name, i) => ({ id: i + 1, name, supercategory: "object" }));
  const annotations = entries.map((entry, i) => ({
    id: i + 1,
    image_id: 1,
    category_id: labels.indexOf(entry.label || "object") + 1,
    segmentation: { size: entry.mask.rle.size, counts: entry.mask.rle.counts },
    area: entry.mask.area,
    bbox: bboxXywh(entry.mask),
    iscrowd: 0,
    score: entry.mask.score,
  }));
  const document = {
    info: { description: "masks made with segany", date_created: new Date().toISOString() },
    images: [{ id: 1, file_name: imageName, width, height }],
    annotations,
    categories,
  };
  return new Blob([JSON.stringify(document)], { type: "application/json" });
}

/** Let the browser save a Blob under `fileName`. */
export function download(blob, fileName) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = fileName;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
