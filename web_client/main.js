// The page's controller: join, publish, subscribe, reconnect. What the server says
// about the lesson goes into the store (store.js); the views (views/) show it.

import { DirectorPanel, RecordingPanel, directedItems } from "./director.js";
import { explainMediaError, openCameraAndMicrophone, openScreen } from "./media.js";
import { Publisher, Subscriber } from "./peers.js";
import { SignalingSocket } from "./signaling.js";
import { Quality } from "./quality.js";
import { Store } from "./store.js";
import { readClaims, tokenFromLocation } from "./token.js";
import { Sound, Tiles, bannerHistory, setBanner, setText, showFatal } from "./ui.js";
import { ClassroomView } from "./views/classroom.js";
import { PrejoinView } from "./views/prejoin.js";
import { RoomView, sentence } from "./views/room.js";
import { StudentView } from "./views/student.js";
import { TeacherView } from "./views/teacher.js";

const $ = (id) => document.getElementById(id);
const MAX_BACKOFF_MS = 10_000;
// A bye with one of these reasons is followed by a reconnect, not a final page.
// "unavailable": the servers cannot reach the lesson now (their Redis is down); keep trying.
const RECONNECTING_BYES = new Set(["timeout", "server_shutdown", "negotiation_failed", "unavailable"]);
// At most one ICE restart of a connection this often; after this many restarts in a
// row that brought nothing back, the connection is replaced by a new one.
const ICE_RESTART_INTERVAL_MS = 4_000;
const ICE_RESTARTS_BEFORE_NEW_CONNECTION = 3;
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

class ClassroomPage {
  constructor(token, claims) {
    this.token = token;
    this.claims = claims;
    this.role = claims.role;
    this.store = new Store();
    this.views = [];
    this.prejoin = null;
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
    this.joinRefusal = null;
    this.tiles = new Tiles(this.role);
    this.quality = null; // what this viewer receives of each video (quality.js)
    this.tiles.onFirstFrame = (who, source, trackId) => this.firstFrame(who, source, trackId);
    this.sound = new Sound();
    this.director = new DirectorPanel(this.send, () => this.followDirector());
    this.recording = new RecordingPanel(this.send);
    this.store.subscribe((change) => this.lessonChanged(change));
  }

  /** Director mode and the recording notice follow the lesson's state (director.js). */
  followDirector() {
    this.tiles.setDirected(directedItems(this.me, this.store.lesson, this.director.follow));
    this.tiles.arrange();
    this.recording.changed(Boolean(this.store.lesson.recording));
  }

  /** The director's and the recording panel (director.js), from the store. */
  renderDirectorPanels() {
    const store = this.store;
    if (!store.me) return;
    this.director.render(store.me, store.participants, store.lesson, store.may("run_lesson"));
    this.recording.render(store.me, store.lesson, (permission) => store.may(permission));
  }

  /** This participant, as the server last described it. */
  get me() {
    return this.store.me;
  }

  may(permission) {
    return this.store.may(permission);
  }

  /** Whether the camera or microphone goes out (the people list says "publishing"). */
  get publishing() {
    return Boolean(this.publisher && (this.publisher.has("camera") || this.publisher.has("microphone")));
  }

  renderViews() {
    for (const view of this.views) view.render?.();
  }

  // -- start: pre-join or straight in -------------------------------------

  async start() {
    document.body.dataset.role = this.role;
    this.bindPage();
    const room = new RoomView(this.store, this, this.claims);
    this.views = [room, new TeacherView(this.store, this, room)];
    // Every role may be held in the lobby (a classroom of a school not invited too).
    this.prejoin = new PrejoinView(this.store, this, this.claims);
    if (this.role === "classroom") {
      // Nobody is at the keyboard of a room PC: join without a click.
      this.views.push(new ClassroomView(this, room));
      await this.openMedia();
      this.connect();
      return;
    }
    if (this.role === "student") this.views.push(new StudentView(this.store));
    this.prejoin.show();
    // An observer only watches: its pre-join asks for no camera.
    if (this.role !== "observer") {
      await this.openMedia();
      await this.prejoin.fillDevicePickers(this.localStream);
    }
  }

  async openMedia(choice = {}) {
    const { stream, error } = await openCameraAndMicrophone(choice);
    this.localStream?.getTracks().forEach((t) => t.stop());
    this.localStream = stream;
    this.prejoin?.preview(stream);
    setText("prejoin-media-error", error);
    setText("media-error", error);
    this.renderViews();
    // Joined before the camera was ready (a quick click on Join): publish now.
    const sending = this.publisher?.has("camera") || this.publisher?.has("microphone");
    if (this.me && this.may("publish") && !sending) this.startPublishing();
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
    this.store.setConnection("reconnecting");
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
        // The lesson's state (its views follow); pong and anything newer are ignored.
        return this.store.apply(message);
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
    this.iceServers = message.ice_servers ?? [];
    this.store.apply(message);
    this.applyMyMutes([], this.me.muted ?? []);
    this.tiles.setFocus(this.store.lesson.spotlight, this.store.presenterIds());
    this.followDirector();
    setBanner(this.reconnects ? "Reconnected to the lesson." : null, "info");
    if (this.reconnects) setTimeout(() => this.store.connection === "connected" && setBanner(null), 4000);
    this.prejoin?.preview(null);
    this.renderViews();
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
    this.store.apply(message);
  }

  /** The store changed: keep the media (local tracks, tiles, what plays) in step. */
  lessonChanged(change) {
    document.body.dataset.connection = this.store.connection; // for style and support
    if (change.type !== "chat_message" && change.type !== "chat_history") this.renderDirectorPanels();
    switch (change.type) {
      case "participant_joined":
      case "participant_updated":
        if (change.before) this.applyMyMutes(change.before.muted ?? [], this.me.muted ?? []);
        this.tiles.rename(change.participant);
        return this.arrangeTiles();
      case "lesson_updated":
        this.tiles.setFocus(this.store.lesson.spotlight, this.store.presenterIds());
        return this.followDirector();
      case "recording_changed":
        return this.recording.changed(change.message.recording, change.message.message);
      case "permissions_changed":
        return this.permissionsChanged(change.before);
      case "participant_left":
        return this.participantLeft(change.message.participant_id);
      case "track_unpublished":
        return this.removeRemote(change.message.track_id);
      default:
        return undefined;
    }
  }

  arrangeTiles() {
    this.tiles.setFocus(this.store.lesson.spotlight, this.store.presenterIds());
    this.tiles.arrange();
  }

  localTrack(kind) {
    return kind === "audio" ? this.localStream?.getAudioTracks()[0] : this.localStream?.getVideoTracks()[0];
  }

  /** A moderator muted this participant: its local track goes off (only a moderator lifts it). */
  applyMyMutes(before, after) {
    for (const kind of after) {
      if (!before.includes(kind)) {
        const track = this.localTrack(kind);
        if (track) track.enabled = false;
      }
    }
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

  participantLeft(participantId) {
    this.tiles.removeParticipant(participantId);
    this.sound.removeParticipant(participantId);
    for (const [trackId, entry] of [...this.remote]) {
      if (entry.info.participant_id === participantId) this.remote.delete(trackId);
    }
    this.tiles.arrange();
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

  showRemote(info, track) {
    const stream = new MediaStream([track]);
    this.remote.set(info.track_id, { info, stream });
    if (info.kind === "video") {
      this.tiles.showVideo(this.store.who(info.participant_id), info.source, stream, { trackId: info.track_id });
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
    this.renderViews();
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

  /** What the server lets us do changed (`before`: the permissions until now). */
  permissionsChanged(before) {
    const could = before.includes("publish");
    if (!could && this.may("publish")) this.startPublishing();
    if (could && !this.may("publish")) this.stopPublishingLocally();
    this.renderViews();
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
    this.renderViews();
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
    this.renderViews();
  }

  // -- one's own media and the page ---------------------------------------------------

  bindPage() {
    // No "leave" when the page goes: a reload (or a frozen tab's new page) takes the
    // seat back; a closed tab's seat is released after the grace period, as of now.
    window.addEventListener("online", () => this.networkChanged());
    window.addEventListener("offline", () => {
      if (this.stopped || !this.me) return;
      this.store.setConnection("reconnecting");
      setBanner("Your device is offline. Reconnecting as soon as the network is back…", "warn");
    });
  }

  toggle(kind) {
    const track = this.localTrack(kind);
    const mutedByModerator = (this.me?.muted ?? []).includes(kind);
    if (!track || (mutedByModerator && !track.enabled)) return; // only the teacher can lift it
    track.enabled = !track.enabled;
    this.renderViews();
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
    const store = this.store;
    return {
      connected: store.connection === "connected",
      participantId: this.me?.id ?? null,
      role: this.role,
      permissions: [...store.permissions],
      targets: structuredClone(store.targets),
      participants: [...store.participants.values()].map((p) => ({
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
      connection: store.connection,
      sharing: Boolean(this.screenStream),
      banners: [...bannerHistory],
      inLobby: store.lobbyReason,
      muted: [...(this.me?.muted ?? [])],
      handRaised: Boolean(this.me?.hand_raised),
      hands: store.hands.map((h) => ({ id: h.participant_id, name: h.name, school: h.school })),
      waiting: store.waiting.map((p) => ({ id: p.id, name: p.name, school: p.school })),
      unmuteRequests: [...store.unmuteRequests.values()],
      chatCount: store.chat.size,
      lesson: { ...store.lesson },
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
