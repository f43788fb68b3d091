// Calls to the native API of the server that served this page (same origin, so no CORS and no CDN).

const KEY_STORAGE = "segany.apiKey";

/** An error answer of the server: `status`, `code` and a message that names the field. */
export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

/** The API key sent as a bearer token: from `?api_key=` in the page address, else this tab's storage. */
export function apiKey() {
  const fromAddress = new URLSearchParams(window.location.search).get("api_key");
  if (fromAddress) return fromAddress;
  try { return sessionStorage.getItem(KEY_STORAGE) || ""; } catch { return ""; }
}

export function setApiKey(key) {
  try { sessionStorage.setItem(KEY_STORAGE, key); } catch { /* storage off: the key lasts this call only */ }
}

/** Show the page's banner while the server says (X-Segany-Weights, on every answer) its weights are random. */
function noteWeights(response) {
  const weights = response.headers.get("X-Segany-Weights");
  const banner = document.getElementById("weights-banner");
  if (weights && banner) banner.hidden = weights !== "random";
}

async function request(path, body) {
  const headers = {};
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  let payload = body;
  if (body !== undefined && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, { method: body === undefined ? "GET" : "POST", headers, body: payload });
  } catch (error) {
    throw new ApiError(0, "network", `the server did not answer (${error.message})`, null);
  }
  noteWeights(response);
  const text = await response.text();
  let document = null;
  try { document = text ? JSON.parse(text) : null; } catch { /* not JSON: reported below */ }
  if (!response.ok) {
    const error = document && document.error;
    if (error && typeof error === "object") throw new ApiError(response.status, error.code, error.message, error.field);
    throw new ApiError(response.status, "http_" + response.status, text.slice(0, 200) || response.statusText, null);
  }
  if (document === null) throw new ApiError(response.status, "bad_answer", "the server answered no JSON", null);
  return document;
}

/** What this server offers the page (text prompts, AMG defaults, limits); null when the route is missing. */
export async function capabilities() {
  try {
    return await request("/web/capabilities");
  } catch (error) {
    if (error.status === 404) return null;
    throw error;
  }
}

/** POST /v1/embed with the image file: {image_id, width, height, cached, timing_ms}. */
export function embed(imageBlob, fileName) {
  const form = new FormData();
  form.append("image", imageBlob, fileName || "image");
  return request("/v1/embed", form);
}

/** POST /v1/segment on an embedded image; prompt {points: [[x, y]], labels, box}; masks as COCO RLE. */
export function segment(imageId, prompt, multimask) {
  return request("/v1/segment", { image_id: imageId, prompts: [prompt], multimask, format: "rle" });
}

/** POST /v1/segment with a text phrase (servers with the text extra); one result per detected object. */
export function segmentText(imageId, text) {
  return request("/v1/segment", { image_id: imageId, text, multimask: false, format: "rle" });
}

/** POST /v1/auto ("Segment everything") with the image file and MaskGenerator parameters. */
export function auto(imageBlob, fileName, params) {
  const form = new FormData();
  form.append("image", imageBlob, fileName || "image");
  for (const [name, value] of Object.entries(params)) form.append(name, String(value));
  form.append("format", "rle");
  return request("/v1/auto", form);
}
