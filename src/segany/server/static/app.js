// The segmentation page: open an image, embed it once (/v1/embed), then every prompt only decodes
// (/v1/segment with the image_id). State is published as data-* attributes on #stage for tests and tools.

import * as api from "./api.js";
import { cocoJson, download, masksZip } from "./export.js";
import { bindDropAndPaste, bindKeyboard, bindPointer } from "./input.js";
import { makeMask, maskContains } from "./masks.js";
import { Panel } from "./panel.js";
import { Session, hasPrompt } from "./session.js";
import { Stage } from "./stage.js";

const $ = (id) => document.getElementById(id);

function roundMs(value) {
  return Math.round(value * 10) / 10;
}

/** The prompt of an object in the native API's shape (image pixels). */
function promptOf(object) {
  const prompt = {};
  if (object.points.length) {
    prompt.points = object.points.map((p) => [roundMs(p.x), roundMs(p.y)]);
    prompt.labels = object.points.map((p) => p.label);
  }
  if (object.box) prompt.box = object.box.map(roundMs);
  return prompt;
}

class App {
  constructor() {
    this.session = new Session();
    this.stage = new Stage($("canvas"));
    this.image = null; // {blob, name, width, height, imageId}
    this.imageToken = 0; // a newer image makes answers about an older one stale
    this.decodeSeq = 0; // a newer prompt makes older decode answers stale
    this.pending = null; // the latest decode, awaited before keeping an object
    this.busy = { embed: false, decode: 0, auto: false, text: false };
    this.view = { hoverId: null, dragBox: null, cursor: null, boxCorner: null };
    this.stats = { decodes: 0, lastRoundTripMs: null, lastServerDecodeMs: null, lastEmbedMs: null, autoCount: 0 };
    this.panel = new Panel(this);
  }

  async start() {
    bindPointer(this, this.stage.canvas);
    bindKeyboard(this, this.stage.canvas);
    bindDropAndPaste(this, $("stage"));
    this.render();
    await this.loadCapabilities();
  }

  get ready() {
    return Boolean(this.image && this.image.imageId) && !this.busy.embed;
  }

  async loadCapabilities() {
    try {
      const caps = await api.capabilities();
      this.panel.setCapabilities(caps);
    } catch (error) {
      this.fail(error, "reading the server's capabilities");
      this.panel.setCapabilities(null);
    }
  }

  // ---- image -------------------------------------------------------------------------------------

  async openFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      this.say(`${file.name || "That file"} is not an image.`, "error");
      return;
    }
    const token = ++this.imageToken;
    let bitmap;
    try {
      bitmap = await createImageBitmap(file);
    } catch {
      this.say("This browser cannot show that file; try a PNG, JPEG or WebP image.", "error");
      return;
    }
    if (token !== this.imageToken) return;
    this.image = { blob: file, name: file.name || "pasted-image.png", width: bitmap.width, height: bitmap.height,
      imageId: null };
    this.session.reset();
    this.decodeSeq += 1;
    this.view = { hoverId: null, dragBox: null, cursor: null, boxCorner: null };
    this.stats.autoCount = 0;
    this.stage.setImage(bitmap, bitmap.width, bitmap.height);
    $("drop-hint").hidden = true;
    await this.embedImage(token);
  }

  async embedImage(token = this.imageToken) {
    this.busy.embed = true;
    this.say("Embedding the image… (once per image; every click after that only decodes)");
    this.render();
    const started = performance.now();
    try {
      const answer = await api.embed(this.image.blob, this.image.name);
      if (token !== this.imageToken) return;
      this.image.imageId = answer.image_id;
      this.stats.lastEmbedMs = roundMs(performance.now() - started);
      const server = answer.timing_ms.embed ?? answer.timing_ms.total;
      this.panel.showEmbedLatency(this.stats.lastEmbedMs, server, answer.cached);
      if (answer.width !== this.image.width || answer.height !== this.image.height) {
        this.say(`The server reads this image as ${answer.width}×${answer.height}, the browser as `
          + `${this.image.width}×${this.image.height}: masks may not line up.`, "error");
      } else {
        this.say(`Ready (${answer.model}). Click the object; right click marks what is not part of it.`);
      }
    } catch (error) {
      if (token === this.imageToken) this.fail(error, "embedding the image");
    } finally {
      if (token === this.imageToken) this.busy.embed = false;
      this.render();
    }
  }

  /** Run `call(imageId)`; when the server has evicted the embedding, embed again and retry once. */
  async withEmbedding(call) {
    try {
      return await call(this.image.imageId);
    } catch (error) {
      if (error.code !== "image_id_not_found") throw error;
      await this.embedImage();
      return call(this.image.imageId);
    }
  }

  // ---- prompts -----------------------------------------------------------------------------------

  addPoint(x, y, label, startedAt) {
    if (!this.ready) return this.notReady();
    this.session.addPoint(x, y, label);
    this.decode(startedAt);
  }

  setBox(box, startedAt) {
    if (!this.ready) return this.notReady();
    this.session.setBox(box);
    this.decode(startedAt);
  }

  decode(startedAt = performance.now()) {
    this.pending = this.decodeCurrent(startedAt);
    return this.pending;
  }

  async decodeCurrent(startedAt) {
    const object = this.session.current;
    const seq = ++this.decodeSeq;
    if (!hasPrompt(object)) {
      this.session.setCandidates([]);
      this.render();
      return;
    }
    this.busy.decode += 1;
    this.render();
    try {
      const multimask = $("multimask").checked;
      const answer = await this.withEmbedding((id) => api.segment(id, promptOf(object), multimask));
      if (seq !== this.decodeSeq) return; // a newer prompt (or undo) superseded this answer
      const outline = this.outlinePx();
      const masks = answer.results[0].masks.map((m) => makeMask(m.rle, m.score, object.colorIndex, outline));
      this.session.setCandidates(masks);
      this.render();
      // The round trip a person waits for: from the click to the mask on screen.
      this.stats.lastRoundTripMs = roundMs(performance.now() - startedAt);
      this.stats.decodes += 1;
      this.stats.lastServerDecodeMs = answer.timing_ms.decode ?? answer.timing_ms.total;
      this.panel.showDecodeLatency(this.stats.lastRoundTripMs, this.stats.lastServerDecodeMs);
      if (!masks.some((mask) => mask.area > 0)) this.say("The model found no mask for these prompts.");
    } catch (error) {
      if (seq === this.decodeSeq) this.fail(error, "segmenting");
    } finally {
      this.busy.decode -= 1;
      this.render();
    }
  }

  /** Outline width in image pixels: about 1.5 screen pixels at the current zoom. */
  outlinePx() {
    return Math.max(1, Math.round(this.stage.scale() * 1.5));
  }

  async keep() {
    if (this.pending) await this.pending;
    if (!this.session.keep()) {
      this.say("Nothing to keep yet: click the object first.");
      return;
    }
    this.decodeSeq += 1;
    this.say(`Kept object ${this.session.objects.length}. Click the next one.`);
    this.render();
  }

  undo() {
    if (!this.session.undo()) return;
    this.decodeSeq += 1;
    this.view.boxCorner = null;
    // A change made while its decode was still running has no masks in the history: ask again.
    if (hasPrompt(this.session.current) && !this.session.current.candidates.length) this.decode();
    this.say("Undone.");
    this.render();
  }

  clearCurrent() {
    this.view.boxCorner = null;
    if (this.session.clearCurrent()) this.decodeSeq += 1;
    this.render();
  }

  clearAll() {
    if (this.session.clearAll()) {
      this.decodeSeq += 1;
      this.stats.autoCount = 0;
      this.say("Cleared. Undo brings the masks back.");
    }
    this.render();
  }

  cycle(step) {
    if (this.session.cycle(step)) this.render();
  }

  removeObject(id) {
    this.session.removeObject(id);
    if (this.view.hoverId === id) this.view.hoverId = null;
    this.render();
  }

  // ---- segment everything and text ---------------------------------------------------------------

  async segmentEverything() {
    if (!this.ready) return this.notReady();
    this.busy.auto = true;
    this.say("Segmenting everything…");
    this.render();
    const started = performance.now();
    try {
      const answer = await api.auto(this.image.blob, this.image.name, this.panel.autoParams());
      const outline = this.outlinePx();
      // Large masks first, so smaller ones are drawn on top and can still be hovered.
      const records = [...answer.records].sort((a, b) => b.area - a.area);
      const entries = records.map((record) => ({
        mask: makeMask(record.rle, record.predicted_iou, this.session.takeColor(), outline), label: null,
      }));
      this.session.replaceFromSource("auto", entries);
      this.stats.autoCount = entries.length;
      this.panel.showAutoLatency(roundMs(performance.now() - started), answer.timing_ms.generate);
      this.say(`Segment everything found ${entries.length} mask${entries.length === 1 ? "" : "s"}.`);
    } catch (error) {
      this.fail(error, "segmenting everything");
    } finally {
      this.busy.auto = false;
      this.render();
    }
  }

  async segmentText(phrase) {
    if (!this.ready) return this.notReady();
    this.busy.text = true;
    this.say(`Looking for “${phrase}”…`);
    this.render();
    try {
      const answer = await this.withEmbedding((id) => api.segmentText(id, phrase));
      const outline = this.outlinePx();
      const entries = answer.results.filter((result) => result.masks.length).map((result) => ({
        mask: makeMask(result.masks[0].rle, result.masks[0].score, this.session.takeColor(), outline),
        label: result.label || result.phrase || phrase,
      }));
      this.session.replaceFromSource("text", entries);
      this.say(entries.length ? `Found ${entries.length} object(s) for “${phrase}”.` : `Nothing found for “${phrase}”.`);
    } catch (error) {
      this.fail(error, "segmenting by text");
    } finally {
      this.busy.text = false;
      this.render();
    }
  }

  // ---- export ------------------------------------------------------------------------------------

  exportEntries() {
    return this.session.visibleMasks().filter(({ mask }) => mask.area > 0)
      .map(({ object, mask }) => ({ mask, source: object.source, label: object.label }));
  }

  baseName() {
    return (this.image?.name || "image").replace(/\.[^.]+$/, "") || "image";
  }

  async downloadZip() {
    const entries = this.exportEntries();
    if (!entries.length) return;
    download(await masksZip(entries, this.image.name), `${this.baseName()}-masks.zip`);
  }

  downloadCoco() {
    const entries = this.exportEntries();
    if (!entries.length) return;
    download(cocoJson(entries, this.image.name, this.image.width, this.image.height), `${this.baseName()}-coco.json`);
  }

  // ---- hover, status, rendering ------------------------------------------------------------------

  /** Highlight the topmost mask under a pointer position (client pixels); null clears. */
  hoverAt(clientX, clientY) {
    if (clientX === null || !this.image) return this.highlight(null);
    const point = this.stage.toImage(clientX, clientY);
    const hit = [...this.session.visibleMasks()].reverse().find(({ mask }) => maskContains(mask, point.x, point.y));
    this.highlight(hit ? hit.object.id : null, point);
  }

  /** Highlight an object (from the canvas or the mask list) and show its score and area. */
  highlight(objectId, near = null) {
    const changed = this.view.hoverId !== objectId;
    this.view.hoverId = objectId;
    const hit = this.session.visibleMasks().find(({ object }) => object.id === objectId);
    this.panel.showTooltip(hit ? hit.mask : null, near);
    if (changed) this.render();
  }

  notReady() {
    this.say(this.image ? "Wait until the image is embedded." : "Open an image first.");
  }

  say(message, kind = "info") {
    const status = $("status");
    status.textContent = message;
    status.dataset.kind = kind;
  }

  fail(error, what) {
    if (error.status === 401) this.panel.askForKey();
    const where = error.field ? ` [${error.field}]` : "";
    this.say(`Error while ${what}: ${error.message}${where}`, "error");
    console.error(error);
  }

  state() {
    if (!this.image) return "empty";
    if (this.busy.embed) return "embedding";
    if (this.busy.auto) return "auto";
    if (this.busy.text) return "text";
    if (this.busy.decode > 0) return "decoding";
    return this.image.imageId ? "ready" : "error";
  }

  render() {
    const masks = this.session.visibleMasks();
    this.stage.render({ masks, hoverId: this.view.hoverId, current: this.session.current, dragBox: this.view.dragBox,
      cursor: this.view.cursor, boxCorner: this.view.boxCorner });
    this.panel.update(masks);
    const data = $("stage").dataset;
    data.state = this.state();
    data.imageId = this.image?.imageId || "";
    data.maskCount = String(masks.filter(({ mask }) => mask.area > 0).length);
    data.objects = String(this.session.objects.length);
    data.candidates = String(this.session.current.candidates.length);
    data.pick = String(this.session.current.pick);
    data.points = String(this.session.current.points.length);
    data.decodes = String(this.stats.decodes);
    data.autoCount = String(this.stats.autoCount);
    data.lastRoundtripMs = this.stats.lastRoundTripMs ?? "";
    data.lastServerDecodeMs = this.stats.lastServerDecodeMs ?? "";
    data.lastEmbedMs = this.stats.lastEmbedMs ?? "";
    data.hoverId = this.view.hoverId ?? "";
  }
}

const app = new App();
window.segany = app; // for debugging from the console, and for tests
app.start();
