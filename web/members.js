// members.js: the other people in a room, as the room page sees them once
// it is in: the mesh (mesh.js, one peer connection per member), a tile each
// (tile.js), what each connection does (connected, refused, failed, safety
// words, chat, muted), and reports (the dialog from safety.js, then
// `room_report`). room.js starts it on `room_joined` and feeds it
// `peer_joined`, `peer_left`, `signal` and `ice_servers`.
//
// A member who fails the passphrase check is refused (their tile says so),
// one we report is hung up on at once; neither is counted as in the call.
// Reports wait in a queue until the server has us in the room, and go no
// further than this membership: peer ids change when we rejoin.
//
// Privacy: nothing about SDP, candidates or chat is logged; chat lines go
// into the DOM only (chat.js).

import { Mesh } from './mesh.js';
import { MAX_CHAT_CHARS } from './call.js';
import { audioContext } from './media.js';
import { Tiles, guestName } from './tile.js';

export class Members {
  mesh = null;
  self = null; // our peer id
  tiles;
  #reports = []; // room_report messages waiting for the server to be free
  #room;

  /**
   * `list`: the tiles' <ul>. `room`: room.js's side: name, session, lock,
   * state and camera (getters), message (setter), logEvent(text), render().
   */
  constructor(list, room) {
    this.#room = room;
    this.tiles = new Tiles(list, {
      onReport: (peer) => this.#openReport(peer),
      onRemove: (key) => this.#closeReportAbout(key),
    });
  }

  /** Peer id → RTCPeerConnection (the test hook's `peers`). */
  get peerConnections() { return this.mesh ? this.mesh.peerConnections() : {}; }

  /** Whether a chat channel is open with anyone. */
  get chatOpen() { return Boolean(this.mesh && this.mesh.calls().some(([, call]) => call.chatOpen)); }

  /**
   * Whether our connections hide our IP, for the note, given that the
   * checkbox says `wanted`. When a live connection was made with the other
   * setting, that one (the note then says the change applies to newcomers).
   */
  hideIpInUse(wanted) {
    if (this.mesh && this.mesh.calls().some(([, call]) => call.hideIp !== wanted)) return !wanted;
    return wanted;
  }

  /** `room_joined`: a new mesh with everyone already here. Returns how many. */
  start(detail) {
    this.close();
    const room = this.#room;
    const { session, lock } = room;
    const client = session.client;
    this.self = detail.peer;
    const mesh = new Mesh({
      room: room.name,
      iceServers: () => client.iceServers, // the freshest, for each newcomer
      hideIp: () => session.hideIp.wanted, // as the checkbox is when they connect
      localStream: session.localStream,
      locked: lock.locked,
      authKey: lock.authKey, // held only while we believe the room is locked (or will re-lock it)
      sendSignal: (to, payload) => {
        // Only while the server has us in this room: anything else would be
        // answered with an error, and errors count against the connection.
        if (this.mesh === mesh && client.ready && session.server === 'room') client.signalPeer(to, payload);
      },
    });
    this.mesh = mesh;
    mesh.addEventListener('call', ({ detail: d }) => this.#watch(mesh, d.peer, d.call));
    const camera = room.camera;
    if (camera) {
      const track = camera.getVideoTracks()[0];
      if (track) mesh.setVideo(track, camera);
    }
    const me = this.tiles.add(detail.peer, true);
    me.setMuted(session.muted);
    me.meter.attach(audioContext(), session.localStream);
    if (camera) me.setVideoTrack(camera.getVideoTracks()[0] || null);
    const peers = Array.isArray(detail.peers) ? detail.peers.filter((p) => Number.isSafeInteger(p) && p !== detail.peer) : [];
    for (const peer of peers) {
      this.tiles.add(peer);
      mesh.addPeer(peer, false); // we are the newcomer: impolite, we offer
    }
    return peers.length;
  }

  close() {
    if (this.mesh) this.mesh.close();
    this.mesh = null;
    // Peer ids belong to one membership: a queued report must not hit whoever
    // gets that id after we rejoin.
    this.#reports = [];
    this.tiles.clear();
  }

  /** `peer_joined`. */
  joined(peer) {
    const room = this.#room;
    const mesh = this.mesh;
    if (!Number.isSafeInteger(peer) || !mesh || room.state !== 'joined' || peer === this.self || mesh.has(peer)) return;
    this.tiles.add(peer);
    mesh.addPeer(peer, true); // they are the newcomer: they offer, we answer
    room.logEvent(`${guestName(peer)} joined.`);
    room.message = null;
    room.render();
  }

  /** `peer_left`. */
  left(peer) {
    const room = this.#room;
    if (!Number.isSafeInteger(peer) || !this.mesh) return;
    const known = this.tiles.has(peer);
    this.mesh.removePeer(peer);
    this.tiles.remove(peer);
    if (known) {
      room.logEvent(`${guestName(peer)} left.`);
      room.message = null;
    }
    room.render();
  }

  /** A `signal` from a member. */
  signal(detail) {
    if (this.mesh && Number.isSafeInteger(detail.from)) this.mesh.handleSignal(detail);
  }

  /** Fresh ICE servers for every live connection; returns how many took them. */
  updateIceServers(iceServers, restart) {
    return this.mesh ? this.mesh.updateIceServers(iceServers, restart) : 0;
  }

  /** A new microphone track (the old one ended): to everyone, and our level bar. */
  replaceAudioTrack(track) {
    if (this.mesh) this.mesh.replaceAudioTrack(track);
    const self = this.tiles.get('self');
    const stream = this.#room.session.localStream;
    if (self && stream) self.meter.attach(audioContext(), stream);
  }

  /** Our camera track (null: off) to everyone, and on our own tile. */
  setVideo(track, stream) {
    if (this.mesh) this.mesh.setVideo(track, stream);
    const self = this.tiles.get('self');
    if (self) self.setVideoTrack(track);
  }

  /** We muted or unmuted: our tile, and everyone's `state` message. */
  setMuted(muted) {
    const self = this.tiles.get('self');
    if (self) self.setMuted(muted);
    if (this.mesh) this.mesh.sendState(muted);
  }

  /** Chat to everyone connected; false when it went to nobody. */
  sendChat(text) {
    if (!this.mesh || [...text].length > MAX_CHAT_CHARS) return false;
    if (this.mesh.sendChat(text) === 0) return false;
    this.#room.session.chat.append('you', 'You:', text);
    return true;
  }

  /** In the room on the server: send the queued reports (they have no answer). */
  sendReports() {
    const client = this.#room.session.client;
    for (const { peer, reason } of this.#reports.splice(0)) client.roomReport(peer, reason);
  }

  // ---------------------------------------------------------------- calls

  #watch(mesh, peer, call) {
    const room = this.#room;
    const current = () => this.mesh === mesh && mesh.call(peer) === call;
    const tile = () => this.tiles.get(peer);
    room.session.lastHideIp = call.hideIp;
    call.addEventListener('safetywords', ({ detail }) => {
      if (!current() || !tile()) return;
      tile().setSafetyWords(detail.words, detail.warning);
      if (detail.warning) room.logEvent(`No safety words with ${guestName(peer)}: the safety check failed. Someone may be in the middle.`);
      room.render();
    });
    call.addEventListener('connectionstate', ({ detail }) => {
      if (!current() || !tile()) return;
      tile().setConnection(detail.reconnecting ? 'reconnecting' : detail.state);
      room.render();
    });
    call.addEventListener('track', ({ detail }) => {
      if (current() && tile()) tile().addTrack(detail.track);
    });
    call.addEventListener('chatopen', () => {
      if (!current()) return;
      if (room.session.muted) call.sendState(true);
      room.render();
    });
    call.addEventListener('chat', ({ detail }) => {
      if (current()) room.session.chat.append('them', `${guestName(peer)}:`, detail.text);
    });
    call.addEventListener('peerstate', ({ detail }) => {
      if (current() && tile()) tile().setMuted(detail.muted);
    });
    call.addEventListener('refused', ({ detail }) => {
      if (!current()) return;
      mesh.removePeer(peer);
      this.#refuse(peer, detail.reason);
    });
    call.addEventListener('failed', ({ detail }) => {
      if (!current()) return;
      mesh.removePeer(peer);
      const t = tile();
      const text = detail.reason === 'timeout' ? 'Couldn\'t connect' : 'Connection lost';
      if (t) t.setFailed(text);
      let line = `The connection to ${guestName(peer)} was lost.`;
      if (detail.reason === 'timeout') {
        line = `Couldn't connect to ${guestName(peer)}.${room.lock.locked ? ' (In a locked room, this happens when one of you can\'t prove knowing the passphrase.)' : ''}`;
      } else if (detail.reason === 'connection_lost') {
        line = `The connection to ${guestName(peer)} dropped and could not be restored.`;
      }
      room.logEvent(line);
      room.render();
    });
  }

  #refuse(peer, reason) {
    const room = this.#room;
    const { lock } = room;
    const name = guestName(peer);
    const noKey = reason === 'no_key';
    const tileText = noKey
      ? `${name} could not prove they know the passphrase: you haven't entered it, so it can't be checked.`
      : `${name} could not prove they know the passphrase, so you are not connected to them.`;
    const t = this.tiles.get(peer);
    if (t) t.setRefused(tileText);
    room.logEvent(tileText);
    room.message = noKey
      ? `${name} could not prove they know the passphrase (you haven't entered it). Enter it to let newcomers in.`
      : `${name} could not prove they know the passphrase, so you are not connected to them.`;
    if (noKey && lock.mode === null && lock.locked) lock.mode = 'verify';
    room.render();
  }

  // -------------------------------------------------------------- reports

  #openReport(peer) {
    const tile = this.tiles.get(peer);
    const dialog = this.#room.session.reportDialog;
    if (!tile || tile.reported || this.#room.state !== 'joined' || dialog.isOpen) return;
    const name = guestName(peer);
    dialog.open({
      subject: { kind: 'room', mesh: this.mesh, peer },
      title: `Report ${name}`,
      note: `You'll stop hearing each other right away. They aren't told who reported them. If more than half of the others here report ${name} too, they're removed from the room.`,
      submit: 'Report and hang up',
      returnFocus: tile.reportButton,
      onReport: (reason) => this.#report(peer, reason),
    });
  }

  /** Close the report dialog if it is about `peer` (null: about anyone in the room). */
  #closeReportAbout(peer) {
    const dialog = this.#room.session.reportDialog;
    const subject = dialog ? dialog.subject : null;
    if (subject && subject.kind === 'room' && (peer === null || subject.peer === peer)) dialog.close();
  }

  /** Submit of the report dialog: hang up on `peer` now, then tell the server. */
  #report(peer, reason) {
    const room = this.#room;
    const { session } = room;
    const tile = this.tiles.get(peer);
    if (!tile || tile.reported || !this.mesh || room.state !== 'joined') return;
    this.mesh.removePeer(peer); // closes the peer connection at once
    tile.setReported();
    const name = guestName(peer);
    if (session.client.ready && session.server === 'room') {
      this.#reports.push({ peer, reason });
      room.logEvent(`You reported ${name} and hung up on them.`);
    } else {
      // Not in the room on the server just now (reconnecting): the report
      // cannot reach it, as peer ids change when we rejoin.
      room.logEvent(`You hung up on ${name}. The report couldn't be sent: the connection to the server had dropped.`);
    }
    room.message = null;
    if (tile.reportButton) tile.reportButton.blur();
    session.restoreFocus = true;
    room.render();
    session.reconcile();
  }
}
