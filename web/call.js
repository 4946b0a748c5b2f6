// call.js: one RTCPeerConnection with one other browser: the stranger in a
// stranger call, or one member of a room (the room is a mesh of these).
//
// Implements PROTOCOL.md "Peer to peer": perfect negotiation with the role
// (`polite`) given by the server (`matched.polite`, or in a room: who joined
// later is impolite), trickle ICE, the microphone track (Opus preferred) and
// the ordered, reliable data channel `chat`. The impolite side adds its
// tracks and creates `chat` at once, so it makes the first offer; the polite
// side adds its tracks when that offer arrives, before answering, so one
// round trip is enough. A camera track can be added and removed later
// (setVideo); the renegotiation that follows is perfect negotiation too.
//
// "Hide my IP" (`hideIp`): the connection is made with
// `iceTransportPolicy: 'relay'`, so the browser gathers and offers relay
// (TURN) candidates only and the other side never sees our own address. If
// the browser refuses that configuration, the call fails ('relay_unavailable')
// rather than falling back to a direct one. updateIceServers() applies fresh
// TURN credentials (`ice_servers`) to a running connection and restarts ICE,
// which perfect negotiation turns into a new offer; the transport policy
// stays as it was.
//
// Safety words (safetywords.js): once connected, and again whenever a
// negotiation settles, the Call computes the three words from the DTLS
// fingerprints of its two descriptions and emits `safetywords` (detail:
// words, changed = true when they differ from words already shown).
//
// Locked rooms (PROTOCOL.md "Locked rooms") plug in two optional hooks:
// `signDescription(sdp)` gives the `auth` for every outgoing description,
// `verifyDescription(sdp, auth)` says whether an incoming one may be used
// (null = yes, otherwise the reason to refuse). A refused description is
// never applied: the Call emits `refused` and closes.
//
// A Call knows nothing of the WebSocket or the page: outgoing signals go to
// the `sendSignal` callback as `{description, auth?}` or `{candidate}`, in the
// order the browser produced them; incoming ones come in through
// handleSignal(). Events: `connectionstate` (detail: state, everConnected),
// `track` (detail: stream, track), `chatopen`, `chat` (detail: text),
// `peerstate` (detail: muted), `refused` (detail: reason), `safetywords`
// (detail: words, changed), `failed` (detail: reason = 'connection_failed' |
// 'channel_closed' | 'timeout' | 'relay_unavailable').
// Once close() has been called no event fires and nothing is sent.
// SDP, candidates and chat text are never logged.

import { safetyWords } from './safetywords.js';

export const CHAT_LABEL = 'chat';
// Besides `chat`, a room member tells the others whether its microphone is
// muted: {"type": "state", "muted": true}. Receivers that do not know it
// ignore it, as PROTOCOL.md asks of anything but `chat`.
export const STATE_MESSAGE = 'state';
export const MAX_CHAT_CHARS = 2000;
// JSON of 2000 characters, each escaped as \uXXXX at worst, plus the wrapper.
const MAX_CHAT_FRAME_CHARS = MAX_CHAT_CHARS * 6 + 64;
// When the stranger skips, their browser closes its side and our data channel
// closes at once, usually just before the server's call_ended reaches us. Wait
// a moment for that message so the user hears "Stranger skipped you" and is
// re-queued, rather than "the connection dropped".
const CHANNEL_CLOSE_GRACE_MS = 2500;
const CONNECT_TIMEOUT_MS = 45000;

export class Call extends EventTarget {
  #pc;
  #polite;
  #sendSignal;
  #localStream;
  #signDescription;
  #verifyDescription;
  #mediaStarted = false;
  #video = null; // { track, stream } wanted on this connection, or null
  #videoTransceiver = null;
  #channel = null;
  #closed = false;
  // Perfect negotiation state (W3C WebRTC 1.0, section 10.7).
  #makingOffer = false;
  #ignoreOffer = false;
  #settingRemoteAnswerPending = false;
  // Incoming signals are handled one at a time, in arrival order; outgoing
  // ones leave in the order they were made, even when signing one of them
  // takes a moment (a candidate must not overtake its description).
  #inbox = Promise.resolve();
  #outbox = Promise.resolve();
  #connectTimer = 0;
  #graceTimer = 0;
  #everConnected = false;
  #hideIp = false;
  #words = null; // the safety words shown, or null
  #wordsToken = 0;

  /**
   * @param {object} o
   * @param {number} o.id  the `call` id from `matched`, or the room peer id
   * @param {boolean} o.polite  our role in perfect negotiation
   * @param {RTCIceServer[]} o.iceServers  from `welcome`
   * @param {MediaStream} o.localStream  the microphone
   * @param {(payload: object) => void} o.sendSignal
   * @param {{track: MediaStreamTrack, stream: MediaStream}} [o.video]  camera to send
   * @param {(sdp: string) => Promise<string|null>} [o.signDescription]
   * @param {(sdp: string, auth: unknown) => Promise<string|null>} [o.verifyDescription]
   * @param {boolean} [o.hideIp]  relay candidates only ("hide my IP")
   * @param {RTCPeerConnection} [o.pc]  made for these iceServers and hideIp
   *   while searching (prepare.js), untouched since; else the Call makes one
   */
  constructor({
    id, polite, iceServers, localStream, sendSignal, video = null, signDescription = null,
    verifyDescription = null, hideIp = false, pc: prepared = null,
  }) {
    super();
    this.id = id;
    this.#polite = Boolean(polite);
    this.#localStream = localStream;
    this.#sendSignal = sendSignal;
    this.#signDescription = signDescription;
    this.#verifyDescription = verifyDescription;
    this.#video = video && video.track ? video : null;

    const servers = Array.isArray(iceServers) ? iceServers : [];
    this.#hideIp = Boolean(hideIp);
    let relayFailed = false;
    try {
      this.#pc = prepared || new RTCPeerConnection({ iceServers: servers, iceTransportPolicy: this.#hideIp ? 'relay' : 'all' });
    } catch {
      if (this.#hideIp) {
        // Never fall back to a direct connection when the user asked to
        // hide their address: no servers and relay only gathers nothing.
        console.warn('earshot: ice_servers rejected by the browser; cannot relay this call');
        this.#pc = new RTCPeerConnection({ iceTransportPolicy: 'relay' });
        relayFailed = true;
      } else {
        // A server list the browser rejects should not cost the call: host
        // candidates still work on the same network.
        console.warn('earshot: ice_servers rejected by the browser; calling without them');
        this.#pc = new RTCPeerConnection();
      }
    }
    const pc = this.#pc;
    let relayCandidates = 0;
    pc.onicecandidate = ({ candidate }) => {
      // The end-of-candidates null (and Firefox's empty one) is not sent.
      if (candidate && candidate.candidate) {
        if (candidate.type === 'relay') relayCandidates += 1;
        this.#send({ candidate: candidate.toJSON() });
      }
    };
    // Relay-only and gathering ended with no relay candidate (the TURN
    // server refused the credentials, or is unreachable): say so now rather
    // than at the connect timeout. The IP stays hidden either way.
    pc.onicegatheringstatechange = () => {
      if (this.#closed || !this.#hideIp || pc.iceGatheringState !== 'complete') return;
      if (relayCandidates === 0 && pc.connectionState !== 'connected') this.#fail('relay_unavailable');
    };
    pc.onnegotiationneeded = () => this.#negotiate();
    pc.onconnectionstatechange = () => this.#onConnectionState();
    pc.onsignalingstatechange = () => {
      // A renegotiation (camera, ICE restart) could bring other
      // fingerprints: check the words again once it settles.
      if (!this.#closed && this.#everConnected && pc.signalingState === 'stable') this.#updateWords();
    };
    pc.ontrack = ({ track, streams }) => {
      if (this.#closed) return;
      const stream = streams && streams[0] ? streams[0] : new MediaStream([track]);
      this.#emit('track', { stream, track });
    };
    pc.ondatachannel = ({ channel }) => this.#adoptChannel(channel);

    if (!this.#polite) {
      this.#startMedia();
      this.#adoptChannel(pc.createDataChannel(CHAT_LABEL, { ordered: true }));
    }
    this.#connectTimer = setTimeout(() => this.#fail('timeout'), CONNECT_TIMEOUT_MS);
    if (relayFailed) setTimeout(() => this.#fail('relay_unavailable'), 0);
  }

  /** The RTCPeerConnection (read-only; for the test hook). */
  get pc() { return this.#pc; }

  get polite() { return this.#polite; }

  /** 'new' | 'connecting' | 'connected' | 'disconnected' | 'failed' | 'closed'. */
  get connectionState() { return this.#pc.connectionState; }

  get chatOpen() { return !this.#closed && this.#channel !== null && this.#channel.readyState === 'open'; }

  get closed() { return this.#closed; }

  /** Whether this connection gathers relay candidates only ("hide my IP"). */
  get hideIp() {
    try {
      return this.#pc.getConfiguration().iceTransportPolicy === 'relay';
    } catch {
      return this.#hideIp;
    }
  }

  /** The safety words (three strings) once connected, else null. */
  get safetyWords() { return this.#words ? [...this.#words] : null; }

  /**
   * Use these ICE servers from now on (fresh TURN credentials), keeping the
   * rest of the configuration (the transport policy above all); with
   * `restart`, restart ICE so the connection gathers candidates with them
   * (perfect negotiation sends the new offer). False if it could not be
   * applied.
   */
  updateIceServers(iceServers, restart = true) {
    if (this.#closed || !Array.isArray(iceServers)) return false;
    const pc = this.#pc;
    const policy = this.#hideIp ? 'relay' : 'all';
    try {
      pc.setConfiguration({ ...pc.getConfiguration(), iceServers, iceTransportPolicy: policy });
    } catch (err) {
      console.warn('earshot: could not apply fresh ICE servers:', errorName(err));
      return false;
    }
    if (restart && typeof pc.restartIce === 'function') pc.restartIce();
    return true;
  }

  /** Feed one server `signal` message (the whole message, or its payload). */
  handleSignal(msg) {
    this.#inbox = this.#inbox.then(() => this.#handle(msg)).catch((err) => {
      if (!this.#closed) console.warn('earshot: negotiation step failed:', errorName(err));
    });
  }

  /** Send a chat line; false if the channel is not open or the text is invalid. */
  sendChat(text) {
    if (!this.chatOpen || typeof text !== 'string' || text.length === 0) return false;
    if ([...text].length > MAX_CHAT_CHARS) return false;
    return this.#sendData({ type: 'chat', text });
  }

  /** Tell the other side whether our microphone is muted (rooms). */
  sendState(muted) {
    if (!this.chatOpen) return false;
    return this.#sendData({ type: STATE_MESSAGE, muted: Boolean(muted) });
  }

  /**
   * Send this camera track (null: stop sending video). Reuses one video
   * transceiver per connection, switching its direction, so turning the
   * camera on and off does not grow the SDP. Either change renegotiates.
   */
  setVideo(track, stream) {
    if (this.#closed) return;
    this.#video = track ? { track, stream } : null;
    if (this.#mediaStarted) this.#applyVideo();
  }

  /** Hang up locally. Idempotent; the local microphone is not stopped. */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#connectTimer);
    clearTimeout(this.#graceTimer);
    const ch = this.#channel;
    if (ch) {
      ch.onopen = ch.onmessage = ch.onclose = null;
      try { ch.close(); } catch { /* already closed */ }
    }
    const pc = this.#pc;
    pc.onicecandidate = pc.onnegotiationneeded = pc.onconnectionstatechange = pc.onsignalingstatechange = null;
    pc.onicegatheringstatechange = null;
    pc.ontrack = pc.ondatachannel = null;
    pc.close();
  }

  #sendData(msg) {
    try {
      this.#channel.send(JSON.stringify(msg));
      return true;
    } catch {
      return false;
    }
  }

  async #negotiate() {
    if (this.#closed) return;
    try {
      this.#makingOffer = true;
      await this.#pc.setLocalDescription();
      if (this.#closed) return;
      this.#send({ description: descriptionJSON(this.#pc.localDescription) });
    } catch (err) {
      if (!this.#closed) console.warn('earshot: could not make an offer:', errorName(err));
    } finally {
      this.#makingOffer = false;
    }
  }

  async #handle(msg) {
    if (this.#closed || !msg) return;
    const pc = this.#pc;
    const description = validDescription(msg.description);
    if (description) {
      if (this.#verifyDescription) {
        const refusal = await this.#verifyDescription(description.sdp || '', msg.auth);
        if (this.#closed) return;
        if (refusal) {
          this.#refuse(refusal);
          return;
        }
      }
      const readyForOffer = !this.#makingOffer
        && (pc.signalingState === 'stable' || this.#settingRemoteAnswerPending);
      const offerCollision = description.type === 'offer' && !readyForOffer;
      this.#ignoreOffer = !this.#polite && offerCollision;
      if (this.#ignoreOffer) return;
      this.#settingRemoteAnswerPending = description.type === 'answer';
      try {
        // On the polite side, an offer in have-local-offer rolls ours back
        // implicitly.
        await pc.setRemoteDescription(description);
      } finally {
        this.#settingRemoteAnswerPending = false;
      }
      if (this.#closed) return;
      if (description.type === 'offer') {
        // Polite side: the microphone goes into the transceiver the offer
        // just created, so the answer already sends audio.
        this.#startMedia();
        await pc.setLocalDescription();
        if (this.#closed) return;
        this.#send({ description: descriptionJSON(pc.localDescription) });
      }
      return;
    }
    const candidate = validCandidate(msg.candidate);
    if (candidate) {
      try {
        await pc.addIceCandidate(candidate);
      } catch (err) {
        // Candidates for an offer we ignored are expected to fail.
        if (!this.#ignoreOffer) throw err;
      }
    }
  }

  // Our tracks go in once: at once on the impolite side, with the first
  // offer on the polite side.
  #startMedia() {
    if (this.#mediaStarted) return;
    this.#mediaStarted = true;
    const track = this.#localStream ? this.#localStream.getAudioTracks()[0] : null;
    if (track) {
      const sender = this.#pc.addTrack(track, this.#localStream);
      const transceiver = this.#pc.getTransceivers().find((t) => t.sender === sender);
      preferOpus(transceiver);
    }
    if (this.#video) this.#applyVideo();
  }

  #applyVideo() {
    const pc = this.#pc;
    const want = this.#video;
    let t = this.#videoTransceiver;
    if (t && t.currentDirection === 'stopped') t = null;
    if (!t) {
      // A video m-line the other side opened (its camera) can carry ours too.
      t = pc.getTransceivers().find((x) => x.currentDirection !== 'stopped' && x.mid !== null
        && x.receiver.track && x.receiver.track.kind === 'video' && !x.sender.track) || null;
    }
    if (!want) {
      if (!t) return;
      this.#videoTransceiver = t;
      t.sender.replaceTrack(null).catch(() => {});
      if (t.direction !== 'recvonly' && t.direction !== 'inactive') t.direction = 'recvonly';
      return;
    }
    if (!t) {
      this.#videoTransceiver = pc.addTransceiver(want.track, { direction: 'sendrecv', streams: want.stream ? [want.stream] : [] });
      return;
    }
    this.#videoTransceiver = t;
    if (want.stream && typeof t.sender.setStreams === 'function') {
      try { t.sender.setStreams(want.stream); } catch { /* msid is only a hint */ }
    }
    t.sender.replaceTrack(want.track).catch((err) => {
      if (!this.#closed) console.warn('earshot: could not send the camera:', errorName(err));
    });
    if (t.direction !== 'sendrecv') t.direction = 'sendrecv';
  }

  #adoptChannel(channel) {
    if (this.#closed) return;
    if (channel.label !== CHAT_LABEL || this.#channel) {
      channel.close(); // not part of the protocol
      return;
    }
    this.#channel = channel;
    channel.onopen = () => { if (!this.#closed) this.#emit('chatopen', {}); };
    channel.onmessage = ({ data }) => {
      if (this.#closed || typeof data !== 'string' || data.length > MAX_CHAT_FRAME_CHARS) return;
      let msg;
      try {
        msg = JSON.parse(data);
      } catch {
        return;
      }
      if (msg && msg.type === STATE_MESSAGE && typeof msg.muted === 'boolean') {
        this.#emit('peerstate', { muted: msg.muted });
        return;
      }
      if (!msg || msg.type !== 'chat' || typeof msg.text !== 'string') return;
      if (msg.text.length === 0 || [...msg.text].length > MAX_CHAT_CHARS) return;
      this.#emit('chat', { text: msg.text });
    };
    // A channel handed over by ondatachannel may be open already.
    if (channel.readyState === 'open') queueMicrotask(() => { if (!this.#closed) this.#emit('chatopen', {}); });
    channel.onclose = () => {
      if (this.#closed) return;
      clearTimeout(this.#graceTimer);
      this.#graceTimer = setTimeout(() => this.#fail('channel_closed'), CHANNEL_CLOSE_GRACE_MS);
    };
  }

  #onConnectionState() {
    if (this.#closed) return;
    const state = this.#pc.connectionState;
    if (state === 'connected') {
      this.#everConnected = true;
      clearTimeout(this.#connectTimer);
      this.#updateWords();
    }
    this.#emit('connectionstate', { state, everConnected: this.#everConnected });
    if (state === 'failed') this.#fail('connection_failed');
  }

  // Compute the safety words from the two descriptions now in use; emit
  // them when they are new or differ from those shown.
  async #updateWords() {
    const pc = this.#pc;
    const local = pc.currentLocalDescription || pc.localDescription;
    const remote = pc.currentRemoteDescription || pc.remoteDescription;
    if (!local || !remote) return;
    const token = ++this.#wordsToken;
    let words;
    try {
      words = await safetyWords(local.sdp, remote.sdp);
    } catch {
      words = null;
    }
    if (this.#closed || token !== this.#wordsToken || !words) return;
    const before = this.#words;
    if (before && before.join(' ') === words.join(' ')) return;
    this.#words = words;
    this.#emit('safetywords', { words: [...words], changed: before !== null });
  }

  #fail(reason) {
    if (this.#closed) return;
    clearTimeout(this.#connectTimer);
    clearTimeout(this.#graceTimer);
    this.#emit('failed', { reason });
  }

  #refuse(reason) {
    if (this.#closed) return;
    this.#emit('refused', { reason });
    this.close();
  }

  #send(payload) {
    if (this.#closed) return;
    const sign = this.#signDescription;
    if (!sign) {
      this.#sendSignal(payload);
      return;
    }
    // A candidate waits behind a description being signed.
    this.#outbox = this.#outbox.then(async () => {
      let auth = null;
      if (payload.description) {
        try {
          auth = await sign(payload.description.sdp || '');
        } catch (err) {
          console.warn('earshot: could not sign a description:', errorName(err));
        }
      }
      if (!this.#closed) this.#sendSignal(auth ? { ...payload, auth } : payload);
    }).catch(() => { /* the send callback failed; later signals still go */ });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

function descriptionJSON(desc) {
  return { type: desc.type, sdp: desc.sdp };
}

const DESCRIPTION_TYPES = ['offer', 'answer', 'pranswer', 'rollback'];

function validDescription(d) {
  if (!d || typeof d !== 'object' || !DESCRIPTION_TYPES.includes(d.type)) return null;
  if (d.type === 'rollback') return { type: 'rollback' };
  if (typeof d.sdp !== 'string') return null;
  return { type: d.type, sdp: d.sdp };
}

function validCandidate(c) {
  if (!c || typeof c !== 'object' || typeof c.candidate !== 'string') return null;
  const out = { candidate: c.candidate };
  if (typeof c.sdpMid === 'string' || c.sdpMid === null) out.sdpMid = c.sdpMid;
  if (Number.isInteger(c.sdpMLineIndex) || c.sdpMLineIndex === null) out.sdpMLineIndex = c.sdpMLineIndex;
  if (typeof c.usernameFragment === 'string' || c.usernameFragment === null) out.usernameFragment = c.usernameFragment;
  if (out.sdpMid == null && out.sdpMLineIndex == null) out.sdpMLineIndex = 0;
  return out;
}

// Opus is every browser's default already; saying so keeps it first even
// where a browser would otherwise pick something else.
function preferOpus(transceiver) {
  if (!transceiver || typeof transceiver.setCodecPreferences !== 'function') return;
  if (typeof RTCRtpReceiver === 'undefined' || !RTCRtpReceiver.getCapabilities) return;
  try {
    const caps = RTCRtpReceiver.getCapabilities('audio');
    if (!caps || !caps.codecs) return;
    const isOpus = (c) => c.mimeType.toLowerCase() === 'audio/opus';
    const codecs = [...caps.codecs.filter(isOpus), ...caps.codecs.filter((c) => !isOpus(c))];
    if (codecs.length > 0 && isOpus(codecs[0])) transceiver.setCodecPreferences(codecs);
  } catch {
    /* keep the browser's default order */
  }
}

// Error messages from the WebRTC stack can quote SDP lines; log only the name.
function errorName(err) {
  return err && typeof err === 'object' && typeof err.name === 'string' ? err.name : 'Error';
}
