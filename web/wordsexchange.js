// wordsexchange.js: the commit-then-reveal exchange that gives one peer
// connection its safety words (PROTOCOL.md "Safety words"), over the
// connection's own `chat` data channel.
//
// The side whose fingerprint string sorts first commits: it sends
// {"type":"safety_commit","hash":H(nonce_c)}; the other answers
// {"type":"safety_nonce","nonce":nonce_r}; the committer then reveals
// {"type":"safety_reveal","nonce":nonce_c}. Roles come from the
// fingerprints, not from who offered, so a renegotiation cannot swap them.
// A server in the middle has to choose its certificates and its nonces
// before it can know the honest side's nonce, so it gets one guess at
// matching words per call.
//
// The outcome is words, or a warning: `mismatch` (the reveal does not match
// its commitment), `timeout` (no words within WORDS_TIMEOUT_MS of start()),
// `protocol` (a message out of turn or malformed), `same_fingerprint`, or
// `unavailable` (no WebCrypto). A peer that never answers gets the warning,
// never a quiet absence of words. No DOM; nonces are never logged.

import {
  commitment, deriveWords, fingerprintBefore, newNonce, nonceFromHex, toHex,
} from './safetywords.js';

export const WORDS_TIMEOUT_MS = 10000;
export const COMMIT = 'safety_commit';
export const NONCE = 'safety_nonce';
export const REVEAL = 'safety_reveal';

/** Whether a data-channel message belongs to the exchange. */
export function isExchangeMessage(msg) {
  return Boolean(msg) && (msg.type === COMMIT || msg.type === NONCE || msg.type === REVEAL);
}

export class WordsExchange {
  #localFp;
  #remoteFp;
  #send;
  #onOutcome;
  #timeoutMs;
  #committer;
  #nonce = null; // ours, once made
  #hash = null; // the committer's commitment (responder side)
  #sentNonce = false;
  #gotNonce = false;
  #timer = 0;
  #started = false;
  #done = false;
  // Incoming messages are handled one at a time: hashing is asynchronous.
  #queue = Promise.resolve();

  /**
   * @param {object} o
   * @param {string} o.localFp  our fingerprint string (descriptionFingerprint)
   * @param {string} o.remoteFp  the other side's, as our remote description has it
   * @param {(msg: object) => boolean} o.send  sends one message on the channel
   * @param {(outcome: {words: string[]|null, warning: string|null}) => void} o.onOutcome
   */
  constructor({ localFp, remoteFp, send, onOutcome, timeoutMs = WORDS_TIMEOUT_MS }) {
    this.#localFp = localFp;
    this.#remoteFp = remoteFp;
    this.#send = send;
    this.#onOutcome = onOutcome;
    this.#timeoutMs = timeoutMs;
    this.#committer = fingerprintBefore(localFp, remoteFp);
  }

  get committer() { return this.#committer; }

  /** The fingerprint strings the words are (or will be) made from. */
  get fingerprints() { return [this.#localFp, this.#remoteFp]; }

  /** The channel is open: start the clock, and commit if it is our turn. */
  start() {
    if (this.#started || this.#done) return;
    this.#started = true;
    this.#timer = setTimeout(() => this.#finish(null, 'timeout'), this.#timeoutMs);
    if (this.#localFp === this.#remoteFp) {
      this.#finish(null, 'same_fingerprint');
      return;
    }
    if (!globalThis.crypto || !globalThis.crypto.subtle) {
      this.#finish(null, 'unavailable');
      return;
    }
    if (!this.#committer) return;
    this.#nonce = newNonce();
    this.#queue = this.#queue.then(async () => {
      const hash = await commitment(this.#nonce);
      if (!this.#done && !this.#send({ type: COMMIT, hash })) this.#finish(null, 'protocol');
    }).catch(() => this.#finish(null, 'unavailable'));
  }

  /** One exchange message from the channel (isExchangeMessage). */
  handle(msg) {
    this.#queue = this.#queue.then(() => this.#handle(msg)).catch(() => this.#finish(null, 'protocol'));
  }

  /** Stop the clock; no outcome after this. */
  close() {
    this.#done = true;
    clearTimeout(this.#timer);
  }

  async #handle(msg) {
    if (this.#done) return;
    if (this.#committer) {
      // Only one nonce, and only after our commitment went out.
      const nonce = msg.type === NONCE && !this.#gotNonce && this.#nonce ? nonceFromHex(msg.nonce) : null;
      if (!nonce) {
        this.#finish(null, 'protocol');
        return;
      }
      this.#gotNonce = true;
      const words = await deriveWords(this.#localFp, this.#remoteFp, this.#nonce, nonce);
      if (this.#done) return;
      if (!this.#send({ type: REVEAL, nonce: toHex(this.#nonce) })) {
        this.#finish(null, 'protocol');
        return;
      }
      this.#finish(words, null);
      return;
    }
    if (msg.type === COMMIT && this.#hash === null && typeof msg.hash === 'string'
        && /^[0-9a-f]{64}$/.test(msg.hash)) {
      this.#hash = msg.hash;
      this.#nonce = newNonce();
      this.#sentNonce = this.#send({ type: NONCE, nonce: toHex(this.#nonce) });
      if (!this.#sentNonce) this.#finish(null, 'protocol');
      return;
    }
    const revealed = msg.type === REVEAL && this.#sentNonce ? nonceFromHex(msg.nonce) : null;
    if (!revealed) {
      this.#finish(null, 'protocol');
      return;
    }
    if (await commitment(revealed) !== this.#hash) {
      this.#finish(null, 'mismatch');
      return;
    }
    const words = await deriveWords(this.#remoteFp, this.#localFp, revealed, this.#nonce);
    this.#finish(words, null);
  }

  #finish(words, warning) {
    if (this.#done) return;
    this.close();
    this.#onOutcome({ words, warning });
  }
}
