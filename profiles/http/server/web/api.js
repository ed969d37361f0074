// The API of this service, with the key the person signed in with.
//
// The key lives in this tab's sessionStorage only: never in a URL, never in a cookie, never
// in localStorage (shared by every tab and kept after the browser closes). Every request
// sends it as "Authorization: Bearer <key>"; errors come back as the API words them.

const KEY_ITEM = "profiles.apiKey";

export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY_ITEM);
}

export function setKey(key) {
  sessionStorage.setItem(KEY_ITEM, key);
}

export function clearKey() {
  sessionStorage.removeItem(KEY_ITEM);
}

// Listeners called with the ApiError of any 401 (the key is not, or no longer, accepted).
const unauthorized = new Set();

export function onUnauthorized(listener) {
  unauthorized.add(listener);
}

// The answer's JSON (null for 204), or an ApiError carrying the API's own error body.
export async function api(path, { method = "GET", body, key, query } = {}) {
  const token = key ?? getKey();
  if (!token) {
    throw new ApiError(401, "Unauthorized", "API key required");
  }
  if (/[^\x21-\x7e]/.test(token)) {
    // Not a header's value (a pasted space or line break inside): no key looks like that.
    throw new ApiError(401, "Unauthorized", "Invalid or revoked API key");
  }
  const headers = { Accept: "application/json", Authorization: `Bearer ${token}` };
  const init = { method, headers, credentials: "omit", cache: "no-store", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let url = `/v1${path}`;
  if (query) {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined && value !== null && value !== "") params.set(name, String(value));
    }
    const text = params.toString();
    if (text) url += `?${text}`;
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    throw new ApiError(0, "NetworkError", `The service did not answer (${err.message}).`);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const error = data && typeof data === "object" ? data.error : null;
    const failure =
      error && typeof error.message === "string"
        ? new ApiError(response.status, error.code || "Error", error.message, error)
        : new ApiError(response.status, "HttpError", `HTTP ${response.status} from ${method} ${path}`);
    if (response.status === 401 && key === undefined) {
      for (const listener of unauthorized) listener(failure);
    }
    throw failure;
  }
  return response.status === 204 ? null : data;
}

// Every path segment the page puts in a URL goes through this.
export function seg(value) {
  return encodeURIComponent(String(value));
}
