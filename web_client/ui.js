// Everything that touches the page. Names and schools come from other people:
// they are only ever set with textContent, never parsed as HTML.

const $ = (id) => document.getElementById(id);

const ROLE_LABELS = {
  teacher: "Teacher",
  student: "Student",
  classroom: "Classroom",
  expert: "Expert",
  observer: "Observer",
};

export function roleLabel(role) {
  return ROLE_LABELS[role] ?? role;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else node[key] = value;
  }
  node.append(...children);
  return node;
}

/** Show one of the screens: loading, fatal, prejoin or room. */
export function showScreen(name) {
  for (const id of ["loading", "fatal", "prejoin", "room"]) $(id).hidden = id !== name;
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
    if (this.myRole === "teacher") {
      large = remote.filter((f) => f.dataset.role === "classroom" || f.dataset.source === "screen");
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

/**
 * The participant list grouped by school. `actions(p)` returns buttons
 * ({label, onClick}) for a participant, for example grant/revoke publishing.
 */
export function renderPeople(me, participants, actions, { publishing = false } = {}) {
  const container = $("people-groups");
  const everyone = [me, ...participants.values()].filter(Boolean);
  const bySchool = new Map();
  for (const p of everyone) {
    const school = p.school || "No school";
    if (!bySchool.has(school)) bySchool.set(school, []);
    bySchool.get(school).push(p);
  }
  const groups = [];
  for (const school of [...bySchool.keys()].sort((a, b) => a.localeCompare(b))) {
    const items = bySchool
      .get(school)
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((p) => {
        const sending = p.id === me.id ? publishing : p.tracks.length > 0;
        const status = sending ? "publishing" : p.can_publish ? "may publish" : "";
        const item = el(
          "li",
          { dataset: { participantId: p.id, role: p.role } },
          el("span", { className: "name", text: p.id === me.id ? `${p.name} (you)` : p.name }),
          el("span", { className: "role", text: roleLabel(p.role) }),
          el("span", { className: "state", text: status }),
        );
        for (const action of p.id === me.id ? [] : actions(p)) {
          const button = el("button", { type: "button", text: action.label });
          button.setAttribute("aria-label", `${action.label}: ${p.name}`);
          button.addEventListener("click", action.onClick);
          item.append(button);
        }
        return item;
      });
    const heading = el("h3", { text: school });
    groups.push(el("section", { className: "school", dataset: { school } }, heading, el("ul", {}, ...items)));
  }
  container.replaceChildren(...groups);
  $("people-title").textContent = `People (${everyone.length})`;
}
