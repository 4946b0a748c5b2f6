// protocol.js: the Earshot signalling client (PROTOCOL.md, version 1).
//
// Owns the one WebSocket to `/ws` on the page's own origin: sends `hello`,
// waits for `welcome`, reconnects with exponential backoff when the socket
// drops, and turns every server message into an event named after its type
// (`welcome`, `searching`, `matched`, `signal`, `call_ended`, `idle`, `error`),
// with the parsed message as `event.detail`. It also emits `connecting` and
// `disconnected` (detail: code, reason, wasReady, retryInMs).
//
// It knows nothing of the page, the DOM or WebRTC: the UI (app.js) decides
// what to send and when. Invariants: at most one live socket at a time; only
// `hello` is sent before `welcome`; nothing is sent while not ready (send()
// returns false instead of queueing, because a stale search or signal replayed
// on a new connection would be wrong, not merely late).

export const PROTOCOL_VERSION = 1;

/** Message types the server may send in version 1. Others are ignored. */
export const SERVER_MESSAGE_TYPES = Object.freeze([
  'welcome', 'searching', 'matched', 'signal', 'call_ended', 'idle', 'error',
]);

const BACKOFF_START_MS = 500;
const BACKOFF_MAX_MS = 15000;
// The server closes a socket that has not said hello within 10 s; we give a
// silent server a little longer before we give up on this socket ourselves.
const WELCOME_TIMEOUT_MS = 15000;

/** `ws://host/ws` or `wss://host/ws`, following the page's own scheme. */
export function signallingUrl(loc = globalThis.location) {
  const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${loc.host}/ws`;
}

/**
 * Delay before reconnect attempt number `attempt` (0 for the first retry):
 * 0.5 s doubling up to 15 s, each multiplied by a random factor in
 * [0.75, 1.25) (capped at 15 s) so that clients dropped together by a server
 * restart do not all come back in the same instant.
 */
export function backoffDelay(attempt, random = Math.random) {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * 2 ** Math.min(attempt, 16));
  return Math.round(Math.min(BACKOFF_MAX_MS, base * (0.75 + 0.5 * random())));
}

export class SignallingClient extends EventTarget {
  #url;
  #ws = null;
  // 'new' | 'connecting' (socket opening or waiting for welcome) | 'ready'
  // | 'waiting' (backoff timer running) | 'stopped'
  #state = 'new';
  #attempt = 0;
  #retryTimer = 0;
  #welcomeTimer = 0;
  #welcome = null;

  constructor(url = signallingUrl()) {
    super();
    this.#url = url;
  }

  /** True between `welcome` and the socket closing. */
  get ready() { return this.#state === 'ready'; }

  /** 'new' | 'connecting' | 'ready' | 'waiting' | 'stopped'. */
  get state() { return this.#state; }

  /** The last `welcome` message (ice_servers, limits, country), or null. */
  get welcome() { return this.#welcome; }

  /** Open the connection; it is kept open (reconnecting) until close(). */
  connect() {
    if (this.#state !== 'new') return;
    this.#open();
  }

  /** Skip the rest of a backoff wait (e.g. the browser came back online). */
  reconnectNow() {
    if (this.#state !== 'waiting') return;
    clearTimeout(this.#retryTimer);
    this.#open();
  }

  /** Close for good: no more reconnects. */
  close() {
    const ws = this.#ws;
    this.#state = 'stopped';
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#welcomeTimer);
    if (ws) this.#drop(ws, 'closed by client');
  }

  /** Send one client message; false (and nothing sent) when not ready. */
  send(msg) {
    const ws = this.#ws;
    if (this.#state !== 'ready' || !ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(msg));
    return true;
  }

  search(interests = []) { return this.send({ type: 'search', interests }); }
  skip() { return this.send({ type: 'skip' }); }
  end() { return this.send({ type: 'end' }); }

  /** `payload` is `{description}` or `{candidate}` (exactly one). */
  signal(call, payload) { return this.send({ type: 'signal', call, ...payload }); }

  #open() {
    this.#state = 'connecting';
    this.#emit('connecting', { attempt: this.#attempt });
    let ws;
    try {
      ws = new WebSocket(this.#url);
    } catch {
      // Only a malformed URL or a blocked port gets here; treat it like a
      // failed connection so the page keeps saying what is happening.
      this.#ws = null;
      this.#closed(null, 1006, '');
      return;
    }
    this.#ws = ws;
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: 'hello', version: PROTOCOL_VERSION }));
    };
    ws.onmessage = (event) => this.#onMessage(ws, event);
    ws.onclose = (event) => this.#closed(ws, event.code, event.reason);
    ws.onerror = () => { /* a close event always follows */ };
    this.#welcomeTimer = setTimeout(() => {
      if (this.#ws === ws && this.#state === 'connecting') this.#drop(ws, 'no welcome');
    }, WELCOME_TIMEOUT_MS);
  }

  // Close a socket ourselves and report it as closed right away (the
  // browser's own close event may take a while, or never come if it hangs).
  #drop(ws, reason) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try { ws.close(1000, reason); } catch { /* already closing */ }
    this.#closed(ws, 1006, reason);
  }

  #onMessage(ws, event) {
    if (ws !== this.#ws || typeof event.data !== 'string') return;
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch {
      return;
    }
    if (msg === null || typeof msg !== 'object' || Array.isArray(msg) || typeof msg.type !== 'string') return;
    if (!SERVER_MESSAGE_TYPES.includes(msg.type)) return; // a newer server; ignore what we don't know

    if (msg.type === 'welcome') {
      if (this.#state !== 'connecting') return;
      clearTimeout(this.#welcomeTimer);
      this.#state = 'ready';
      this.#attempt = 0;
      this.#welcome = msg;
    } else if (msg.type === 'error' && msg.code === 'unsupported_version' && this.#state === 'connecting') {
      // We speak only version 1; retrying cannot help, reloading the page can.
      this.#emit('error', msg);
      this.close();
      return;
    } else if (this.#state !== 'ready' && msg.type !== 'error') {
      return; // nothing but welcome/error is meaningful before welcome
    }
    this.#emit(msg.type, msg);
  }

  #closed(ws, code, reason) {
    if (ws !== this.#ws) return;
    this.#ws = null;
    clearTimeout(this.#welcomeTimer);
    const wasReady = this.#state === 'ready';
    if (this.#state === 'stopped') {
      this.#emit('disconnected', { code, reason, wasReady, retryInMs: null });
      return;
    }
    // 1008/1009 mean this client did something wrong: come back, but slowly.
    const delay = code === 1008 || code === 1009 ? BACKOFF_MAX_MS : backoffDelay(this.#attempt);
    this.#attempt += 1;
    this.#state = 'waiting';
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => this.#open(), delay);
    this.#emit('disconnected', { code, reason, wasReady, retryInMs: delay });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
