// Masks on the page: COCO compressed RLE -> bits, coloured overlay layers with outlines, hit tests.
//
// A mask keeps only its bounding window (x0, y0, w, h) so a hundred "Segment everything" masks on a large
// photo do not each hold a full-size canvas.

/** COCO compressed RLE counts string -> run lengths (pycocotools' rleFrString). */
export function rleCountsFromString(text) {
  const counts = [];
  let position = 0;
  while (position < text.length) {
    let value = 0;
    let shift = 0;
    let more = true;
    let chunk = 0;
    while (more) {
      chunk = text.charCodeAt(position) - 48;
      // Multiplication, not <<: runs of large images need more than 32 bits of intermediate shift.
      value += (chunk & 0x1f) * 2 ** shift;
      more = (chunk & 0x20) !== 0;
      position += 1;
      shift += 5;
      if (!more && (chunk & 0x10)) value -= 2 ** shift; // sign-extend the last 5-bit group
    }
    if (counts.length > 2) value += counts[counts.length - 2]; // runs after the second are deltas
    counts.push(value);
  }
  return counts;
}

/** COCO RLE {size: [h, w], counts} -> {width, height, x0, y0, w, h, bits (Uint8Array w*h, row-major), area}. */
export function decodeRle(rle) {
  const [height, width] = rle.size;
  const counts = typeof rle.counts === "string" ? rleCountsFromString(rle.counts) : rle.counts;
  // First pass: the bounding window of set pixels (runs walk the image column by column).
  let x0 = width, y0 = height, x1 = -1, y1 = -1, index = 0, area = 0;
  for (let k = 0; k < counts.length; k += 1) {
    const run = counts[k];
    if (k % 2 === 1 && run > 0) {
      const first = index, last = index + run - 1;
      const colFirst = Math.floor(first / height), colLast = Math.floor(last / height);
      x0 = Math.min(x0, colFirst);
      x1 = Math.max(x1, colLast);
      // A run spanning a column boundary touches the top and bottom rows.
      y0 = Math.min(y0, colFirst === colLast ? first % height : 0);
      y1 = Math.max(y1, colFirst === colLast ? last % height : height - 1);
      area += run;
    }
    index += run;
  }
  if (area === 0) return { width, height, x0: 0, y0: 0, w: 0, h: 0, bits: new Uint8Array(0), area: 0 };
  const w = x1 - x0 + 1, h = y1 - y0 + 1;
  const bits = new Uint8Array(w * h);
  index = 0;
  for (let k = 0; k < counts.length; k += 1) {
    const run = counts[k];
    if (k % 2 === 1) {
      let col = Math.floor(index / height), row = index % height;
      for (let n = 0; n < run; n += 1) {
        bits[(row - y0) * w + (col - x0)] = 1;
        row += 1;
        if (row === height) { row = 0; col += 1; }
      }
    }
    index += run;
  }
  return { width, height, x0, y0, w, h, bits, area };
}

/** Distinct, stable colours: golden-angle hues. Returns [r, g, b] 0..255. */
export function colorFor(index) {
  const hue = (index * 137.508 + 200) % 360;
  return hslToRgb(hue, 0.75, 0.55);
}

function hslToRgb(hue, saturation, lightness) {
  const chroma = (1 - Math.abs(2 * lightness - 1)) * saturation;
  const x = chroma * (1 - Math.abs(((hue / 60) % 2) - 1));
  const m = lightness - chroma / 2;
  const [r, g, b] = hue < 60 ? [chroma, x, 0] : hue < 120 ? [x, chroma, 0] : hue < 180 ? [0, chroma, x]
    : hue < 240 ? [0, x, chroma] : hue < 300 ? [x, 0, chroma] : [chroma, 0, x];
  return [Math.round((r + m) * 255), Math.round((g + m) * 255), Math.round((b + m) * 255)];
}

/** Pixels within `radius` of the mask's edge (mask minus its erosion by a square), row-major w*h. */
function edgeBits(bits, w, h, radius) {
  // Separable erosion: a pixel survives when every pixel in its (2r+1)^2 square is set; outside is unset.
  const horizontal = new Uint8Array(w * h);
  for (let y = 0; y < h; y += 1) {
    let run = 0; // set pixels in a row ending at x
    const runs = new Int32Array(w);
    for (let x = 0; x < w; x += 1) { run = bits[y * w + x] ? run + 1 : 0; runs[x] = run; }
    for (let x = 0; x < w; x += 1) {
      const right = x + radius;
      horizontal[y * w + x] = right < w && runs[right] >= 2 * radius + 1 ? 1 : 0;
    }
  }
  const edge = new Uint8Array(w * h);
  for (let x = 0; x < w; x += 1) {
    let run = 0;
    const runs = new Int32Array(h);
    for (let y = 0; y < h; y += 1) { run = horizontal[y * w + x] ? run + 1 : 0; runs[y] = run; }
    for (let y = 0; y < h; y += 1) {
      const below = y + radius;
      const inside = below < h && runs[below] >= 2 * radius + 1;
      edge[y * w + x] = bits[y * w + x] && !inside ? 1 : 0;
    }
  }
  return edge;
}

function layerCanvas(bits, w, h, rgb) {
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(w, h);
  for (let i = 0; i < bits.length; i += 1) {
    if (!bits[i]) continue;
    pixels.data[4 * i] = rgb[0];
    pixels.data[4 * i + 1] = rgb[1];
    pixels.data[4 * i + 2] = rgb[2];
    pixels.data[4 * i + 3] = 255;
  }
  context.putImageData(pixels, 0, 0);
  return canvas;
}

/**
 * A drawable mask from a server answer. `rle` is COCO RLE over the whole image; `score` the predicted IoU.
 * `outlinePx` is the outline width in image pixels (so it stays visible on a scaled-down photo).
 */
export function makeMask(rle, score, colorIndex, outlinePx) {
  const decoded = decodeRle(rle);
  return { ...decoded, rle, score, colorIndex, rgb: colorFor(colorIndex), outlinePx, fill: null, outline: null };
}

/** Build a mask's overlay layers when it is first drawn: candidates nobody cycles to never cost any. */
function ensureLayers(mask) {
  if (mask.fill || mask.area === 0) return;
  mask.fill = layerCanvas(mask.bits, mask.w, mask.h, mask.rgb);
  mask.outline = layerCanvas(edgeBits(mask.bits, mask.w, mask.h, Math.max(1, mask.outlinePx)), mask.w, mask.h,
    mask.rgb);
}

/** Draw a mask on a 2D context in image coordinates; `highlighted` masks are more opaque. */
export function drawMask(context, mask, highlighted) {
  ensureLayers(mask);
  if (!mask.fill) return;
  context.save();
  context.globalAlpha = highlighted ? 0.7 : 0.42;
  context.drawImage(mask.fill, mask.x0, mask.y0);
  context.globalAlpha = 1;
  context.drawImage(mask.outline, mask.x0, mask.y0);
  if (highlighted) {
    // A second, white-tinted outline pass makes the hovered mask stand out from its neighbours.
    context.globalCompositeOperation = "lighter";
    context.drawImage(mask.outline, mask.x0, mask.y0);
  }
  context.restore();
}

/** True when the image pixel (x, y) is set in the mask. */
export function maskContains(mask, x, y) {
  const col = Math.floor(x) - mask.x0, row = Math.floor(y) - mask.y0;
  if (col < 0 || row < 0 || col >= mask.w || row >= mask.h) return false;
  return mask.bits[row * mask.w + col] === 1;
}

/** Full-size row-major 0/1 bits of a mask (for PNG export). */
export function fullBits(mask) {
  const out = new Uint8Array(mask.width * mask.height);
  for (let row = 0; row < mask.h; row += 1) {
    out.set(mask.bits.subarray(row * mask.w, (row + 1) * mask.w), (row + mask.y0) * mask.width + mask.x0);
  }
  return out;
}

/** COCO bbox [x, y, width, height] of the set pixels (pycocotools' toBbox convention). */
export function bboxXywh(mask) {
  return mask.area ? [mask.x0, mask.y0, mask.w, mask.h] : [0, 0, 0, 0];
}
