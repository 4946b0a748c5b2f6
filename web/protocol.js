// protocol.js: the Earshot signalling client (PROTOCOL.md, version 1).
//
// Owns the one WebSocket to `/ws` on the page's own origin: sends `hello`,
// waits for `welcome`, reconnects with exponential backoff when the socket
// drops, and turns every server message into an event named after its type
// (`welcome`, `searching`, `matched`, `signal`, `call_ended`, `idle`,
// `room_suggestion`, `room_joined`, `peer_joined`, `peer_left`,
// `room_lock_state`, `ice_servers`, `challenge`, `error`), with the parsed message as
// `event.detail`. It also emits `connecting` and `disconnected` (detail:
// code, reason, wasReady, retryInMs), and `pow` while it answers a
// `challenge` (PROTOCOL.md "Proof of work"; detail: state = 'solving' |
// 'solved' | 'failed', progress 0..1, and for 'failed' a reason). It also
// holds the room-name rules (PROTOCOL.md "Rooms"), which the home page and
// the room page share, and the interest rules (PROTOCOL.md `search`).
//
// Proof of work: a `challenge` (answering `hello`, on every connection
// including reconnects) is solved here with WebCrypto SHA-256, in chunks of
// digests run together, so the page stays responsive; then `hello` goes
// again with `pow`. `pow_invalid` is not passed on as an `error`: a new
// `challenge` follows it and is solved the same way.
//
// ICE servers (PROTOCOL.md `welcome`, `refresh_ice`): the one place that
// holds the current list (`iceServers`, from `welcome` and then from every
// `ice_servers`), so a new call always starts with the freshest TURN
// credentials. When TURN is offered, it asks for fresh ones (`refresh_ice`)
// at 80% of `limits.ice_credential_ttl_ms` after it got the last ones; the
// pages apply each `ice_servers` event to their open peer connections.
// refreshIce() does it now (the test hook calls it); an `error` answering
// `refresh_ice` (`re`, PROTOCOL.md `error`) resolves it with null at once.
//
// It knows nothing of the page, the DOM or WebRTC: the UI (strangers.js,
// room.js, through session.js) decides what to send and when. Invariants:
// at most one live socket at a time; only `hello` is sent before `welcome`;
// nothing is sent while not ready (send() returns false instead of
// queueing, because a stale search or signal replayed on a new connection
// would be wrong, not merely late).

export const PROTOCOL_VERSION = 1;

/** Message types the server may send in version 1. Others are ignored. */
export const SERVER_MESSAGE_TYPES = Object.freeze([
  'welcome', 'searching', 'matched', 'signal', 'call_ended', 'idle', 'error',
  'room_suggestion', 'room_joined', 'peer_joined', 'peer_left', 'room_lock_state',
  'challenge', 'ice_servers',
]);

/** `report.reason` / `room_report.reason` values (PROTOCOL.md `report`). */
export const REPORT_REASONS = Object.freeze(['harassment', 'hate', 'sexual', 'spam', 'underage', 'other']);

export const ROOM_NAME_MIN = 3;
export const ROOM_NAME_MAX = 64;

/** A room name as the server sees it: trimmed and lower-cased. */
export function normalizeRoomName(name) {
  return typeof name === 'string' ? name.trim().toLowerCase() : '';
}

/**
 * Why `name` (already normalised) is not a valid room name, in plain words,
 * or null when it is valid: 3 to 64 of a-z, 0-9 and '-', not starting or
 * ending with '-'.
 */
export function roomNameProblem(name) {
  if (name.length === 0) return 'Type a name for the room.';
  if (/[^a-z0-9-]/.test(name)) {
    return 'A room name can only use the letters a–z, the digits 0–9 and "-" (no spaces or accents).';
  }
  if (name.length < ROOM_NAME_MIN) return `A room name needs at least ${ROOM_NAME_MIN} characters.`;
  if (name.length > ROOM_NAME_MAX) return `A room name can have at most ${ROOM_NAME_MAX} characters (this one has ${name.length}).`;
  if (name.startsWith('-') || name.endsWith('-')) return 'A room name can\'t start or end with "-".';
  return null;
}

/** `welcome.limits` on interests, until a `welcome` says otherwise. */
const DEFAULT_INTEREST_LIMITS = { max_interests: 5, max_interest_chars: 24 };

/**
 * The interests typed in `text` (comma-separated), as the server will see
 * them: trimmed, lower-cased, inner spaces folded, duplicates merged. Returns
 * {interests} or {error} (in plain words); `limits` is `welcome.limits`.
 */
export function parseInterests(text, limits = null) {
  const max = { ...DEFAULT_INTEREST_LIMITS, ...limits };
  const seen = new Set();
  for (const raw of text.split(',')) {
    const item = raw.trim().toLowerCase().replace(/\s+/g, ' ');
    if (!item) continue;
    if ([...item].length > max.max_interest_chars) {
      return { error: `"${item}" is too long: an interest can have at most ${max.max_interest_chars} characters.` };
    }
    if (!/^[\p{L}\p{N} -]+$/u.test(item)) {
      return { error: `"${item}" can only use letters, digits, spaces and "-".` };
    }
    seen.add(item);
  }
  if (seen.size > max.max_interests) {
    return { error: `Up to ${max.max_interests} interests, please (you have ${seen.size}).` };
  }
  return { interests: [...seen] };
}

const BACKOFF_START_MS = 500;
const BACKOFF_MAX_MS = 15000;
// The server closes a socket that has not said hello within 10 s; we give a
// silent server a little longer before we give up on this socket ourselves.
const WELCOME_TIMEOUT_MS = 15000;
// Proof of work: digests started together (one Promise.all), and how often
// progress is reported at most.
const POW_CHUNK = 1000;
const POW_PROGRESS_MS = 100;
// TURN credentials are asked for again at this share of their lifetime.
const ICE_REFRESH_AT = 0.8;
const ICE_REFRESH_MIN_MS = 5000;
const TIMER_MAX_MS = 2 ** 31 - 1;
// How long refreshIce() waits for its `ice_servers`.
const ICE_ANSWER_MS = 10000;
const ICE_RETRY_MS = 60000;

const ICE_URL = /^(stun|stuns|turn|turns):/i;
const TURN_URL = /^turns?:/i;

/**
 * The usable entries of a server's `ice_servers` list, as RTCIceServer
 * dictionaries: `urls` as an array of stun:/stuns:/turn:/turns: URLs, and a
 * TURN entry only with its string `username` and `credential` (the browser
 * would refuse it without). Anything else is left out.
 */
export function sanitizeIceServers(list) {
  if (!Array.isArray(list)) return [];
  const out = [];
  for (const entry of list) {
    if (!entry || typeof entry !== 'object') continue;
    const raw = Array.isArray(entry.urls) ? entry.urls : [entry.urls];
    const urls = raw.filter((u) => typeof u === 'string' && ICE_URL.test(u));
    if (urls.length === 0) continue;
    const turn = urls.some((u) => TURN_URL.test(u));
    if (turn) {
      if (typeof entry.username !== 'string' || typeof entry.credential !== 'string') continue;
      out.push({ urls, username: entry.username, credential: entry.credential });
    } else {
      out.push({ urls });
    }
  }
  return out;
}

/** Whether this list offers a TURN server (with credentials): "hide my IP" needs one. */
export function offersTurn(iceServers) {
  return Array.isArray(iceServers) && iceServers.some((s) => s && typeof s.username === 'string'
    && typeof s.credential === 'string' && s.urls.some((u) => TURN_URL.test(u)));
}

/**
 * Let the page run (input, rendering, timers) between two chunks of digests.
 * Without this, the browser delivers digest results ahead of everything else
 * and the page freezes until the search ends. A timeout is the task that
 * yields most fairly; in a hidden tab timeouts are throttled to one a second
 * or less, and nothing there needs drawing, so a message task does instead.
 */
function nextTask() {
  return new Promise((resolve) => {
    const doc = globalThis.document;
    if (doc && doc.visibilityState === 'hidden' && typeof MessageChannel === 'function') {
      const channel = new MessageChannel();
      channel.port1.onmessage = () => {
        channel.port1.close();
        resolve();
      };
      channel.port2.postMessage(null);
    } else {
      setTimeout(resolve, 0);
    }
  });
}

/** The bytes of a hex string of even length (already checked). */
function fromHex(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i += 1) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function sameBytes(buffer, bytes) {
  const a = new Uint8Array(buffer);
  if (a.length !== bytes.length) return false;
  for (let i = 0; i < a.length; i += 1) if (a[i] !== bytes[i]) return false;
  return true;
}

/** Why a `challenge` message cannot be solved, or null when it can. */
export function challengeProblem(msg) {
  if (msg.algorithm !== undefined && msg.algorithm !== 'SHA-256') return 'unsupported_algorithm';
  if (typeof msg.salt !== 'string' || typeof msg.signature !== 'string') return 'bad_challenge';
  if (typeof msg.challenge !== 'string' || !/^[0-9a-fA-F]{64}$/.test(msg.challenge)) return 'bad_challenge';
  if (!Number.isSafeInteger(msg.maxnumber) || msg.maxnumber < 0) return 'bad_challenge';
  if (!globalThis.crypto || !globalThis.crypto.subtle) return 'no_crypto';
  return null;
}

/**
 * Find `number` in 0..=maxnumber with hex(SHA-256(salt + number)) ===
 * challenge (PROTOCOL.md "Proof of work"). Digests run POW_CHUNK at a time
 * (one Promise.all); between chunks the page gets a turn (nextTask). `onProgress`
 * gets the share of the range searched so far (0..1); `cancelled()` is asked
 * after every chunk. Resolves to the number, or null when it is not in the
 * range or the search was cancelled.
 */
export async function solveChallenge({ salt, challenge, maxnumber }, { onProgress = () => {}, cancelled = () => false } = {}) {
  const subtle = globalThis.crypto.subtle;
  const encoder = new TextEncoder();
  const target = fromHex(challenge); // comparing bytes is the same as comparing lower-case hex
  const total = maxnumber + 1;
  let lastReport = 0;
  for (let first = 0; first <= maxnumber; first += POW_CHUNK) {
    const last = Math.min(maxnumber, first + POW_CHUNK - 1);
    const digests = [];
    for (let n = first; n <= last; n += 1) {
      digests.push(subtle.digest('SHA-256', encoder.encode(salt + String(n))));
    }
    const results = await Promise.all(digests);
    if (cancelled()) return null;
    for (let i = 0; i < results.length; i += 1) {
      if (sameBytes(results[i], target)) return first + i;
    }
    const now = Date.now();
    if (now - lastReport >= POW_PROGRESS_MS) {
      lastReport = now;
      onProgress((last + 1) / total);
    }
    await nextTask();
    if (cancelled()) return null;
  }
  return null;
}

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
  #pow = null; // { state, progress } of the last challenge answered
  #powToken = 0; // bumps to abandon a search nobody needs any more
  #solved = null; // a solution whose socket closed, for the next `hello`
  #iceServers = []; // the current list: from `welcome`, then each `ice_servers`
  #iceTtlMs = 0; // limits.ice_credential_ttl_ms of the last `welcome`
  #iceTimer = 0;
  #iceWaiters = []; // refreshIce() promises waiting for `ice_servers`
  #iceAnswerTimer = 0;

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

  /**
   * The ICE servers for a new RTCPeerConnection: the freshest the server
   * gave (`welcome`, then `ice_servers`), sanitised; a new array each time.
   */
  get iceServers() { return this.#iceServers.map((s) => ({ ...s, urls: [...s.urls] })); }

  /** Whether the server offers TURN, so that "hide my IP" can work. */
  get turnOffered() { return offersTurn(this.#iceServers); }

  /** `welcome.hide_ip_default`, and only when TURN is offered. */
  get hideIpDefault() {
    return Boolean(this.#welcome && this.#welcome.hide_ip_default === true && this.turnOffered);
  }

  /**
   * Ask for fresh ICE servers (`refresh_ice`) now. Resolves to the
   * `ice_servers` message once it came (after the `ice_servers` event has
   * been dispatched), or null when it could not be asked or no answer came
   * (not connected, the socket closed, 10 s passed).
   */
  refreshIce() {
    if (!this.ready) return Promise.resolve(null);
    const answer = new Promise((resolve) => this.#iceWaiters.push(resolve));
    if (this.#iceWaiters.length === 1) {
      // One request at a time; later callers wait for the same answer.
      if (!this.send({ type: 'refresh_ice' })) {
        this.#answerIceWaiters(null);
        return answer;
      }
      clearTimeout(this.#iceAnswerTimer);
      this.#iceAnswerTimer = setTimeout(() => this.#answerIceWaiters(null), ICE_ANSWER_MS);
    }
    return answer;
  }

  /**
   * The proof of work of the current connection attempt: null when none was
   * asked for, else {state: 'solving' | 'solved' | 'failed', progress}.
   */
  get pow() { return this.#pow; }

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
    clearTimeout(this.#iceTimer);
    this.#powToken += 1;
    this.#solved = null;
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

  /** Report the stranger in the current call; `reason` one of REPORT_REASONS or null. */
  report(reason = null) {
    return this.send(REPORT_REASONS.includes(reason) ? { type: 'report', reason } : { type: 'report' });
  }

  /** Report room member `peer`; `reason` one of REPORT_REASONS or null. */
  roomReport(peer, reason = null) {
    return this.send(REPORT_REASONS.includes(reason)
      ? { type: 'room_report', peer, reason } : { type: 'room_report', peer });
  }

  /** `payload` is `{description}` or `{candidate}` (exactly one). */
  signal(call, payload) { return this.send({ type: 'signal', call, ...payload }); }

  roomSuggest() { return this.send({ type: 'room_suggest' }); }

  /** `verifier` (base64url) only when joining a locked room. */
  roomJoin(room, verifier = null) {
    return this.send(verifier ? { type: 'room_join', room, verifier } : { type: 'room_join', room });
  }

  roomLock(verifier) { return this.send({ type: 'room_lock', verifier }); }
  roomUnlock() { return this.send({ type: 'room_unlock' }); }

  /**
   * A signal to room member `to`. `payload` is `{description, auth?}` or
   * `{candidate}`; `auth` is left out when null.
   */
  signalPeer(to, payload) {
    const msg = { type: 'signal', to, ...payload };
    if (msg.auth == null) delete msg.auth;
    return this.send(msg);
  }

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
      // A challenge solved after its socket closed is answered here: the
      // server checks a solution by its signature and expiry, not by the
      // connection that asked (PROTOCOL.md "Proof of work").
      const pow = this.#solved;
      this.#solved = null;
      if (!pow && this.#solving()) return; // #answerChallenge sends it when done
      ws.send(JSON.stringify(pow
        ? { type: 'hello', version: PROTOCOL_VERSION, pow }
        : { type: 'hello', version: PROTOCOL_VERSION }));
    };
    ws.onmessage = (event) => this.#onMessage(ws, event);
    ws.onclose = (event) => this.#closed(ws, event.code, event.reason);
    ws.onerror = () => { /* a close event always follows */ };
    this.#armWelcomeTimer(ws);
  }

  #armWelcomeTimer(ws) {
    clearTimeout(this.#welcomeTimer);
    this.#welcomeTimer = setTimeout(() => {
      if (this.#ws === ws && this.#state === 'connecting') this.#drop(ws, 'no welcome');
    }, WELCOME_TIMEOUT_MS);
  }

  #solving() {
    return this.#pow !== null && this.#pow.state === 'solving';
  }

  #setPow(pow) {
    this.#pow = pow;
    this.#emit('pow', pow);
  }

  // Answer a `challenge` that arrived on socket `ws`: solve it, then send
  // `hello` with `pow` on whichever socket is connecting by then. The search
  // goes on if `ws` closes meanwhile (the server may give up waiting for
  // the answer to a big challenge), so the next connection can use it; a
  // newer challenge or close() abandons it.
  async #answerChallenge(ws, msg) {
    const token = ++this.#powToken;
    this.#solved = null;
    // No time limit of ours while solving: a big challenge on a slow phone
    // takes a while. The clock starts again once the answer is sent.
    if (this.#ws === ws) clearTimeout(this.#welcomeTimer);
    const current = () => this.#powToken === token && this.#state !== 'stopped' && this.#state !== 'ready';
    const problem = challengeProblem(msg);
    if (problem) {
      this.#setPow({ state: 'failed', progress: 0, reason: problem });
      if (this.#ws === ws) this.#armWelcomeTimer(ws); // closes it; a new connection tries again
      return;
    }
    this.#setPow({ state: 'solving', progress: 0 });
    let number;
    try {
      number = await solveChallenge(msg, {
        cancelled: () => !current(),
        onProgress: (progress) => { if (current()) this.#setPow({ state: 'solving', progress }); },
      });
    } catch {
      number = null;
    }
    if (!current()) return;
    if (number === null) {
      // Not in the range (a broken challenge): a new connection gets a new one.
      this.#setPow({ state: 'failed', progress: 1, reason: 'not_found' });
      if (this.#ws === ws) this.#drop(ws, 'challenge not solvable');
      return;
    }
    this.#setPow({ state: 'solved', progress: 1 });
    const pow = { salt: msg.salt, number, challenge: msg.challenge, signature: msg.signature };
    const live = this.#ws;
    if (this.#state === 'connecting' && live && live.readyState === WebSocket.OPEN) {
      live.send(JSON.stringify({ type: 'hello', version: PROTOCOL_VERSION, pow }));
      this.#armWelcomeTimer(live);
    } else {
      // The socket that asked is gone (or the next one is still opening):
      // keep the answer for the next `hello`, and do not sit out a backoff.
      this.#solved = pow;
      if (this.#state === 'waiting') this.reconnectNow();
    }
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

    if (msg.type === 'challenge') {
      if (this.#state !== 'connecting') return;
      this.#emit('challenge', msg);
      this.#answerChallenge(ws, msg);
      return;
    }
    if (msg.type === 'error' && msg.code === 'pow_invalid' && this.#state === 'connecting') {
      return; // a new `challenge` follows; the page needs to know nothing else
    }
    if (msg.type === 'error' && msg.re === 'refresh_ice') this.#answerIceWaiters(null);
    if (msg.type === 'welcome') {
      if (this.#state !== 'connecting') return;
      clearTimeout(this.#welcomeTimer);
      this.#solved = null;
      this.#state = 'ready';
      this.#attempt = 0;
      this.#welcome = msg;
      const limits = msg.limits && typeof msg.limits === 'object' ? msg.limits : {};
      const ttl = limits.ice_credential_ttl_ms;
      this.#iceTtlMs = Number.isFinite(ttl) && ttl > 0 ? ttl : 0;
      this.#setIceServers(msg.ice_servers);
    } else if (msg.type === 'ice_servers') {
      if (this.#state !== 'ready') return;
      this.#setIceServers(msg.ice_servers);
      this.#emit(msg.type, { ...msg, ice_servers: this.iceServers });
      this.#answerIceWaiters(msg);
      return;
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
    // The next `welcome` brings fresh credentials (and restarts the timer).
    clearTimeout(this.#iceTimer);
    this.#answerIceWaiters(null);
    const wasReady = this.#state === 'ready';
    if (this.#state === 'stopped') {
      this.#emit('disconnected', { code, reason, wasReady, retryInMs: null });
      return;
    }
    this.#attempt += 1;
    this.#state = 'waiting';
    clearTimeout(this.#retryTimer);
    if (this.#solving()) {
      // The server did not wait for the answer to its challenge (hello
      // timeout): come back as soon as it is ready (#answerChallenge).
      this.#emit('disconnected', { code, reason, wasReady, retryInMs: null });
      return;
    }
    // 1008/1009 mean this client did something wrong: come back, but slowly.
    const delay = code === 1008 || code === 1009 ? BACKOFF_MAX_MS : backoffDelay(this.#attempt - 1);
    this.#retryTimer = setTimeout(() => this.#open(), delay);
    this.#emit('disconnected', { code, reason, wasReady, retryInMs: delay });
  }

  // A new list of ICE servers: keep it, and when it carries TURN
  // credentials, ask for the next ones at 80% of their lifetime.
  #setIceServers(list) {
    this.#iceServers = sanitizeIceServers(list);
    clearTimeout(this.#iceTimer);
    this.#iceTimer = 0;
    if (this.#iceTtlMs <= 0 || !this.turnOffered) return;
    this.#scheduleIceRefresh(Math.round(this.#iceTtlMs * ICE_REFRESH_AT));
  }

  #scheduleIceRefresh(ms) {
    clearTimeout(this.#iceTimer);
    const delay = Math.min(TIMER_MAX_MS, Math.max(ICE_REFRESH_MIN_MS, ms));
    this.#iceTimer = setTimeout(async () => {
      this.#iceTimer = 0;
      const answer = await this.refreshIce();
      // No answer (say, rate limited) on a live socket: try again soon,
      // before the credentials run out. A new socket gets a new `welcome`.
      if (!answer && this.ready && this.#iceTimer === 0) {
        this.#scheduleIceRefresh(Math.min(ICE_RETRY_MS, this.#iceTtlMs * (1 - ICE_REFRESH_AT) / 4));
      }
    }, delay);
  }

  #answerIceWaiters(msg) {
    clearTimeout(this.#iceAnswerTimer);
    const waiters = this.#iceWaiters.splice(0);
    for (const resolve of waiters) resolve(msg);
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
