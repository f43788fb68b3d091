// What is on the image: kept objects, the object being refined, and an undo history.
//
// Objects and arrays are never changed in place (every change builds new ones), so a history entry is
// just the previous references and undo is exact, candidates included, with no new decode.

const HISTORY_LIMIT = 200;
let nextId = 1;

/** A new object: prompts (points [{x, y, label}], box [x0, y0, x1, y1] in image pixels) and its masks. */
export function emptyObject(colorIndex, source = "click", label = null) {
  return { id: nextId++, colorIndex, points: [], box: null, candidates: [], pick: 0, source, label };
}

/** The mask an object shows: the chosen candidate, or null before any answer. */
export function chosenMask(object) {
  return object.candidates[object.pick] || null;
}

export function hasPrompt(object) {
  return object.points.length > 0 || object.box !== null;
}

export class Session {
  constructor() {
    this.reset();
  }

  reset() {
    this.objects = [];
    this.nextColor = 0;
    this.current = emptyObject(this.nextColor++);
    this.history = [];
  }

  remember() {
    this.history.push({ objects: this.objects, current: this.current, nextColor: this.nextColor });
    if (this.history.length > HISTORY_LIMIT) this.history.shift();
  }

  /** Go back one change; false when there is nothing to undo. */
  undo() {
    const previous = this.history.pop();
    if (!previous) return false;
    Object.assign(this, previous);
    return true;
  }

  get canUndo() {
    return this.history.length > 0;
  }

  addPoint(x, y, label) {
    this.remember();
    this.current = { ...this.current, points: [...this.current.points, { x, y, label }] };
  }

  setBox(box) {
    this.remember();
    this.current = { ...this.current, box };
  }

  /** Answers for the current prompts (not an undo step: the prompt change that asked for them was). */
  setCandidates(masks) {
    this.current = { ...this.current, candidates: masks, pick: 0 };
  }

  /** Show the next (+1) or previous (-1) candidate of the current object; false when there is no other. */
  cycle(step) {
    const count = this.current.candidates.length;
    if (count < 2) return false;
    this.current = { ...this.current, pick: (this.current.pick + step + count) % count };
    return true;
  }

  /** Keep the current object and start the next one; false when it has no mask yet. */
  keep() {
    if (!chosenMask(this.current)) return false;
    this.remember();
    const kept = { ...this.current, candidates: [chosenMask(this.current)], pick: 0 };
    this.objects = [...this.objects, kept];
    this.current = emptyObject(this.nextColor++);
    return true;
  }

  /** Drop the current object's prompts and masks. */
  clearCurrent() {
    if (!hasPrompt(this.current) && !this.current.candidates.length) return false;
    this.remember();
    this.current = emptyObject(this.current.colorIndex);
    return true;
  }

  /** Remove every object and the current prompts (undoable). */
  clearAll() {
    if (!this.objects.length && !hasPrompt(this.current)) return false;
    this.remember();
    this.objects = [];
    this.current = emptyObject(this.nextColor++);
    return true;
  }

  removeObject(id) {
    this.remember();
    this.objects = this.objects.filter((object) => object.id !== id);
  }

  /** Replace the objects from `source` (e.g. an earlier "Segment everything") by new ones: [{mask, label}]. */
  replaceFromSource(source, entries) {
    this.remember();
    const others = this.objects.filter((object) => object.source !== source);
    const added = entries.map(({ mask, label }) => {
      const object = emptyObject(mask.colorIndex, source, label || null);
      return { ...object, candidates: [mask] };
    });
    this.objects = [...others, ...added];
  }

  /** A colour index for a new mask that is not the current object's. */
  takeColor() {
    return this.nextColor++;
  }

  /** Every mask on screen, kept objects first, for drawing and export: [{object, mask}]. */
  visibleMasks() {
    const out = [];
    for (const object of this.objects) {
      const mask = chosenMask(object);
      if (mask) out.push({ object, mask });
    }
    const current = chosenMask(this.current);
    if (current) out.push({ object: this.current, mask: current });
    return out;
  }
}
