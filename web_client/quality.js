// What this viewer receives of each video, and how well.
//
// The page tells the server the size it shows each remote video at (a thumbnail
// gets a small simulcast layer, the stage a large one; a tile not shown gets
// nothing at all), and what the viewer chose: "auto", "low_data" or "audio_only".
// The view can be narrowed to the stage, or the stage and the three most recent
// speakers (heard in getStats' audio levels). The server answers receive_quality:
// each tile shows the quality it gets, and the page says when the network lowered it.

import { setBanner } from "./ui.js";

const SEND_DELAY_MS = 300; // sizes settle (layout, resizes) before they are sent
const SPEAKERS = 3; // "stage and speakers": this many recent speakers besides the stage
const SPEAKING_LEVEL = 0.02; // getStats audioLevel above which someone speaks
const LEVEL_WORDS = {
  high: "",
  medium: "Your connection is slow: videos are shown at lower quality.",
  low: "Your connection is slow: videos are shown at low quality.",
  audio_only: "Your connection is too slow for video: you hear the lesson, video is paused.",
};

/** A tile's quality word for the size of the layer it receives. */
export function qualityWord(video) {
  if (!video.forwarded) return "paused";
  if (!video.width) return "";
  if (video.width >= 1280) return "HD";
  if (video.width >= 640) return "SD";
  return "low";
}

export class Quality {
  /**
   * @param send the page's send(type, fields)
   * @param inbound async () => the subscribe connection's inbound-rtp statistics
   */
  constructor(send, inbound) {
    this.send = send;
    this.inbound = inbound;
    this.mode = "auto"; // auto, low_data, audio_only
    this.view = "everyone"; // everyone, stage, speakers
    this.sent = "";
    this.timer = null;
    this.lastSpoke = new Map(); // participant id -> when its audio was last heard
    this.level = "high";
    this.stage = document.getElementById("stage");
    this.observer = new ResizeObserver(() => this.schedule());
    this.mutations = new MutationObserver(() => this.watchTiles());
    this.mutations.observe(this.stage, { childList: true, subtree: true });
    this.speakerTimer = setInterval(() => this.listen(), 1000);
  }

  /** The viewer chose a mode in the menu. */
  setMode(mode) {
    this.mode = mode;
    this.schedule();
  }

  /** The viewer narrowed (or widened) what it shows. */
  setView(view) {
    this.view = view;
    this.stage.dataset.view = view;
    this.applyView();
  }

  watchTiles() {
    for (const video of this.stage.querySelectorAll("figure.tile video")) {
      if (!video.dataset.watched) {
        video.dataset.watched = "true";
        this.observer.observe(video);
      }
    }
    this.applyView();
  }

  /** Hide the strip's tiles the view leaves out: the server stops sending them. */
  applyView() {
    const recent = [...this.lastSpoke.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, SPEAKERS)
      .map(([id]) => id);
    for (const figure of this.stage.querySelectorAll("#strip figure.tile")) {
      if (figure.dataset.local === "true") continue;
      const shown =
        this.view === "everyone" ||
        (this.view === "speakers" && recent.includes(figure.dataset.participantId));
      figure.hidden = !shown;
    }
    this.schedule();
  }

  /** Who spoke lately, from the audio levels the browser measures. */
  async listen() {
    if (this.view !== "speakers") return;
    let stats = [];
    try {
      stats = await this.inbound();
    } catch {
      return;
    }
    const now = performance.now();
    let changed = false;
    for (const s of stats) {
      if (s.kind === "audio" && s.participant_id && (s.audioLevel ?? 0) > SPEAKING_LEVEL) {
        changed ||= !this.lastSpoke.has(s.participant_id);
        this.lastSpoke.set(s.participant_id, now);
      }
    }
    if (changed) this.applyView();
  }

  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.report(), SEND_DELAY_MS);
  }

  /** Send the sizes of every remote video, if they changed. */
  report() {
    const tracks = [];
    for (const video of this.stage.querySelectorAll("figure.tile video")) {
      const figure = video.closest("figure");
      const trackId = video.dataset.trackId;
      if (!trackId || figure.dataset.local === "true") continue;
      const shown = !figure.hidden && video.isConnected && video.clientWidth > 0;
      const scale = window.devicePixelRatio || 1;
      tracks.push({
        track_id: trackId,
        width: shown ? Math.round(video.clientWidth * scale) : 0,
        height: shown ? Math.round(video.clientHeight * scale) : 0,
      });
    }
    tracks.sort((a, b) => a.track_id.localeCompare(b.track_id));
    // Sizes in steps of 10 %: a tile that grows by a pixel is not news.
    const key = JSON.stringify([
      this.mode,
      tracks.map((t) => [t.track_id, Math.round(Math.log(t.width + 1) * 10)]),
    ]);
    if (key === this.sent) return;
    if (this.send("receive_settings", { mode: this.mode, tracks })) this.sent = key;
  }

  /** The server's receive_quality: badges on the tiles, and a word if the network limits it. */
  received(message) {
    for (const video of message.videos) {
      const tile = this.stage.querySelector(`video[data-track-id="${CSS.escape(video.track_id)}"]`);
      const figure = tile?.closest("figure");
      if (figure) figure.dataset.quality = qualityWord(video);
    }
    const worse = message.limited_by === "network" && message.level !== "high";
    if (message.level !== this.level) {
      if (worse) setBanner(LEVEL_WORDS[message.level], "warn");
      else if (message.limited_by === null && this.level !== "high") {
        setBanner("Your connection is good again: videos are back at full quality.");
      }
    }
    this.level = message.level;
    document.body.dataset.receiveLevel = message.level;
  }

  close() {
    clearTimeout(this.timer);
    clearInterval(this.speakerTimer);
    this.observer.disconnect();
    this.mutations.disconnect();
  }
}
