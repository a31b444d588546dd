// What every lesson page shows once in: the header, one's own microphone, camera
// and screen buttons, the hand and "muted by the teacher" line, the people list
// and the chat. Each part is shown from the store: what the server says this
// participant may do, never from its role.

import { ChatLog, handPosition, kindWord } from "../lesson.js";
import { renderPeople, setText, showScreen, whoLabel } from "../ui.js";

const $ = (id) => document.getElementById(id);
const KINDS = ["audio", "video"];
const NOTICE_MS = 15_000;

export function sentence(text) {
  const t = String(text ?? "").trim();
  if (!t) return "";
  const s = t[0].toUpperCase() + t.slice(1);
  return /[.!?]$/.test(s) ? s : `${s}.`;
}

export class RoomView {
  /**
   * @param store the lesson (store.js)
   * @param page the controller: send, local media (localTrack, toggle, screen), leave
   * @param claims name, role, school and lesson from the link, for the header only
   */
  constructor(store, page, claims) {
    this.store = store;
    this.page = page;
    this.askedUnmute = new Set(); // kinds this page asked to have unmuted
    this.actionsFor = () => ({ inline: [], more: [] }); // per-person buttons (teacher.js)
    // What the notice adds when a mute is lifted (a classroom turns itself back on instead).
    this.onUnmuteAllowed = (kind) =>
      ` Press “${kind === "audio" ? "Unmute microphone" : "Turn camera on"}” when you are ready.`;
    this.chat = new ChatLog();
    const who = whoLabel(claims);
    $("room-who").textContent = who;
    $("room-title").textContent = `Lesson ${claims.lesson}`;
    this.bind();
    store.subscribe((change) => this.changed(change));
  }

  bind() {
    const page = this.page;
    $("mic-button").addEventListener("click", () => page.toggle("audio"));
    $("camera-button").addEventListener("click", () => page.toggle("video"));
    $("screen-button").addEventListener("click", () => (page.screenStream ? page.stopScreen() : page.startScreen()));
    $("leave-button").addEventListener("click", () => page.leave());
    $("quality-select").addEventListener("change", (event) => page.quality?.setMode(event.target.value));
    $("view-select").addEventListener("change", (event) => page.quality?.setView(event.target.value));
    $("hand-button").addEventListener("click", () =>
      page.send(this.store.me?.hand_raised ? "lower_hand" : "raise_hand"),
    );
    for (const kind of KINDS) {
      $(`ask-unmute-${kind}`).addEventListener("click", () => {
        if (page.send("ask_to_unmute", { kind })) {
          this.askedUnmute.add(kind);
          this.render();
        }
      });
    }
    $("chat-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("chat-text");
      const text = input.value.trim();
      if (!text) return;
      if (page.send("chat", { text, to: $("chat-to").value })) input.value = "";
    });
    $("chat-earlier").addEventListener("click", () => {
      if (this.chat.oldestId !== null) page.send("fetch_chat", { before: this.chat.oldestId });
    });
  }

  changed(change) {
    const store = this.store;
    switch (change.type) {
      case "welcome":
        this.askedUnmute.clear();
        this.chat.clear();
        setText("notice", null);
        showScreen("room");
        break;
      case "participant_updated":
        // A lifted mute answers this page's request for it.
        if (change.before) {
          for (const kind of change.before.muted ?? []) {
            if (!(store.me.muted ?? []).includes(kind)) this.askedUnmute.delete(kind);
          }
        }
        break;
      case "notice":
        this.noticed(change.message);
        break;
      case "unmute_requested":
        if (!change.ignored) {
          const who = store.who(change.message.participant_id);
          this.notify(`${who.name} asks to turn the ${kindWord(change.message.kind)} back on.`);
        }
        break;
      case "chat_message":
      case "chat_history":
        for (const entry of change.entries) this.chat.add(entry, store.me?.id);
        if (change.type === "chat_history") $("chat-earlier").hidden = store.chatComplete;
        return; // nothing else changed
      default:
        break;
    }
    this.render();
  }

  /** Something happened to this participant (muted, allowed to unmute...): say it. */
  noticed(message) {
    let text = sentence(message.message);
    const allowed = /^unmute_allowed_(audio|video)$/.exec(message.code ?? "");
    if (allowed) {
      this.askedUnmute.delete(allowed[1]);
      text += this.onUnmuteAllowed(allowed[1]);
    }
    this.notify(text);
  }

  /** Say something in the notice line (read out by screen readers); it fades after a while. */
  notify(text) {
    setText("notice", text);
    clearTimeout(this.noticeTimer);
    this.noticeTimer = setTimeout(() => setText("notice", null), NOTICE_MS);
  }

  render() {
    if (!this.store.me) return;
    this.renderControls();
    this.renderParticipation();
    this.renderPeople();
    const chatOpen = this.store.may("chat");
    $("chat-form").hidden = !chatOpen;
    $("chat-closed").hidden = chatOpen;
  }

  /** One's own microphone, camera and screen: shown while the server lets one publish. */
  renderControls() {
    const page = this.page;
    const canPublish = this.store.may("publish");
    const audio = page.localTrack("audio");
    const video = page.localTrack("video");
    const mic = $("mic-button");
    mic.hidden = !canPublish || !audio;
    mic.disabled = this.mutedByModerator("audio");
    mic.textContent = audio?.enabled === false ? "Unmute microphone" : "Mute microphone";
    mic.setAttribute("aria-pressed", String(audio?.enabled === false));
    const camera = $("camera-button");
    camera.hidden = !canPublish || !video;
    camera.disabled = this.mutedByModerator("video");
    camera.textContent = video?.enabled === false ? "Turn camera on" : "Turn camera off";
    camera.setAttribute("aria-pressed", String(video?.enabled === false));
    const screen = $("screen-button");
    screen.hidden = !canPublish || !navigator.mediaDevices?.getDisplayMedia;
    screen.textContent = page.screenStream ? "Stop sharing" : "Share screen";
    screen.setAttribute("aria-pressed", String(Boolean(page.screenStream)));
  }

  mutedByModerator(kind) {
    return (this.store.me?.muted ?? []).includes(kind);
  }

  /** The hand button, the "muted by the teacher" note with "Ask to unmute", the group. */
  renderParticipation() {
    const store = this.store;
    const me = store.me;
    const hand = $("hand-button");
    hand.hidden = !store.may("raise_hand");
    const raised = Boolean(me.hand_raised);
    hand.textContent = raised ? "Lower hand" : "Raise hand";
    hand.setAttribute("aria-pressed", String(raised));
    $("hand-status").textContent = raised ? handPosition(store.hands, me.id) : "";
    const muted = me.muted ?? [];
    $("mute-status").hidden = muted.length === 0;
    const words = muted.map(kindWord).join(" and ");
    const asked = muted.filter((k) => this.askedUnmute.has(k));
    $("mute-text").textContent = muted.length
      ? `The teacher muted your ${words}.` +
        (asked.length ? " You asked to turn it back on; please wait for the teacher." : "")
      : "";
    for (const kind of KINDS) {
      const ask = $(`ask-unmute-${kind}`);
      ask.hidden = !muted.includes(kind) || !store.may("ask_to_unmute");
      ask.disabled = this.askedUnmute.has(kind);
    }
    const lesson = store.lesson;
    let group = "";
    if (lesson.breakout && me.group) group = `You are in breakout group ${me.group}.`;
    else if (lesson.breakout && !store.may("run_lesson")) group = "You are in the main room.";
    $("group-status").textContent = group;
  }

  renderPeople() {
    const store = this.store;
    renderPeople(store.me, store.participants, (p) => this.actionsFor(p), {
      publishing: this.page.publishing,
      spotlight: store.lesson.spotlight,
    });
  }
}
