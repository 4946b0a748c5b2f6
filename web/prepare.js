// prepare.js: work done while searching, so that `matched` costs only the
// call itself. A Preparation holds one RTCPeerConnection made with the ICE
// servers and transport policy the call will use, and with
// `iceCandidatePoolSize`, so the browser gathers its candidates (with "hide
// my IP": its TURN allocation) while nobody is there to send them to.
//
// Nothing leaves the browser before a match: pooled candidates surface
// (onicecandidate) only after setLocalDescription, which call.js does once
// the server has matched us. Who offers is known only then, so tracks and
// the data channel go in at `matched` as before (cheap, no round trip).
//
// Released when the search ends, when the page is hidden, when the ICE
// servers change (fresh credentials), and after PREPARED_MAX_MS of
// searching (the TURN allocation, phones' batteries).
//
// Privacy: nothing is logged or stored.

/** Candidates pooled per connection: one of each kind is enough for audio. */
const POOL_SIZE = 1;
/** How long a prepared connection may wait for a match. */
export const PREPARED_MAX_MS = 120000;

export class Preparation {
  #pc = null;
  #key = '';
  #timer = 0;
  #expired = false; // the search outlived PREPARED_MAX_MS: stay released until it ends

  /**
   * Have a connection ready for `iceServers` and `hideIp` (relay only),
   * unless one is ready for the same, or the search already waited too long.
   */
  prepare(iceServers, hideIp) {
    if (this.#expired || typeof RTCPeerConnection !== 'function') return;
    const servers = Array.isArray(iceServers) ? iceServers : [];
    const key = JSON.stringify([servers, Boolean(hideIp)]);
    if (this.#pc && this.#key === key) return;
    this.#close();
    try {
      this.#pc = new RTCPeerConnection({
        iceServers: servers,
        iceTransportPolicy: hideIp ? 'relay' : 'all',
        iceCandidatePoolSize: POOL_SIZE,
      });
    } catch {
      return; // call.js makes its own and says why
    }
    this.#key = key;
    if (!this.#timer) {
      this.#timer = setTimeout(() => {
        this.#expired = true;
        this.#close();
      }, PREPARED_MAX_MS);
    }
  }

  /**
   * The prepared connection if it was made for `iceServers` and `hideIp`
   * (it is the caller's from now on), else null. Either way, nothing stays
   * prepared.
   */
  take(iceServers, hideIp) {
    const servers = Array.isArray(iceServers) ? iceServers : [];
    const key = JSON.stringify([servers, Boolean(hideIp)]);
    const pc = this.#pc && this.#key === key && this.#pc.signalingState === 'stable' ? this.#pc : null;
    if (pc) this.#pc = null;
    this.release();
    return pc;
  }

  /** Drop the prepared connection, if any, and the search's time limit. */
  release() {
    this.#close();
    clearTimeout(this.#timer);
    this.#timer = 0;
    this.#expired = false;
  }

  /** Drop the prepared connection, keeping the time limit running. */
  pause() {
    this.#close();
  }

  #close() {
    if (this.#pc) this.#pc.close();
    this.#pc = null;
    this.#key = '';
  }
}
