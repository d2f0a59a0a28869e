// Talking to the page's routes (api/ui/app.py): JSON in, JSON out, the session cookie sent
// by the browser (same origin). Errors are the API's `{"detail": ...}`.

export async function call(method, path, body) {
  const init = {
    method,
    headers: { Accept: "application/json" },
    credentials: "same-origin",
    cache: "no-store",
  };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { detail: text.slice(0, 300) };
    }
  }
  return { response, data };
}

export function detailOf(data, status) {
  if (!data || data.detail === undefined) return `the server answered HTTP ${status}`;
  if (typeof data.detail === "string") return data.detail;
  if (Array.isArray(data.detail)) {
    return data.detail.map((p) => `${(p.loc || []).join(".")}: ${p.msg}`).join("; ");
  }
  return JSON.stringify(data.detail);
}

export function retryAfterS(response, fallback) {
  const value = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  return Number.isFinite(value) && value > 0 ? value : fallback;
}
