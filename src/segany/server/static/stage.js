// The canvas: the photo at its own resolution (CSS scales it to fit), masks, prompts and the keyboard cursor.

import { drawMask } from "./masks.js";

const POSITIVE = "#22c55e";
const NEGATIVE = "#ef4444";

export class Stage {
  constructor(canvas) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.image = null;
  }

  /** Show `bitmap` (ImageBitmap or <img>); the canvas takes its pixel size, so canvas pixels = image pixels. */
  setImage(bitmap, width, height) {
    this.image = bitmap;
    this.canvas.width = width;
    this.canvas.height = height;
    this.canvas.hidden = false;
  }

  get width() { return this.canvas.width; }

  get height() { return this.canvas.height; }

  /** Image pixels per CSS pixel as displayed (> 1 when the photo is scaled down to fit). */
  scale() {
    const rect = this.canvas.getBoundingClientRect();
    return rect.width > 0 ? this.canvas.width / rect.width : 1;
  }

  /** A pointer position (client CSS pixels) -> image pixel coordinates, clamped to the image. */
  toImage(clientX, clientY) {
    const rect = this.canvas.getBoundingClientRect();
    const x = ((clientX - rect.left) / rect.width) * this.canvas.width;
    const y = ((clientY - rect.top) / rect.height) * this.canvas.height;
    return { x: clamp(x, 0, this.canvas.width - 1), y: clamp(y, 0, this.canvas.height - 1) };
  }

  /** Image pixel coordinates -> client CSS pixels relative to the canvas' top-left corner. */
  toClient(x, y) {
    const rect = this.canvas.getBoundingClientRect();
    return { left: (x / this.canvas.width) * rect.width, top: (y / this.canvas.height) * rect.height };
  }

  /**
   * Redraw everything. `view`: {masks: [{object, mask}], hoverId, current (object), dragBox, cursor,
   * boxCorner}; boxes are [x0, y0, x1, y1] in image pixels.
   */
  render(view) {
    const context = this.context;
    context.clearRect(0, 0, this.canvas.width, this.canvas.height);
    if (!this.image) return;
    context.drawImage(this.image, 0, 0, this.canvas.width, this.canvas.height);
    for (const { object, mask } of view.masks) drawMask(context, mask, object.id === view.hoverId);
    const unit = this.scale(); // one CSS pixel in image pixels: marks keep their on-screen size
    if (view.current.box) drawBox(context, view.current.box, unit, false);
    if (view.dragBox) drawBox(context, view.dragBox, unit, true);
    for (const point of view.current.points) drawPoint(context, point, unit);
    if (view.boxCorner) drawCross(context, view.boxCorner, unit, "#facc15");
    if (view.cursor) drawCross(context, view.cursor, unit, "#ffffff");
  }
}

function clamp(value, low, high) {
  return Math.min(Math.max(value, low), high);
}

function drawPoint(context, point, unit) {
  context.save();
  context.beginPath();
  context.arc(point.x, point.y, 6 * unit, 0, 2 * Math.PI);
  context.fillStyle = point.label === 1 ? POSITIVE : NEGATIVE;
  context.fill();
  context.lineWidth = 2 * unit;
  context.strokeStyle = "#ffffff";
  context.stroke();
  // A sign inside the dot: colour alone must not carry the meaning.
  context.beginPath();
  context.moveTo(point.x - 3 * unit, point.y);
  context.lineTo(point.x + 3 * unit, point.y);
  if (point.label === 1) {
    context.moveTo(point.x, point.y - 3 * unit);
    context.lineTo(point.x, point.y + 3 * unit);
  }
  context.lineWidth = 1.5 * unit;
  context.stroke();
  context.restore();
}

function drawBox(context, box, unit, preview) {
  const [x0, y0, x1, y1] = box;
  context.save();
  context.lineWidth = 2 * unit;
  context.strokeStyle = "#000000";
  context.strokeRect(x0, y0, x1 - x0, y1 - y0);
  context.setLineDash([6 * unit, 4 * unit]);
  context.strokeStyle = preview ? "#facc15" : "#ffffff";
  context.strokeRect(x0, y0, x1 - x0, y1 - y0);
  context.restore();
}

function drawCross(context, point, unit, color) {
  context.save();
  context.lineWidth = 3 * unit;
  context.strokeStyle = "#000000";
  for (const pass of [0, 1]) {
    context.beginPath();
    context.moveTo(point.x - 10 * unit, point.y);
    context.lineTo(point.x + 10 * unit, point.y);
    context.moveTo(point.x, point.y - 10 * unit);
    context.lineTo(point.x, point.y + 10 * unit);
    context.stroke();
    if (pass === 0) { context.lineWidth = 1.5 * unit; context.strokeStyle = color; }
  }
  context.restore();
}
