// room.js: the room page (`/r/<name>`). Owns the room state machine, the
// room's membership on the server (join, leave, and what the server says
// about it), the camera, the event log and the room link; the other people
// and their connections are members.js's (with tile.js), the lock and the
// passphrase lock.js's. It talks to the server through session.js
// (requests, answers, errors, microphone), which drives protocol.js.
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
// Like the stranger page, the session keeps a mirror of what the server
// thinks (`server`: offline | idle | room | other) and the page says what we
// want (`want`: be in the room or not); one request at a time (`pending`)
// brings them together (reconcile()), and an `error` says which request it
// answers (`re`). If the socket drops, the server has dropped us from the
// room: the existing connections are left running, and once the socket is
// back we join again (with the verifier if we know the passphrase, and
// re-lock the room if it was locked and the server forgot it in a restart:
// lock.js). The new `room_joined` replaces the old mesh, since everyone has
// new peer ids by then.
//
// Safety: Join stays disabled until the consent screen (safety.js) is
// accepted. Every other member's tile has a Report button: the report
// dialog (safety.js) asks for a reason, then the connection to that member
// is closed at once (their audio and video go) and `room_report` is sent.
// Enough reports remove someone: they get error `removed`, and this page
// says so.
//
// Privacy: nothing is stored; chat lives only in the DOM; nothing about SDP,
// candidates, chat or the passphrase (lock.js) is logged. "Hide my IP
// address" (privacy.js) is read each time a peer connection is made, so
// changing it in the room applies to the people who connect after that.
// Fresh TURN credentials (`ice_servers`) are applied to every live
// connection. Each tile shows that connection's safety words (call.js,
// safetywords.js) once connected.

import { normalizeRoomName, roomNameProblem } from './protocol.js';
import { formatWait } from './safety.js';
import { Session, focusable, setText } from './session.js';
import { Members } from './members.js';
import { RoomLock } from './lock.js';
import { CAMERA_CONSTRAINTS, callSupportProblem, cameraErrorMessage, stopStream } from './media.js';

const MAX_EVENTS = 100;
const COPIED_MS = 2500;

const r = {
  name: '', // normalised name from the path
  nameProblem: null,
  state: 'idle',
  message: null, // what happened, in plain words; null = the default for the state
  want: false, // we want to be in the room
  sentVerifier: false, // the pending join carried a verifier
  maxSize: null,
  camera: null, // camera MediaStream while on
  cameraPending: false,
};

let client;
let session;
let lock;
let members;
let tiles; // members.tiles
let el;
let copiedTimer = 0;

const $ = (id) => document.getElementById(id);

// --------------------------------------------------------------- rendering

function setState(state, message = null) {
  r.state = state;
  r.message = message;
  render();
}

function statusText(online, serverNote) {
  switch (r.state) {
    case 'joining': {
      if (session.micPending) return r.message || 'Waiting for microphone permission…';
      if (!online) return serverNote;
      const locked = lock.joiningText();
      if (locked && lock.step) return locked;
      return r.message || locked || 'Joining the room…';
    }
    case 'joined': {
      if (!online) return `${r.message ? `${r.message} ` : ''}The call goes on. ${serverNote}`;
      if (r.message) return r.message;
      const others = tiles.othersHere();
      if (others <= 0 && tiles.size > 1) return 'Nobody else you\'re talking to is here. Share the link to invite people.';
      if (others <= 0) return 'You\'re the only one here. Share the link to invite people.';
      const inCall = tiles.othersInCall();
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

function render() {
  const focused = document.activeElement;
  session.showStatus(r.state, statusText);

  const inside = r.state === 'joining' || r.state === 'joined';
  const joined = r.state === 'joined';
  el.join.hidden = joined;
  el.join.disabled = inside || session.micPending || Boolean(session.fatal) || Boolean(r.nameProblem)
    || !session.consent.accepted;
  session.muteButton.hidden = !inside;
  session.muteButton.disabled = !session.localStream;
  session.muteButton.setAttribute('aria-pressed', String(session.muted));
  el.camera.hidden = !joined;
  el.camera.disabled = r.cameraPending;
  el.camera.setAttribute('aria-pressed', String(Boolean(r.camera)));
  el.leave.hidden = !inside;
  lock.render();

  session.hideIp.render(joined ? members.hideIpInUse(session.hideIp.wanted) : null);
  el.safetyNote.hidden = !tiles.showWords();

  el.participants.dataset.count = String(joined ? 1 + tiles.othersInCall() : 0);
  el.participants.hidden = tiles.size === 0;

  session.chat.setOpen(members.chatOpen, joined ? 'Nobody to chat with yet' : 'Join the room to chat');

  // A control that was just used may have gone (Join once joined, the
  // passphrase form once done): keep keyboard users on one that matters now
  // instead of dropping them on <body>.
  const next = [lock.mode ? lock.input : null, joined ? session.muteButton : null, inside ? el.leave : el.join];
  session.keepFocus(focused, (node) => !focusable(node), next);
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
  members.setVideo(track, stream);
  render();
}

function stopCamera() {
  const stream = r.camera;
  if (!stream) return;
  r.camera = null;
  members.setVideo(null, null);
  stopStream(stream);
}

// ------------------------------------------------------------ user actions

async function join() {
  if (r.state === 'joining' || r.state === 'joined' || session.micPending || session.fatal || r.nameProblem) return;
  if (!session.consent.accepted) return;
  const problem = callSupportProblem();
  if (problem) {
    setState('error', problem);
    return;
  }
  const asking = session.openMic('Join room', () => r.state === 'joining');
  clearEvents();
  setState('joining');
  const mic = await asking;
  if (mic.error && r.state === 'joining') setState('error', mic.error);
  if (!mic.stream) {
    render(); // left while the prompt was open
    return;
  }
  r.want = true;
  session.chat.clear();
  setState('joining');
  session.reconcile();
}

/** Leave the room (or stop joining): `end`, close everything, forget the passphrase. */
function leave(state = 'idle', message = 'You left the room. Press Join room to come back.') {
  if (r.state !== 'joining' && r.state !== 'joined') return;
  const wasJoined = r.state === 'joined';
  r.want = false;
  members.close();
  stopCamera();
  session.releaseMic();
  lock.reset();
  session.chat.clear();
  if (wasJoined) logEvent('You left the room.');
  setState(state, message);
  session.reconcile();
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

// ------------------------------------------------------------- signalling

/** The requests that bring the server's idea of us in line with ours. */
function reconcile() {
  if (session.server === 'other') {
    // Searching or in a stranger call on this socket: leave it first.
    session.request('end');
    return;
  }
  if (!r.want) {
    if (session.server === 'room') session.request('end');
    return;
  }
  if (session.server === 'idle') {
    if (lock.mode === 'join' && !lock.verifier) return; // waiting for the passphrase
    if (session.held) return; // rate limited
    r.sentVerifier = Boolean(lock.verifier);
    session.request('room_join', r.name, lock.verifier);
    return;
  }
  if (session.server === 'room') {
    members.sendReports(); // they have no answer; they go out before anything else
    lock.reconcile();
  }
}

/** A rate limit is over (session.retryAfter). */
function onRetry() {
  if (lock.retryReady()) r.message = 'You can try the passphrase again now.';
  if (r.message && r.message.startsWith('The server is busy.')) r.message = null;
}

function onDisconnected() {
  lock.onDisconnected(r.state === 'joined');
  // A join with a verifier is simply sent again once back.
}

function onRoomJoined({ detail }) {
  if (session.pending === 'room_join') session.pending = null;
  session.server = 'room';
  if (!r.want || !Number.isSafeInteger(detail.peer)) {
    session.reconcile(); // left meanwhile: `end`
    return;
  }
  const rejoined = members.mesh !== null;
  r.maxSize = Number.isSafeInteger(detail.max_size) ? detail.max_size : r.maxSize;
  session.retryAt = 0;
  lock.onJoined(detail.locked === true);
  const others = members.start(detail);
  if (lock.locked && !lock.authKey) lock.mode = 'verify';
  r.message = null;
  r.state = 'joined';
  if (rejoined) logEvent('Back in the room after reconnecting to the server.');
  else if (others === 0) logEvent('You joined the room. Nobody else is here yet.');
  else logEvent(`You joined the room. ${others === 1 ? '1 other person is' : `${others} other people are`} here.`);
  session.restoreFocus = true;
  render();
  session.reconcile();
}

/**
 * Fresh ICE servers (`ice_servers`): every live connection uses them from
 * now on, and restarts ICE with them while we are in the room on the server
 * (the new offers and answers need the signalling).
 */
function onIceServers({ detail }) {
  session.iceUpdated = members.updateIceServers(detail.ice_servers, session.server === 'room');
}

function joinFailed(message) {
  r.want = false;
  members.close(); // a rejoin after a reconnect can fail too
  stopCamera();
  lock.forget();
  lock.close();
  session.releaseMic();
  lock.locked = false;
  r.state = 'error';
  r.message = message;
}

function roomFullText(detail) {
  const limits = client.welcome && client.welcome.limits ? client.welcome.limits : {};
  const max = [detail.max_size, r.maxSize, limits.max_room_size, limits.room_max_size]
    .find((n) => Number.isSafeInteger(n) && n > 0);
  return max ? `This room is full (max ${max}). Try again later.` : 'This room is full. Try again later.';
}

/** The join was refused for its passphrase: ask for it (again). */
function askPassphrase(error) {
  r.state = 'joining';
  r.message = null;
  lock.open('join', error);
}

/** An `error`; `answered` when it answers the pending request (see session.js). */
function onError({ code, re, answered, detail }) {
  const joinAnswer = answered && re === 'room_join';
  switch (code) {
    case 'removed':
      // Enough members reported us: out of the room, and no way back in
      // while it exists. `idle` follows.
      if (session.server === 'room' || joinAnswer) session.server = 'idle';
      if (r.want || r.state === 'joined' || r.state === 'joining') {
        logEvent('People in this room removed you.');
        joinFailed('People in this room removed you. You can\'t join it again while it\'s open.');
      }
      return;
    case 'passphrase_required':
      if (!joinAnswer) return;
      lock.locked = true;
      if (!r.want) return;
      lock.verifier = null;
      lock.authKey = null;
      askPassphrase(null);
      return;
    case 'wrong_passphrase':
      if (!joinAnswer) return;
      lock.locked = true;
      lock.forget();
      if (r.want) askPassphrase('That passphrase is not right. Check it (capitals and spaces count) and try again.');
      return;
    case 'room_full':
      if (joinAnswer && r.want) joinFailed(roomFullText(detail));
      return;
    case 'bad_room_name':
      if (joinAnswer && r.want) joinFailed('The server did not accept this room name. Check the link, or create a new room from the home page.');
      return;
    case 'already_in_room':
    case 'already_searching':
    case 'already_in_call':
      if (joinAnswer) session.server = 'other'; // leave whatever it is, then join again
      return;
    case 'not_in_room':
      if (!answered || (re !== 'room_lock' && re !== 'room_unlock')) return; // a signal or report after we left
      lock.failed(re, false);
      session.server = 'idle'; // we are out: join again, which rebuilds the mesh
      return;
    case 'rate_limited': {
      const wait = Number.isFinite(detail.retry_after_ms) ? Math.max(0, detail.retry_after_ms) : 1000;
      if (joinAnswer) {
        session.retryAfter(wait);
        if (r.sentVerifier && r.want) {
          // Too many passphrase attempts (ours, or on this room).
          lock.forget();
          askPassphrase(`Too many passphrase attempts. You can try again in ${formatWait(wait)}.`);
          lock.rateLimited = true;
        } else {
          r.message = `The server is busy. Trying again in ${formatWait(wait)}…`;
        }
      } else if (answered && (re === 'room_lock' || re === 'room_unlock')) {
        lock.failed(re, true);
        session.retryAfter(Math.min(wait, 10000), false);
      } else if (re === 'room_report') {
        logEvent('The server didn\'t take your last report: you\'ve sent too many. You\'re still disconnected from that person.');
      }
      return; // a dropped signal; perfect negotiation recovers or the call times out
    }
    case 'bad_message':
      if (answered && re === 'room_lock') lock.refused();
      return;
    case 'unknown_peer':
    case 'wrong_call':
      return; // a signal or a report that crossed a `peer_left`: harmless
    default:
      console.warn('earshot: server error', code);
  }
}

// ------------------------------------------------------------------ wiring

function findElements() {
  return {
    title: $('room-title'),
    link: $('room-link'),
    copy: $('copy-link'),
    copyNote: $('copy-note'),
    join: $('room-join'),
    camera: $('camera'),
    leave: $('leave'),
    participants: $('participants'),
    events: $('room-events'),
    eventsHeading: $('events-heading'),
    tagline: $('tagline'),
    safetyNote: $('safety-note'),
  };
}

/**
 * Run the room page for `rawName` (from the path) on `signalling` (not yet
 * connected). Returns the read-only view the test hook exposes.
 */
export function startRoom(signalling, rawName, safety) {
  client = signalling;
  el = findElements();
  session = new Session(client, safety, {
    name: 'room',
    primary: el.join,
    meter: null, // your level is on your own tile
    render,
    reconcile,
    onError,
    onDisconnected,
    onRetry,
    onMute: (muted) => members.setMuted(muted),
    onMicEnded: () => leave('error', 'Your microphone stopped (unplugged or access withdrawn). Press Join room to come back.'),
    onMicReplaced: (track) => members.replaceAudioTrack(track),
    sendChat: (text) => members.sendChat(text),
  });
  // What members.js and lock.js see of this page.
  const room = {
    get name() { return r.name; },
    session,
    get lock() { return lock; },
    get state() { return r.state; },
    get want() { return r.want; },
    get camera() { return r.camera; },
    get mesh() { return members.mesh; },
    set message(text) { r.message = text; },
    logEvent,
    render,
    leave,
    alone: () => tiles.size > 1 && tiles.othersInCall() === 0,
  };
  members = new Members(el.participants, room);
  tiles = members.tiles;
  lock = new RoomLock(room);
  r.name = normalizeRoomName(rawName);
  r.nameProblem = roomNameProblem(r.name);

  if (!r.nameProblem && window.location.pathname !== `/r/${r.name}`) {
    // One spelling of the link (the server lower-cases names anyway).
    try {
      window.history.replaceState(null, '', `/r/${r.name}${window.location.search}${window.location.hash}`);
    } catch { /* keep the address as typed */ }
  }
  const shown = r.nameProblem ? String(rawName).slice(0, 80) : r.name;
  el.title.textContent = shown;
  document.title = `Earshot room: ${shown}`;
  el.tagline.textContent = 'A room: everyone who opens its link joins the same call.';
  el.link.value = window.location.href;
  clearEvents();

  client.addEventListener('room_joined', onRoomJoined);
  client.addEventListener('peer_joined', ({ detail }) => members.joined(detail.peer));
  client.addEventListener('peer_left', ({ detail }) => members.left(detail.peer));
  client.addEventListener('signal', ({ detail }) => members.signal(detail));
  client.addEventListener('ice_servers', onIceServers);
  client.addEventListener('room_lock_state', ({ detail }) => {
    if (typeof detail.locked === 'boolean') lock.onLockState(detail.locked);
  });

  el.join.addEventListener('click', join);
  el.leave.addEventListener('click', () => leave());
  el.camera.addEventListener('click', toggleCamera);
  el.copy.addEventListener('click', copyLink);
  el.link.addEventListener('focus', () => el.link.select());

  if (!session.fatal && r.nameProblem) {
    r.state = 'error';
    r.message = `This link's room name isn't valid. ${r.nameProblem} Check the link, or create a new room on the home page.`;
  }
  render();
  return {
    get peers() { return members.peerConnections; },
    get roomState() { return r.state; },
    get hideIp() { return session.lastHideIp; },
    get iceUpdated() { return session.iceUpdated; },
  };
}
