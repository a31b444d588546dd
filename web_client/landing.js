// The landing page: what this server is, help for people who have a link, and
// the sign-in for operators (admin key, a cookie session) and teachers (their link).

import { readClaims } from "./token.js";

const $ = (id) => document.getElementById(id);

/** The token in a pasted link (or a bare token), or null. */
export function tokenFromText(text) {
  const trimmed = String(text ?? "").trim();
  const match = trimmed.match(/#token=([A-Za-z0-9_.-]+)/);
  const token = match ? match[1] : trimmed;
  return /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/.test(token) ? token : null;
}

function show(id, text) {
  $(id).textContent = text;
  $(id).hidden = !text;
}

function main() {
  // An old link to the root page with a token: it belongs to the join page.
  const own = tokenFromText(location.hash);
  if (own) {
    location.replace(`/join#token=${own}`);
    return;
  }
  $("link-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = tokenFromText($("link-text").value);
    if (!token || !readClaims(token)) {
      show("link-error", "That is not a whole join link. Copy all of it, up to the end, and try again.");
      return;
    }
    location.assign(`/join#token=${token}`);
  });
  $("operator-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    show("operator-error", "");
    const response = await fetch("/console/session", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ key: $("admin-key").value.trim() }),
    });
    $("admin-key").value = "";
    if (response.ok) {
      location.assign("/console");
      return;
    }
    show("operator-error", response.status === 401 ? "That is not the admin key." : `Signing in failed (${response.status}).`);
  });
  $("teacher-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = tokenFromText($("teacher-link").value);
    const claims = token && readClaims(token);
    if (!claims) {
      show("teacher-error", "That is not a whole join link.");
      return;
    }
    if (claims.role !== "teacher") {
      show("teacher-error", "This is not a teacher's link: open it to join the lesson instead.");
      return;
    }
    location.assign(`/console#token=${token}`);
  });
}

main();
