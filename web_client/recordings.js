// The recordings page: a lesson's recordings, each file with a player, and delete.
//
// Open it as /recordings#token=TEACHER_TOKEN (the lesson comes from the token) or
// /recordings#key=ADMIN_KEY&lesson=LESSON. The credential stays in the fragment: it
// is sent only as an Authorization header to the API. Files play from the signed
// links the listing gives (players cannot send headers); seeking uses range requests.

import { readClaims } from "./token.js";

const $ = (id) => document.getElementById(id);

function make(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function credentials() {
  const fragment = new URLSearchParams(window.location.hash.replace(/^#/, ""));
  const token = fragment.get("token");
  const key = fragment.get("key");
  const lesson = fragment.get("lesson") || (token ? readClaims(token)?.lesson : null);
  return { secret: token || key, lesson };
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "—";
}

async function load() {
  const { secret, lesson } = credentials();
  if (!secret || !lesson) {
    $("recordings-status").textContent =
      "This page needs a teacher's join link (#token=…) or the admin key and a lesson (#key=…&lesson=…).";
    return;
  }
  const headers = { Authorization: `Bearer ${secret}` };
  const response = await fetch(`/api/lessons/${encodeURIComponent(lesson)}/recordings`, { headers });
  const body = await response.json();
  if (!response.ok) {
    $("recordings-status").textContent = `The recordings could not be listed: ${body.error ?? response.status}`;
    return;
  }
  $("recordings-status").textContent = body.length
    ? `${body.length} recording${body.length === 1 ? "" : "s"} of lesson ${lesson}.`
    : `Lesson ${lesson} has no recordings.`;
  $("recordings-list").replaceChildren(...body.map((recording) => render(recording, lesson, headers)));
}

function render(recording, lesson, headers) {
  const tracks = new Map((recording.manifest.tracks ?? []).map((t) => [t.file, t]));
  const files = recording.files
    .filter((file) => !file.name.endsWith(".json"))
    .map((file) => {
      const track = tracks.get(file.name);
      const audio = track?.kind === "audio";
      const player = make(audio ? "audio" : "video", { controls: true, preload: "metadata", src: file.url });
      player.dataset.file = file.name;
      const label = track
        ? `${track.name} (${track.school}), ${track.source}`
        : file.name.replace(/\.[a-z0-9]+$/, "");
      return make(
        "li",
        { className: "recording-file" },
        make("p", {}, `${label} · ${(file.bytes / 1e6).toFixed(1)} MB · `, make("a", { href: file.url, download: file.name, textContent: "download" })),
        player,
      );
    });
  const remove = make("button", { type: "button", className: "danger", textContent: "Delete this recording" });
  remove.disabled = recording.active;
  remove.addEventListener("click", async () => {
    if (!window.confirm("Delete this recording for good?")) return;
    const path = `/api/lessons/${encodeURIComponent(lesson)}/recordings/${encodeURIComponent(recording.id)}`;
    const response = await fetch(path, { method: "DELETE", headers });
    if (response.ok) load();
    else $("recordings-status").textContent = `Not deleted: ${(await response.json()).error}`;
  });
  const declined = recording.manifest.declined_schools ?? [];
  const item = make(
    "li",
    { className: "recording" },
    make("h2", {}, `${when(recording.started_at)}${recording.active ? " (recording now)" : ""}`),
    make(
      "p",
      { className: "note" },
      `Stopped: ${when(recording.stopped_at)}${recording.stop_reason ? ` (${recording.stop_reason})` : ""}.` +
        (declined.length ? ` Not recorded: ${declined.join(", ")}.` : ""),
    ),
    make("ul", {}, ...files),
    remove,
  );
  item.dataset.recording = recording.id;
  return item;
}

load().catch((error) => {
  $("recordings-status").textContent = `The recordings could not be listed: ${error.message ?? error}`;
});
