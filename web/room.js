// room.js: the room page (`/r/<name>`). Owns the room view's DOM, the
// microphone and camera, the passphrase, and the room state machine; drives
// protocol.js (signalling) and mesh.js (one peer connection per member).
//
// The room state (`window.earshot.roomState`, and `data-state` on the
// status line):
//
//   idle      the page is open, not in the room (never joins by itself: the
//             microphone needs a click); also after Leave
//   joining   Join pressed: microphone prompt, `room_join` in flight, or the
//             room is locked and we are asking for the passphrase
//   joined    `room_joined` received: the mesh is up (it stays up while the
//             signalling socket reconnects, and is rebuilt on rejoining)
//   error     the join failed (room full, bad name, microphone, ...);
//             Join can be pressed again unless the name itself is invalid
//
//   idle/error --Join, mic granted--> joining --room_joined--> joined
//   joining --passphrase_required/wrong_passphrase--> joining (asks for it)
//   joining --room_full, bad_room_name, mic error--> error
//   joining/joined --Leave--> idle
//
// Like the stranger page, it keeps a mirror of what the server thinks
// (`server`: offline | idle | room | other) next to what we want (`want`:
// be in the room or not) and sends one request at a time (`pending`) to
// bring them together (reconcile()). If the socket drops, the server has
// dropped us from the room: the existing connections are left running, and
// once the socket is back we join again (with the verifier if we know the
// passphrase, and re-lock the room if it was locked and the server forgot
// it in a restart). The new `room_joined` replaces the old mesh, since
// everyone has new peer ids by then.
//
// Safety: Join stays disabled until the consent screen (safety.js) is
// accepted. Every other member's tile has a Report button: the report
// dialog (safety.js) asks for a reason, then the connection to that member
// is closed at once (their audio and video go) and `room_report` is sent.
// Enough reports remove someone: they get error `removed`, and this page
// says so.
//
// Privacy: the passphrase is only read from its field, turned into the
// verifier and the auth key (roomcrypto.js), and cleared from the field; the
// two derived values live in memory while we are in the room and are
// dropped on Leave or when the room is unlocked. Nothing is
// stored; chat lives only in the DOM; nothing about SDP, candidates, chat
// or the passphrase is logged. "Hide my IP address" (privacy.js) is read
// each time a peer connection is made, so changing it in the room applies
// to the people who connect after that. Fresh TURN credentials
// (`ice_servers`) are applied to every live connection. Each tile shows
// that connection's safety words (call.js, safetywords.js) once connected.

import { normalizeRoomName, roomNameProblem } from './protocol.js';
import { MAX_CHAT_CHARS } from './call.js';
import { Mesh } from './mesh.js';
import { MeterView } from './meter.js';
import { ChatView } from './chat.js';
import { cryptoAvailable, deriveRoomKeys } from './roomcrypto.js';
import { dialogOpen, formatWait } from './safety.js';
import { HideIpControl } from './privacy.js';
import {
  CAMERA_CONSTRAINTS, MIC_CONSTRAINTS, audioContext, callSupportProblem, cameraErrorMessage,
  micErrorMessage, stopStream,
} from './media.js';

const MAX_EVENTS = 100;
const COPIED_MS = 2500;
const RELOCK_WINDOW_MS = 20000;

const r = {
  room: '', // normalised name from the path
  nameProblem: null,
  state: 'idle',
  message: null, // what happened, in plain words; null = the default for the state
  fatal: null,
  want: false, // we want to be in the room
  server: 'offline', // offline | idle | room | other (searching or a stranger call)
  pending: null, // 'join' | 'end' | 'lock' | 'unlock'
  sentVerifier: false, // the pending join carried a verifier
  everReady: false,
  offlineNote: null,
  self: null, // our peer id
  maxSize: null,
  locked: false, // as last told by the server (or learned from passphrase_required)
  // The passphrase, derived: known while in the room, dropped on Leave.
  verifier: null,
  authKey: null,
  restoreLock: false, // re-lock after rejoining if the server forgot the lock
  // Until when a lock from someone else is taken as the same passphrase
  // being put back after a server restart (by us and maybe others).
  expectRelockUntil: 0,
  wantRejoin: false, // leave and join again, to come back with the passphrase
  lockRequest: null, // {verifier, authKey} to send with room_lock
  pendingLock: null, // the one sent, awaiting room_lock_state
  unlockRequest: false,
  passMode: null, // null | 'join' | 'lock' | 'verify'
  passStep: null, // null | 'deriving' | 'checking' | 'locking'
  passError: null,
  passRateLimited: false, // passError is the rate-limit note
  passToken: 0, // bumps to cancel a derivation nobody waits for any more
  retryAt: 0, // rate limited until (ms since epoch)
  retryTimer: 0,
  localStream: null,
  micPending: false,
  muted: false,
  camera: null, // camera MediaStream while on
  cameraPending: false,
  mesh: null,
  restoreFocus: false,
  reportQueue: [], // room_report messages waiting for the server to be free
  lastReportAt: 0, // when the last room_report went out
  lastHideIp: null, // whether the latest peer connection was relay only
  iceUpdated: 0, // peer connections the last `ice_servers` was applied to
};

const HIDE_IP_TEXT = {
  unavailable: 'Hiding your IP address isn\'t available on this server: in the room, the others\' browsers can see your IP address.',
  off: 'Off: in the room, the others\' browsers can see your IP address.',
  relayed: 'Your connections are relayed: the others in the room can\'t see your IP address.',
  direct: 'Your connections are direct: the others\' browsers can see your IP address.',
  nextRelayed: 'Applies to people who connect from now on. Those already connected keep a direct connection and can see your IP address.',
  nextDirect: 'Applies to people who connect from now on: they will see your IP address. Those already connected stay relayed.',
};

const tiles = new Map(); // peer id (or 'self') -> Tile
let client;
let el;
let chat;
let copiedTimer = 0;
let consent;
let reportDialog;
let hideIp;

const $ = (id) => document.getElementById(id);
const guestName = (peer) => `Guest ${peer}`;

// ------------------------------------------------------------------- tiles

/** One participant: name, level bar, video, volume, muted/refused notes. */
class Tile {
  constructor(peer, self) {
    this.peer = peer;
    this.self = self;
    this.name = self ? 'You' : guestName(peer);
    this.connection = self ? 'connected' : 'new';
    this.refused = null; // why, in words
    this.failed = null; // why, in words
    this.reported = false; // we reported them and hung up on them
    this.muted = false;
    this.videoTrack = null;
    this.words = null; // safety words of the connection, once connected
    this.wordsChanged = false;

    const li = document.createElement('li');
    li.className = self ? 'tile tile-self' : 'tile';
    li.setAttribute('data-testid', 'participant');
    li.dataset.peer = self ? 'self' : String(peer);
    li.setAttribute('aria-label', self ? `You (${guestName(peer)})` : this.name);
    this.li = li;

    const video = document.createElement('video');
    video.className = self ? 'tile-video mirrored' : 'tile-video';
    video.autoplay = true;
    video.muted = true; // sound comes from the <audio> element
    video.playsInline = true;
    video.hidden = true;
    video.setAttribute('aria-hidden', 'true');
    this.video = video;

    const head = document.createElement('div');
    head.className = 'tile-head';
    const name = document.createElement('span');
    name.className = 'tile-name';
    name.textContent = self ? `You (${guestName(peer)})` : this.name;
    const muted = document.createElement('span');
    muted.className = 'tile-muted';
    muted.setAttribute('data-testid', 'muted-indicator');
    muted.textContent = 'Muted';
    muted.hidden = true;
    this.mutedBadge = muted;
    head.append(name, muted);

    const state = document.createElement('p');
    state.className = 'tile-state';
    this.stateLine = state;

    const meterNode = document.createElement('div');
    meterNode.className = 'meter';
    meterNode.setAttribute('role', 'meter');
    meterNode.setAttribute('aria-label', self ? 'Your voice level' : `${this.name}'s voice level`);
    this.meter = new MeterView(meterNode);

    const safety = document.createElement('p');
    safety.className = 'tile-safety';
    safety.hidden = true;
    const safetyLabel = document.createElement('span');
    safetyLabel.className = 'tile-safety-label';
    const safetyWords = document.createElement('strong');
    safetyWords.className = 'safety-words';
    safetyWords.setAttribute('data-testid', 'safety-words');
    safety.append(safetyLabel, ' ', safetyWords);
    this.safetyLine = safety;
    this.safetyLabel = safetyLabel;
    this.safetyWords = safetyWords;

    const refused = document.createElement('p');
    refused.className = 'tile-refused';
    refused.setAttribute('data-testid', 'peer-refused');
    refused.hidden = true;
    this.refusedLine = refused;

    li.append(video, head, state, safety, meterNode);
    if (!self) {
      const label = document.createElement('label');
      label.className = 'volume';
      const text = document.createElement('span');
      text.className = 'volume-text';
      text.textContent = 'Volume';
      text.setAttribute('aria-hidden', 'true');
      const slider = document.createElement('input');
      slider.type = 'range';
      slider.min = '0';
      slider.max = '100';
      slider.step = '5';
      slider.value = '100';
      slider.setAttribute('data-testid', 'volume');
      slider.setAttribute('aria-label', `Volume of ${this.name}`);
      slider.setAttribute('aria-valuetext', '100%');
      slider.addEventListener('input', () => {
        const v = Math.min(100, Math.max(0, Number(slider.value) || 0));
        this.audio.volume = v / 100;
        slider.setAttribute('aria-valuetext', `${v}%`);
      });
      label.append(text, slider);
      this.slider = slider;
      const audio = document.createElement('audio');
      audio.autoplay = true;
      this.audio = audio;
      const actions = document.createElement('div');
      actions.className = 'tile-actions';
      const report = document.createElement('button');
      report.type = 'button';
      report.className = 'tile-report';
      report.setAttribute('data-testid', 'report');
      report.dataset.peer = String(peer);
      report.setAttribute('aria-haspopup', 'dialog');
      report.setAttribute('aria-label', `Report ${this.name}`);
      report.textContent = 'Report';
      report.addEventListener('click', () => openReport(peer));
      this.reportButton = report;
      actions.append(report);
      li.append(label, audio, actions);
    }
    li.append(refused);
    this.render();
  }

  /** In the call: connected and neither refused nor failed nor reported. */
  get inCall() {
    return !this.refused && !this.failed && !this.reported
      && (this.connection === 'connected' || this.connection === 'disconnected');
  }

  setConnection(state) {
    if (state === 'connected' || state === 'disconnected' || state === 'connecting' || state === 'new') {
      this.connection = state;
    } else if (state === 'failed' || state === 'closed') {
      this.connection = state;
    }
    this.render();
  }

  setMuted(muted) {
    this.muted = Boolean(muted);
    this.render();
  }

  setSafetyWords(words, changed) {
    this.words = words;
    this.wordsChanged = this.wordsChanged || Boolean(changed);
    this.render();
  }

  setRefused(text) {
    this.refused = text;
    this.detachMedia();
    this.render();
  }

  setFailed(text) {
    this.failed = text;
    this.detachMedia();
    this.render();
  }

  setReported() {
    this.reported = true;
    this.detachMedia();
    this.render();
  }

  addTrack(track) {
    if (track.kind === 'audio' && this.audio) {
      const stream = new MediaStream([track]);
      this.audio.srcObject = stream;
      this.audio.play().catch(() => { /* the Join click allows it */ });
      this.meter.attach(audioContext(), stream);
    } else if (track.kind === 'video') {
      this.setVideoTrack(track);
    }
  }

  setVideoTrack(track) {
    if (this.videoTrack !== track) {
      this.videoTrack = track;
      if (track) {
        this.video.srcObject = new MediaStream([track]);
        const update = () => { if (this.videoTrack === track) this.render(); };
        track.addEventListener('mute', update);
        track.addEventListener('unmute', update);
        track.addEventListener('ended', update);
      } else {
        this.video.srcObject = null;
      }
    }
    this.render();
  }

  detachMedia() {
    this.meter.detach();
    if (this.audio) this.audio.srcObject = null;
    this.setVideoTrack(null);
  }

  remove() {
    this.detachMedia();
    this.li.remove();
  }

  render() {
    const t = this.videoTrack;
    const gone = Boolean(this.refused || this.failed || this.reported);
    const showVideo = Boolean(t && t.readyState === 'live' && !t.muted) && !gone;
    if (this.video.hidden === showVideo) {
      this.video.hidden = !showVideo;
      if (showVideo) this.video.play().catch(() => {});
    }
    this.li.dataset.video = String(showVideo);
    this.li.dataset.connection = this.reported ? 'reported'
      : (this.refused ? 'refused' : (this.failed ? 'failed' : this.connection));
    this.mutedBadge.hidden = !this.muted || gone;
    this.li.dataset.muted = String(this.muted);

    let state = '';
    if (this.reported) state = 'You reported them and hung up on them';
    else if (this.refused) state = 'Not connected';
    else if (this.failed) state = this.failed;
    else if (this.self) state = '';
    else if (this.connection === 'connected') state = 'Connected';
    else if (this.connection === 'disconnected') state = 'Connection unstable…';
    else if (this.connection === 'failed' || this.connection === 'closed') state = 'Disconnected';
    else state = 'Connecting…';
    setText(this.stateLine, state);
    this.stateLine.hidden = !state;
    const words = this.words && !gone ? this.words.join(' ') : '';
    this.safetyLine.hidden = !words;
    setText(this.safetyWords, words);
    if (words) this.safetyWords.dataset.words = words;
    else delete this.safetyWords.dataset.words;
    this.safetyLine.dataset.changed = String(this.wordsChanged);
    setText(this.safetyLabel, this.wordsChanged ? 'Safety words (changed: read them again):' : 'Safety words:');
    setText(this.refusedLine, this.refused || '');
    this.refusedLine.hidden = !this.refused;
    if (this.slider) this.slider.disabled = gone;
    if (this.reportButton) {
      this.reportButton.disabled = this.reported;
      setText(this.reportButton, this.reported ? 'Reported' : 'Report');
    }
  }
}

function addTile(peer, self = false) {
  const key = self ? 'self' : peer;
  if (tiles.has(key)) return tiles.get(key);
  const tile = new Tile(peer, self);
  tiles.set(key, tile);
  // You first, then everyone in the order they joined (peer ids grow).
  const after = [...el.participants.children].find((li) => li.dataset.peer !== 'self' && !self && Number(li.dataset.peer) > peer);
  if (self) el.participants.prepend(tile.li);
  else el.participants.insertBefore(tile.li, after || null);
  return tile;
}

function removeTile(key) {
  const tile = tiles.get(key);
  if (!tile) return;
  closeReportAbout(key);
  tile.remove();
  tiles.delete(key);
}

function clearTiles() {
  closeReportAbout(null);
  for (const tile of tiles.values()) tile.remove();
  tiles.clear();
}

// --------------------------------------------------------------- rendering

function setText(node, text) {
  // Rewriting identical text can make screen readers repeat it.
  if (node.textContent !== text) node.textContent = text;
}

function setState(state, message = null) {
  r.state = state;
  r.message = message;
  render();
}

function othersInCall() {
  let n = 0;
  for (const tile of tiles.values()) if (!tile.self && tile.inCall) n += 1;
  return n;
}

/** The other members, leaving out those we reported (we hung up on them). */
function othersHere() {
  let n = 0;
  for (const tile of tiles.values()) if (!tile.self && !tile.reported) n += 1;
  return n;
}

function statusText() {
  if (r.fatal) return r.fatal;
  const online = client.ready;
  const serverNote = r.offlineNote
    || (r.everReady ? 'Reconnecting to the server…' : 'Connecting to the server…');
  switch (r.state) {
    case 'joining':
      if (r.micPending) return r.message || 'Waiting for microphone permission…';
      if (!online) return serverNote;
      if (r.passMode === 'join' && r.passStep) return PASS_STEP_TEXT[r.passStep];
      if (r.passMode === 'join') return r.message || 'This room is locked. Enter its passphrase to join.';
      return r.message || 'Joining the room…';
    case 'joined': {
      if (!online) return `${r.message ? `${r.message} ` : ''}The call goes on. ${serverNote}`;
      if (r.message) return r.message;
      const others = othersHere();
      if (others <= 0 && tiles.size > 1) return 'Nobody else you\'re talking to is here. Share the link to invite people.';
      if (others <= 0) return 'You\'re the only one here. Share the link to invite people.';
      const inCall = othersInCall();
      if (inCall === others) return others === 1 ? 'In the room with 1 other person.' : `In the room with ${others} other people.`;
      return `In the room: connected to ${inCall} of ${others}.`;
    }
    case 'error':
      return r.message || 'Something went wrong.';
    default: {
      const base = r.message || 'Press Join room to join the call. Your microphone turns on only then.';
      return online || r.nameProblem ? base : `${base} ${serverNote}`;
    }
  }
}

function lockText() {
  const joined = r.state === 'joined';
  if (!joined && !r.locked) return 'Lock: you\'ll see whether the room is locked when you join.';
  if (!r.locked) return 'Unlocked: anyone with the link can join.';
  if (!joined) return 'Locked: joining needs the passphrase.';
  if (!r.authKey) return 'Locked: new people need the passphrase. You haven\'t entered it, so you can\'t connect to newcomers.';
  return 'Locked: new people need the passphrase.';
}

const PASS_TEXT = {
  join: {
    label: 'Passphrase for this room',
    hint: 'This room is locked. Ask the person who shared the link for its passphrase.',
    submit: 'Join',
    cancel: 'Cancel',
  },
  lock: {
    label: 'Choose a passphrase',
    hint: 'Everyone who joins from now on needs it; people already here stay connected. Several words are best. Share it another way than the link.',
    submit: 'Lock',
    cancel: 'Cancel',
  },
  verify: {
    label: 'Room passphrase',
    hint: 'Someone locked the room. Enter its passphrase so you can check that newcomers know it: until then you can\'t connect to them.',
    submit: 'Use passphrase',
    cancel: 'Not now',
  },
  reverify: {
    label: 'Room passphrase',
    hint: 'Someone locked the room again. If they chose a new passphrase, enter it so you can check newcomers; if not, choose Not now.',
    submit: 'Use passphrase',
    cancel: 'Not now',
  },
};

const PASS_STEP_TEXT = {
  deriving: 'Deriving key…',
  checking: 'Checking with the server…',
  locking: 'Locking the room…',
};

function render() {
  const focused = document.activeElement;
  el.status.dataset.state = r.state;
  setText(el.status, statusText());

  const inside = r.state === 'joining' || r.state === 'joined';
  const joined = r.state === 'joined';
  el.join.hidden = joined;
  el.join.disabled = inside || r.micPending || Boolean(r.fatal) || Boolean(r.nameProblem) || !consent.accepted;
  el.mute.hidden = !inside;
  el.mute.disabled = !r.localStream;
  el.mute.setAttribute('aria-pressed', String(r.muted));
  el.camera.hidden = !joined;
  el.camera.disabled = r.cameraPending;
  el.camera.setAttribute('aria-pressed', String(Boolean(r.camera)));
  el.leave.hidden = !inside;

  el.lockControls.hidden = !joined;
  const lockBusy = r.pending === 'lock' || r.pending === 'unlock' || r.lockRequest !== null || r.unlockRequest
    || (r.passMode === 'lock' && r.passStep !== null);
  setText(el.lock, r.locked ? 'Change passphrase' : 'Lock room');
  el.lock.disabled = lockBusy || !cryptoAvailable();
  el.unlock.hidden = !r.locked;
  el.unlock.disabled = lockBusy;
  el.lockState.dataset.locked = String(r.locked);
  setText(el.lockState, lockText());

  // The passphrase form.
  const mode = r.passMode;
  el.passForm.hidden = mode === null;
  if (mode) {
    const t = PASS_TEXT[mode === 'verify' && r.authKey ? 'reverify' : mode];
    setText(el.passLabel, t.label);
    setText(el.passHint, t.hint);
    setText(el.passSubmit, t.submit);
    setText(el.passCancel, t.cancel);
    el.passForm.dataset.mode = mode;
  }
  const waiting = Date.now() < r.retryAt;
  el.passInput.disabled = r.passStep !== null;
  el.passSubmit.disabled = r.passStep !== null || (mode === 'join' && waiting);
  setText(el.passProgress, r.passStep ? PASS_STEP_TEXT[r.passStep] : '');
  el.passForm.setAttribute('aria-busy', String(r.passStep !== null));
  setText(el.passError, r.passError || '');
  el.passError.hidden = !r.passError;
  if (r.passError) el.passInput.setAttribute('aria-invalid', 'true');
  else el.passInput.removeAttribute('aria-invalid');

  hideIp.render(joined ? hideIpInUse() : null);
  el.safetyNote.hidden = ![...tiles.values()].some((t) => !t.self && t.words && !t.refused && !t.failed && !t.reported);

  el.participants.dataset.count = String(joined ? 1 + othersInCall() : 0);
  el.participants.hidden = tiles.size === 0;

  const chatOpen = Boolean(r.mesh && r.mesh.calls().some(([, call]) => call.chatOpen));
  chat.setOpen(chatOpen, joined ? 'Nobody to chat with yet' : 'Join the room to chat');

  // A control that was just used may have gone (Join once joined, the
  // passphrase form once done): keep keyboard users on one that matters now
  // instead of dropping them on <body>.
  if (focused && focused !== document.body && !focusable(focused)) r.restoreFocus = true;
  if (r.restoreFocus) {
    const active = document.activeElement;
    const lost = !active || active === document.body || !focusable(active);
    const next = [mode ? el.passInput : null, joined ? el.mute : null, inside ? el.leave : el.join].find(focusable);
    if (!lost) r.restoreFocus = false;
    else if (next) {
      next.focus();
      r.restoreFocus = false;
    }
  }
}

/**
 * In the room: whether our connections hide our IP, for the note. When a
 * live connection was made with the other setting than the checkbox now
 * has, that one (the note then says the change applies to newcomers).
 */
function hideIpInUse() {
  const wanted = hideIp.wanted;
  if (r.mesh && r.mesh.calls().some(([, call]) => call.hideIp !== wanted)) return !wanted;
  return wanted;
}

function focusable(node) {
  return Boolean(node) && !node.disabled && !node.closest('[hidden]');
}

function logEvent(text) {
  const item = document.createElement('li');
  const time = document.createElement('time');
  const now = new Date();
  time.textContent = `${String(now.getHours()).padStart(2, '0')}:${String(now.getMinutes()).padStart(2, '0')}`;
  time.dateTime = now.toISOString();
  item.append(time, ' ', text);
  el.events.append(item);
  while (el.events.childElementCount > MAX_EVENTS) el.events.firstElementChild.remove();
  el.events.hidden = false;
  el.eventsHeading.hidden = false;
}

function clearEvents() {
  el.events.replaceChildren();
  el.events.hidden = true;
  el.eventsHeading.hidden = true;
}

// ------------------------------------------------------------- microphone

function setLocalStream(stream) {
  releaseMic();
  r.localStream = stream;
  for (const track of stream.getAudioTracks()) {
    track.enabled = !r.muted;
    track.addEventListener('ended', () => {
      if (r.localStream !== stream) return;
      leave('error', 'Your microphone stopped (unplugged or access withdrawn). Press Join room to come back.');
    });
  }
}

function releaseMic() {
  stopStream(r.localStream);
  r.localStream = null;
  r.muted = false;
}

function toggleMute() {
  if (!r.localStream) return;
  r.muted = !r.muted;
  for (const track of r.localStream.getAudioTracks()) track.enabled = !r.muted;
  const self = tiles.get('self');
  if (self) self.setMuted(r.muted);
  if (r.mesh) r.mesh.sendState(r.muted);
  render();
}

// ----------------------------------------------------------------- camera

async function toggleCamera() {
  if (r.state !== 'joined' || r.cameraPending) return;
  if (r.camera) {
    stopCamera();
    render();
    return;
  }
  r.cameraPending = true;
  render();
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia(CAMERA_CONSTRAINTS);
  } catch (err) {
    r.cameraPending = false;
    if (r.state === 'joined') logEvent(cameraErrorMessage(err));
    r.message = r.state === 'joined' ? cameraErrorMessage(err) : r.message;
    render();
    return;
  }
  r.cameraPending = false;
  const track = stream.getVideoTracks()[0];
  if (r.state !== 'joined' || !track) {
    stopStream(stream);
    if (!track) r.message = cameraErrorMessage({ name: 'NotFoundError' });
    render();
    return;
  }
  r.camera = stream;
  r.message = null;
  track.addEventListener('ended', () => {
    if (r.camera !== stream) return;
    stopCamera();
    render();
  });
  if (r.mesh) r.mesh.setVideo(track, stream);
  const self = tiles.get('self');
  if (self) self.setVideoTrack(track);
  render();
}

function stopCamera() {
  const stream = r.camera;
  if (!stream) return;
  r.camera = null;
  if (r.mesh) r.mesh.setVideo(null, null);
  const self = tiles.get('self');
  if (self) self.setVideoTrack(null);
  stopStream(stream);
}

// ------------------------------------------------------------ user actions

async function join() {
  if (r.state === 'joining' || r.state === 'joined' || r.micPending || r.fatal || r.nameProblem) return;
  if (!consent.accepted) return;
  const problem = callSupportProblem();
  if (problem) {
    setState('error', problem);
    return;
  }
  // Created or resumed inside the click, so autoplay rules let it run.
  audioContext();
  r.micPending = true;
  clearEvents();
  setState('joining');
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
  } catch (err) {
    r.micPending = false;
    if (r.state === 'joining') setState('error', micErrorMessage(err, 'Join room'));
    else render();
    return;
  }
  r.micPending = false;
  if (r.state !== 'joining') {
    stopStream(stream); // left while the prompt was open
    render();
    return;
  }
  if (stream.getAudioTracks().length === 0) {
    stopStream(stream);
    setState('error', micErrorMessage({ name: 'NotFoundError' }, 'Join room'));
    return;
  }
  setLocalStream(stream);
  r.want = true;
  chat.clear();
  setState('joining');
  reconcile();
}

/** Leave the room (or stop joining): `end`, close everything, forget the passphrase. */
function leave(state = 'idle', message = 'You left the room. Press Join room to come back.') {
  if (r.state !== 'joining' && r.state !== 'joined') return;
  const wasJoined = r.state === 'joined';
  r.want = false;
  closeMesh();
  stopCamera();
  releaseMic();
  forgetPassphrase();
  r.locked = false;
  r.restoreLock = false;
  r.expectRelockUntil = 0;
  r.wantRejoin = false;
  r.lockRequest = null;
  r.unlockRequest = false;
  closePassphrase();
  chat.clear();
  if (wasJoined) logEvent('You left the room.');
  setState(state, message);
  reconcile();
}

function forgetPassphrase() {
  r.verifier = null;
  r.authKey = null;
  if (r.mesh) r.mesh.setAuthKey(null);
}

function closePassphrase() {
  r.passMode = null;
  r.passStep = null;
  r.passError = null;
  r.passRateLimited = false;
  r.passToken += 1;
  el.passInput.value = '';
}

/** Show the passphrase form; `grab` moves the focus to it even from elsewhere. */
function openPassphrase(mode, error = null, grab = true) {
  const opening = r.passMode !== mode;
  r.passMode = mode;
  r.passStep = null;
  r.passError = error;
  r.passRateLimited = false;
  if (opening || error) {
    r.passToken += 1;
    el.passInput.value = '';
  }
  render();
  const active = document.activeElement;
  if (grab || !active || active === document.body) el.passInput.focus();
}

function onLockClick() {
  if (r.state !== 'joined') return;
  // The field already holds a passphrase for locking: lock with it.
  if (r.passMode === 'lock' && el.passInput.value !== '') {
    submitPassphrase();
    return;
  }
  openPassphrase('lock');
}

function onUnlockClick() {
  if (r.state !== 'joined' || !r.locked) return;
  r.lockRequest = null;
  r.unlockRequest = true;
  if (r.passMode === 'lock') closePassphrase();
  render();
  reconcile();
}

function onPassphraseCancel() {
  const mode = r.passMode;
  if (mode === 'join') {
    leave('idle', 'You didn\'t join: the room is locked. Press Join room to try again.');
    return;
  }
  closePassphrase();
  render();
}

async function submitPassphrase(event) {
  if (event) event.preventDefault();
  const mode = r.passMode;
  if (!mode || r.passStep !== null) return;
  if (mode === 'join' && Date.now() < r.retryAt) return;
  const passphrase = el.passInput.value;
  if (passphrase === '') {
    r.passError = 'Type the passphrase first.';
    render();
    el.passInput.focus();
    return;
  }
  if (!cryptoAvailable()) {
    r.passError = 'This page can\'t do the passphrase maths (it needs HTTPS, or localhost).';
    render();
    return;
  }
  const token = ++r.passToken;
  r.passStep = 'deriving';
  r.passError = null;
  render();
  let keys;
  try {
    keys = await deriveRoomKeys(passphrase, r.room);
  } catch {
    if (token !== r.passToken) return;
    r.passStep = null;
    r.passError = 'The key could not be derived in this browser.';
    render();
    return;
  }
  if (token !== r.passToken || r.passMode !== mode) return; // cancelled or left meanwhile
  el.passInput.value = '';
  if (mode === 'join') {
    if (r.state !== 'joining' || !r.want) return;
    r.verifier = keys.verifier;
    r.authKey = keys.authKey;
    r.passStep = 'checking';
    render();
    reconcile();
  } else if (mode === 'lock') {
    if (r.state !== 'joined') return;
    r.unlockRequest = false;
    r.lockRequest = keys;
    r.passStep = 'locking';
    render();
    reconcile();
  } else {
    // 'verify': nothing to check it against but the next newcomer's `auth`.
    r.authKey = keys.authKey;
    r.verifier = keys.verifier;
    if (r.mesh) r.mesh.setAuthKey(keys.authKey);
    closePassphrase();
    if (r.state === 'joined' && tiles.size > 1 && othersInCall() === 0) {
      // Connected to nobody (say, everyone else knows the passphrase and
      // refused us after a server restart): nothing to lose by joining
      // again, this time with the passphrase, as a newcomer who can prove it.
      r.wantRejoin = true;
      logEvent('You entered the passphrase: joining again with it.');
      reconcile();
    } else {
      logEvent('You entered the passphrase: newcomers are checked against it.');
    }
    render();
  }
}

async function copyLink() {
  const url = window.location.href;
  let ok = false;
  try {
    if (navigator.clipboard && typeof navigator.clipboard.writeText === 'function') {
      await navigator.clipboard.writeText(url);
      ok = true;
    }
  } catch {
    ok = false;
  }
  if (!ok) {
    // No clipboard permission (or an old browser): select the link so one
    // keystroke copies it, and try the old way too.
    el.link.value = url;
    el.link.focus();
    el.link.select();
    try {
      ok = document.execCommand('copy');
    } catch {
      ok = false;
    }
  }
  clearTimeout(copiedTimer);
  el.copy.classList.toggle('copied', ok);
  setText(el.copy, ok ? 'Copied' : 'Copy link');
  setText(el.copyNote, ok ? 'Copied the link. Send it to the people you want to talk to.'
    : 'The link is selected: press Ctrl+C (or ⌘C) to copy it.');
  el.copyNote.dataset.copied = String(ok);
  copiedTimer = setTimeout(() => {
    el.copy.classList.remove('copied');
    setText(el.copy, 'Copy link');
  }, COPIED_MS);
}

function isTyping(target) {
  return target instanceof HTMLElement
    && (target.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(target.tagName));
}

function onKey(event) {
  if (event.defaultPrevented || event.isComposing || event.ctrlKey || event.metaKey || event.altKey) return;
  if (dialogOpen(event.target)) return;
  if ((event.key === 'm' || event.key === 'M') && !event.repeat && !isTyping(event.target)) {
    if (!el.mute.hidden && !el.mute.disabled) {
      event.preventDefault();
      toggleMute();
    }
  }
}

function sendChat(text) {
  if (!r.mesh || [...text].length > MAX_CHAT_CHARS) return false;
  if (r.mesh.sendChat(text) === 0) return false;
  chat.append('you', 'You:', text);
  return true;
}

// ----------------------------------------------------------------- report

function openReport(peer) {
  const tile = tiles.get(peer);
  if (!tile || tile.reported || r.state !== 'joined' || reportDialog.isOpen) return;
  const name = guestName(peer);
  reportDialog.open({
    subject: { kind: 'room', mesh: r.mesh, peer },
    title: `Report ${name}`,
    note: `You'll stop hearing each other right away. They aren't told who reported them. If more than half of the others here report ${name} too, they're removed from the room.`,
    submit: 'Report and hang up',
    returnFocus: tile.reportButton,
    onReport: (reason) => reportPeer(peer, reason),
  });
}

/** Close the report dialog if it is about `peer` (null: about anyone in the room). */
function closeReportAbout(peer) {
  const subject = reportDialog ? reportDialog.subject : null;
  if (subject && subject.kind === 'room' && (peer === null || subject.peer === peer)) reportDialog.close();
}

/** Submit of the report dialog: hang up on `peer` now, then tell the server. */
function reportPeer(peer, reason) {
  const tile = tiles.get(peer);
  if (!tile || tile.reported || !r.mesh || r.state !== 'joined') return;
  r.mesh.removePeer(peer); // closes the peer connection at once
  tile.setReported();
  const name = guestName(peer);
  if (client.ready && r.server === 'room') {
    r.reportQueue.push({ peer, reason });
    logEvent(`You reported ${name} and hung up on them.`);
  } else {
    // Not in the room on the server just now (reconnecting): the report
    // cannot reach it, as peer ids change when we rejoin.
    logEvent(`You hung up on ${name}. The report couldn't be sent: the connection to the server had dropped.`);
  }
  r.message = null;
  if (tile.reportButton) tile.reportButton.blur();
  r.restoreFocus = true;
  render();
  reconcile();
}

// -------------------------------------------------------------------- mesh

function startMesh(detail) {
  closeMesh();
  const mesh = new Mesh({
    room: r.room,
    iceServers: () => client.iceServers, // the freshest, for each newcomer
    hideIp: () => hideIp.wanted, // as the checkbox is when they connect
    localStream: r.localStream,
    locked: r.locked,
    authKey: r.authKey, // held only while we believe the room is locked (or will re-lock it)
    sendSignal: (to, payload) => {
      // Only while the server has us in this room: anything else would be
      // answered with an error, and errors count against the connection.
      if (r.mesh === mesh && client.ready && r.server === 'room') client.signalPeer(to, payload);
    },
  });
  r.mesh = mesh;
  mesh.addEventListener('call', ({ detail: d }) => watchCall(mesh, d.peer, d.call));
  if (r.camera) {
    const track = r.camera.getVideoTracks()[0];
    if (track) mesh.setVideo(track, r.camera);
  }
  const me = addTile(detail.peer, true);
  me.setMuted(r.muted);
  me.meter.attach(audioContext(), r.localStream);
  if (r.camera) me.setVideoTrack(r.camera.getVideoTracks()[0] || null);
  const peers = Array.isArray(detail.peers) ? detail.peers.filter((p) => Number.isSafeInteger(p) && p !== detail.peer) : [];
  for (const peer of peers) {
    addTile(peer);
    mesh.addPeer(peer, false); // we are the newcomer: impolite, we offer
  }
  return peers.length;
}

function closeMesh() {
  if (r.mesh) r.mesh.close();
  r.mesh = null;
  // Peer ids belong to one membership: a queued report must not hit whoever
  // gets that id after we rejoin.
  r.reportQueue = [];
  clearTiles();
}

function watchCall(mesh, peer, call) {
  const current = () => r.mesh === mesh && mesh.call(peer) === call;
  const tile = () => tiles.get(peer);
  r.lastHideIp = call.hideIp;
  call.addEventListener('safetywords', ({ detail }) => {
    if (!current() || !tile()) return;
    tile().setSafetyWords(detail.words, detail.changed);
    if (detail.changed) logEvent(`The safety words with ${guestName(peer)} changed. Read them to each other again.`);
    render();
  });
  call.addEventListener('connectionstate', ({ detail }) => {
    if (!current() || !tile()) return;
    tile().setConnection(detail.state);
    render();
  });
  call.addEventListener('track', ({ detail }) => {
    if (current() && tile()) tile().addTrack(detail.track);
  });
  call.addEventListener('chatopen', () => {
    if (!current()) return;
    if (r.muted) call.sendState(true);
    render();
  });
  call.addEventListener('chat', ({ detail }) => {
    if (current()) chat.append('them', `${guestName(peer)}:`, detail.text);
  });
  call.addEventListener('peerstate', ({ detail }) => {
    if (current() && tile()) tile().setMuted(detail.muted);
  });
  call.addEventListener('refused', ({ detail }) => {
    if (!current()) return;
    mesh.removePeer(peer);
    refusePeer(peer, detail.reason);
  });
  call.addEventListener('failed', ({ detail }) => {
    if (!current()) return;
    mesh.removePeer(peer);
    const t = tile();
    const text = detail.reason === 'timeout' ? 'Couldn\'t connect' : 'Connection lost';
    if (t) t.setFailed(text);
    logEvent(detail.reason === 'timeout'
      ? `Couldn't connect to ${guestName(peer)}.${r.locked ? ' (In a locked room, this happens when one of you can\'t prove knowing the passphrase.)' : ''}`
      : `The connection to ${guestName(peer)} was lost.`);
    render();
  });
}

function refusePeer(peer, reason) {
  const name = guestName(peer);
  const noKey = reason === 'no_key';
  const tileText = noKey
    ? `${name} could not prove they know the passphrase: you haven't entered it, so it can't be checked.`
    : `${name} could not prove they know the passphrase, so you are not connected to them.`;
  const t = tiles.get(peer);
  if (t) t.setRefused(tileText);
  logEvent(tileText);
  r.message = noKey
    ? `${name} could not prove they know the passphrase (you haven't entered it). Enter it to let newcomers in.`
    : `${name} could not prove they know the passphrase, so you are not connected to them.`;
  if (noKey && r.passMode === null && r.locked) r.passMode = 'verify';
  render();
}

// ------------------------------------------------------------- signalling

/** Send whatever brings the server's idea of us in line with ours. */
function reconcile() {
  if (!client.ready || r.pending !== null) return;
  if (r.server === 'other') {
    // Searching or in a stranger call on this socket: leave it first.
    r.pending = 'end';
    client.end();
    return;
  }
  if (!r.want) {
    if (r.server === 'room') {
      r.pending = 'end';
      client.end();
    }
    return;
  }
  if (r.server === 'idle') {
    if (r.passMode === 'join' && !r.verifier) return; // waiting for the passphrase
    if (Date.now() < r.retryAt) return;
    r.pending = 'join';
    r.sentVerifier = Boolean(r.verifier);
    client.roomJoin(r.room, r.verifier);
    return;
  }
  if (r.server === 'room') {
    // Reports have no answer; they go out before anything else.
    for (const { peer, reason } of r.reportQueue.splice(0)) {
      if (client.roomReport(peer, reason)) r.lastReportAt = Date.now();
    }
    if (r.wantRejoin) {
      r.wantRejoin = false;
      r.pending = 'end'; // `idle` follows, then we join with the verifier
      client.end();
    } else if (r.lockRequest) {
      r.pendingLock = r.lockRequest;
      r.lockRequest = null;
      r.pending = 'lock';
      client.roomLock(r.pendingLock.verifier);
    } else if (r.unlockRequest) {
      r.unlockRequest = false;
      r.pending = 'unlock';
      client.roomUnlock();
    }
  }
}

function retryLater(ms) {
  clearTimeout(r.retryTimer);
  r.retryTimer = setTimeout(() => {
    if (r.passRateLimited) {
      r.passRateLimited = false;
      r.passError = null;
      setText(el.passProgress, '');
      r.message = r.passMode === 'join' ? 'You can try the passphrase again now.' : r.message;
    }
    if (r.message && r.message.startsWith('The server is busy.')) r.message = null;
    render();
    reconcile();
  }, Math.max(0, ms) + 50);
}

function onWelcome() {
  r.server = 'idle';
  r.pending = null;
  r.everReady = true;
  r.offlineNote = null;
  reconcile();
  render();
}

function onDisconnected({ detail }) {
  r.server = 'offline';
  r.pending = null;
  if (r.pendingLock) {
    // Unknown whether it was applied; ask again once back in the room.
    r.lockRequest = r.lockRequest || r.pendingLock;
    r.pendingLock = null;
  }
  r.offlineNote = detail.code === 1013 ? 'The server is full. Trying again shortly…' : null;
  if (r.state === 'joined') r.restoreLock = r.locked && Boolean(r.authKey && r.verifier);
  render(); // a join with a verifier is simply sent again once back

}

function onRoomJoined({ detail }) {
  if (r.pending === 'join') r.pending = null;
  r.server = 'room';
  if (!r.want || !Number.isSafeInteger(detail.peer)) {
    reconcile(); // left meanwhile: `end`
    return;
  }
  const rejoined = r.mesh !== null;
  r.self = detail.peer;
  r.maxSize = Number.isSafeInteger(detail.max_size) ? detail.max_size : r.maxSize;
  r.locked = detail.locked === true;
  r.retryAt = 0;
  if (r.passMode === 'join') closePassphrase();
  if (r.passMode === 'verify' && (!r.locked || r.authKey)) closePassphrase();
  if (!r.locked) {
    // A lock the server forgot (restart) is put back by whoever knows it.
    if (r.restoreLock && r.verifier && r.authKey) {
      r.lockRequest = { verifier: r.verifier, authKey: r.authKey };
      r.expectRelockUntil = Date.now() + RELOCK_WINDOW_MS;
    } else {
      forgetPassphrase();
    }
  }
  r.restoreLock = false;
  const others = startMesh(detail);
  if (r.locked && !r.authKey) r.passMode = 'verify';
  r.message = null;
  r.state = 'joined';
  if (rejoined) logEvent('Back in the room after reconnecting to the server.');
  else if (others === 0) logEvent('You joined the room. Nobody else is here yet.');
  else logEvent(`You joined the room. ${others === 1 ? '1 other person is' : `${others} other people are`} here.`);
  r.restoreFocus = true;
  render();
  reconcile();
}

function onPeerJoined({ detail }) {
  const peer = detail.peer;
  if (!Number.isSafeInteger(peer) || !r.mesh || r.state !== 'joined' || peer === r.self || r.mesh.has(peer)) return;
  addTile(peer);
  r.mesh.addPeer(peer, true); // they are the newcomer: they offer, we answer
  logEvent(`${guestName(peer)} joined.`);
  r.message = null;
  render();
}

function onPeerLeft({ detail }) {
  const peer = detail.peer;
  if (!Number.isSafeInteger(peer) || !r.mesh) return;
  const known = tiles.has(peer);
  r.mesh.removePeer(peer);
  removeTile(peer);
  if (known) {
    logEvent(`${guestName(peer)} left.`);
    r.message = null;
  }
  render();
}

function onSignal({ detail }) {
  if (r.mesh && Number.isSafeInteger(detail.from)) r.mesh.handleSignal(detail);
}

/**
 * Fresh ICE servers (`ice_servers`): every live connection uses them from
 * now on, and restarts ICE with them while we are in the room on the server
 * (the new offers and answers need the signalling).
 */
function onIceServers({ detail }) {
  r.iceUpdated = r.mesh ? r.mesh.updateIceServers(detail.ice_servers, r.server === 'room') : 0;
}

function onLockState({ detail }) {
  if (typeof detail.locked !== 'boolean') return;
  const locked = detail.locked;
  const ours = (r.pending === 'lock' && locked) || (r.pending === 'unlock' && !locked);
  if (ours) r.pending = null;
  if (r.state !== 'joined') {
    r.locked = locked;
    render();
    reconcile();
    return;
  }
  if (ours && locked) {
    const keys = r.pendingLock;
    r.pendingLock = null;
    r.verifier = keys ? keys.verifier : null;
    r.authKey = keys ? keys.authKey : null;
    if (r.passMode === 'lock' || r.passMode === 'verify') closePassphrase();
    logEvent(r.locked
      ? 'You changed the passphrase. Newcomers need the new one.'
      : 'You locked the room. Newcomers need the passphrase; everyone here stays connected.');
  } else if (ours) {
    forgetPassphrase();
    logEvent('You unlocked the room. Anyone with the link can join.');
  } else if (locked && r.authKey && Date.now() < r.expectRelockUntil) {
    // Someone else who knows the passphrase put the lock back after a
    // restart, as we were about to.
    logEvent('The room is locked again.');
  } else if (locked && r.authKey) {
    // A re-lock, perhaps with a new passphrase. Keep the key we have: a
    // stale key can only make us refuse newcomers, never let anyone in.
    logEvent('Someone locked the room again, perhaps with a new passphrase.');
    if (r.passMode === null) openPassphrase('verify', null, false);
  } else if (locked) {
    logEvent('Someone locked the room. Newcomers need the passphrase; everyone here stays connected.');
    if (r.passMode !== 'lock' || r.passStep === null) {
      r.passMode = null;
      openPassphrase('verify', null, false);
    }
  } else {
    forgetPassphrase();
    logEvent('Someone unlocked the room. Anyone with the link can join.');
    if (r.passMode === 'verify') closePassphrase();
  }
  r.locked = locked;
  if (r.mesh) {
    r.mesh.setLocked(locked);
    r.mesh.setAuthKey(r.authKey);
  }
  render();
  reconcile();
}

function onIdle() {
  r.server = 'idle';
  if (r.pending === 'end') r.pending = null;
  reconcile();
  render();
}

function joinFailed(message) {
  r.want = false;
  closeMesh(); // a rejoin after a reconnect can fail too
  stopCamera();
  forgetPassphrase();
  closePassphrase();
  releaseMic();
  r.locked = false;
  r.state = 'error';
  r.message = message;
  render();
}

function roomFullText(detail) {
  const limits = client.welcome && client.welcome.limits ? client.welcome.limits : {};
  const max = [detail.max_size, r.maxSize, limits.max_room_size, limits.room_max_size]
    .find((n) => Number.isSafeInteger(n) && n > 0);
  return max ? `This room is full (max ${max}). Try again later.` : 'This room is full. Try again later.';
}

function onError({ detail }) {
  // Errors do not say which request caused them. The server answers in
  // order, so an error about join/lock/unlock/end answers `pending`; when
  // nothing is pending it is about a signal.
  const code = typeof detail.code === 'string' ? detail.code : 'unknown';
  const pending = r.pending;
  switch (code) {
    case 'unknown_peer':
    case 'wrong_call':
      return; // a signal or a report that crossed a `peer_left`: harmless
    case 'removed':
      // Enough members reported us: out of the room, and no way back in
      // while it exists. `idle` follows.
      if (pending === 'join') r.pending = null;
      if (r.server === 'room' || pending === 'join') r.server = 'idle';
      if (r.want || r.state === 'joined' || r.state === 'joining') {
        logEvent('People in this room removed you.');
        joinFailed('People in this room removed you. You can\'t join it again while it\'s open.');
      }
      reconcile();
      return;
    case 'unsupported_version':
      r.fatal = 'This page is out of date. Please reload it.';
      render();
      return;
    case 'passphrase_required':
      if (pending !== 'join') return;
      r.pending = null;
      r.locked = true;
      if (!r.want) break;
      r.verifier = null;
      r.authKey = null;
      r.state = 'joining';
      r.message = null;
      openPassphrase('join');
      return;
    case 'wrong_passphrase':
      if (pending !== 'join') return;
      r.pending = null;
      r.locked = true;
      forgetPassphrase();
      if (!r.want) break;
      r.state = 'joining';
      r.message = null;
      openPassphrase('join', 'That passphrase is not right. Check it (capitals and spaces count) and try again.');
      return;
    case 'room_full':
      if (pending !== 'join') return;
      r.pending = null;
      if (r.want) joinFailed(roomFullText(detail));
      break;
    case 'bad_room_name':
      if (pending !== 'join') return;
      r.pending = null;
      if (r.want) joinFailed('The server did not accept this room name. Check the link, or create a new room from the home page.');
      break;
    case 'already_in_room':
    case 'already_searching':
    case 'already_in_call':
      if (pending !== 'join') return;
      r.pending = null;
      r.server = 'other'; // leave whatever it is, then join again
      break;
    case 'not_in_room':
      if (pending !== 'lock' && pending !== 'unlock') return; // a signal after we left
      r.pending = null;
      if (pending === 'lock') r.lockRequest = r.lockRequest || r.pendingLock;
      r.pendingLock = null;
      r.server = 'idle'; // we are out: join again, which rebuilds the mesh
      break;
    case 'rate_limited': {
      const wait = Number.isFinite(detail.retry_after_ms) ? Math.max(0, detail.retry_after_ms) : 1000;
      if (pending === 'join') {
        r.pending = null;
        r.retryAt = Date.now() + wait;
        if (r.sentVerifier && r.want) {
          // Too many passphrase attempts (ours, or on this room).
          forgetPassphrase();
          r.state = 'joining';
          r.message = null;
          openPassphrase('join', `Too many passphrase attempts. You can try again in ${formatWait(wait)}.`);
          r.passRateLimited = true;
          retryLater(wait);
          return;
        }
        r.message = `The server is busy. Trying again in ${formatWait(wait)}…`;
        retryLater(wait);
        render();
        return;
      }
      if (pending === 'lock' || pending === 'unlock') {
        r.pending = null;
        if (pending === 'lock') r.lockRequest = r.lockRequest || r.pendingLock;
        else r.unlockRequest = true;
        r.pendingLock = null;
        retryLater(Math.min(wait, 10000));
        render();
        return;
      }
      if (pending === null && Date.now() - r.lastReportAt < 5000) {
        r.lastReportAt = 0;
        logEvent('The server didn\'t take your last report: you\'ve sent too many. You\'re still disconnected from that person.');
        render();
      }
      return; // a dropped signal; perfect negotiation recovers or the call times out
    }
    case 'bad_message':
      if (pending === 'lock') {
        r.pendingLock = null;
        if (r.passMode === 'lock') {
          r.passStep = null;
          r.passError = 'The server did not accept the lock. Try again.';
        }
      }
      if (pending === null) return;
      r.pending = null;
      break;
    default:
      console.warn('earshot: server error', code);
      if (pending === null) return;
      r.pending = null;
  }
  render();
  reconcile();
}

// ------------------------------------------------------------------ wiring

function findElements() {
  return {
    title: $('room-title'),
    status: $('status'),
    link: $('room-link'),
    copy: $('copy-link'),
    copyNote: $('copy-note'),
    lockState: $('lock-state'),
    join: $('room-join'),
    mute: $('mute'),
    camera: $('camera'),
    leave: $('leave'),
    lockControls: $('lock-controls'),
    lock: $('room-lock'),
    unlock: $('room-unlock'),
    passForm: $('passphrase-form'),
    passLabel: $('passphrase-label'),
    passHint: $('passphrase-hint'),
    passInput: $('passphrase'),
    passSubmit: $('passphrase-submit'),
    passCancel: $('passphrase-cancel'),
    passProgress: $('passphrase-progress'),
    passError: $('passphrase-error'),
    participants: $('participants'),
    events: $('room-events'),
    eventsHeading: $('events-heading'),
    chatLog: $('chat-log'),
    chatForm: $('chat-form'),
    chatInput: $('chat-input'),
    chatSend: $('chat-send'),
    tagline: $('tagline'),
    hideIpBox: $('hide-ip-box'),
    hideIp: $('hide-ip'),
    hideIpNote: $('hide-ip-note'),
    safetyNote: $('safety-note'),
  };
}

/**
 * Run the room page for `rawName` (from the path) on `signalling` (not yet
 * connected). Returns the read-only view the test hook exposes.
 */
export function startRoom(signalling, rawName, safety) {
  client = signalling;
  consent = safety.consent;
  reportDialog = safety.reportDialog;
  el = findElements();
  hideIp = new HideIpControl(client, { box: el.hideIpBox, input: el.hideIp, note: el.hideIpNote }, HIDE_IP_TEXT);
  hideIp.addEventListener('change', () => render());
  r.room = normalizeRoomName(rawName);
  r.nameProblem = roomNameProblem(r.room);

  if (!r.nameProblem && window.location.pathname !== `/r/${r.room}`) {
    // One spelling of the link (the server lower-cases names anyway).
    try {
      window.history.replaceState(null, '', `/r/${r.room}${window.location.search}${window.location.hash}`);
    } catch { /* keep the address as typed */ }
  }
  const shown = r.nameProblem ? String(rawName).slice(0, 80) : r.room;
  el.title.textContent = shown;
  document.title = `Earshot room: ${shown}`;
  el.tagline.textContent = 'A room: everyone who opens its link joins the same call.';
  el.link.value = window.location.href;

  chat = new ChatView({ log: el.chatLog, form: el.chatForm, input: el.chatInput, send: el.chatSend, onSend: sendChat });
  clearEvents();

  client.addEventListener('welcome', onWelcome);
  client.addEventListener('disconnected', onDisconnected);
  client.addEventListener('room_joined', onRoomJoined);
  client.addEventListener('peer_joined', onPeerJoined);
  client.addEventListener('peer_left', onPeerLeft);
  client.addEventListener('signal', onSignal);
  client.addEventListener('ice_servers', onIceServers);
  client.addEventListener('room_lock_state', onLockState);
  client.addEventListener('idle', onIdle);
  client.addEventListener('error', onError);

  el.join.addEventListener('click', join);
  consent.addEventListener('accept', () => {
    render();
    if (!el.join.disabled) el.join.focus();
  });
  el.leave.addEventListener('click', () => leave());
  el.mute.addEventListener('click', toggleMute);
  el.camera.addEventListener('click', toggleCamera);
  el.copy.addEventListener('click', copyLink);
  el.link.addEventListener('focus', () => el.link.select());
  el.lock.addEventListener('click', onLockClick);
  el.unlock.addEventListener('click', onUnlockClick);
  el.passForm.addEventListener('submit', submitPassphrase);
  el.passCancel.addEventListener('click', onPassphraseCancel);
  el.passInput.addEventListener('input', () => {
    if (r.passError && !r.passRateLimited) {
      r.passError = null;
      render();
    }
  });
  document.addEventListener('keydown', onKey);

  if (typeof WebSocket !== 'function') {
    r.fatal = 'This browser is too old for Earshot. Try a current Firefox, Chrome, Edge or Safari.';
  } else if (r.nameProblem) {
    r.state = 'error';
    r.message = `This link's room name isn't valid. ${r.nameProblem} Check the link, or create a new room on the home page.`;
  }
  render();
  return {
    get peers() { return r.mesh ? r.mesh.peerConnections() : {}; },
    get roomState() { return r.state; },
    get hideIp() { return r.lastHideIp; },
    get iceUpdated() { return r.iceUpdated; },
  };
}
