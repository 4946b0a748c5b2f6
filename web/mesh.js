// mesh.js: the peer connections of one room membership: a full mesh, one
// Call (call.js) per other member, keyed by the member's peer id.
//
// Roles follow PROTOCOL.md "Rooms": in every pair the member who joined
// later is impolite and offers first. So the newcomer adds everyone in
// `room_joined.peers` with polite = false, and a member who hears
// `peer_joined` adds the newcomer with polite = true and waits for its offer.
//
// Fingerprint authentication (PROTOCOL.md "Locked rooms"):
// - Outgoing: while we hold the room's auth key (only while the room is
//   locked), every description we send carries `auth`.
// - Incoming: a connection made while the room was locked, or while we hold
//   the auth key (`requireAuth`) accepts a description only with a valid
//   `auth`; otherwise the peer is
//   refused: the Call closes and emits `refused` (reason 'missing_auth',
//   'bad_auth', or 'no_key' when we do not know the passphrase and so cannot
//   check). Connections made before the room was locked stay as they are.
//   Holding the key is enough to require auth so that a server that claims
//   a locked room is unlocked (say, after a restart that forgot the lock)
//   still cannot put itself between members who know the passphrase.
//   Once a description has been verified, its DTLS fingerprints are pinned:
//   a later renegotiation (camera on/off) with the same fingerprints is
//   accepted even if the room has been unlocked or re-locked meanwhile,
//   since it proves nothing new; different fingerprints need a valid `auth`.
//
// ICE servers and "hide my IP" are asked of the owner each time a
// connection is made (`iceServers()`, `hideIp()`), so a newcomer gets the
// freshest TURN credentials and the setting as it is now; updateIceServers()
// applies fresh credentials to every live connection.
//
// No DOM here. The owner (members.js) listens to each Call's events; the mesh
// emits `call` (detail: peer, call) whenever it creates one. SDP and `auth`
// are never logged.

import { Call } from './call.js';
import { sdpFingerprints, signFingerprints, verifyFingerprints } from './roomcrypto.js';

export class Mesh extends EventTarget {
  #room;
  #iceServers;
  #hideIp;
  #localStream;
  #sendSignal;
  #locked;
  #authKey = null;
  #video = null;
  #closed = false;
  /** peer id -> { call, requireAuth, pinned } */
  #peers = new Map();

  /**
   * @param {object} o
   * @param {string} o.room  the room name, as confirmed by `room_joined`
   * @param {() => RTCIceServer[]} o.iceServers  the current list, asked for each new connection
   * @param {() => boolean} [o.hideIp]  whether a new connection is relay only
   * @param {MediaStream} o.localStream  the microphone
   * @param {boolean} o.locked  `room_joined.locked`
   * @param {CryptoKey|null} o.authKey
   * @param {(to: number, payload: object) => void} o.sendSignal
   */
  constructor({ room, iceServers, hideIp = () => false, localStream, locked, authKey, sendSignal }) {
    super();
    this.#room = room;
    this.#iceServers = typeof iceServers === 'function' ? iceServers : () => iceServers;
    this.#hideIp = hideIp;
    this.#localStream = localStream;
    this.#locked = Boolean(locked);
    this.#authKey = authKey || null;
    this.#sendSignal = sendSignal;
  }

  get locked() { return this.#locked; }

  /** Follow `room_lock_state`: only connections made from now on need auth. */
  setLocked(locked) { this.#locked = Boolean(locked); }

  /** The auth key from the passphrase, or null when we do not know it. */
  setAuthKey(key) { this.#authKey = key || null; }

  has(peer) { return this.#peers.has(peer); }

  call(peer) {
    const entry = this.#peers.get(peer);
    return entry ? entry.call : null;
  }

  /** Live calls, as [peer, call] pairs. */
  calls() {
    return [...this.#peers].filter(([, e]) => !e.call.closed).map(([id, e]) => [id, e.call]);
  }

  /** peer id -> RTCPeerConnection of every live call (a new plain object). */
  peerConnections() {
    const out = {};
    for (const [id, call] of this.calls()) out[id] = call.pc;
    return out;
  }

  /** Start the connection to `peer`; `polite` is true when they joined after us. */
  addPeer(peer, polite) {
    if (this.#closed || this.#peers.has(peer)) return null;
    const entry = { call: null, requireAuth: this.#locked || this.#authKey !== null, pinned: null };
    const call = new Call({
      id: peer,
      polite,
      iceServers: this.#iceServers(),
      hideIp: Boolean(this.#hideIp()),
      localStream: this.#localStream,
      video: this.#video,
      sendSignal: (payload) => this.#sendSignal(peer, payload),
      signDescription: (sdp) => this.#sign(sdp),
      verifyDescription: (sdp, auth) => this.#verify(entry, sdp, auth),
    });
    entry.call = call;
    this.#peers.set(peer, entry);
    this.dispatchEvent(new CustomEvent('call', { detail: { peer, call } }));
    return call;
  }

  /** `peer_left`, or giving up on a peer: close and forget its connection. */
  removePeer(peer) {
    const entry = this.#peers.get(peer);
    if (!entry) return;
    entry.call.close();
    this.#peers.delete(peer);
  }

  /** A room `signal` (with `from`). Signals from unknown peers are dropped. */
  handleSignal(msg) {
    const entry = this.#peers.get(msg.from);
    if (entry && !entry.call.closed) entry.call.handleSignal(msg);
  }

  /** Chat to everyone whose channel is open; how many it went to. */
  sendChat(text) {
    let sent = 0;
    for (const [, call] of this.calls()) if (call.sendChat(text)) sent += 1;
    return sent;
  }

  sendState(muted) {
    for (const [, call] of this.calls()) call.sendState(muted);
  }

  /** Send this camera track to everyone (null: stop sending video). */
  setVideo(track, stream) {
    this.#video = track ? { track, stream } : null;
    for (const [, call] of this.calls()) call.setVideo(track, stream);
  }

  /** A new microphone track for every live connection (the old one ended). */
  replaceAudioTrack(track) {
    for (const [, call] of this.calls()) call.replaceAudioTrack(track);
  }

  /**
   * Use fresh ICE servers on every live connection; with `restart`, restart
   * ICE on each. How many connections took them.
   */
  updateIceServers(iceServers, restart = true) {
    let n = 0;
    for (const [, call] of this.calls()) if (call.updateIceServers(iceServers, restart)) n += 1;
    return n;
  }

  close() {
    this.#closed = true;
    for (const entry of this.#peers.values()) entry.call.close();
    this.#peers.clear();
    this.#authKey = null;
  }

  async #sign(sdp) {
    const key = this.#authKey;
    return key ? signFingerprints(key, this.#room, sdp) : null;
  }

  // null: accept; otherwise why the peer is refused.
  async #verify(entry, sdp, auth) {
    if (!entry.requireAuth) return null;
    const fingerprints = sdpFingerprints(sdp).join('\n');
    if (entry.pinned !== null && fingerprints === entry.pinned) return null;
    if (typeof auth !== 'string' || auth === '') return 'missing_auth';
    const key = this.#authKey;
    if (!key) return 'no_key';
    if (!(await verifyFingerprints(key, this.#room, sdp, auth))) return 'bad_auth';
    entry.pinned = fingerprints;
    return null;
  }
}
