// The lesson's panels: lobby, raised hands, unmute requests, chat, breakout
// groups. Everything other people wrote (names, schools, chat text) is set
// with textContent or as text nodes; links are built with DOM APIs, never HTML.

import { roleLabel } from "./roles.js";

const $ = (id) => document.getElementById(id);

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else if (key === "aria") for (const [name, v] of Object.entries(value)) node.setAttribute(`aria-${name}`, v);
    else node[key] = value;
  }
  node.append(...children);
  return node;
}

/** A button whose accessible name says whom it acts on ("Admit: Ada"). */
export function actionButton(label, who, onClick, className = "") {
  const button = el("button", { type: "button", text: label, className });
  if (who) button.setAttribute("aria-label", `${label}: ${who}`);
  button.addEventListener("click", onClick);
  return button;
}

// -- chat ------------------------------------------------------------------------

const URL_PATTERN = /\bhttps?:\/\/[^\s<>"'`]+/gi;
const TRAILING = /[.,;:!?)\]}'"]+$/;

/**
 * The text as nodes: plain text nodes, and <a> for http(s) links (opened in a
 * new tab, no referrer, no opener). Nothing is parsed as HTML; no preview is fetched.
 */
export function linkify(text) {
  const nodes = [];
  let last = 0;
  for (const match of text.matchAll(URL_PATTERN)) {
    let raw = match[0];
    const trailing = raw.match(TRAILING);
    if (trailing) raw = raw.slice(0, -trailing[0].length);
    let url = null;
    try {
      url = new URL(raw);
    } catch {
      url = null;
    }
    if (!url || (url.protocol !== "http:" && url.protocol !== "https:")) continue;
    if (match.index > last) nodes.push(document.createTextNode(text.slice(last, match.index)));
    const link = el("a", { href: url.href, target: "_blank", rel: "noopener noreferrer", text: raw });
    nodes.push(link);
    last = match.index + raw.length;
  }
  if (last < text.length) nodes.push(document.createTextNode(text.slice(last)));
  return nodes;
}

function timeOf(seconds) {
  const d = new Date(seconds * 1000);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** One chat entry as a list item. */
export function chatItem(entry, myId) {
  const mine = entry.from_id === myId;
  const meta = [roleLabel(entry.role)];
  if (entry.school) meta.push(entry.school);
  const to =
    entry.to === "teachers"
      ? "privately to the teachers"
      : entry.to === "all_groups"
        ? "to all groups"
        : entry.group
          ? `in group ${entry.group}`
          : "";
  const header = el(
    "p",
    { className: "chat-head" },
    el("span", { className: "name", text: mine ? `${entry.name} (you)` : entry.name }),
    " ",
    el("span", { className: "meta", text: meta.join(", ") }),
    " ",
    el("time", { className: "meta", dateTime: new Date(entry.sent_at * 1000).toISOString(), text: timeOf(entry.sent_at) }),
  );
  if (to) header.append(" ", el("span", { className: "to", text: to }));
  const body = el("p", { className: "chat-text" }, ...linkify(entry.text));
  return el("li", { dataset: { id: String(entry.id), to: entry.to, fromId: entry.from_id } }, header, body);
}

/** The chat log: keeps each message once, in order, scrolled to the latest. */
export class ChatLog {
  constructor() {
    this.ids = new Set();
    this.log = $("chat-log");
  }

  clear() {
    this.ids.clear();
    this.log.replaceChildren();
  }

  /** Add one message in its place (older pages arrive after newer messages). */
  add(entry, myId) {
    if (this.ids.has(entry.id)) return;
    this.ids.add(entry.id);
    const item = chatItem(entry, myId);
    const later = [...this.log.children].find((li) => Number(li.dataset.id) > entry.id);
    if (later) {
      this.log.insertBefore(item, later);
    } else {
      this.log.append(item);
      this.log.scrollTop = this.log.scrollHeight;
    }
  }

  /** The id of the oldest message shown (older ones are fetched by page). */
  get oldestId() {
    const first = this.log.firstElementChild;
    return first ? Number(first.dataset.id) : null;
  }

  get count() {
    return this.ids.size;
  }
}

// -- panels ----------------------------------------------------------------------

function ordinal(n) {
  const suffix = n % 10 === 1 && n % 100 !== 11 ? "st" : n % 10 === 2 && n % 100 !== 12 ? "nd" : n % 10 === 3 && n % 100 !== 13 ? "rd" : "th";
  return `${n}${suffix}`;
}

/**
 * The raised-hands queue, first raised first. `actions(hand)` returns buttons.
 */
export function renderHands(queue, actions) {
  const list = $("hands-list");
  list.replaceChildren(
    ...queue.map((hand) =>
      el(
        "li",
        { dataset: { participantId: hand.participant_id } },
        el("span", { className: "name", text: hand.name }),
        " ",
        el("span", { className: "school", text: hand.school || "No school" }),
        ...actions(hand),
      ),
    ),
  );
  $("hands-empty").hidden = queue.length > 0;
  $("hands-title").textContent = queue.length ? `Raised hands (${queue.length})` : "Raised hands";
}

export function handPosition(queue, myId) {
  const index = queue.findIndex((h) => h.participant_id === myId);
  return index < 0 ? "" : `Your hand is up: ${ordinal(index + 1)} in the queue.`;
}

/** Who waits in the lobby; `actions(p)` returns Admit/Deny buttons. */
export function renderLobby(waiting, actions) {
  $("lobby-list").replaceChildren(
    ...waiting.map((p) =>
      el(
        "li",
        { dataset: { participantId: p.id } },
        el("span", { className: "name", text: p.name }),
        " ",
        el("span", { className: "meta", text: [roleLabel(p.role), p.school].filter(Boolean).join(", ") }),
        ...actions(p),
      ),
    ),
  );
  $("lobby-title").textContent = `Waiting to join (${waiting.length})`;
}

const KIND_WORDS = { audio: "microphone", video: "camera" };

export function kindWord(kind) {
  return KIND_WORDS[kind] ?? kind;
}

/** Unmute requests: [{participant, kind}] with Allow and Dismiss buttons. */
export function renderUnmuteRequests(requests, allow, dismiss) {
  $("unmute-list").replaceChildren(
    ...requests.map(({ participant, kind }) =>
      el(
        "li",
        { dataset: { participantId: participant.id, kind } },
        el("span", { className: "name", text: participant.name }),
        " ",
        el("span", { className: "meta", text: `asks to turn the ${kindWord(kind)} back on` }),
        actionButton(`Allow ${kindWord(kind)}`, participant.name, () => allow(participant, kind)),
        actionButton("Dismiss", `${kindWord(kind)} request of ${participant.name}`, () => dismiss(participant, kind)),
      ),
    ),
  );
}

/** The running breakout groups with a Visit button each. */
export function renderGroups(groups, nameOf, myGroup, visit) {
  const names = Object.keys(groups).sort((a, b) => Number(a) - Number(b) || a.localeCompare(b));
  $("breakout-groups").replaceChildren(
    ...names.map((group) => {
      const members = groups[group].map(nameOf).filter(Boolean);
      const item = el(
        "li",
        { dataset: { group } },
        el("span", { className: "name", text: `Group ${group}` }),
        " ",
        el("span", { className: "meta", text: members.join(", ") || "nobody" }),
      );
      if (group === myGroup) item.append(el("span", { className: "state", text: "you are here" }));
      else item.append(actionButton(`Visit group ${group}`, "", () => visit(group)));
      return item;
    }),
  );
}
