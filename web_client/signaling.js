// The signalling socket: JSON messages with "v": 1. The server pings every few
// seconds and we answer at once; a watchdog drops a socket the server has stopped
// answering (a network that went silent), so that the page reconnects and takes
// its seat back.

// Until the welcome says otherwise (its keepalive.timeout).
const DEFAULT_SILENCE_LIMIT_MS = 4_000;

export class SignalingSocket {
  /**
   * @param {string} url ws:// or wss:// address of /ws
   * @param {{onOpen: () => void, onMessage: (m: object) => void, onClose: (info: {code: number, clean: boolean}) => void}} handlers
   */
  constructor(url, handlers) {
    this.handlers = handlers;
    this.closedByUs = false;
    this.silenceLimitMs = DEFAULT_SILENCE_LIMIT_MS;
    this.openedAt = performance.now();
    this.ws = new WebSocket(url);
    this.ws.addEventListener("open", () => {
      this.heard();
      handlers.onOpen();
    });
    this.ws.addEventListener("message", (event) => {
      this.heard();
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        console.warn("ignoring a server message that is not JSON");
        return;
      }
      if (!message || typeof message.type !== "string") return;
      if (message.type === "ping") {
        this.send("pong"); // the server's keep-alive: answered here, nothing to show
        return;
      }
      handlers.onMessage(message);
    });
    this.ws.addEventListener("close", (event) => this.ended(event.code));
  }

  /** The server's keep-alive settings (from welcome or lobby_wait). */
  setKeepalive(keepalive) {
    if (keepalive?.timeout > 0) this.silenceLimitMs = keepalive.timeout * 1000;
    this.heard();
  }

  /** Something arrived: the server is there; it has until the limit to say more. */
  heard() {
    clearTimeout(this.watchdog);
    if (this.ws.readyState > WebSocket.OPEN) return;
    this.watchdog = setTimeout(() => {
      // Nothing for too long: the network is gone even if the socket says open.
      this.drop();
    }, this.silenceLimitMs);
  }

  get open() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** Send one message of `type` with `fields`; silently dropped when not open. */
  send(type, fields = {}) {
    if (!this.open) return false;
    this.ws.send(JSON.stringify({ v: 1, type, ...fields }));
    return true;
  }

  /** Close on purpose (leaving): no reconnect follows. */
  close() {
    this.closedByUs = true;
    clearTimeout(this.watchdog);
    this.ws.close(1000);
  }

  /**
   * Close as a network failure would (tests, the watchdog, a network change): a
   * reconnect follows at once, without waiting for a closing handshake that a dead
   * network never completes.
   */
  drop() {
    if (this.ws.readyState < WebSocket.CLOSING) this.ws.close(4000, "dropped");
    this.ended(4000);
  }

  ended(code) {
    clearTimeout(this.watchdog);
    if (this.done) return;
    this.done = true;
    this.handlers.onClose({ code, clean: this.closedByUs });
  }
}
