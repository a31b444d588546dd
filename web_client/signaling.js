// The signalling socket: JSON messages with "v": 1, a ping every 15 s, and a
// watchdog that closes a socket the server has stopped answering.

const PING_INTERVAL_MS = 15_000;
const SILENCE_LIMIT_MS = 40_000;

export class SignalingSocket {
  /**
   * @param {string} url ws:// or wss:// address of /ws
   * @param {{onOpen: () => void, onMessage: (m: object) => void, onClose: (info: {code: number, clean: boolean}) => void}} handlers
   */
  constructor(url, handlers) {
    this.handlers = handlers;
    this.closedByUs = false;
    this.lastHeard = performance.now();
    this.ws = new WebSocket(url);
    this.ws.addEventListener("open", () => {
      this.timer = setInterval(() => this.tick(), PING_INTERVAL_MS);
      handlers.onOpen();
    });
    this.ws.addEventListener("message", (event) => {
      this.lastHeard = performance.now();
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        console.warn("ignoring a server message that is not JSON");
        return;
      }
      if (message && typeof message.type === "string") handlers.onMessage(message);
    });
    this.ws.addEventListener("close", (event) => {
      clearInterval(this.timer);
      handlers.onClose({ code: event.code, clean: this.closedByUs });
    });
  }

  tick() {
    if (performance.now() - this.lastHeard > SILENCE_LIMIT_MS) {
      // No pong for a long time: the network is gone even if the socket says open.
      this.ws.close();
      return;
    }
    this.send("ping");
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
    clearInterval(this.timer);
    this.ws.close(1000);
  }

  /** Close as a network failure would (tests and the watchdog): a reconnect follows. */
  drop() {
    this.ws.close(4000, "dropped");
  }
}
