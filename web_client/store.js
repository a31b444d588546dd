// The lesson as this page knows it: built only from the server's messages (and the
// socket's state; and unmute requests this page dismissed), never from guesses. Views read it and subscribe
// to its changes; nothing here touches the page. What this participant may do, and
// to whom, is what the server last said (`permissions` and `targets` in `welcome`
// and `permissions_changed`): the page keeps no copy of the role table.

const EMPTY_LESSON = {
  locked: false,
  spotlight: null,
  breakout: false,
  groups: {},
  broadcast_audio_from: null,
  chat_policy: "everyone",
};

export class Store {
  constructor() {
    this.listeners = new Set();
    this.connection = "connecting"; // connecting, waiting, connected, reconnecting
    this.me = null;
    this.permissions = [];
    this.targets = {}; // message type -> {roles, school}: whom it may be sent about
    this.participants = new Map(); // id -> participant info (without me)
    this.lesson = { ...EMPTY_LESSON };
    this.hands = []; // raised hands, first raised first
    this.waiting = []; // who waits in the lobby (for those who may admit)
    this.unmuteRequests = new Map(); // "pid:kind" -> {participant_id, kind}
    this.chat = new Map(); // id -> chat entry
    this.chatComplete = true; // no older chat left to fetch
    this.lobbyReason = null;
  }

  /** Call `listener(change)` after every change; change is {type, ...}. */
  subscribe(listener) {
    this.listeners.add(listener);
  }

  emit(change) {
    for (const listener of [...this.listeners]) listener(change);
  }

  // -- what views ask -------------------------------------------------------------

  /** Whether the server lets this participant do `permission` (it checks again). */
  may(permission) {
    return this.permissions.includes(permission);
  }

  /** Whether the server lets this participant send `messageType` about participant `p`. */
  mayTarget(messageType, p) {
    const rule = this.targets[messageType];
    if (!rule || !p || p.id === this.me?.id) return false;
    return rule.roles.includes(p.role) && (rule.school === null || rule.school === p.school);
  }

  who(participantId) {
    if (participantId === this.me?.id) return this.me;
    return this.participants.get(participantId) ?? { id: participantId, name: "Someone", role: "", school: "" };
  }

  presenterIds() {
    return [this.me, ...this.participants.values()].filter((p) => p?.presenter).map((p) => p.id);
  }

  // -- what changes it ---------------------------------------------------------------

  /** This page dismissed an unmute request (the server keeps no list of them). */
  dismissUnmuteRequest(participantId, kind) {
    this.unmuteRequests.delete(`${participantId}:${kind}`);
    this.emit({ type: "unmute_dismissed", participantId, kind });
  }

  /** The socket's state (not a server message): "reconnecting" while it is away. */
  setConnection(state) {
    if (this.connection === state) return;
    this.connection = state;
    this.emit({ type: "connection", connection: state });
  }

  /** Apply one server message (one not about the lesson changes nothing). */
  apply(message) {
    const handler = HANDLERS[message.type];
    if (!handler) return;
    const change = handler(this, message) ?? {};
    this.emit({ type: message.type, message, ...change });
  }
}

function dropRequestsOf(store, participantId, stillMuted = []) {
  for (const [key, request] of [...store.unmuteRequests]) {
    if (request.participant_id === participantId && !stillMuted.includes(request.kind)) {
      store.unmuteRequests.delete(key);
    }
  }
}

// How each server message changes the store; what it returns is added to the change.
const HANDLERS = {
  welcome(store, message) {
    const before = store.me;
    store.me = message.you;
    store.permissions = message.permissions;
    store.targets = message.targets ?? {};
    store.participants = new Map(message.participants.map((p) => [p.id, p]));
    store.lesson = { ...EMPTY_LESSON, ...(message.state ?? {}) };
    store.lobbyReason = null;
    store.hands = [];
    store.waiting = [];
    store.unmuteRequests.clear();
    store.chat.clear(); // chat_history follows
    store.chatComplete = true;
    store.connection = "connected";
    return { before };
  },
  lobby_wait(store, message) {
    store.lobbyReason = message.reason;
    store.connection = "waiting";
  },
  permissions_changed(store, message) {
    const before = store.permissions;
    store.permissions = message.permissions;
    store.targets = message.targets ?? {};
    return { before };
  },
  lesson_updated(store, message) {
    store.lesson = { ...EMPTY_LESSON, ...message.state };
  },
  lobby_updated(store, message) {
    store.waiting = message.waiting;
  },
  lobby_changed(store, message) {
    const removed = new Set(message.removed);
    const kept = store.waiting.filter((p) => !removed.has(p.id));
    const known = new Set(kept.map((p) => p.id));
    store.waiting = [...kept, ...message.added.filter((p) => !known.has(p.id))];
  },
  participant_joined(store, message) {
    return HANDLERS.participant_updated(store, message);
  },
  participant_updated(store, message) {
    const participant = message.participant;
    let before = null;
    if (store.me && participant.id === store.me.id) {
      before = store.me;
      store.me = { ...participant, tracks: participant.tracks ?? store.me.tracks };
    } else {
      store.participants.set(participant.id, participant);
    }
    // A lifted mute answers the request for it.
    dropRequestsOf(store, participant.id, participant.muted ?? []);
    return { before, participant };
  },
  participant_left(store, message) {
    store.participants.delete(message.participant_id);
    dropRequestsOf(store, message.participant_id);
  },
  participant_disconnected(store, message) {
    const participant = store.participants.get(message.participant_id);
    if (participant) participant.connected = false;
  },
  participant_reconnected(store, message) {
    const participant = store.participants.get(message.participant_id);
    if (participant) participant.connected = true;
  },
  track_published(store, message) {
    // Our own tracks are announced to us too: the page shows what the server forwards.
    const participant = store.who(message.participant_id);
    if (participant.tracks && !participant.tracks.some((t) => t.id === message.track.id)) {
      participant.tracks = [...participant.tracks, message.track];
    }
  },
  track_unpublished(store, message) {
    const participant = store.participants.get(message.participant_id);
    if (participant) participant.tracks = participant.tracks.filter((t) => t.id !== message.track_id);
  },
  hands_changed(store, message) {
    store.hands = message.queue;
  },
  unmute_requested(store, message) {
    if (!store.participants.has(message.participant_id)) return { ignored: true };
    const { participant_id: participantId, kind } = message;
    store.unmuteRequests.set(`${participantId}:${kind}`, { participant_id: participantId, kind });
    return undefined;
  },
  recording_changed() {
    // Nothing to keep: lesson_updated carries whether the lesson is recorded; this
    // message's words are for the notice (director.js).
  },
  notice() {
    // Nothing to keep: the views say it (and a classroom turns itself back on).
  },
  chat_message(store, message) {
    store.chat.set(message.message.id, message.message);
    return { entries: [message.message] };
  },
  chat_history(store, message) {
    for (const entry of message.messages) store.chat.set(entry.id, entry);
    store.chatComplete = Boolean(message.complete);
    return { entries: message.messages };
  },
};
