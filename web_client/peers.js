// The two peer connections of a participant. The client always offers the
// publish connection and always answers the subscribe connection: no glare.
// Each connection runs one negotiation at a time (a promise chain).

/**
 * Make a sending transceiver use VP8 (video) or Opus (audio). The server
 * forwards encoded frames, so publishers and subscribers must share a codec.
 */
export function preferForwardableCodecs(transceiver, kind) {
  if (!RTCRtpSender.getCapabilities || !transceiver.setCodecPreferences) return;
  const codecs = RTCRtpSender.getCapabilities(kind)?.codecs ?? [];
  const wanted = kind === "video" ? ["video/vp8", "video/rtx"] : ["audio/opus"];
  const chosen = wanted.flatMap((mime) => codecs.filter((c) => c.mimeType.toLowerCase() === mime));
  if (chosen.length) transceiver.setCodecPreferences(chosen);
}

// From a 720p camera: 1280x720, 640x360, 320x180; the server orders layers by the
// picture size it sees. The full size comes first: a server that does not take
// simulcast (the frame path) gets only the first encoding.
const CAMERA_LAYERS = [
  { rid: "h", maxBitrate: 1_700_000 },
  { rid: "m", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: "l", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
];

function trickle(pc, name, send) {
  pc.addEventListener("icecandidate", (event) => {
    if (!event.candidate || !event.candidate.candidate) return; // end of candidates: not needed
    send("ice_candidate", {
      pc: name,
      candidate: event.candidate.candidate,
      sdp_mid: event.candidate.sdpMid ?? undefined,
      sdp_mline_index: event.candidate.sdpMLineIndex ?? undefined,
    });
  });
}

/** Give an open connection new ICE servers (renewed TURN credentials), keeping the rest. */
function setIceServers(pc, iceServers) {
  if (pc.signalingState === "closed") return;
  try {
    pc.setConfiguration({ ...pc.getConfiguration(), iceServers });
  } catch (error) {
    console.warn("could not apply the renewed ICE servers", error);
  }
}

// A connection "disconnected" this long (its path went quiet) gets an ICE restart.
const DISCONNECTED_GRACE_MS = 2_000;

/**
 * Call `onTrouble` when media stops on `pc`: at once when ICE fails, and when it has
 * stayed "disconnected" for a while (it often recovers by itself sooner).
 */
function watchIce(pc, onTrouble) {
  let timer = null;
  pc.addEventListener("iceconnectionstatechange", () => {
    clearTimeout(timer);
    if (pc.iceConnectionState === "failed") onTrouble();
    else if (pc.iceConnectionState === "disconnected") timer = setTimeout(onTrouble, DISCONNECTED_GRACE_MS);
  });
}

/** The publish connection: our camera, microphone and screen, one transceiver each. */
export class Publisher {
  constructor(iceServers, send, onFailed) {
    this.send = send;
    this.pc = new RTCPeerConnection({ iceServers });
    this.sending = new Map(); // source -> RTCRtpTransceiver
    this.chain = Promise.resolve();
    this.pending = null; // {resolve, reject} of the offer waiting for its answer
    trickle(this.pc, "publish", send);
    watchIce(this.pc, onFailed);
  }

  /**
   * Add `track` as `source` (camera, microphone, screen, screen_audio); call
   * negotiate() once after adding several.
   */
  add(track, source, stream) {
    const init = { direction: "sendonly", streams: [stream] };
    // The camera goes as three layers (RFC 8853 simulcast): each viewer gets the one its
    // tile and its network call for. A shared screen stays one sharp layer.
    if (source === "camera" && track.kind === "video") init.sendEncodings = CAMERA_LAYERS;
    const transceiver = this.pc.addTransceiver(track, init);
    preferForwardableCodecs(transceiver, track.kind);
    this.sending.set(source, transceiver);
  }

  /** Swap the track of a source without renegotiating (another camera or microphone). */
  async replace(source, track) {
    const transceiver = this.sending.get(source);
    if (transceiver) await transceiver.sender.replaceTrack(track);
  }

  /**
   * Stop sending `source`; the server sees the m-line rejected and unpublishes it.
   * Stopping (rather than only removing the track) lets the browser recycle the
   * m-line for the next track: a lesson shares its screen many times, and an offer
   * that grew with every share would in the end be refused.
   */
  unpublish(source, { negotiate = true } = {}) {
    const transceiver = this.sending.get(source);
    if (!transceiver) return Promise.resolve();
    this.sending.delete(source);
    transceiver.stop();
    return negotiate ? this.negotiate() : Promise.resolve();
  }

  has(source) {
    return this.sending.has(source);
  }

  setIceServers(iceServers) {
    setIceServers(this.pc, iceServers);
  }

  negotiate() {
    this.chain = this.chain.catch(() => {}).then(() => this.offerOnce());
    return this.chain;
  }

  /** Offer again with new ICE credentials: the server restarts ICE on its side too. */
  restartIce() {
    this.chain = this.chain.catch(() => {}).then(() => this.offerOnce({ iceRestart: true }));
    return this.chain;
  }

  get sendingAnything() {
    return this.sending.size > 0;
  }

  async offerOnce(options = {}) {
    if (this.pc.signalingState === "closed") return;
    if (this.pc.signalingState === "have-local-offer") {
      // An offer whose answer never came (the socket went): start over from stable.
      await this.pc.setLocalDescription({ type: "rollback" });
    }
    await this.pc.setLocalDescription(await this.pc.createOffer(options));
    const tracks = [];
    for (const [source, transceiver] of this.sending) {
      if (transceiver.mid) tracks.push({ mid: transceiver.mid, source });
    }
    const answered = new Promise((resolve, reject) => (this.pending = { resolve, reject }));
    if (!this.send("publish_offer", { sdp: this.pc.localDescription.sdp, tracks })) {
      this.pending = null;
      throw new Error("not connected");
    }
    const sdp = await answered;
    await this.pc.setRemoteDescription({ type: "answer", sdp });
  }

  /** The server's publish_answer. */
  answered(sdp) {
    this.pending?.resolve(sdp);
    this.pending = null;
  }

  /** The server refused our offer (error with request_type publish_offer). */
  refused(message) {
    this.pending?.reject(new Error(message));
    this.pending = null;
    if (this.pc.signalingState === "have-local-offer") {
      this.pc.setLocalDescription({ type: "rollback" }).catch(() => {});
    }
  }

  close() {
    this.pending?.reject(new Error("closed"));
    this.pending = null;
    this.pc.close();
  }
}

/** The subscribe connection: the server offers the tracks we receive. */
export class Subscriber {
  /** The tracks it carries, for a new subscribe connection that takes over. */
  get carried() {
    return [...this.byMid.values()];
  }

  /**
   * @param handlers {{onTrack(info, track), onGone(info)}}
   */
  constructor(iceServers, send, handlers, onFailed) {
    this.send = send;
    this.handlers = handlers;
    this.pc = new RTCPeerConnection({ iceServers });
    this.byMid = new Map(); // mid -> {mid, track_id, participant_id, kind, source}
    this.chain = Promise.resolve();
    trickle(this.pc, "subscribe", send);
    watchIce(this.pc, onFailed);
    this.pc.addEventListener("track", (event) => {
      const info = this.byMid.get(event.transceiver.mid);
      if (info) this.handlers.onTrack(info, event.track);
    });
  }

  /** Answer one subscribe_offer; tracks missing from it are gone. */
  offered(message) {
    this.chain = this.chain
      .catch(() => {})
      .then(async () => {
        if (this.pc.signalingState === "closed") return;
        const current = new Map(message.tracks.map((t) => [t.mid, t]));
        for (const [mid, info] of this.byMid) {
          if (!current.has(mid) || current.get(mid).track_id !== info.track_id) {
            this.byMid.delete(mid);
            this.handlers.onGone(info);
          }
        }
        for (const [mid, info] of current) this.byMid.set(mid, info);
        await this.pc.setRemoteDescription({ type: "offer", sdp: message.sdp });
        await this.pc.setLocalDescription(await this.pc.createAnswer());
        this.send("subscribe_answer", { sdp: this.pc.localDescription.sdp, offer_id: message.offer_id });
      });
    return this.chain;
  }

  setIceServers(iceServers) {
    setIceServers(this.pc, iceServers);
  }

  /** inbound-rtp statistics, each with the track it carries. */
  async inbound() {
    const out = [];
    const report = await this.pc.getStats();
    report.forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      const info = this.byMid.get(s.mid);
      out.push({
        mid: s.mid,
        kind: s.kind,
        track_id: info?.track_id ?? null,
        participant_id: info?.participant_id ?? null,
        source: info?.source ?? null,
        packetsReceived: s.packetsReceived ?? 0,
        bytesReceived: s.bytesReceived ?? 0,
        framesDecoded: s.framesDecoded ?? 0,
        audioLevel: s.audioLevel ?? 0,
        frameWidth: s.frameWidth ?? 0,
        frameHeight: s.frameHeight ?? 0,
        codecId: s.codecId ?? null,
      });
    });
    return out;
  }

  close() {
    this.pc.close();
  }
}
