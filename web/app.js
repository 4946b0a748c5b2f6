// app.js: the Earshot page. Owns the DOM, the microphone and the state
// machine; drives protocol.js (signalling) and call.js (the peer connection).
//
// The page state, shown as `data-state` on the status line:
//
//   idle        nothing going on (also: stopped searching with End)
//   searching   in the queue, or waiting to reconnect in order to get there
//   connecting  matched; the peer connection is not connected yet
//   connected   the peer connection is connected (it stays so while the
//               signalling socket reconnects)
//   ended       the call just ended by End or by a failure; not searching
//
//   idle/ended --Start (mic granted)--> searching
//   searching  --matched-->             connecting --pc connected--> connected
//   connecting/connected --Skip, call_ended--> searching
//   connecting/connected --End, pc failed/channel closed--> ended
//   searching --End--> idle
//   connecting --socket lost--> searching (the offer/answer cannot finish)
//
// Next to it the page keeps a mirror of what the server thinks we are
// (`server`: offline | idle | searching | call) and what we want (`wantSearch`).
// reconcile() sends whatever brings the two together, one request at a time
// (`pending`), so that races (End while a `matched` is in flight, a socket that
// drops and comes back) settle without the page second-guessing itself.
//
// Privacy: no storage, no cookies; chat lives only in the DOM and is cleared
// when the call ends; nothing about SDP, candidates or chat is logged.

import { SignallingClient } from './protocol.js';
import { Call, MAX_CHAT_CHARS } from './call.js';
import { LevelMeter } from './meter.js';

const MIC_CONSTRAINTS = {
  audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  video: false,
};
const DEFAULT_LIMITS = { max_interests: 5, max_interest_chars: 24 };
const METER_SEGMENTS = 16;
const MAX_CHAT_LINES = 500;

const $ = (id) => document.getElementById(id);
const el = {
  status: $('status'),
  start: $('start'),
  skip: $('skip'),
  end: $('end'),
  mute: $('mute'),
  interests: $('interests'),
  interestsError: $('interests-error'),
  partner: $('partner'),
  partnerCountry: $('partner-country'),
  countryFlag: $('country-flag'),
  countryCode: $('country-code'),
  partnerInterests: $('partner-interests'),
  sharedInterests: $('shared-interests'),
  chatLog: $('chat-log'),
  chatForm: $('chat-form'),
  chatInput: $('chat-input'),
  chatSend: $('chat-send'),
  remoteAudio: $('remote-audio'),
  meterYou: $('meter-you'),
  meterStranger: $('meter-stranger'),
};

const s = {
  state: 'idle',
  message: null, // what happened, in plain words; null = the default for the state
  fatal: null, // a problem no button can fix (old page, old browser)
  wantSearch: false,
  server: 'offline', // offline | idle | searching | call
  serverCall: null, // call id the server has us in
  pending: null, // request awaiting its answer: 'search' | 'skip' | 'end'
  everReady: false,
  offlineNote: null,
  call: null, // the current Call
  callInfo: null, // { interests, country } from `matched`
  unstable: false,
  localStream: null,
  micPending: false,
  muted: false,
  interests: [],
  audioContext: null,
  chatHadFocus: false,
  restoreFocus: false,
};

const client = new SignallingClient();

// ---------------------------------------------------------------- rendering

function setState(state, message = null) {
  s.state = state;
  s.message = message;
  s.unstable = false;
  render();
}

function statusText() {
  if (s.fatal) return s.fatal;
  const online = client.ready;
  const serverNote = s.offlineNote
    || (s.everReady ? 'Reconnecting to the server…' : 'Connecting to the server…');
  switch (s.state) {
    case 'searching':
      if (!online) return serverNote;
      return s.message || 'Looking for someone…';
    case 'connecting':
      return s.message || 'Connecting…';
    case 'connected': {
      const base = s.unstable ? 'The connection is unstable. Trying to recover…' : (s.message || 'Connected — say hi');
      return online ? base : `${base} (The call goes on. Reconnecting to the server…)`;
    }
    default: {
      const base = s.message || (online ? 'Press Start to talk to a random stranger.' : '');
      if (online) return base;
      return base ? `${base} ${serverNote}` : serverNote;
    }
  }
}

const CONTROL_BUTTONS = () => [el.start, el.skip, el.end, el.mute];

function render() {
  const active = s.state === 'searching' || s.state === 'connecting' || s.state === 'connected';
  const focused = document.activeElement;

  el.status.dataset.state = s.state;
  const text = statusText();
  // Rewriting identical text can make screen readers repeat it.
  if (el.status.textContent !== text) el.status.textContent = text;

  el.start.disabled = active || s.micPending || Boolean(s.fatal);
  el.skip.disabled = !active;
  el.end.disabled = !active;
  el.mute.disabled = !s.localStream;
  el.mute.setAttribute('aria-pressed', String(s.muted));
  el.interests.disabled = active || s.micPending;

  const chatOpen = Boolean(s.call && s.call.chatOpen);
  if (!chatOpen && document.activeElement === el.chatInput) s.chatHadFocus = true;
  el.chatInput.disabled = !chatOpen;
  el.chatSend.disabled = !chatOpen;
  el.chatInput.placeholder = chatOpen ? 'Type a message' : 'Not connected yet';

  const info = s.call ? s.callInfo : null;
  el.partner.hidden = !info || (!info.country && info.interests.length === 0);
  const flag = info ? flagEmoji(info.country) : '';
  el.partnerCountry.hidden = !flag;
  el.countryFlag.textContent = flag;
  el.countryCode.textContent = flag ? info.country.toUpperCase() : '';
  const shared = info ? info.interests.join(', ') : '';
  el.partnerInterests.hidden = !shared;
  if (el.sharedInterests.textContent !== shared) el.sharedInterests.textContent = shared;

  // A button that was just pressed may have become disabled; keep keyboard
  // users on the control that matters now instead of dropping them on <body>
  // (possibly later: Start stays disabled while the mic prompt is open).
  if (CONTROL_BUTTONS().includes(focused) && focused.disabled) s.restoreFocus = true;
  if (s.restoreFocus) {
    const next = active ? el.skip : el.start;
    const lost = document.activeElement === document.body || document.activeElement === null
      || (CONTROL_BUTTONS().includes(document.activeElement) && document.activeElement.disabled);
    if (!lost) s.restoreFocus = false;
    else if (!next.disabled) {
      next.focus();
      s.restoreFocus = false;
    }
  }
  if (chatOpen && s.chatHadFocus) {
    s.chatHadFocus = false;
    if (document.activeElement === document.body || document.activeElement === null) el.chatInput.focus();
  }
}

/** 'DE' -> the regional-indicator pair that renders as a flag; '' if not a code. */
function flagEmoji(code) {
  if (typeof code !== 'string' || !/^[A-Za-z]{2}$/.test(code)) return '';
  const up = code.toUpperCase();
  return String.fromCodePoint(...[...up].map((c) => 0x1f1e6 + c.charCodeAt(0) - 65));
}

// ------------------------------------------------------------------ meters

function buildMeter(node) {
  for (let i = 0; i < METER_SEGMENTS; i += 1) {
    const seg = document.createElement('span');
    seg.className = i >= METER_SEGMENTS - 3 ? 'seg seg-hot' : 'seg';
    node.append(seg);
  }
  return { node, segs: [...node.children], lit: 0, now: 0, meter: null };
}

const meters = { you: buildMeter(el.meterYou), stranger: buildMeter(el.meterStranger) };
let meterFrame = 0;

function attachMeter(which, stream) {
  detachMeter(which);
  if (!s.audioContext || !stream || stream.getAudioTracks().length === 0) return;
  try {
    meters[which].meter = new LevelMeter(s.audioContext, stream);
  } catch {
    return; // the bar stays empty; the call is unaffected
  }
  meters[which].node.classList.add('live');
  if (!meterFrame) meterFrame = requestAnimationFrame(drawMeters);
}

function detachMeter(which) {
  const m = meters[which];
  if (m.meter) m.meter.close();
  m.meter = null;
  m.node.classList.remove('live');
  paintMeter(m, 0);
}

function paintMeter(m, level) {
  const lit = Math.round(level * METER_SEGMENTS);
  if (lit !== m.lit) {
    m.segs.forEach((seg, i) => seg.classList.toggle('lit', i < lit));
    m.lit = lit;
  }
  // Coarse steps: assistive tech does not need 60 updates a second.
  const now = Math.round(level * 10) * 10;
  if (now !== m.now) {
    m.node.setAttribute('aria-valuenow', String(now));
    m.now = now;
  }
}

function drawMeters() {
  meterFrame = 0;
  let any = false;
  for (const m of Object.values(meters)) {
    if (!m.meter) continue;
    any = true;
    paintMeter(m, m.meter.read());
  }
  if (any) meterFrame = requestAnimationFrame(drawMeters);
}

// -------------------------------------------------------------- microphone

function micErrorMessage(err) {
  switch (err && err.name) {
    case 'NotAllowedError':
    case 'PermissionDeniedError':
      return 'Microphone access is blocked, so you can\'t talk yet. To allow it, click the lock or settings icon next to the address bar, set Microphone to Allow, and press Start again. (On a phone: the browser\'s site settings.)';
    case 'NotFoundError':
    case 'DevicesNotFoundError':
    case 'OverconstrainedError':
      return 'No microphone was found. Connect or turn on a microphone, then press Start again.';
    case 'NotReadableError':
    case 'TrackStartError':
    case 'AbortError':
      return 'Your microphone could not be started. Another app may be using it: close that app, then press Start again.';
    case 'SecurityError':
      return 'The microphone only works on a secure page. Open Earshot over HTTPS (or on localhost).';
    default:
      return 'The microphone could not be started. Check your browser\'s microphone settings and press Start again.';
  }
}

function setLocalStream(stream) {
  releaseMic();
  s.localStream = stream;
  for (const track of stream.getAudioTracks()) {
    track.enabled = !s.muted;
    // Unplugged or revoked mid-session: say so instead of sending silence.
    track.addEventListener('ended', () => {
      if (s.localStream !== stream) return;
      endEverything('ended', 'Your microphone stopped (unplugged or access withdrawn). Press Start to try again.');
    });
  }
  attachMeter('you', stream);
}

function releaseMic() {
  detachMeter('you');
  if (s.localStream) for (const track of s.localStream.getTracks()) track.stop();
  s.localStream = null;
  s.muted = false;
}

function ensureAudioContext() {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return;
  try {
    if (!s.audioContext) s.audioContext = new Ctx();
    // Created or resumed inside the click, so autoplay rules let it run.
    if (s.audioContext.state === 'suspended') s.audioContext.resume().catch(() => {});
  } catch {
    s.audioContext = null; // no meters, still a call
  }
}

// --------------------------------------------------------------- interests

function parseInterests(text) {
  const limits = { ...DEFAULT_LIMITS, ...(client.welcome && client.welcome.limits) };
  const seen = new Set();
  for (const raw of text.split(',')) {
    const item = raw.trim().toLowerCase().replace(/\s+/g, ' ');
    if (!item) continue;
    if ([...item].length > limits.max_interest_chars) {
      return { error: `"${item}" is too long: an interest can have at most ${limits.max_interest_chars} characters.` };
    }
    if (!/^[\p{L}\p{N} -]+$/u.test(item)) {
      return { error: `"${item}" can only use letters, digits, spaces and "-".` };
    }
    seen.add(item);
  }
  if (seen.size > limits.max_interests) {
    return { error: `Up to ${limits.max_interests} interests, please (you have ${seen.size}).` };
  }
  return { interests: [...seen] };
}

function showInterestsError(message) {
  el.interestsError.textContent = message || '';
  el.interestsError.hidden = !message;
  if (message) el.interests.setAttribute('aria-invalid', 'true');
  else el.interests.removeAttribute('aria-invalid');
}

// ------------------------------------------------------------ user actions

async function start() {
  if (s.micPending || s.fatal || (s.state !== 'idle' && s.state !== 'ended')) return;
  const parsed = parseInterests(el.interests.value);
  if (parsed.error) {
    showInterestsError(parsed.error);
    el.interests.focus();
    return;
  }
  showInterestsError(null);
  if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    setState(s.state, 'The microphone only works on a secure page. Open Earshot over HTTPS, or on localhost.');
    return;
  }
  if (typeof RTCPeerConnection !== 'function') {
    setState(s.state, 'This browser can\'t make voice calls (no WebRTC). Try a current Firefox, Chrome, Edge or Safari.');
    return;
  }
  ensureAudioContext();
  s.micPending = true;
  setState(s.state, 'Waiting for microphone permission…');
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
  } catch (err) {
    s.micPending = false;
    setState(s.state, micErrorMessage(err));
    return;
  }
  s.micPending = false;
  if (s.state !== 'idle' && s.state !== 'ended') {
    for (const track of stream.getTracks()) track.stop();
    return;
  }
  if (stream.getAudioTracks().length === 0) {
    setState(s.state, micErrorMessage({ name: 'NotFoundError' }));
    return;
  }
  setLocalStream(stream);
  s.interests = parsed.interests;
  s.wantSearch = true;
  clearChat();
  setState('searching');
  reconcile();
}

function skip() {
  if (s.state !== 'searching' && s.state !== 'connecting' && s.state !== 'connected') return;
  if (!s.call) return; // already looking; nothing to skip
  const id = s.call.id;
  closeCall();
  s.wantSearch = true;
  if (client.ready && s.server === 'call' && s.serverCall === id && s.pending === null) {
    s.pending = 'skip';
    client.skip();
  }
  setState('searching', 'Looking for someone new…');
  reconcile();
}

function end() {
  if (s.state !== 'searching' && s.state !== 'connecting' && s.state !== 'connected') return;
  const hadCall = Boolean(s.call);
  closeCall();
  s.wantSearch = false;
  releaseMic();
  // `end` is answered by `idle` in every server state; sending it even while
  // a `search` is unanswered makes the server's last word `idle`.
  if (client.ready) {
    s.pending = 'end';
    client.end();
  }
  if (hadCall) setState('ended', 'You ended the call. Press Start to talk to someone else.');
  else setState('idle', 'Stopped looking. Press Start when you\'re ready.');
}

function toggleMute() {
  if (!s.localStream) return;
  s.muted = !s.muted;
  for (const track of s.localStream.getAudioTracks()) track.enabled = !s.muted;
  render();
}

function sendChat(event) {
  event.preventDefault();
  const text = el.chatInput.value;
  if (!s.call || !text.trim()) return;
  if ([...text].length > MAX_CHAT_CHARS) return; // maxlength already stops this
  if (s.call.sendChat(text)) {
    appendChat('you', text);
    el.chatInput.value = '';
  }
}

function isTyping(target) {
  return target instanceof HTMLElement
    && (target.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(target.tagName));
}

function onKey(event) {
  if (event.defaultPrevented || event.isComposing || event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.key === 'Escape') {
    if (!el.skip.disabled) {
      event.preventDefault();
      skip();
    }
  } else if ((event.key === 'm' || event.key === 'M') && !event.repeat && !isTyping(event.target)) {
    if (!el.mute.disabled) {
      event.preventDefault();
      toggleMute();
    }
  }
}

// -------------------------------------------------------------------- chat

function appendChat(who, text) {
  const line = document.createElement('p');
  line.className = `msg msg-${who}`;
  const name = document.createElement('span');
  name.className = 'who';
  name.textContent = who === 'you' ? 'You:' : 'Stranger:';
  const body = document.createElement('span');
  body.className = 'text';
  body.textContent = text; // never innerHTML: this is a stranger's text
  line.append(name, ' ', body);
  el.chatLog.append(line);
  while (el.chatLog.childElementCount > MAX_CHAT_LINES) el.chatLog.firstElementChild.remove();
  el.chatLog.scrollTop = el.chatLog.scrollHeight;
}

function clearChat() {
  el.chatLog.replaceChildren();
  el.chatInput.value = '';
}

// -------------------------------------------------------------------- call

function beginCall(msg) {
  const id = msg.call;
  const call = new Call({
    id,
    polite: msg.polite,
    iceServers: client.welcome ? client.welcome.ice_servers : [],
    localStream: s.localStream,
    sendSignal: (payload) => {
      // Only while the server has us in this call: anything else would be
      // answered with an error, and errors count against the connection.
      if (client.ready && s.server === 'call' && s.serverCall === id) client.signal(id, payload);
    },
  });
  s.call = call;
  s.callInfo = {
    interests: Array.isArray(msg.interests) ? msg.interests.filter((i) => typeof i === 'string') : [],
    country: typeof msg.country === 'string' ? msg.country : null,
  };
  call.addEventListener('connectionstate', ({ detail }) => {
    if (s.call !== call) return;
    if (detail.state === 'connected') {
      if (s.state === 'connecting') setState('connected');
      else if (s.unstable) { s.unstable = false; render(); }
    } else if (detail.state === 'disconnected' && s.state === 'connected') {
      s.unstable = true;
      render();
    }
  });
  call.addEventListener('track', ({ detail }) => {
    if (s.call !== call) return;
    el.remoteAudio.srcObject = detail.stream;
    el.remoteAudio.play().catch(() => { /* autoplay: the Start click allows it */ });
    attachMeter('stranger', detail.stream);
  });
  call.addEventListener('chatopen', () => { if (s.call === call) render(); });
  call.addEventListener('chat', ({ detail }) => { if (s.call === call) appendChat('stranger', detail.text); });
  call.addEventListener('failed', ({ detail }) => { if (s.call === call) callFailed(detail.reason); });
  clearChat();
  setState('connecting');
}

function closeCall() {
  if (!s.call) return;
  s.call.close();
  s.call = null;
  s.callInfo = null;
  detachMeter('stranger');
  el.remoteAudio.srcObject = null;
  clearChat();
}

const FAILURE_TEXT = {
  connection_failed: 'The connection to the stranger failed. Press Start to try someone else.',
  channel_closed: 'The stranger left the call. Press Start to talk to someone else.',
  timeout: 'Could not connect to the stranger. Press Start to try again.',
};

function callFailed(reason) {
  const id = s.call ? s.call.id : null;
  let text = FAILURE_TEXT[reason] || FAILURE_TEXT.connection_failed;
  // A channel that closes before the call ever connected is a failed connection.
  if (reason === 'channel_closed' && s.state !== 'connected') text = FAILURE_TEXT.timeout;
  endEverything('ended', text, id);
}

/** Stop calling and searching, release the mic, and tell the server. */
function endEverything(state, message, callId = null) {
  closeCall();
  s.wantSearch = false;
  releaseMic();
  if (client.ready && (s.server === 'searching' || (s.server === 'call' && (callId === null || s.serverCall === callId)))) {
    s.pending = 'end';
    client.end();
  }
  setState(state, message);
  reconcile();
}

// ------------------------------------------------------------- signalling

/** Send whatever brings the server's idea of us in line with ours. */
function reconcile() {
  if (!client.ready || s.pending !== null) return;
  if (s.call) return; // an ongoing call outlives the server's view of it
  if (s.server === 'call') {
    // The server has us in a call we do not have (e.g. `matched` arrived
    // after End): leave it. `idle` follows, and then we search if we want to.
    s.pending = 'end';
    client.end();
  } else if (s.wantSearch && s.server === 'idle') {
    s.pending = 'search';
    client.search(s.interests);
  } else if (!s.wantSearch && s.server === 'searching') {
    s.pending = 'end';
    client.end();
  }
}

const CALL_ENDED_TEXT = {
  partner_skipped: 'Stranger skipped you. Looking for someone new…',
  partner_ended: 'Stranger ended the call. Looking for someone new…',
  partner_left: 'Stranger left. Looking for someone new…',
};

client.addEventListener('welcome', () => {
  s.server = 'idle';
  s.serverCall = null;
  s.pending = null;
  s.everReady = true;
  s.offlineNote = null;
  reconcile();
  render();
});

client.addEventListener('disconnected', ({ detail }) => {
  s.server = 'offline';
  s.serverCall = null;
  s.pending = null;
  s.offlineNote = detail.code === 1013 ? 'The server is full. Trying again shortly…' : null;
  if (s.call && s.state === 'connecting') {
    // Offer, answer and candidates can no longer reach the stranger, so
    // this call cannot finish connecting. Look again once we are back.
    closeCall();
    s.wantSearch = true;
    setState('searching');
    return;
  }
  // Once back, say "Looking for someone…" rather than an older message.
  if (s.state === 'searching') s.message = null;
  render();
});

client.addEventListener('searching', ({ detail }) => {
  s.server = 'searching';
  s.serverCall = null;
  if (s.pending === 'search' || s.pending === 'skip') s.pending = null;
  if (Array.isArray(detail.interests)) s.interests = detail.interests.filter((i) => typeof i === 'string');
  if (s.wantSearch && !s.call && s.state !== 'searching') setState('searching');
  reconcile();
});

client.addEventListener('matched', ({ detail }) => {
  if (!Number.isSafeInteger(detail.call)) return;
  s.server = 'call';
  s.serverCall = detail.call;
  if (s.wantSearch && !s.call && s.localStream && s.pending === null) beginCall(detail);
  reconcile();
});

client.addEventListener('signal', ({ detail }) => {
  if (s.call && detail.call === s.call.id) s.call.handleSignal(detail);
});

client.addEventListener('call_ended', ({ detail }) => {
  if (s.server === 'call' && detail.call === s.serverCall) {
    s.server = 'searching'; // the server has already put us back in the queue
    s.serverCall = null;
  }
  if (s.call && detail.call === s.call.id) {
    closeCall();
    s.wantSearch = true;
    setState('searching', CALL_ENDED_TEXT[detail.reason] || 'The call ended. Looking for someone new…');
  }
  reconcile();
});

client.addEventListener('idle', () => {
  s.server = 'idle';
  s.serverCall = null;
  if (s.pending === 'end') s.pending = null;
  reconcile();
});

client.addEventListener('error', ({ detail }) => {
  // Errors do not say which request caused them. The server answers in
  // order, so an error about search/skip/end is the answer to `pending`;
  // when nothing is pending it is about a signal, and changes nothing here.
  const code = typeof detail.code === 'string' ? detail.code : 'unknown';
  const pending = s.pending;
  switch (code) {
    case 'wrong_call':
      return; // a late signal from the previous call: harmless
    case 'unsupported_version':
      s.fatal = 'This page is out of date. Please reload it.';
      render();
      return;
    case 'already_searching':
      if (pending === 'search') s.server = 'searching';
      break;
    case 'already_in_call':
      if (pending === 'search') {
        s.server = 'call'; // one we do not know: reconcile() leaves it
        s.serverCall = null;
      }
      break;
    case 'not_in_call':
      if (pending !== 'skip') return; // a signal that crossed the end of its call
      if (s.server === 'call') s.server = 'idle';
      break;
    case 'bad_interests':
      s.pending = null;
      endEverything(s.state === 'searching' ? 'idle' : s.state, null);
      showInterestsError('The server did not accept those interests. Use letters, digits, spaces and "-" only.');
      return;
    case 'rate_limited': {
      s.pending = null;
      const wait = Number.isFinite(detail.retry_after_ms) ? detail.retry_after_ms : 1000;
      setTimeout(reconcile, Math.min(Math.max(wait, 100), 10000));
      return;
    }
    default:
      console.warn('earshot: server error', code);
      if (pending === null) return;
  }
  s.pending = null;
  reconcile();
});

// ------------------------------------------------------------------ wiring

el.start.addEventListener('click', start);
el.skip.addEventListener('click', skip);
el.end.addEventListener('click', end);
el.mute.addEventListener('click', toggleMute);
el.chatForm.addEventListener('submit', sendChat);
el.interests.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.isComposing) {
    event.preventDefault();
    start();
  }
});
el.interests.addEventListener('input', () => showInterestsError(null));
document.addEventListener('keydown', onKey);
window.addEventListener('online', () => client.reconnectNow());

// Read-only hook for automated tests; the only global this page defines.
Object.defineProperty(window, 'earshot', {
  value: Object.freeze({
    get pc() { return s.call ? s.call.pc : null; },
    get state() { return s.state; },
  }),
  enumerable: false,
  configurable: false,
  writable: false,
});

if (typeof WebSocket !== 'function') {
  s.fatal = 'This browser is too old for Earshot. Try a current Firefox, Chrome, Edge or Safari.';
} else {
  client.connect();
  if (!window.isSecureContext || !navigator.mediaDevices) {
    s.message = 'The microphone only works on a secure page. Open Earshot over HTTPS, or on localhost.';
  }
}
render();
