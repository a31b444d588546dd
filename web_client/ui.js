// Everything that touches the page. Names and schools come from other people:
// they are only ever set with textContent, never parsed as HTML.

import { el } from "./lesson.js";
import { roleLabel } from "./roles.js";

const $ = (id) => document.getElementById(id);

/** "Ana (Student, south)": who a link says one is, for greetings and the header. */
export function whoLabel({ name, role, school }) {
  return `${name} (${roleLabel(role)}${school ? `, ${school}` : ""})`;
}


/** Show one of the screens: loading, fatal, prejoin, lobby or room. */
export function showScreen(name) {
  for (const id of ["loading", "fatal", "prejoin", "lobby", "room"]) $(id).hidden = id !== name;
}

export function showFatal(title, text, hint = "", retry = null) {
  $("fatal-title").textContent = title;
  $("fatal-text").textContent = text;
  $("fatal-hint").textContent = hint;
  $("fatal-retry").hidden = !retry;
  $("fatal-retry").onclick = retry;
  setBanner(null);
  showScreen("fatal");
}

/** The status line at the top; kind is "info", "warn" or "error"; null hides it. */
export const bannerHistory = [];

export function setBanner(text, kind = "info") {
  if (text) bannerHistory.push(text);
  const banner = $("banner");
  banner.hidden = !text;
  banner.textContent = text ?? "";
  banner.dataset.kind = kind;
}

export function setText(id, text) {
  const node = $(id);
  node.textContent = text ?? "";
  node.hidden = !text;
}

// -- tiles ------------------------------------------------------------------

/** A tile per (participant, video source): a <video> and a caption. */
export class Tiles {
  constructor(myRole) {
    this.myRole = myRole;
    this.tiles = new Map(); // key -> figure
    this.onFirstFrame = () => {};
    this.spotlight = null; // participant id everyone sees large
    this.presenters = new Set(); // participant ids made presenter
  }

  /** The teacher's spotlight and the presenters: they are shown large. */
  /** Director mode: these {participant_id, source} fill the main view, in order (null: not directed). */
  setDirected(items) {
    this.directed = items?.length ? items : null;
  }

  setFocus(spotlight, presenters) {
    this.spotlight = spotlight ?? null;
    this.presenters = new Set(presenters);
    for (const figure of this.tiles.values()) {
      const id = figure.dataset.participantId;
      figure.dataset.spotlight = String(id === this.spotlight);
      figure.dataset.presenter = String(this.presenters.has(id));
    }
  }

  static key(participantId, source) {
    return `${participantId}:${source}`;
  }

  /** Show a video track; `who` is {id, name, role, school}; local tiles are muted mirrors. */
  showVideo(who, source, stream, { trackId = "", local = false } = {}) {
    const key = Tiles.key(who.id, source);
    let figure = this.tiles.get(key);
    if (!figure) {
      const video = el("video", { autoplay: true, playsInline: true, muted: true });
      video.muted = true; // the property, not only the attribute: audio plays in <audio>
      const caption = el("figcaption");
      figure = el("figure", { className: "tile" }, video, caption);
      this.tiles.set(key, figure);
    }
    const video = figure.querySelector("video");
    Object.assign(figure.dataset, {
      participantId: who.id,
      role: who.role,
      source,
      local: local ? "true" : "false",
      spotlight: String(who.id === this.spotlight),
      presenter: String(this.presenters.has(who.id)),
    });
    Object.assign(video.dataset, { participantId: who.id, trackId, source, role: who.role });
    video.setAttribute(
      "aria-label",
      `${source === "screen" ? "Screen of" : "Video of"} ${local ? "you" : who.name}`,
    );
    this.caption(figure, who, source, local);
    if (video.srcObject !== stream) {
      video.srcObject = stream;
      if (!local && "requestVideoFrameCallback" in video) {
        video.requestVideoFrameCallback(() => this.onFirstFrame(who, source, trackId));
      }
    }
    video.play().catch(() => {});
    return figure;
  }

  caption(figure, who, source, local) {
    const caption = figure.querySelector("figcaption");
    const name = local ? `${who.name} (you)` : who.name;
    const parts = [source === "screen" ? `Screen: ${name}` : name];
    if (who.school) parts.push(who.school);
    caption.textContent = parts.join(" · ");
  }

  rename(who) {
    for (const figure of this.tiles.values()) {
      if (figure.dataset.participantId === who.id) {
        this.caption(figure, who, figure.dataset.source, figure.dataset.local === "true");
      }
    }
  }

  remove(participantId, source) {
    const key = Tiles.key(participantId, source);
    const figure = this.tiles.get(key);
    if (!figure) return;
    figure.querySelector("video").srcObject = null;
    figure.remove();
    this.tiles.delete(key);
  }

  removeParticipant(participantId) {
    for (const figure of [...this.tiles.values()]) {
      if (figure.dataset.participantId === participantId) {
        this.remove(participantId, figure.dataset.source);
      }
    }
  }

  clearRemote() {
    for (const figure of [...this.tiles.values()]) {
      if (figure.dataset.local !== "true") {
        this.remove(figure.dataset.participantId, figure.dataset.source);
      }
    }
  }

  /**
   * Put tiles where they belong. Teacher: classrooms and shared screens on the
   * stage, everyone else in the strip. Others: the presenter (a shared screen,
   * else the teacher) large, the rest in the strip.
   */
  arrange() {
    const main = $("main-view");
    const strip = $("strip");
    const all = [...this.tiles.values()];
    const remote = all.filter((f) => f.dataset.local !== "true");
    let large;
    // The spotlight (else the presenters) first: their screen if they share one, else their camera.
    const focusIds = this.spotlight ? [this.spotlight] : [...this.presenters];
    const focused = [];
    for (const id of focusIds) {
      const mine = remote.filter((f) => f.dataset.participantId === id);
      const pick = mine.find((f) => f.dataset.source === "screen") ?? mine.find((f) => f.dataset.source === "camera");
      if (pick) focused.push(pick);
    }
    const directed = (this.directed ?? [])
      .map((item) =>
        remote.find((f) => f.dataset.participantId === item.participant_id && f.dataset.source === item.source),
      )
      .filter(Boolean);
    if (directed.length) {
      large = directed;
    } else if (this.myRole === "teacher") {
      const stage = remote.filter((f) => f.dataset.role === "classroom" || f.dataset.source === "screen");
      large = [...focused, ...stage.filter((f) => !focused.includes(f))];
    } else if (focused.length) {
      large = focused;
    } else {
      const presenter =
        remote.find((f) => f.dataset.source === "screen" && f.dataset.role === "teacher") ??
        remote.find((f) => f.dataset.source === "screen") ??
        remote.find((f) => f.dataset.role === "teacher") ??
        remote[0];
      large = presenter ? [presenter] : [];
    }
    main.dataset.count = String(large.length);
    for (const figure of large) if (figure.parentElement !== main) main.append(figure);
    for (const figure of all) {
      if (!large.includes(figure) && figure.parentElement !== strip) strip.append(figure);
    }
    for (const figure of all) {
      const video = figure.querySelector("video");
      if (video.paused) video.play().catch(() => {});
    }
    $("stage").dataset.empty = all.length ? "false" : "true";
  }
}

// -- sound --------------------------------------------------------------------

/** Remote audio plays in hidden <audio> elements; autoplay blocks get a button. */
export class Sound {
  constructor() {
    this.sinks = new Map(); // track id -> audio
    $("sound-button").addEventListener("click", () => this.resume());
  }

  play(trackId, participantId, source, stream) {
    let audio = this.sinks.get(trackId);
    if (!audio) {
      audio = el("audio", { autoplay: true, dataset: { trackId, participantId, source } });
      $("audio-sinks").append(audio);
      this.sinks.set(trackId, audio);
    }
    audio.srcObject = stream;
    audio.play().catch(() => this.blocked());
  }

  remove(trackId) {
    const audio = this.sinks.get(trackId);
    if (!audio) return;
    audio.srcObject = null;
    audio.remove();
    this.sinks.delete(trackId);
  }

  removeParticipant(participantId) {
    for (const [trackId, audio] of [...this.sinks]) {
      if (audio.dataset.participantId === participantId) this.remove(trackId);
    }
  }

  clear() {
    for (const trackId of [...this.sinks.keys()]) this.remove(trackId);
  }

  blocked() {
    $("sound-button").hidden = false;
  }

  async resume() {
    try {
      await Promise.all([...this.sinks.values()].map((a) => a.play()));
      $("sound-button").hidden = true;
    } catch {
      $("sound-button").hidden = false;
    }
  }
}

// -- people -------------------------------------------------------------------

const KIND_MUTED = { audio: "microphone muted", video: "camera muted" };
const openMenus = new Set(); // participant ids whose "More" menu is open

/** What a participant is doing, as short words: publishing, muted, hand up... */
export function statusWords(p, { sending }) {
  const words = [];
  if (p.connected === false) words.push("reconnecting…");
  if (p.presenter) words.push("presenter");
  if (sending) words.push("publishing");
  else if (p.can_publish) words.push("may publish");
  for (const kind of p.muted ?? []) words.push(KIND_MUTED[kind] ?? `${kind} muted`);
  if (p.hand_raised) words.push("hand raised");
  if (p.group) words.push(`group ${p.group}`);
  return words.join(" · ");
}

/**
 * The participant list grouped by school. `actions(p)` returns
 * {inline: [{label, onClick}], more: [{label, onClick}]} (or an array: inline);
 * "more" actions sit behind a "More" disclosure that stays open across updates.
 */
export function renderPeople(me, participants, actions, { publishing = false, spotlight = null } = {}) {
  const container = $("people-groups");
  const everyone = [me, ...participants.values()].filter(Boolean);
  const bySchool = new Map();
  for (const p of everyone) {
    const school = p.school || "No school";
    if (!bySchool.has(school)) bySchool.set(school, []);
    bySchool.get(school).push(p);
  }
  const button = (action, p) => {
    const node = el("button", { type: "button", text: action.label });
    if (action.className) node.className = action.className;
    if (action.pressed !== undefined) node.setAttribute("aria-pressed", String(action.pressed));
    node.setAttribute("aria-label", `${action.label}: ${p.name}`);
    node.addEventListener("click", action.onClick);
    return node;
  };
  const groups = [];
  for (const school of [...bySchool.keys()].sort((a, b) => a.localeCompare(b))) {
    const items = bySchool
      .get(school)
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((p) => {
        const sending = p.id === me.id ? publishing : p.tracks.length > 0;
        const words = statusWords(p, { sending });
        const item = el(
          "li",
          {
            dataset: {
              participantId: p.id,
              role: p.role,
              muted: (p.muted ?? []).join(" "),
              spotlight: String(p.id === spotlight),
              connected: String(p.connected !== false),
            },
          },
          el("span", { className: "name", text: p.id === me.id ? `${p.name} (you)` : p.name }),
          el("span", { className: "role", text: roleLabel(p.role) }),
          el("span", { className: "state", text: p.id === spotlight ? [words, "spotlight"].filter(Boolean).join(" · ") : words }),
        );
        const found = p.id === me.id ? [] : actions(p);
        const { inline = [], more = [] } = Array.isArray(found) ? { inline: found } : found;
        if (inline.length || more.length) {
          const row = el("div", { className: "actions" }, ...inline.map((a) => button(a, p)));
          if (more.length) {
            const details = el(
              "details",
              { className: "more", open: openMenus.has(p.id) },
              el("summary", { text: "More", aria: { label: `More actions: ${p.name}` } }),
              el("div", { className: "menu" }, ...more.map((a) => button(a, p))),
            );
            details.addEventListener("toggle", () => (details.open ? openMenus.add(p.id) : openMenus.delete(p.id)));
            row.append(details);
          }
          item.append(row);
        }
        return item;
      });
    const heading = el("h3", { text: school });
    groups.push(el("section", { className: "school", dataset: { school } }, heading, el("ul", {}, ...items)));
  }
  container.replaceChildren(...groups);
  $("people-title").textContent = `People (${everyone.length})`;
}
