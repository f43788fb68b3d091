// The tools panel: buttons, candidate cycling, the mask list, text and "Segment everything" settings,
// latency read-outs, the API-key form and the hover tooltip.

import * as api from "./api.js";
import { chosenMask, hasPrompt } from "./session.js";

const $ = (id) => document.getElementById(id);

// MaskGenerator defaults (the official generator's), shown when the server sets none of its own.
const AUTO_FIELDS = [
  { id: "auto-points-per-side", name: "points_per_side", fallback: 32, parse: parseInt },
  { id: "auto-pred-iou-thresh", name: "pred_iou_thresh", fallback: 0.8, parse: parseFloat },
  { id: "auto-stability-score-thresh", name: "stability_score_thresh", fallback: 0.95, parse: parseFloat },
  { id: "auto-min-mask-region-area", name: "min_mask_region_area", fallback: 0, parse: parseInt },
  { id: "auto-max-masks", name: "max_masks", fallback: -1, parse: parseInt },
];

const numberFormat = new Intl.NumberFormat("en");

function describeMask(mask) {
  return `score ${mask.score.toFixed(3)} · area ${numberFormat.format(mask.area)} px`;
}

function formatMs(ms) {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

export class Panel {
  constructor(app) {
    this.app = app;
    this.textAvailable = false;
    this.listSignature = "";
    $("file-input").addEventListener("change", (event) => {
      app.openFile(event.target.files[0]);
      event.target.value = ""; // opening the same file again must fire "change" again
    });
    $("keep-button").addEventListener("click", () => app.keep());
    $("undo-button").addEventListener("click", () => app.undo());
    $("clear-button").addEventListener("click", () => app.clearAll());
    $("prev-candidate").addEventListener("click", () => app.cycle(-1));
    $("next-candidate").addEventListener("click", () => app.cycle(1));
    $("auto-button").addEventListener("click", () => app.segmentEverything());
    $("download-zip").addEventListener("click", () => app.downloadZip());
    $("download-coco").addEventListener("click", () => app.downloadCoco());
    $("text-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const phrase = $("text-input").value.trim();
      if (phrase) app.segmentText(phrase);
    });
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      api.setApiKey($("key-input").value.trim());
      $("key-section").hidden = true;
      app.say("Key saved for this tab.");
      app.loadCapabilities();
      if (app.image && !app.image.imageId) app.embedImage();
    });
    const list = $("mask-list");
    list.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-remove]");
      if (button) app.removeObject(Number(button.dataset.remove));
    });
    for (const kind of ["mouseover", "focusin"]) {
      list.addEventListener(kind, (event) => {
        const row = event.target.closest("li[data-object]");
        if (row) app.highlight(Number(row.dataset.object));
      });
    }
    list.addEventListener("mouseleave", () => app.highlight(null));
    list.addEventListener("focusout", (event) => { if (!list.contains(event.relatedTarget)) app.highlight(null); });
  }

  /** 1 when a left click adds a point on the object, 0 when it adds one off it. */
  clickMode() {
    return Number(document.querySelector('input[name="click-mode"]:checked').value);
  }

  /** Adapt to `/web/capabilities` (null: an older server without that route). */
  setCapabilities(caps) {
    const text = caps?.text || { available: false,
      reason: "This server does not say whether it takes text prompts, so the text field is off." };
    this.textAvailable = Boolean(text.available);
    $("text-note").textContent = text.available
      ? "Phrases separated by periods, e.g. “a cat. a cup.”; each found object becomes a mask."
      : text.reason;
    $("text-note").dataset.available = String(this.textAvailable);
    const defaults = caps?.auto_defaults || {};
    for (const field of AUTO_FIELDS) {
      $(field.id).placeholder = String(defaults[field.name] ?? field.fallback);
    }
    const maxSide = caps?.limits?.max_points_per_side;
    if (maxSide) $("auto-points-per-side").max = String(maxSide);
    this.update(this.app.session.visibleMasks());
  }

  /** The "Segment everything" parameters the person filled in (empty fields are left to the server). */
  autoParams() {
    const params = {};
    for (const field of AUTO_FIELDS) {
      const raw = $(field.id).value.trim();
      if (raw === "") continue;
      const value = field.parse(raw);
      if (!Number.isNaN(value)) params[field.name] = value;
    }
    return params;
  }

  askForKey() {
    $("key-section").hidden = false;
    $("key-input").focus();
  }

  showEmbedLatency(roundTripMs, serverMs, cached) {
    const server = serverMs === undefined ? "" : ` (server ${formatMs(serverMs)})`;
    $("embed-latency").textContent = `${formatMs(roundTripMs)}${server}${cached ? ", cached" : ""}`;
  }

  showDecodeLatency(roundTripMs, serverMs) {
    const server = serverMs === undefined ? "" : ` (server ${formatMs(serverMs)})`;
    $("decode-latency").textContent = `${formatMs(roundTripMs)} click to mask${server}`;
  }

  showAutoLatency(roundTripMs, serverMs) {
    const server = serverMs === undefined ? "" : ` (server ${formatMs(serverMs)})`;
    $("auto-latency").textContent = `${formatMs(roundTripMs)}${server}`;
  }

  /** Score and area of a highlighted mask next to the pointer (or the mask's corner when from the list). */
  showTooltip(mask, nearImagePoint) {
    const tooltip = $("tooltip");
    if (!mask) { tooltip.hidden = true; return; }
    tooltip.textContent = describeMask(mask);
    const anchor = nearImagePoint || { x: mask.x0, y: mask.y0 };
    const canvas = this.app.stage.canvas;
    const at = this.app.stage.toClient(anchor.x, anchor.y);
    tooltip.style.left = `${canvas.offsetLeft + at.left + 14}px`;
    tooltip.style.top = `${canvas.offsetTop + at.top + 14}px`;
    tooltip.hidden = false;
  }

  /** Enable what can be used now and refresh the candidate read-out and the mask list. */
  update(masks) {
    const app = this.app;
    const session = app.session;
    const ready = app.ready;
    const current = session.current;
    const count = current.candidates.length;
    $("keep-button").disabled = !ready || !chosenMask(current);
    $("undo-button").disabled = !session.canUndo;
    $("clear-button").disabled = !session.objects.length && !hasPrompt(current);
    $("prev-candidate").disabled = count < 2;
    $("next-candidate").disabled = count < 2;
    $("candidate-label").textContent = count
      ? `Candidate ${current.pick + 1} of ${count} · ${describeMask(current.candidates[current.pick])}`
      : "No candidate";
    $("auto-button").disabled = !ready || app.busy.auto;
    $("text-input").disabled = !this.textAvailable || !ready;
    $("text-button").disabled = !this.textAvailable || !ready || app.busy.text;
    const exportable = masks.some(({ mask }) => mask.area > 0);
    $("download-zip").disabled = !exportable;
    $("download-coco").disabled = !exportable;
    this.renderList(masks);
  }

  renderList(masks) {
    const current = this.app.session.current;
    const signature = masks.map(({ object, mask }) => `${object.id}:${object === current}:${mask.score}:${mask.area}`)
      .join("|");
    $("mask-count-label").textContent = String(masks.length);
    if (signature === this.listSignature) return; // rebuilding would drop keyboard focus on every render
    this.listSignature = signature;
    const list = $("mask-list");
    list.replaceChildren();
    let keptNumber = 0;
    for (const { object, mask } of masks) {
      const isCurrent = object === current;
      if (!isCurrent) keptNumber += 1;
      const row = document.createElement("li");
      row.dataset.object = String(object.id);
      row.tabIndex = 0;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = `rgb(${mask.rgb.join(",")})`;
      const name = isCurrent ? "Current object" : object.label || `${object.source === "auto" ? "Auto" : "Object"} ${keptNumber}`;
      const text = document.createElement("span");
      text.className = "mask-text";
      text.textContent = `${name} · ${describeMask(mask)}`;
      row.append(swatch, text);
      if (!isCurrent) {
        const remove = document.createElement("button");
        remove.type = "button";
        remove.className = "remove";
        remove.dataset.remove = String(object.id);
        remove.setAttribute("aria-label", `Delete ${name}`);
        remove.textContent = "×";
        row.append(remove);
      }
      list.append(row);
    }
  }
}
