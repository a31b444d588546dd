// The page's controller: join, publish, subscribe, reconnect, and the views.

import { explainMediaError, listDevices, openCameraAndMicrophone, openScreen } from "./media.js";
import { Publisher, Subscriber } from "./peers.js";
import { SignalingSocket } from "./signaling.js";
import {
  ChatLog,
  chatOpenFor,
  handPosition,
  kindWord,
  renderGroups,
  renderHands,
  renderLobby,
  renderUnmuteRequests,
  actionButton,
} from "./lesson.js";
import { Quality } from "./quality.js";
import { readClaims, tokenFromLocation } from "./token.js";
import { DirectorPanel, RecordingPanel, directedItems } from "./director.js";
import {
  Sound,
  Tiles,
  bannerHistory,
  renderPeople,
  roleLabel,
  setBanner,
  setText,
  showFatal,
  showScreen,
} from "./ui.js";

const $ = (id) => document.getElementById(id);
const MAX_BACKOFF_MS = 10_000;
// A bye with one of these reasons is followed by a reconnect, not a final page.
// "unavailable": the servers cannot reach the lesson now (their Redis is down); keep trying.
const RECONNECTING_BYES = new Set(["timeout", "server_shutdown", "negotiation_failed", "unavailable"]);
// At most one ICE restart of a connection this often; after this many restarts in a
// row that brought nothing back, the connection is replaced by a new one.
const ICE_RESTART_INTERVAL_MS = 4_000;
const ICE_RESTARTS_BEFORE_NEW_CONNECTION = 3;
// Roles whose microphone and camera a moderator may mute, and who may present.
const MUTABLE_ROLES = new Set(["student", "classroom", "expert", "delegate"]);
const PRESENTABLE_ROLES = new Set(["student", "classroom", "expert", "delegate"]);
const KINDS = ["audio", "video"];
const EMPTY_STATE = {
  locked: false,
  spotlight: null,
  breakout: false,
  groups: {},
  broadcast_audio_from: null,
  chat_policy: "everyone",
};
// What the page says when the server ends this participant's session: [title, text, hint, retry].
const BYE_TEXTS = {
  replaced: [
    "This lesson is open somewhere else",
    "You opened this join link in another tab or window, so this page has stopped.",
    "Close this page, or reload it to continue here.",
    false,
  ],
  left: ["You left the lesson", "Thank you for taking part.", "Reload the page to join again.", true],
  removed: [
    "You were removed from the lesson",
    null, // the server's sentence says who removed you
    "This link no longer works. If you think this is a mistake, ask your teacher.",
    false,
  ],
  denied: [
    "The teacher did not let you in",
    "The teacher did not let you into this lesson.",
    "If you should be in this lesson, ask your teacher, then try again.",
    true,
  ],
  locked: [
    "The lesson is locked",
    "The teacher has locked the lesson, so nobody new can join.",
    "Ask your teacher to unlock it, then try again.",
    true,
  ],
  lesson_ended: [
    "The lesson has ended",
    "The lesson has ended.",
    "Thank you for taking part. You can close this page.",
    false,
  ],
};

function sentence(text) {
  const t = String(text ?? "").trim();
  if (!t) return "";
  const s = t[0].toUpperCase() + t.slice(1);
  return /[.!?]$/.test(s) ? s : `${s}.`;
}

class ClassroomPage {
  constructor(token, claims) {
    this.token = token;
    this.claims = claims;
    this.role = claims.role;
    this.me = null;
    this.permissions = [];
    this.participants = new Map(); // id -> participant info
    this.iceServers = [];
    this.localStream = null;
    this.screenStream = null;
    this.socket = null;
    this.publisher = null;
    this.subscriber = null;
    this.remote = new Map(); // track id -> {info, stream}
    this.attempt = 0;
    this.reconnects = 0;
    this.resumes = 0; // reconnects that took the seat (and the media) back
    this.iceRestarts = { publish: 0, subscribe: 0 };
    this.lastIceRestart = { publish: 0, subscribe: 0 };
    this.failedRestarts = { publish: 0, subscribe: 0 };
    this.stopped = false;
    this.bye = null;
    this.everJoined = false;
    this.metrics = { firstTeacherFrameMs: null, welcomeMs: null, firstFrames: {}, iceServerRenewals: [] };
    this.connectionLog = []; // [ms, what] of the last connection events, for support
    this.lessonState = { ...EMPTY_STATE };
    this.hands = []; // raised hands, first raised first
    this.waiting = []; // who waits in the lobby (moderators only)
    this.unmuteRequests = new Map(); // "pid:kind" -> {participant_id, kind}
    this.askedUnmute = new Set(); // kinds this page asked to have unmuted
    this.lobbyReason = null;
    this.joinRefusal = null;
    this.chat = new ChatLog();
    this.tiles = new Tiles(this.role);
    this.quality = null; // what this viewer receives of each video (quality.js)
    this.tiles.onFirstFrame = (who, source, trackId) => this.firstFrame(who, source, trackId);
    this.sound = new Sound();
    this.director = new DirectorPanel(this.send, () => this.followDirector());
    this.recording = new RecordingPanel(this.send);
  }

  /** Director mode and the recording notice follow the lesson's state (director.js). */
  followDirector() {
    this.tiles.setDirected(directedItems(this.me, this.lessonState, this.director.follow));
    this.tiles.arrange();
    this.recording.changed(Boolean(this.lessonState.recording));
  }

  // -- start: pre-join or straight in -------------------------------------

  async start() {
    document.body.dataset.role = this.role;
    const who = `${this.claims.name} (${roleLabel(this.role)}${this.claims.school ? `, ${this.claims.school}` : ""})`;
    $("room-who").textContent = who;
    $("room-title").textContent = `Lesson ${this.claims.lesson}`;
    this.bindControls();
    if (this.role === "classroom") {
      // Nobody is at the keyboard of a room PC: join without a click.
      await this.openMedia();
      this.connect();
      return;
    }
    $("prejoin-who").textContent = `You will join lesson “${this.claims.lesson}” as ${who}.`;
    $("prejoin-note").textContent =
      this.role === "student"
        ? "You can watch and listen; the teacher decides when you may use your camera and microphone."
        : this.role === "observer"
          ? "You will watch and listen."
          : "";
    showScreen("prejoin");
    $("join-button").addEventListener("click", () => {
      $("join-button").disabled = true;
      $("join-button").textContent = "Joining…";
      this.connect();
    });
    if (this.role !== "observer") {
      await this.openMedia();
      await this.fillDevicePickers();
    }
  }

  async openMedia(choice = {}) {
    const { stream, error } = await openCameraAndMicrophone(choice);
    this.localStream?.getTracks().forEach((t) => t.stop());
    this.localStream = stream;
    $("prejoin-preview").srcObject = stream;
    setText("prejoin-media-error", error);
    setText("media-error", error);
    this.updateControls();
    // Joined before the camera was ready (a quick click on Join): publish now.
    const sending = this.publisher?.has("camera") || this.publisher?.has("microphone");
    if (this.me && this.may("publish") && !sending) this.startPublishing();
  }

  async fillDevicePickers() {
    const { cameras, microphones } = await listDevices();
    const fill = (select, devices, current, label) => {
      select.replaceChildren(
        ...devices.map((d, i) => {
          const option = document.createElement("option");
          option.value = d.deviceId;
          option.textContent = d.label || `${label} ${i + 1}`;
          option.selected = d.deviceId === current;
          return option;
        }),
      );
      select.disabled = devices.length === 0;
    };
    const settings = (track) => track?.getSettings().deviceId ?? "";
    fill($("camera-select"), cameras, settings(this.localStream?.getVideoTracks()[0]), "Camera");
    fill($("microphone-select"), microphones, settings(this.localStream?.getAudioTracks()[0]), "Microphone");
    const reopen = () =>
      this.openMedia({ cameraId: $("camera-select").value, microphoneId: $("microphone-select").value });
    $("camera-select").onchange = reopen;
    $("microphone-select").onchange = reopen;
  }

  // -- the connection -------------------------------------------------------

  connect() {
    this.bye = null;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new SignalingSocket(`${scheme}://${location.host}/ws`, {
      // With peer connections still open, we ask to keep them: the server held our
      // seat and its media, and media may even have gone on meanwhile.
      onOpen: () => {
        this.log("socket open");
        socket.send("join", { token: this.token, resume: this.holdsMedia() });
      },
      onMessage: (message) => this.socket === socket && this.handle(message),
      onClose: (info) => this.socket === socket && this.closed(info),
    });
    this.socket = socket;
  }

  send = (type, fields) => this.socket?.send(type, fields) ?? false;

  /** Note a connection event (the last 200 are kept: window.lco.connectionLog()). */
  log(what) {
    this.connectionLog.push([Math.round(performance.now()), what]);
    if (this.connectionLog.length > 200) this.connectionLog.shift();
  }

  holdsMedia() {
    return Boolean(this.publisher || this.subscriber);
  }

  closed({ clean }) {
    this.log(`socket closed${clean ? " (by us)" : ""}`);
    if (this.stopped || clean || (this.bye && !RECONNECTING_BYES.has(this.bye.reason))) {
      this.teardown();
      return;
    }
    // The seat is held for us: keep the stage, the tiles and the peer connections,
    // and take the seat back, at once the first time.
    this.attempt += 1;
    const delay =
      this.attempt === 1 ? 0 : Math.min(MAX_BACKOFF_MS, 500 * 2 ** (this.attempt - 2)) * (0.75 + Math.random() * 0.5);
    const seconds = Math.max(1, Math.round(delay / 1000));
    if (this.attempt > 3) {
      setBanner(
        `The lesson server cannot be reached. Check your internet connection; this page keeps trying (next try in ${seconds} s).`,
        "error",
      );
    } else {
      setBanner("Reconnecting…", "warn");
    }
    document.body.dataset.connection = "reconnecting";
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.reconnects += 1;
      this.connect();
    }, delay);
  }

  /**
   * The device's network came back (or changed: another Wi-Fi, a new address). The
   * socket may be dead without knowing it, and the media paths too: take the seat
   * back on a new socket now, and restart ICE on both connections once in.
   */
  networkChanged() {
    this.log("network back or changed");
    this.iceRestartWanted = true;
    if (this.stopped || !this.socket) return;
    this.attempt = 0;
    clearTimeout(this.retryTimer);
    if (this.socket.done) {
      // Between two tries (the last one failed while the network was away): now.
      this.reconnects += 1;
      this.connect();
    } else {
      this.socket.drop();
    }
  }

  /** Close both peer connections and forget everything remote (a fresh join follows). */
  teardown() {
    this.publisher?.close();
    this.subscriber?.close();
    this.publisher = null;
    this.subscriber = null;
    this.remote.clear();
    this.tiles.clearRemote();
    this.sound.clear();
  }

  /** A peer connection can no longer be used: rejoin with new connections. */
  connectionFailed() {
    this.teardown();
    this.socket?.drop();
  }

  /**
   * Media stopped on one connection ("publish" or "subscribe") while the socket may
   * live: restart its ICE (at most every few seconds); after several restarts that
   * brought nothing back, replace the connection.
   */
  mediaTrouble(which) {
    this.log(`media stopped on ${which}`);
    const now = performance.now();
    if (now - this.lastIceRestart[which] < ICE_RESTART_INTERVAL_MS) return;
    if (this.failedRestarts[which] >= ICE_RESTARTS_BEFORE_NEW_CONNECTION) {
      this.failedRestarts[which] = 0;
      if (which === "publish") this.replacePublisher();
      else this.connectionFailed();
      return;
    }
    this.failedRestarts[which] += 1;
    this.restartIce(which);
  }

  /** Restart ICE on one connection, or on both (after taking the seat back). */
  restartIce(which = null) {
    this.log(`ICE restart ${which ?? "both"}`);
    const now = performance.now();
    if ((which ?? "publish") === "publish" && this.publisher?.sendingAnything) {
      this.lastIceRestart.publish = now;
      this.iceRestarts.publish += 1;
      this.publisher.restartIce().catch((error) => console.warn("ICE restart (publish) failed", error));
    }
    if ((which ?? "subscribe") === "subscribe" && this.subscriber && this.send("ice_restart", { pc: "subscribe" })) {
      this.lastIceRestart.subscribe = now;
      this.iceRestarts.subscribe += 1;
    }
  }

  /** The server no longer has our publish connection: publish on a new one. */
  replacePublisher() {
    this.publisher?.close();
    this.publisher = null;
    if (this.may("publish")) this.startPublishing();
  }

  /** Media flows again on a connection: its trouble is over. */
  mediaFlowing(which) {
    this.failedRestarts[which] = 0;
  }

  handle(message) {
    switch (message.type) {
      case "welcome":
        return this.welcomed(message);
      case "receive_quality":
        return this.quality?.received(message);
      case "ice_servers":
        return this.iceServersRenewed(message.ice_servers);
      case "lobby_wait":
        return this.lobbyWait(message);
      case "lobby_updated":
        this.waiting = message.waiting;
        return this.renderPanels();
      case "lobby_changed": {
        const removed = new Set(message.removed);
        const kept = this.waiting.filter((p) => !removed.has(p.id));
        const known = new Set(kept.map((p) => p.id));
        this.waiting = [...kept, ...message.added.filter((p) => !known.has(p.id))];
        return this.renderPanels();
      }
      case "participant_disconnected":
      case "participant_reconnected":
        return this.participantConnection(message.participant_id, message.type === "participant_reconnected");
      case "lesson_updated":
        return this.lessonChanged(message.state);
      case "recording_changed":
        return this.recording.changed(message.recording, message.message);
      case "unmute_requested":
        return this.unmuteRequested(message.participant_id, message.kind);
      case "notice":
        return this.noticed(message);
      case "hands_changed":
        this.hands = message.queue;
        this.updateControls();
        return this.renderPanels();
      case "chat_message":
        return this.chat.add(message.message, this.me?.id);
      case "chat_history":
        for (const entry of message.messages) this.chat.add(entry, this.me?.id);
        $("chat-earlier").hidden = Boolean(message.complete);
        return undefined;
      case "participant_joined":
      case "participant_updated":
        return this.updateParticipant(message.participant);
      case "participant_left":
        return this.participantLeft(message.participant_id);
      case "permissions_changed":
        return this.permissionsChanged(message.permissions);
      case "track_published":
        return this.trackPublished(message.participant_id, message.track);
      case "track_unpublished":
        return this.trackUnpublished(message.participant_id, message.track_id);
      case "publish_answer":
        this.log("publish answer");
        return this.publisher?.answered(message.sdp);
      case "subscribe_offer":
        return this.subscribeOffered(message);
      case "error":
        return this.refused(message);
      case "bye":
        return this.goodbye(message);
      default:
        return undefined; // pong and anything newer
    }
  }

  welcomed(message) {
    this.quality ??= new Quality(this.send, () => this.subscriber?.inbound() ?? Promise.resolve([]));
    this.quality.setMode($("quality-select").value);
    this.attempt = 0;
    this.everJoined = true;
    this.metrics.welcomeMs ??= performance.now();
    this.socket?.setKeepalive(message.keepalive);
    const resumed = Boolean(message.resumed);
    this.log(resumed ? "seat taken back" : "welcome");
    if (!resumed && this.holdsMedia()) {
      // Our seat was released meanwhile (or the server restarted): a new participant,
      // whose media starts over.
      this.teardown();
      if (this.me) this.tiles.removeParticipant(this.me.id);
    }
    if (resumed) this.resumes += 1;
    this.me = message.you;
    this.permissions = message.permissions;
    this.iceServers = message.ice_servers ?? [];
    this.participants = new Map(message.participants.map((p) => [p.id, p]));
    this.lessonState = { ...EMPTY_STATE, ...(message.state ?? {}) };
    this.lobbyReason = null;
    this.hands = [];
    this.waiting = [];
    this.unmuteRequests.clear();
    this.askedUnmute.clear();
    this.chat.clear(); // chat_history follows
    setText("notice", null);
    this.applyMyMutes([], this.me.muted ?? []);
    this.tiles.setFocus(this.lessonState.spotlight, this.presenterIds());
    this.followDirector();
    document.body.dataset.connection = "connected";
    setBanner(this.reconnects ? "Reconnected to the lesson." : null, "info");
    if (this.reconnects) setTimeout(() => document.body.dataset.connection === "connected" && setBanner(null), 4000);
    $("prejoin-preview").srcObject = null;
    showScreen("room");
    this.renderPeople();
    this.renderPanels();
    this.updateControls();
    if (this.may("publish")) this.startPublishing();
    else if (this.publisher?.sendingAnything) this.stopPublishingLocally();
    if (resumed && (this.holdsMedia() || this.iceRestartWanted)) {
      // The network may have changed under the kept connections: new ICE for both
      // (media goes on meanwhile wherever it still can).
      this.iceRestartWanted = false;
      this.restartIce();
    }
  }

  /**
   * Fresh TURN credentials, sent before the welcome's expire. Connections opened later
   * (the publish connection once the teacher allows it) use them; the open ones get
   * them too (setConfiguration) and keep their relays, which coturn checked when they
   * were allocated.
   */
  iceServersRenewed(servers) {
    this.iceServers = servers;
    this.metrics.iceServerRenewals.push(Date.now());
    for (const peer of [this.publisher, this.subscriber]) peer?.setIceServers(servers);
  }

  /** Sent instead of welcome: this participant waits in the lobby until let in. */
  lobbyWait(message) {
    this.attempt = 0;
    this.everJoined = true;
    this.socket?.setKeepalive(message.keepalive);
    this.lobbyReason = message.reason;
    document.body.dataset.connection = "waiting";
    setBanner(null);
    $("lobby-text").textContent =
      message.reason === "waiting_for_teacher"
        ? "Please wait: the teacher has not joined yet. You will be let in as soon as the teacher is here."
        : "Please wait, the teacher will let you in.";
    showScreen("lobby");
  }

  lessonChanged(state) {
    this.lessonState = { ...EMPTY_STATE, ...state };
    this.tiles.setFocus(this.lessonState.spotlight, this.presenterIds());
    this.followDirector();
    this.renderPeople();
    this.renderPanels();
    this.updateControls();
  }

  presenterIds() {
    return [this.me, ...this.participants.values()].filter((p) => p?.presenter).map((p) => p.id);
  }

  /** Something happened to this participant (muted, allowed to unmute...): say it. */
  noticed(message) {
    let text = sentence(message.message);
    const allowed = /^unmute_allowed_(audio|video)$/.exec(message.code ?? "");
    if (allowed) {
      const kind = allowed[1];
      this.askedUnmute.delete(kind);
      if (this.role === "classroom") {
        // Nobody sits at the room PC's keyboard: turn it back on by itself.
        const track = this.localTrack(kind);
        if (track) track.enabled = true;
      } else {
        text += ` Press “${kind === "audio" ? "Unmute microphone" : "Turn camera on"}” when you are ready.`;
      }
    }
    this.notify(text);
    this.updateControls();
  }

  /** Say something in the notice line (read out by screen readers); it fades after a while. */
  notify(text) {
    setText("notice", text);
    clearTimeout(this.noticeTimer);
    this.noticeTimer = setTimeout(() => setText("notice", null), 15_000);
  }

  unmuteRequested(participantId, kind) {
    if (!this.participants.has(participantId)) return;
    this.unmuteRequests.set(`${participantId}:${kind}`, { participant_id: participantId, kind });
    const who = this.participants.get(participantId);
    this.notify(`${who.name} asks to turn the ${kindWord(kind)} back on.`);
    this.renderPanels();
  }

  localTrack(kind) {
    return kind === "audio" ? this.localStream?.getAudioTracks()[0] : this.localStream?.getVideoTracks()[0];
  }

  /** A moderator muted (or allowed back) this participant: keep the local track in step. */
  applyMyMutes(before, after) {
    for (const kind of after) {
      if (!before.includes(kind)) {
        const track = this.localTrack(kind);
        if (track) track.enabled = false;
      }
    }
    for (const kind of before) if (!after.includes(kind)) this.askedUnmute.delete(kind);
  }

  /** May this page act on `p` with `permission`? (The server checks again.) */
  mayActOn(permission, p) {
    if (!this.may(permission) || !p || p.id === this.me?.id) return false;
    if (p.role === "teacher" && this.role !== "teacher") return false;
    if (this.role === "delegate") return p.school === this.me?.school; // own school only
    return true;
  }

  may(permission) {
    return this.permissions.includes(permission);
  }

  refused(message) {
    this.log(`error ${message.code} (${message.request_type})`);
    if (message.code === "stale_answer") return; // an answer overtaken by a newer offer
    if (message.code === "connection_gone" && message.request_type === "publish_offer") {
      this.publisher?.refused(message.message);
      this.replacePublisher();
      return;
    }
    if (message.request_type === "join" && message.code !== "bad_token") {
      // Refused for a reason about the lesson (removed, locked, ended): the bye says which.
      this.stopped = true;
      this.joinRefusal = message;
      return;
    }
    if (message.request_type === "join") {
      this.stopped = true;
      const expired = /expired/i.test(message.message);
      showFatal(
        expired ? "This join link has expired" : "This join link does not work",
        sentence(message.message),
        "Ask your teacher for a new link, then open it in this browser.",
      );
      return;
    }
    if (message.request_type === "publish_offer") this.publisher?.refused(message.message);
    setBanner(sentence(message.message), "warn");
  }

  goodbye(message) {
    this.bye = message;
    if (RECONNECTING_BYES.has(message.reason)) return; // the close that follows reconnects
    this.stopped = true;
    if (message.reason === "bad_token" && !this.joinRefusal) return; // the error before it said why
    if (message.reason === "bad_token") {
      showFatal(
        "This join link does not work",
        sentence(message.message),
        "Ask your teacher for a new link, then open it in this browser.",
      );
      return;
    }
    const [title, text, hint, retry] = BYE_TEXTS[message.reason] ?? [
      "You are no longer in the lesson",
      null,
      "Reload the page to try to join again.",
      true,
    ];
    this.teardown();
    this.stopScreen({ negotiate: false });
    this.localStream?.getTracks().forEach((t) => t.stop());
    showFatal(title, text ?? sentence(message.message), hint, retry ? () => location.reload() : null);
  }

  // -- participants -----------------------------------------------------------

  updateParticipant(participant) {
    if (this.me && participant.id === this.me.id) {
      const before = this.me.muted ?? [];
      this.me = { ...participant, tracks: participant.tracks ?? this.me.tracks };
      this.applyMyMutes(before, participant.muted ?? []);
      this.updateControls();
    } else {
      this.participants.set(participant.id, participant);
    }
    // A lifted mute answers the request for it.
    for (const [key, request] of [...this.unmuteRequests]) {
      if (request.participant_id === participant.id && !(participant.muted ?? []).includes(request.kind)) {
        this.unmuteRequests.delete(key);
      }
    }
    this.tiles.rename(participant);
    this.tiles.setFocus(this.lessonState.spotlight, this.presenterIds());
    this.tiles.arrange();
    this.renderPeople();
    this.renderPanels();
  }

  /** A participant's socket went (its seat is held) or came back. */
  participantConnection(participantId, connected) {
    const participant = this.participants.get(participantId);
    if (!participant) return;
    participant.connected = connected;
    this.renderPeople();
  }

  participantLeft(participantId) {
    this.participants.delete(participantId);
    for (const key of [...this.unmuteRequests.keys()]) {
      if (key.startsWith(`${participantId}:`)) this.unmuteRequests.delete(key);
    }
    this.renderPanels();
    this.tiles.removeParticipant(participantId);
    this.sound.removeParticipant(participantId);
    for (const [trackId, entry] of [...this.remote]) {
      if (entry.info.participant_id === participantId) this.remote.delete(trackId);
    }
    this.tiles.arrange();
    this.renderPeople();
  }

  trackPublished(participantId, track) {
    // Our own tracks are announced to us too: the page shows what the server forwards.
    const participant = participantId === this.me?.id ? this.me : this.participants.get(participantId);
    if (participant && !participant.tracks.some((t) => t.id === track.id)) {
      participant.tracks = [...participant.tracks, track];
      this.renderPeople();
    }
  }

  trackUnpublished(participantId, trackId) {
    const participant = this.participants.get(participantId);
    if (participant) {
      participant.tracks = participant.tracks.filter((t) => t.id !== trackId);
      this.renderPeople();
    }
    this.removeRemote(trackId);
  }

  renderPeople() {
    if (!this.me) return;
    const publishing = Boolean(this.publisher && (this.publisher.has("camera") || this.publisher.has("microphone")));
    renderPeople(this.me, this.participants, (p) => this.peopleActions(p), {
      publishing,
      spotlight: this.lessonState.spotlight,
    });
  }

  /** The moderation buttons next to a participant (only what this page may do to them). */
  peopleActions(p) {
    const inline = [];
    const more = [];
    const target = { participant_id: p.id };
    if (this.mayActOn("grant_publish", p) && p.role === "student") {
      inline.push(
        p.can_publish
          ? { label: "Stop publishing", onClick: () => this.send("revoke_publish", target) }
          : { label: "Allow to publish", onClick: () => this.send("grant_publish", target) },
      );
    }
    if (this.mayActOn("moderate", p) && MUTABLE_ROLES.has(p.role)) {
      for (const kind of KINDS) {
        const muted = (p.muted ?? []).includes(kind);
        const word = kindWord(kind);
        inline.push(
          muted
            ? { label: `Allow ${word}`, onClick: () => this.send("allow_unmute", { ...target, kind }) }
            : { label: `Mute ${word}`, onClick: () => this.send("mute", { ...target, kind }) },
        );
      }
    }
    if (this.may("run_lesson")) {
      if (PRESENTABLE_ROLES.has(p.role)) {
        more.push({
          label: p.presenter ? "Stop presenting" : "Make presenter",
          onClick: () => this.send("set_presenter", { ...target, presenter: !p.presenter }),
        });
      }
      const lit = this.lessonState.spotlight === p.id;
      more.push({
        label: lit ? "Remove spotlight" : "Spotlight",
        pressed: lit,
        onClick: () => this.send("spotlight", { participant_id: lit ? null : p.id }),
      });
    }
    if (this.mayActOn("moderate", p)) {
      more.push({
        label: "Remove from lesson",
        className: "danger",
        onClick: () => {
          if (window.confirm(`Remove ${p.name} from the lesson? Their link will stop working.`)) {
            this.send("remove", target);
          }
        },
      });
    }
    return { inline, more };
  }

  /** Lobby, unmute requests, raised hands, breakout groups, lesson controls. */
  renderPanels() {
    if (!this.me) return;
    const state = this.lessonState;
    this.director.render(this.me, this.participants, state, this.may("run_lesson"));
    this.recording.render(this.me, state, (permission) => this.may(permission));
    // The lesson: lock, mute all, end.
    const runs = this.may("run_lesson");
    $("lesson-controls").hidden = !runs;
    $("lock-button").textContent = state.locked ? "Unlock lesson" : "Lock lesson";
    $("lock-button").setAttribute("aria-pressed", String(state.locked));
    $("lock-status").textContent = state.locked
      ? "The lesson is locked: nobody new can join."
      : "The lesson is open.";
    // The lobby.
    const admits = this.may("admit");
    $("lobby-panel").hidden = !admits || this.waiting.length === 0;
    renderLobby(this.waiting, (p) =>
      this.mayActOn("admit", p)
        ? [
            actionButton("Admit", p.name, () => this.send("admit", { participant_id: p.id }), "primary"),
            actionButton("Deny", p.name, () => this.send("deny", { participant_id: p.id })),
          ]
        : [],
    );
    // Unmute requests.
    const requests = [...this.unmuteRequests.values()]
      .map((r) => ({ participant: this.participants.get(r.participant_id), kind: r.kind }))
      .filter((r) => r.participant);
    $("unmute-panel").hidden = requests.length === 0;
    renderUnmuteRequests(
      requests,
      (p, kind) => this.send("allow_unmute", { participant_id: p.id, kind }),
      (p, kind) => {
        this.unmuteRequests.delete(`${p.id}:${kind}`);
        this.renderPanels();
      },
    );
    // Raised hands: moderators see the queue with each hand's school.
    const moderates = this.may("grant_publish") || this.may("moderate");
    $("hands-panel").hidden = !moderates;
    renderHands(this.hands, (hand) => {
      const p = this.participants.get(hand.participant_id) ?? {
        id: hand.participant_id,
        name: hand.name,
        school: hand.school,
        role: "student",
      };
      const buttons = [];
      if (this.mayActOn("grant_publish", p)) {
        buttons.push(
          actionButton("Give the floor", hand.name, () => this.send("grant_floor", { participant_id: p.id }), "primary"),
        );
      }
      if (this.mayActOn("moderate", p)) {
        buttons.push(actionButton("Lower", hand.name, () => this.send("lower_hand", { participant_id: p.id })));
      }
      return buttons;
    });
    // Breakout groups.
    $("breakout-panel").hidden = !runs;
    $("breakout-start").hidden = state.breakout;
    $("breakout-running").hidden = !state.breakout;
    if (state.breakout) {
      const nameOf = (id) => {
        const p = id === this.me.id ? this.me : this.participants.get(id);
        return p ? `${p.name}${p.school ? ` (${p.school})` : ""}` : null;
      };
      renderGroups(state.groups ?? {}, nameOf, this.me.group ?? null, (group) =>
        this.send("visit_group", { group }),
      );
      $("breakout-main").hidden = !this.me.group;
      const broadcasting = state.broadcast_audio_from === this.me.id;
      $("broadcast-audio").setAttribute("aria-pressed", String(broadcasting));
      $("broadcast-audio").textContent = broadcasting
        ? "Stop broadcasting my audio"
        : "Broadcast my audio to all groups";
    }
    // Chat: closed by the lesson's policy for some roles.
    const chatOpen = this.may("chat") && chatOpenFor(this.role, state.chat_policy);
    $("chat-form").hidden = !chatOpen;
    $("chat-closed").hidden = chatOpen;
  }

  // -- receiving ----------------------------------------------------------------

  subscribeOffered(message) {
    this.log(`subscribe offer ${message.offer_id}${message.new_connection ? " (new connection)" : ""}`);
    if (message.new_connection && this.subscriber) {
      // The server moved what we receive to a new connection: so do we.
      for (const info of this.subscriber.carried) this.removeRemote(info.track_id);
      this.subscriber.close();
      this.subscriber = null;
    }
    if (!this.subscriber) {
      const subscriber = new Subscriber(
        this.iceServers,
        this.send,
        { onTrack: (info, track) => this.showRemote(info, track), onGone: (info) => this.removeRemote(info.track_id) },
        () => this.subscriber === subscriber && this.mediaTrouble("subscribe"),
      );
      subscriber.pc.addEventListener("iceconnectionstatechange", () => {
        this.log(`subscribe ICE ${subscriber.pc.iceConnectionState}`);
        if (subscriber.pc.iceConnectionState === "connected") this.mediaFlowing("subscribe");
      });
      this.subscriber = subscriber;
    }
    this.subscriber.offered(message).catch((error) => {
      console.error("subscribe negotiation failed", error);
      setBanner("Receiving video failed; reconnecting…", "warn");
      this.connectionFailed();
    });
  }

  who(participantId) {
    return this.participants.get(participantId) ?? { id: participantId, name: "Someone", role: "", school: "" };
  }

  showRemote(info, track) {
    const stream = new MediaStream([track]);
    this.remote.set(info.track_id, { info, stream });
    if (info.kind === "video") {
      this.tiles.showVideo(this.who(info.participant_id), info.source, stream, { trackId: info.track_id });
      this.tiles.arrange();
    } else {
      this.sound.play(info.track_id, info.participant_id, info.source, stream);
    }
  }

  removeRemote(trackId) {
    const entry = this.remote.get(trackId);
    if (!entry) return;
    this.remote.delete(trackId);
    const { info } = entry;
    if (info.kind === "video") {
      const current = document.querySelector(
        `#stage video[data-track-id="${CSS.escape(trackId)}"]`,
      );
      if (current) this.tiles.remove(info.participant_id, info.source);
      this.tiles.arrange();
    } else {
      this.sound.remove(trackId);
    }
  }

  firstFrame(who, source, trackId) {
    this.metrics.firstFrames[trackId] ??= performance.now();
    if (who.role === "teacher" && source === "camera") this.metrics.firstTeacherFrameMs ??= performance.now();
  }

  // -- publishing ---------------------------------------------------------------

  ensurePublisher() {
    if (!this.publisher) {
      const publisher = new Publisher(this.iceServers, this.send, () => this.publisher === publisher && this.mediaTrouble("publish"));
      publisher.pc.addEventListener("iceconnectionstatechange", () => {
        this.log(`publish ICE ${publisher.pc.iceConnectionState}`);
        if (publisher.pc.iceConnectionState === "connected") this.mediaFlowing("publish");
      });
      this.publisher = publisher;
    }
    return this.publisher;
  }

  startPublishing() {
    const stream = this.localStream;
    if (!stream || !this.me) return;
    const publisher = this.ensurePublisher();
    const before = publisher.sending.size;
    const video = stream.getVideoTracks()[0];
    const audio = stream.getAudioTracks()[0];
    if (video && !publisher.has("camera")) publisher.add(video, "camera", stream);
    if (audio && !publisher.has("microphone")) publisher.add(audio, "microphone", stream);
    if (this.screenStream) this.addScreen(publisher);
    if (video) this.tiles.showVideo(this.me, "camera", stream, { local: true });
    this.tiles.arrange();
    this.renderPeople();
    // Already sending all of it (a seat taken back with its connections): no offer.
    if (publisher.sending.size > before) this.negotiatePublish();
  }

  negotiatePublish() {
    const publisher = this.publisher;
    publisher?.negotiate().catch((error) => {
      // A publisher replaced meanwhile (closed on purpose) is no failure to show.
      if (this.publisher === publisher) setBanner(`Sending your video failed: ${error.message}`, "warn");
    });
  }

  stopPublishingLocally() {
    // The server already stopped our tracks; sending an offer now would be refused.
    for (const source of ["camera", "microphone", "screen", "screen_audio"]) {
      this.publisher?.unpublish(source, { negotiate: false });
    }
    this.tiles.remove(this.me.id, "camera");
    this.stopScreen({ negotiate: false });
    this.tiles.arrange();
  }

  permissionsChanged(permissions) {
    const could = this.may("publish");
    this.permissions = permissions;
    if (!could && this.may("publish")) this.startPublishing();
    if (could && !this.may("publish")) this.stopPublishingLocally();
    this.updateControls();
    this.renderPeople();
  }

  addScreen(publisher) {
    const [video] = this.screenStream.getVideoTracks();
    const [audio] = this.screenStream.getAudioTracks();
    if (video && !publisher.has("screen")) publisher.add(video, "screen", this.screenStream);
    if (audio && !publisher.has("screen_audio")) publisher.add(audio, "screen_audio", this.screenStream);
  }

  async startScreen() {
    let stream;
    try {
      stream = await openScreen();
    } catch (error) {
      if (error?.name !== "NotAllowedError") setBanner(explainMediaError(error, "screen"), "warn");
      return;
    }
    this.screenStream = stream;
    // Stopping from the browser's own "Stop sharing" bar ends the track.
    stream.getVideoTracks()[0]?.addEventListener("ended", () => this.stopScreen());
    this.addScreen(this.ensurePublisher());
    this.tiles.showVideo(this.me, "screen", stream, { local: true });
    this.tiles.arrange();
    this.updateControls();
    this.negotiatePublish();
  }

  stopScreen({ negotiate = true } = {}) {
    if (!this.screenStream) return;
    this.screenStream.getTracks().forEach((t) => t.stop());
    this.screenStream = null;
    if (this.publisher) {
      this.publisher.unpublish("screen_audio", { negotiate: false });
      this.publisher.unpublish("screen", { negotiate: false });
      if (negotiate) this.negotiatePublish();
    }
    if (this.me) this.tiles.remove(this.me.id, "screen");
    this.tiles.arrange();
    this.updateControls();
  }

  // -- controls -------------------------------------------------------------------

  bindControls() {
    $("mic-button").addEventListener("click", () => this.toggle("audio"));
    $("camera-button").addEventListener("click", () => this.toggle("video"));
    $("screen-button").addEventListener("click", () => (this.screenStream ? this.stopScreen() : this.startScreen()));
    $("leave-button").addEventListener("click", () => this.leave());
    $("quality-select").addEventListener("change", (event) => this.quality?.setMode(event.target.value));
    $("view-select").addEventListener("change", (event) => this.quality?.setView(event.target.value));
    $("lobby-leave").addEventListener("click", () => this.leave());
    $("hand-button").addEventListener("click", () =>
      this.send(this.me?.hand_raised ? "lower_hand" : "raise_hand"),
    );
    for (const kind of KINDS) {
      $(`ask-unmute-${kind}`).addEventListener("click", () => {
        if (this.send("ask_to_unmute", { kind })) {
          this.askedUnmute.add(kind);
          this.updateControls();
        }
      });
    }
    $("mute-all-audio").addEventListener("click", () => this.send("mute_all", { kind: "audio" }));
    $("mute-all-video").addEventListener("click", () => this.send("mute_all", { kind: "video" }));
    $("lock-button").addEventListener("click", () =>
      this.send("lock_lesson", { locked: !this.lessonState.locked }),
    );
    $("end-button").addEventListener("click", () => {
      if (window.confirm("End the lesson for everyone? Everyone will be disconnected.")) this.send("end_lesson");
    });
    $("chat-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("chat-text");
      const text = input.value.trim();
      if (!text) return;
      if (this.send("chat", { text, to: $("chat-to").value })) input.value = "";
    });
    $("breakout-start").addEventListener("submit", (event) => {
      event.preventDefault();
      const count = Number.parseInt($("breakout-count").value, 10);
      if (count >= 2) this.send("start_breakout", { count });
    });
    $("breakout-main").addEventListener("click", () => this.send("visit_group", { group: null }));
    $("broadcast-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("broadcast-text");
      const text = input.value.trim();
      if (text && this.send("broadcast", { text })) input.value = "";
    });
    $("broadcast-audio").addEventListener("click", () =>
      this.send("broadcast_audio", { on: this.lessonState.broadcast_audio_from !== this.me?.id }),
    );
    $("breakout-end").addEventListener("click", () => this.send("end_breakout"));
    // No "leave" when the page goes: a reload (or a frozen tab's new page) takes the
    // seat back; a closed tab's seat is released after the grace period, as of now.
    window.addEventListener("online", () => this.networkChanged());
    window.addEventListener("offline", () => {
      if (this.stopped || !this.me) return;
      document.body.dataset.connection = "reconnecting";
      setBanner("Your device is offline. Reconnecting as soon as the network is back…", "warn");
    });
    $("chat-earlier").addEventListener("click", () => {
      if (this.chat.oldestId !== null) this.send("fetch_chat", { before: this.chat.oldestId });
    });
  }

  mutedByModerator(kind) {
    return (this.me?.muted ?? []).includes(kind);
  }

  toggle(kind) {
    const track = this.localTrack(kind);
    if (!track || (this.mutedByModerator(kind) && !track.enabled)) return; // only the teacher can lift it
    track.enabled = !track.enabled;
    this.updateControls();
  }

  updateControls() {
    const canPublish = this.may("publish");
    const audio = this.localStream?.getAudioTracks()[0];
    const video = this.localStream?.getVideoTracks()[0];
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
    screen.hidden = !canPublish || this.role === "classroom" || !navigator.mediaDevices?.getDisplayMedia;
    screen.textContent = this.screenStream ? "Stop sharing" : "Share screen";
    screen.setAttribute("aria-pressed", String(Boolean(this.screenStream)));
    if (this.role === "student") {
      setText(
        "publish-status",
        canPublish
          ? "The teacher has allowed you to publish: your camera and microphone are on."
          : "The teacher has not allowed you to publish yet. You can watch and listen.",
      );
      $("publish-status").dataset.allowed = String(canPublish);
    }
    this.updateParticipation();
  }

  /** The hand button, the "muted by the teacher" note with "Ask to unmute", the group. */
  updateParticipation() {
    const me = this.me;
    const hand = $("hand-button");
    hand.hidden = !me || !this.may("raise_hand");
    const raised = Boolean(me?.hand_raised);
    hand.textContent = raised ? "Lower hand" : "Raise hand";
    hand.setAttribute("aria-pressed", String(raised));
    $("hand-status").textContent = me && raised ? handPosition(this.hands, me.id) : "";
    const muted = me?.muted ?? [];
    const status = $("mute-status");
    status.hidden = muted.length === 0;
    const words = muted.map(kindWord).join(" and ");
    const asked = muted.filter((k) => this.askedUnmute.has(k));
    $("mute-text").textContent = muted.length
      ? `The teacher muted your ${words}.` +
        (asked.length ? " You asked to turn it back on; please wait for the teacher." : "")
      : "";
    for (const kind of KINDS) {
      const ask = $(`ask-unmute-${kind}`);
      ask.hidden = !muted.includes(kind) || !this.may("ask_to_unmute");
      ask.disabled = this.askedUnmute.has(kind);
    }
    const state = this.lessonState;
    let group = "";
    if (state.breakout && me?.group) group = `You are in breakout group ${me.group}.`;
    else if (state.breakout && !this.may("run_lesson")) group = "You are in the main room.";
    $("group-status").textContent = group;
  }

  leave() {
    this.stopped = true;
    this.send("leave");
    this.socket?.close();
    this.teardown();
    this.stopScreen({ negotiate: false });
    this.localStream?.getTracks().forEach((t) => t.stop());
    showFatal("You left the lesson", "Thank you for taking part.", "", () => location.reload());
    $("fatal-retry").textContent = "Join again";
  }

  // -- what tests and support staff can ask -----------------------------------------

  snapshot() {
    return {
      connected: document.body.dataset.connection === "connected",
      participantId: this.me?.id ?? null,
      role: this.role,
      permissions: [...this.permissions],
      participants: [...this.participants.values()].map((p) => ({
        id: p.id,
        name: p.name,
        role: p.role,
        school: p.school,
        muted: [...(p.muted ?? [])],
        presenter: Boolean(p.presenter),
        hand_raised: Boolean(p.hand_raised),
        group: p.group ?? null,
        connected: p.connected !== false,
      })),
      remoteTracks: [...this.remote.values()].map((r) => r.info),
      reconnects: this.reconnects,
      resumes: this.resumes,
      iceRestarts: { ...this.iceRestarts },
      connection: document.body.dataset.connection ?? null,
      sharing: Boolean(this.screenStream),
      banners: [...bannerHistory],
      inLobby: this.lobbyReason,
      muted: [...(this.me?.muted ?? [])],
      handRaised: Boolean(this.me?.hand_raised),
      hands: this.hands.map((h) => ({ id: h.participant_id, name: h.name, school: h.school })),
      waiting: this.waiting.map((p) => ({ id: p.id, name: p.name, school: p.school })),
      unmuteRequests: [...this.unmuteRequests.values()],
      chatCount: this.chat.count,
      lesson: { ...this.lessonState },
      recordingChimes: this.recording.chimes,
      stage: [...document.querySelectorAll("#main-view video")].map((v) => ({
        participantId: v.dataset.participantId,
        source: v.dataset.source,
        trackId: v.dataset.trackId,
      })),
    };
  }
}

function main() {
  const token = tokenFromLocation();
  window.lco = { page: null };
  if (!token) {
    showFatal(
      "This page needs a join link",
      "The address you opened has no join token in it.",
      "Open the full link your teacher sent you (it ends with #token=…).",
    );
    return;
  }
  const claims = readClaims(token);
  if (!claims || !claims.role) {
    showFatal(
      "This join link is damaged",
      "The link was cut off or changed and cannot be read.",
      "Copy the whole link again from the message your teacher sent, or ask for a new one.",
    );
    return;
  }
  const page = new ClassroomPage(token, claims);
  window.lco = {
    page,
    state: () => page.snapshot(),
    metrics: page.metrics,
    inboundStats: () => page.subscriber?.inbound() ?? Promise.resolve([]),
    // The servers the page holds and those each open connection would gather with.
    iceServers: () => ({
      page: page.iceServers,
      publish: page.publisher?.pc.getConfiguration().iceServers ?? null,
      subscribe: page.subscriber?.pc.getConfiguration().iceServers ?? null,
    }),
    debugDropConnection: () => page.socket?.drop(),
    debugNetworkChanged: () => page.networkChanged(),
    connectionLog: () => [...page.connectionLog],
  };
  page.start().catch((error) => {
    console.error(error);
    showFatal("Something went wrong", sentence(error?.message ?? error), "Reload the page to try again.");
  });
}

main();
