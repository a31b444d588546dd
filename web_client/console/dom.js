// Building the console's elements. Names come from operators and teachers: they
// are only ever set as text, never parsed as HTML.

export const $ = (id) => document.getElementById(id);

/** An element with properties (text, dataset, attributes via attrs) and children. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "attrs") for (const [name, v] of Object.entries(value)) node.setAttribute(name, v);
    else node[key] = value;
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

/** A button whose accessible name can say what it acts on ("Copy link: Room 4"). */
export function button(label, onClick, { name = null, className = "" } = {}) {
  const node = el("button", { type: "button", text: label, className });
  if (name) node.setAttribute("aria-label", name);
  node.addEventListener("click", onClick);
  return node;
}

/** Show a line of status (or hide it with null). */
export function status(text, kind = "info") {
  const node = $("console-status");
  node.textContent = text ?? "";
  node.hidden = !text;
  node.dataset.kind = kind;
}

/** A file the browser saves (attendance): from a Blob, without a request line. */
export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** Copy text; the Clipboard API where allowed, else a selected text area. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = el("textarea", { value: text });
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

/** "West Primary" -> "west-primary": an id as the API allows (may be empty). */
export function slug(name) {
  return String(name)
    .normalize("NFKD")
    .replace(/[\u0300-\u036f]/g, "")
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 48);
}
