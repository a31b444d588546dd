// The page's controller: join, publish, subscribe, reconnect, and the views.

import { explainMediaError, listDevices, openCameraAndMicrophone, openScreen } from "./media.js";
import { Publisher, Subscriber } from "./peers.js";
import { SignalingSocket } from "./signaling.js";
import { readClaims, tokenFromLocation } from "./token.js";
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
const RECONNECTING_BYES = new Set(["timeout", "server_shutdown"]);

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
    this.stopped = false;
    this.bye = null;
    this.everJoined = false;
    this.metrics = { firstTeacherFrameMs: null, welcomeMs: null, firstFrames: {} };
    this.tiles = new Tiles(this.role);
    this.tiles.onFirstFrame = (who, source, trackId) => this.firstFrame(who, source, trackId);
    this.sound = new Sound();
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
      onOpen: () => socket.send("join", { token: this.token }),
      onMessage: (message) => this.socket === socket && this.handle(message),
      onClose: (info) => this.socket === socket && this.closed(info),
    });
    this.socket = socket;
  }

  send = (type, fields) => this.socket?.send(type, fields) ?? false;

  closed({ clean }) {
    this.teardown();
    if (this.stopped || clean) return;
    if (this.bye && !RECONNECTING_BYES.has(this.bye.reason)) return;
    this.attempt += 1;
    const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** (this.attempt - 1)) * (0.75 + Math.random() * 0.5);
    const seconds = Math.max(1, Math.round(delay / 1000));
    if (this.attempt > 3) {
      setBanner(
        `The lesson server cannot be reached. Check your internet connection; this page keeps trying (next try in ${seconds} s).`,
        "error",
      );
    } else {
      setBanner(`Connection to the lesson lost. Reconnecting in ${seconds} s…`, "warn");
    }
    document.body.dataset.connection = "reconnecting";
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.reconnects += 1;
      this.connect();
    }, delay);
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

  /** ICE failed on a peer connection: rejoin from scratch. */
  connectionFailed() {
    this.socket?.drop();
  }

  handle(message) {
    switch (message.type) {
      case "welcome":
        return this.welcomed(message);
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
    this.attempt = 0;
    this.everJoined = true;
    this.metrics.welcomeMs ??= performance.now();
    this.me = message.you;
    this.permissions = message.permissions;
    this.iceServers = message.ice_servers ?? [];
    this.participants = new Map(message.participants.map((p) => [p.id, p]));
    document.body.dataset.connection = "connected";
    setBanner(this.reconnects ? "Reconnected to the lesson." : null, "info");
    if (this.reconnects) setTimeout(() => document.body.dataset.connection === "connected" && setBanner(null), 4000);
    $("prejoin-preview").srcObject = null;
    showScreen("room");
    this.renderPeople();
    this.updateControls();
    if (this.may("publish")) this.startPublishing();
  }

  may(permission) {
    return this.permissions.includes(permission);
  }

  refused(message) {
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
    if (message.reason === "bad_token") return; // the error before it said why
    const texts = {
      replaced: [
        "This lesson is open somewhere else",
        "You opened this join link in another tab or window, so this page has stopped.",
        "Close this page, or reload it to continue here.",
      ],
      left: ["You left the lesson", "Thank you for taking part.", "Reload the page to join again."],
    };
    const [title, text, hint] = texts[message.reason] ?? [
      "You are no longer in the lesson",
      sentence(message.message),
      "Reload the page to try to join again.",
    ];
    showFatal(title, text, hint, message.reason === "replaced" ? null : () => location.reload());
  }

  // -- participants -----------------------------------------------------------

  updateParticipant(participant) {
    if (this.me && participant.id === this.me.id) this.me = participant;
    else this.participants.set(participant.id, participant);
    this.tiles.rename(participant);
    this.renderPeople();
  }

  participantLeft(participantId) {
    this.participants.delete(participantId);
    this.tiles.removeParticipant(participantId);
    this.sound.removeParticipant(participantId);
    for (const [trackId, entry] of [...this.remote]) {
      if (entry.info.participant_id === participantId) this.remote.delete(trackId);
    }
    this.tiles.arrange();
    this.renderPeople();
  }

  trackPublished(participantId, track) {
    const participant = this.participants.get(participantId);
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
    const actions = (p) => {
      if (!this.may("grant_publish") || p.role !== "student") return [];
      return p.can_publish
        ? [{ label: "Stop publishing", onClick: () => this.send("revoke_publish", { participant_id: p.id }) }]
        : [{ label: "Allow to publish", onClick: () => this.send("grant_publish", { participant_id: p.id }) }];
    };
    const publishing = Boolean(this.publisher && (this.publisher.has("camera") || this.publisher.has("microphone")));
    renderPeople(this.me, this.participants, actions, { publishing });
  }

  // -- receiving ----------------------------------------------------------------

  subscribeOffered(message) {
    if (!this.subscriber) {
      this.subscriber = new Subscriber(
        this.iceServers,
        this.send,
        { onTrack: (info, track) => this.showRemote(info, track), onGone: (info) => this.removeRemote(info.track_id) },
        () => this.connectionFailed(),
      );
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
    this.publisher ??= new Publisher(this.iceServers, this.send, () => this.connectionFailed());
    return this.publisher;
  }

  startPublishing() {
    const stream = this.localStream;
    if (!stream || !this.me) return;
    const publisher = this.ensurePublisher();
    const video = stream.getVideoTracks()[0];
    const audio = stream.getAudioTracks()[0];
    if (video && !publisher.has("camera")) publisher.add(video, "camera", stream);
    if (audio && !publisher.has("microphone")) publisher.add(audio, "microphone", stream);
    if (this.screenStream) this.addScreen(publisher);
    if (video) this.tiles.showVideo(this.me, "camera", stream, { local: true });
    this.tiles.arrange();
    this.renderPeople();
    this.negotiatePublish();
  }

  negotiatePublish() {
    this.publisher?.negotiate().catch((error) => {
      if (this.publisher) setBanner(`Sending your video failed: ${error.message}`, "warn");
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
    window.addEventListener("pagehide", () => this.send("leave"));
  }

  toggle(kind) {
    const track = kind === "audio" ? this.localStream?.getAudioTracks()[0] : this.localStream?.getVideoTracks()[0];
    if (!track) return;
    track.enabled = !track.enabled;
    this.updateControls();
  }

  updateControls() {
    const canPublish = this.may("publish");
    const audio = this.localStream?.getAudioTracks()[0];
    const video = this.localStream?.getVideoTracks()[0];
    const mic = $("mic-button");
    mic.hidden = !canPublish || !audio;
    mic.textContent = audio?.enabled === false ? "Unmute microphone" : "Mute microphone";
    mic.setAttribute("aria-pressed", String(audio?.enabled === false));
    const camera = $("camera-button");
    camera.hidden = !canPublish || !video;
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
      participants: [...this.participants.values()].map((p) => ({ id: p.id, name: p.name, role: p.role, school: p.school })),
      remoteTracks: [...this.remote.values()].map((r) => r.info),
      reconnects: this.reconnects,
      sharing: Boolean(this.screenStream),
      banners: [...bannerHistory],
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
    debugDropConnection: () => page.socket?.drop(),
  };
  page.start().catch((error) => {
    console.error(error);
    showFatal("Something went wrong", sentence(error?.message ?? error), "Reload the page to try again.");
  });
}

main();
