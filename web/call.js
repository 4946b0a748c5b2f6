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
// (setVideo); the renegotiation that follows is perfect negotiation too. A
// new microphone track replaces one that ended (replaceAudioTrack).
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
// Network changes: once connected, a connection that drops (`disconnected`
// or `failed`: the address changed, Wi-Fi to mobile) is restarted with
// restartIce() rather than ended, so the call comes back without a new
// match or room join. The browser says `disconnected` only some five
// seconds after packets stop, so the Call also watches what arrives
// (getStats every WATCH_MS) and restarts as soon as nothing has come for
// STALL_MS. The impolite side restarts at once, the polite side a little
// later if no offer came (fewer offers crossing). Until packets flow again
// the Call says `reconnecting`; it retries every few seconds (an offer
// lost with the signalling is rolled back and made again) and gives up
// RECONNECT_GIVE_UP_MS after the browser itself said `disconnected` or
// `failed` ('connection_lost').
//
// Safety words (wordsexchange.js): once `chat` opens, the Call runs the
// commit-then-reveal exchange over it and emits `safetywords` (detail:
// words, or null with a warning instead). A later negotiation that brings
// other fingerprints turns the words into the warning `fingerprint_changed`.
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
// (detail: words, warning), `failed` (detail: reason = 'connection_failed' |
// 'channel_closed' | 'timeout' | 'relay_unavailable' | 'connection_lost').
// `connectionstate` also carries `reconnecting` (true from a drop until the
// connection is back).
// Once close() has been called no event fires and nothing is sent.
// SDP, candidates and chat text are never logged.

import { descriptionFingerprint } from './safetywords.js';
import { WordsExchange, isExchangeMessage } from './wordsexchange.js';

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
// After a drop: the polite side's wait for the other side's restart offer,
// the time between attempts, and when to stop trying.
const POLITE_RESTART_DELAY_MS = 1500;
const RESTART_RETRY_MS = 5000;
const RECONNECT_GIVE_UP_MS = 30000;
// Audio arrives 50 times a second (silence too, when muted), so a second
// and a half of nothing is a dead path, not a quiet partner.
const WATCH_MS = 500;
const STALL_MS = 1500;

export class Call extends EventTarget {
  #pc;
  #polite;
  #sendSignal;
  #localStream;
  #signDescription;
  #verifyDescription;
  #mediaStarted = false;
  #audioSender = null;
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
  #words = null; // the safety words, or null
  #wordsWarning = null; // why there are none, once the exchange gave up
  #exchange = null;
  #reconnecting = false;
  #restartTimer = 0;
  #giveUpTimer = 0;
  #restartOfferSeen = false; // an offer came in since the drop
  #watchTimer = 0;
  #received = -1; // bytes received on every candidate pair, at the last look
  #receivedAt = 0; // when that last grew (performance.now())

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
   */
  constructor({
    id, polite, iceServers, localStream, sendSignal, video = null, signDescription = null,
    verifyDescription = null, hideIp = false,
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
      this.#pc = new RTCPeerConnection({ iceServers: servers, iceTransportPolicy: this.#hideIp ? 'relay' : 'all' });
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
      // fingerprints than the words were made from.
      if (!this.#closed && pc.signalingState === 'stable') this.#checkFingerprints();
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

  /** Whether the connection dropped and is being restarted. */
  get reconnecting() { return this.#reconnecting; }

  /** Whether this connection gathers relay candidates only ("hide my IP"). */
  get hideIp() {
    try {
      return this.#pc.getConfiguration().iceTransportPolicy === 'relay';
    } catch {
      return this.#hideIp;
    }
  }

  /** The safety words (three strings) once the exchange is done, else null. */
  get safetyWords() { return this.#words ? [...this.#words] : null; }

  /** Why there are no safety words (wordsexchange.js), or null. */
  get safetyWarning() { return this.#wordsWarning; }

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

  /**
   * Send this microphone track from now on instead of the one that ended
   * (replaceTrack: no renegotiation, the call goes on).
   */
  replaceAudioTrack(track) {
    if (this.#closed || !this.#audioSender) return; // not sending yet: it takes the stream's track then
    this.#audioSender.replaceTrack(track).catch((err) => {
      if (!this.#closed) console.warn('earshot: could not replace the microphone:', errorName(err));
    });
  }

  /** Hang up locally. Idempotent; the local microphone is not stopped. */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#connectTimer);
    clearTimeout(this.#graceTimer);
    if (this.#exchange) this.#exchange.close();
    clearInterval(this.#watchTimer);
    this.#stopReconnecting();
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
      if (description.type === 'offer') this.#restartOfferSeen = true;
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
      this.#audioSender = sender;
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
    channel.onopen = () => {
      if (this.#closed) return;
      this.#startWords();
      this.#emit('chatopen', {});
    };
    channel.onmessage = ({ data }) => {
      if (this.#closed || typeof data !== 'string' || data.length > MAX_CHAT_FRAME_CHARS) return;
      let msg;
      try {
        msg = JSON.parse(data);
      } catch {
        return;
      }
      if (isExchangeMessage(msg)) {
        const exchange = this.#wordsExchange();
        if (exchange) exchange.handle(msg);
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
    if (channel.readyState === 'open') {
      queueMicrotask(() => {
        if (this.#closed) return;
        this.#startWords();
        this.#emit('chatopen', {});
      });
    }
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
      this.#stopReconnecting();
      this.#receivedAt = performance.now();
      if (!this.#watchTimer) this.#watchTimer = setInterval(() => this.#watch(), WATCH_MS);
    } else if ((state === 'disconnected' || state === 'failed') && this.#everConnected) {
      this.#startReconnecting(state === 'failed');
    }
    this.#emit('connectionstate', { state, everConnected: this.#everConnected, reconnecting: this.#reconnecting });
    if (state === 'failed' && !this.#everConnected) this.#fail('connection_failed');
  }

  // A connection that had worked dropped: restart ICE (now on the
  // impolite side, or on `failed`; the polite side gives the other's
  // offer a moment first) and keep trying. Only a drop the browser itself
  // reports (not `stalled`) counts towards giving up.
  #startReconnecting(failed, stalled = false) {
    if (!stalled && !this.#giveUpTimer) {
      this.#giveUpTimer = setTimeout(() => this.#fail('connection_lost'), RECONNECT_GIVE_UP_MS);
    }
    if (!this.#reconnecting) {
      this.#reconnecting = true;
      this.#restartOfferSeen = false;
      clearTimeout(this.#restartTimer);
      this.#restartTimer = setTimeout(() => this.#restart(), this.#polite && !failed ? POLITE_RESTART_DELAY_MS : 0);
    } else if (failed && !this.#polite) {
      clearTimeout(this.#restartTimer);
      this.#restartTimer = setTimeout(() => this.#restart(), 0);
    }
  }

  // The browser says `disconnected` some five seconds after packets stop:
  // when nothing has arrived for STALL_MS on a `connected` connection,
  // reconnect now; when packets flow again, that is over.
  async #watch() {
    const pc = this.#pc;
    if (this.#closed) return;
    let received = 0;
    try {
      const stats = await pc.getStats();
      stats.forEach((r) => { if (r.type === 'candidate-pair') received += r.bytesReceived || 0; });
    } catch {
      return;
    }
    // A browser without these figures never counts as stalled.
    if (this.#closed || received === 0) return;
    const now = performance.now();
    const connected = pc.connectionState === 'connected';
    if (received !== this.#received) {
      this.#received = received;
      this.#receivedAt = now;
      if (this.#reconnecting && connected) this.#reconnected();
      return;
    }
    if (!this.#reconnecting && connected && now - this.#receivedAt >= STALL_MS) {
      this.#startReconnecting(false, true);
      this.#emit('connectionstate', { state: pc.connectionState, everConnected: true, reconnecting: true });
    }
  }

  #reconnected() {
    this.#stopReconnecting();
    this.#emit('connectionstate', { state: this.#pc.connectionState, everConnected: true, reconnecting: false });
  }

  async #restart(retry = false) {
    if (this.#closed || !this.#reconnecting) return;
    const pc = this.#pc;
    this.#restartTimer = setTimeout(() => this.#restart(true), RESTART_RETRY_MS);
    // The polite side leaves it to the other side's offer when one came.
    if (this.#polite && this.#restartOfferSeen) {
      this.#restartOfferSeen = false;
      return;
    }
    if (retry && pc.signalingState === 'have-local-offer' && !this.#makingOffer) {
      // An offer unanswered this long was lost (say with the signalling):
      // take it back so that restartIce() makes a new one.
      try {
        await pc.setLocalDescription({ type: 'rollback' });
      } catch {
        return; // an answer is being applied after all
      }
      if (this.#closed) return;
    }
    if (typeof pc.restartIce === 'function') pc.restartIce();
  }

  #stopReconnecting() {
    this.#reconnecting = false;
    clearTimeout(this.#restartTimer);
    clearTimeout(this.#giveUpTimer);
    this.#giveUpTimer = 0;
  }

  // The exchange of this connection, made from the descriptions in use when
  // the channel opens (or its first message arrives); null without them.
  #wordsExchange() {
    if (this.#exchange) return this.#exchange;
    const pc = this.#pc;
    const local = pc.currentLocalDescription || pc.localDescription;
    const remote = pc.currentRemoteDescription || pc.remoteDescription;
    const localFp = descriptionFingerprint(local && local.sdp);
    const remoteFp = descriptionFingerprint(remote && remote.sdp);
    if (localFp === null || remoteFp === null) return null;
    this.#exchange = new WordsExchange({
      localFp,
      remoteFp,
      send: (msg) => this.chatOpen && this.#sendData(msg),
      onOutcome: ({ words, warning }) => this.#setWords(words, warning),
    });
    return this.#exchange;
  }

  #startWords() {
    const exchange = this.#wordsExchange();
    if (exchange) exchange.start();
    else this.#setWords(null, 'protocol');
  }

  #checkFingerprints() {
    const exchange = this.#exchange;
    if (!exchange) return;
    const pc = this.#pc;
    const local = pc.currentLocalDescription || pc.localDescription;
    const remote = pc.currentRemoteDescription || pc.remoteDescription;
    const now = [descriptionFingerprint(local && local.sdp), descriptionFingerprint(remote && remote.sdp)];
    const [localFp, remoteFp] = exchange.fingerprints;
    if (now[0] !== localFp || now[1] !== remoteFp) {
      exchange.close();
      this.#setWords(null, 'fingerprint_changed');
    }
  }

  #setWords(words, warning) {
    if (this.#closed || this.#wordsWarning) return;
    this.#words = words ? [...words] : null;
    this.#wordsWarning = words ? null : warning || 'protocol';
    this.#emit('safetywords', { words: this.safetyWords, warning: this.#wordsWarning });
  }

  #fail(reason) {
    if (this.#closed) return;
    clearTimeout(this.#connectTimer);
    clearTimeout(this.#graceTimer);
    this.#stopReconnecting();
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
