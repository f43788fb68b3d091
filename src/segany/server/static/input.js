// Mouse, touch and keyboard input on the image, page-wide shortcuts, and drop / paste of images.

const DRAG_THRESHOLD_CSS_PX = 6; // less movement than this between press and release is a click

function boxFrom(a, b) {
  return [Math.min(a.x, b.x), Math.min(a.y, b.y), Math.max(a.x, b.x), Math.max(a.y, b.y)];
}

function isTextField(element) {
  return element instanceof HTMLElement
    && (element.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(element.tagName));
}

/** Left click adds a point of the chosen kind; right click or Alt+click the other kind; a drag draws a box. */
export function bindPointer(app, canvas) {
  let press = null; // {pointerId, clientX, clientY, start, secondary, dragging}

  canvas.addEventListener("contextmenu", (event) => event.preventDefault());

  canvas.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 && event.button !== 2) return;
    if (!app.ready) { app.notReady(); return; }
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    canvas.focus({ preventScroll: true });
    app.view.cursor = null; // the keyboard cursor hides while the pointer is in use
    press = { pointerId: event.pointerId, clientX: event.clientX, clientY: event.clientY,
      start: app.stage.toImage(event.clientX, event.clientY), secondary: event.button === 2 || event.altKey,
      dragging: false };
  });

  canvas.addEventListener("pointermove", (event) => {
    if (!press) { app.hoverAt(event.clientX, event.clientY); return; }
    if (press.pointerId !== event.pointerId || press.secondary) return;
    const moved = Math.hypot(event.clientX - press.clientX, event.clientY - press.clientY);
    if (!press.dragging && moved < DRAG_THRESHOLD_CSS_PX) return;
    press.dragging = true;
    app.view.dragBox = boxFrom(press.start, app.stage.toImage(event.clientX, event.clientY));
    app.render();
  });

  canvas.addEventListener("pointerup", (event) => {
    if (!press || press.pointerId !== event.pointerId) return;
    const startedAt = performance.now();
    const done = press;
    press = null;
    app.view.dragBox = null;
    if (done.dragging) {
      const box = boxFrom(done.start, app.stage.toImage(event.clientX, event.clientY));
      if (box[2] - box[0] >= 2 && box[3] - box[1] >= 2) { app.setBox(box, startedAt); return; }
    }
    const positive = app.panel.clickMode() === 1;
    app.addPoint(done.start.x, done.start.y, positive !== done.secondary ? 1 : 0, startedAt);
  });

  canvas.addEventListener("pointercancel", () => {
    press = null;
    app.view.dragBox = null;
    app.render();
  });

  canvas.addEventListener("pointerleave", () => { if (!press) app.hoverAt(null, null); });
}

/** Keyboard use of the image (a cursor moved by arrows) and the page-wide shortcuts. */
export function bindKeyboard(app, canvas) {
  canvas.addEventListener("keydown", (event) => {
    if (!app.ready || event.ctrlKey || event.metaKey) return;
    const stage = app.stage;
    const cursor = app.view.cursor || { x: stage.width / 2, y: stage.height / 2 };
    const step = Math.max(1, Math.round(Math.min(stage.width, stage.height) / 50)) * (event.shiftKey ? 5 : 1);
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    if (event.key in moves) {
      const [dx, dy] = moves[event.key];
      app.view.cursor = { x: Math.min(Math.max(cursor.x + dx, 0), stage.width - 1),
        y: Math.min(Math.max(cursor.y + dy, 0), stage.height - 1) };
      app.render();
      event.preventDefault();
      return;
    }
    const startedAt = performance.now();
    if (event.key === " " || event.key === "+" || event.key === "=" || event.key === "-") {
      event.preventDefault();
      app.view.cursor = cursor;
      const modeLabel = app.panel.clickMode();
      const label = event.key === " " ? modeLabel : event.key === "-" ? 0 : 1;
      app.addPoint(cursor.x, cursor.y, label, startedAt);
    } else if (event.key === "b" || event.key === "B") {
      event.preventDefault();
      app.view.cursor = cursor;
      if (!app.view.boxCorner) {
        app.view.boxCorner = cursor;
        app.say("Box: move to the opposite corner and press B again.");
        app.render();
      } else {
        const box = boxFrom(app.view.boxCorner, cursor);
        app.view.boxCorner = null;
        if (box[2] - box[0] >= 2 && box[3] - box[1] >= 2) app.setBox(box, startedAt);
        else app.render();
      }
    }
  });

  canvas.addEventListener("blur", () => {
    if (app.view.cursor) { app.view.cursor = null; app.render(); }
  });

  document.addEventListener("keydown", (event) => {
    if (isTextField(event.target) || event.altKey) return;
    const onButton = event.target instanceof HTMLElement && ["BUTTON", "A", "SUMMARY"].includes(event.target.tagName);
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
      event.preventDefault();
      app.undo();
    } else if (event.ctrlKey || event.metaKey) {
      return;
    } else if (event.key === "Enter" && !onButton) {
      event.preventDefault();
      app.keep();
    } else if (event.key === "Escape") {
      if (app.view.boxCorner || app.view.dragBox) {
        app.view.boxCorner = null;
        app.view.dragBox = null;
        app.render();
      } else {
        app.clearCurrent();
      }
    } else if (event.key === "[" || event.key === "]") {
      event.preventDefault();
      app.cycle(event.key === "]" ? 1 : -1);
    }
  });
}

/** Images dropped anywhere on the page or pasted from the clipboard. */
export function bindDropAndPaste(app, stageElement) {
  const firstImage = (files) => [...(files || [])].find((file) => file.type.startsWith("image/")) || null;
  document.addEventListener("dragover", (event) => {
    event.preventDefault(); // without this the browser opens the dropped file instead of the page keeping it
    stageElement.classList.add("dropping");
  });
  document.addEventListener("dragleave", (event) => {
    if (event.target === document.documentElement || event.relatedTarget === null) {
      stageElement.classList.remove("dropping");
    }
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    stageElement.classList.remove("dropping");
    const file = firstImage(event.dataTransfer?.files);
    if (file) app.openFile(file);
    else app.say("Drop an image file (PNG, JPEG, WebP…).", "error");
  });
  document.addEventListener("paste", (event) => {
    const file = firstImage(event.clipboardData?.files);
    if (!file) return; // text pasted into a field stays text
    event.preventDefault();
    app.openFile(file);
  });
}
