// strangers.js: the stranger page (`/`). Owns its part of the DOM, the
// microphone and the state machine; drives protocol.js (signalling) and
// call.js (the peer connection). app.js starts it with the page's one
// SignallingClient.
//
// The page state, shown as `data-state` on the status line:
//
//   idle        nothing going on (also: stopped searching with End, or
//               banned from matching for a while)
//   searching   in the queue, or waiting to reconnect in order to get there
//   connecting  matched; the peer connection is not connected yet
//   connected   the peer connection is connected (it stays so while the
//               signalling socket reconnects)
//   ended       the call just ended by End, Report or a failure; not
//               searching
//
//   idle/ended --Start (mic granted)--> searching
//   searching  --matched-->             connecting --pc connected--> connected
//   connecting/connected --Skip, call_ended--> searching
//   connecting/connected --End, Report, pc failed/channel closed--> ended
//   searching --End--> idle
//   connecting --socket lost--> searching (the offer/answer cannot finish)
//
// Next to it the page keeps a mirror of what the server thinks we are
// (`server`: offline | idle | searching | call) and what we want (`wantSearch`).
// reconcile() sends whatever brings the two together, one request at a time
// (`pending`), so that races (End while a `matched` is in flight, a socket that
// drops and comes back) settle without the page second-guessing itself.
//
// Safety: Start stays disabled until the consent screen (safety.js) is
// accepted, and while the server says we are banned from matching (error
// `banned`, shown with a countdown in the ban notice). Report (a dialog from
// safety.js) closes the peer connection at once, then tells the server
// (`report`, answered by `idle`).
//
// Privacy: no storage, no cookies; chat lives only in the DOM and is cleared
// when the call ends; nothing about SDP, candidates or chat is logged.
// "Hide my IP address" (privacy.js) decides, at each `matched`, whether the
// call's peer connection is relay only; fresh TURN credentials (`ice_servers`,
// asked for by protocol.js) are applied to the call in progress. The
// partner's approximate country (`matched.country`) is shown as a flag and
// its name; the safety words (call.js, safetywords.js) once connected.

import { Call, MAX_CHAT_CHARS } from './call.js';
import { MeterView } from './meter.js';
import { ChatView } from './chat.js';
import { dialogOpen, formatWait } from './safety.js';
import { HideIpControl } from './privacy.js';
import {
  MIC_CONSTRAINTS, audioContext, callSupportProblem, insecurePageNote, micErrorMessage, stopStream,
} from './media.js';

const DEFAULT_LIMITS = { max_interests: 5, max_interest_chars: 24 };

const $ = (id) => document.getElementById(id);
let el;
const findElements = () => ({
  status: $('status'),
  start: $('start'),
  skip: $('skip'),
  end: $('end'),
  mute: $('mute'),
  report: $('report'),
  banNotice: $('ban-notice'),
  interests: $('interests'),
  interestsError: $('interests-error'),
  partner: $('partner'),
  partnerCountry: $('partner-country'),
  countryFlag: $('country-flag'),
  countryName: $('country-name'),
  safety: $('safety'),
  safetyWords: $('safety-words'),
  safetyNote: $('safety-note'),
  hideIpBox: $('hide-ip-box'),
  hideIp: $('hide-ip'),
  hideIpNote: $('hide-ip-note'),
  partnerInterests: $('partner-interests'),
  sharedInterests: $('shared-interests'),
  chatLog: $('chat-log'),
  chatForm: $('chat-form'),
  chatInput: $('chat-input'),
  chatSend: $('chat-send'),
  remoteAudio: $('remote-audio'),
  meterYou: $('meter-you'),
  meterStranger: $('meter-stranger'),
});

const s = {
  state: 'idle',
  message: null, // what happened, in plain words; null = the default for the state
  fatal: null, // a problem no button can fix (old page, old browser)
  wantSearch: false,
  server: 'offline', // offline | idle | searching | call
  serverCall: null, // call id the server has us in
  pending: null, // request awaiting its answer: 'search' | 'skip' | 'end' | 'report'
  everReady: false,
  offlineNote: null,
  call: null, // the current Call
  callInfo: null, // { interests, country } from `matched`
  unstable: false,
  localStream: null,
  micPending: false,
  muted: false,
  interests: [],
  chatHadFocus: false,
  restoreFocus: false,
  banUntil: 0, // no matching until then (ms since epoch), from error `banned`
  banTimer: 0,
  reportIdleAt: 0, // when the `idle` answering our last report came
  words: null, // the current call's safety words, once connected
  wordsChanged: false, // they changed during the call
  lastHideIp: null, // whether the latest peer connection was relay only
  iceUpdated: 0, // peer connections the last `ice_servers` was applied to
};

const SAFETY_TEXT = 'Read these words to each other. If they differ, someone is in the middle: end the call.';
const SAFETY_CHANGED_TEXT = 'The safety words changed during the call. Read them to each other again. If they differ, someone is in the middle: end the call.';

const HIDE_IP_TEXT = {
  unavailable: 'Hiding your IP address isn\'t available on this server: in a call, the stranger\'s browser can see your IP address.',
  off: 'Off: in a call, the stranger\'s browser can see your IP address.',
  relayed: 'This call is relayed: the stranger can\'t see your IP address.',
  direct: 'This call is direct: the stranger\'s browser can see your IP address.',
  nextRelayed: 'Applies from your next call. This call stays direct: the stranger\'s browser can see your IP address.',
  nextDirect: 'Applies from your next call. This call stays relayed.',
};

let client;
let chat;
let meters;
let consent;
let reportDialog;
let hideIp;

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

const CONTROL_BUTTONS = () => [el.start, el.skip, el.end, el.mute, el.report];

const banned = () => Date.now() < s.banUntil;

function render() {
  const active = s.state === 'searching' || s.state === 'connecting' || s.state === 'connected';
  const focused = document.activeElement;

  el.status.dataset.state = s.state;
  const text = statusText();
  // Rewriting identical text can make screen readers repeat it.
  if (el.status.textContent !== text) el.status.textContent = text;

  el.start.disabled = active || s.micPending || Boolean(s.fatal) || !consent.accepted || banned();
  el.skip.disabled = !active;
  el.end.disabled = !active;
  el.mute.disabled = !s.localStream;
  el.mute.setAttribute('aria-pressed', String(s.muted));
  el.report.disabled = !s.call;
  el.interests.disabled = active || s.micPending;
  renderBan();

  const chatOpen = Boolean(s.call && s.call.chatOpen);
  if (!chatOpen && document.activeElement === el.chatInput) s.chatHadFocus = true;
  chat.setOpen(chatOpen);

  const info = s.call ? s.callInfo : null;
  el.partner.hidden = !info || (!info.country && info.interests.length === 0);
  const country = info ? info.country : null;
  el.partnerCountry.hidden = !country;
  if (country) el.partnerCountry.dataset.cc = country;
  else delete el.partnerCountry.dataset.cc;
  setText(el.countryFlag, country ? flagEmoji(country) : '');
  setText(el.countryName, country ? countryName(country) : '');
  const shared = info ? info.interests.join(', ') : '';
  el.partnerInterests.hidden = !shared;
  if (el.sharedInterests.textContent !== shared) el.sharedInterests.textContent = shared;

  const words = s.call && s.words ? s.words.join(' ') : '';
  el.safety.hidden = !words;
  setText(el.safetyWords, words);
  if (words) el.safetyWords.dataset.words = words;
  else delete el.safetyWords.dataset.words;
  el.safety.dataset.changed = String(Boolean(words) && s.wordsChanged);
  setText(el.safetyNote, s.wordsChanged ? SAFETY_CHANGED_TEXT : SAFETY_TEXT);

  hideIp.render(s.call ? s.call.hideIp : null);

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

function renderBan() {
  const left = s.banUntil - Date.now();
  const text = left > 0
    ? `You were reported by several people. You can be matched again in ${formatWait(left)}.`
    : '';
  el.banNotice.hidden = left <= 0;
  if (el.banNotice.textContent !== text) el.banNotice.textContent = text;
  if (left > 0) el.banNotice.dataset.retryAfterMs = String(left);
  else delete el.banNotice.dataset.retryAfterMs;
}

/** Error `banned`: no Start for `ms`, with a countdown in the ban notice. */
function startBan(ms) {
  s.banUntil = Date.now() + ms;
  clearInterval(s.banTimer);
  s.banTimer = setInterval(() => {
    if (banned()) {
      renderBan();
      return;
    }
    clearInterval(s.banTimer);
    s.banTimer = 0;
    s.banUntil = 0;
    if (s.state === 'idle' || s.state === 'ended') {
      setState(s.state, 'You can be matched again. Press Start when you\'re ready.');
    } else {
      render();
    }
  }, 1000);
}

function setText(node, text) {
  // Rewriting identical text can make screen readers repeat it.
  if (node.textContent !== text) node.textContent = text;
}

/** A country code as the server sends it ('DE'), upper-cased; null if not one. */
function countryCode(code) {
  return typeof code === 'string' && /^[A-Za-z]{2}$/.test(code) ? code.toUpperCase() : null;
}

/** 'DE' -> the regional-indicator pair that renders as a flag. */
function flagEmoji(code) {
  return String.fromCodePoint(...[...code].map((c) => 0x1f1e6 + c.charCodeAt(0) - 65));
}

let regionNames;

/** 'DE' -> 'Germany' (in the page's language), or the code itself. */
function countryName(code) {
  if (regionNames === undefined) {
    try {
      regionNames = new Intl.DisplayNames([document.documentElement.lang || 'en'], { type: 'region', fallback: 'code' });
    } catch {
      regionNames = null; // no Intl.DisplayNames: show the code
    }
  }
  if (!regionNames) return code;
  try {
    const name = regionNames.of(code);
    return name && name !== 'Unknown Region' ? name : code;
  } catch {
    return code;
  }
}

// ------------------------------------------------------------------ meters

function attachMeter(which, stream) {
  meters[which].attach(audioContext(), stream);
}

function detachMeter(which) {
  meters[which].detach();
}

// -------------------------------------------------------------- microphone

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
  stopStream(s.localStream);
  s.localStream = null;
  s.muted = false;
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
  if (!consent.accepted || banned()) return;
  const parsed = parseInterests(el.interests.value);
  if (parsed.error) {
    showInterestsError(parsed.error);
    el.interests.focus();
    return;
  }
  showInterestsError(null);
  const problem = callSupportProblem();
  if (problem) {
    setState(s.state, problem);
    return;
  }
  // Created or resumed inside the click, so autoplay rules let it run.
  audioContext();
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

function openReport() {
  if (!s.call || reportDialog.isOpen) return;
  const id = s.call.id;
  reportDialog.open({
    subject: { kind: 'stranger', call: id },
    title: 'Report this stranger',
    note: 'The call ends right away. They aren\'t told that you reported them, and you won\'t be matched with them again.',
    submit: 'Report and end call',
    returnFocus: el.report,
    onReport: (reason) => report(id, reason),
  });
}

/** Submit of the report dialog about call `id`. */
function report(id, reason) {
  if (!s.call || s.call.id !== id) return; // the dialog closes when its call ends
  // Hang up first: the stranger stops hearing us before the server answers.
  closeCall();
  s.wantSearch = false;
  releaseMic();
  s.restoreFocus = true;
  if (client.ready && s.server === 'call' && s.serverCall === id) {
    // `report` ends the call on the server too; `idle` answers it.
    s.pending = 'report';
    client.report(reason);
    setState('ended', 'Reported. You won\'t be matched with this person again.');
  } else {
    // The server no longer has us in this call (the connection to it
    // dropped): the report cannot be made, only the call ended.
    setState('ended', 'You ended the call. The report couldn\'t be sent: the connection to the server had dropped.');
  }
  reconcile();
}

function toggleMute() {
  if (!s.localStream) return;
  s.muted = !s.muted;
  for (const track of s.localStream.getAudioTracks()) track.enabled = !s.muted;
  render();
}

function sendChat(text) {
  if (!s.call) return false;
  if ([...text].length > MAX_CHAT_CHARS) return false; // maxlength already stops this
  if (!s.call.sendChat(text)) return false;
  appendChat('you', text);
  return true;
}

function isTyping(target) {
  return target instanceof HTMLElement
    && (target.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(target.tagName));
}

function onKey(event) {
  if (event.defaultPrevented || event.isComposing || event.ctrlKey || event.metaKey || event.altKey) return;
  // Escape in a dialog closes the dialog; it must not also skip the call.
  if (dialogOpen(event.target)) return;
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
  chat.append(who, who === 'you' ? 'You:' : 'Stranger:', text);
}

function clearChat() {
  chat.clear();
}

// -------------------------------------------------------------------- call

function beginCall(msg) {
  const id = msg.call;
  const call = new Call({
    id,
    polite: msg.polite,
    iceServers: client.iceServers,
    hideIp: hideIp.wanted,
    localStream: s.localStream,
    sendSignal: (payload) => {
      // Only while the server has us in this call: anything else would be
      // answered with an error, and errors count against the connection.
      if (client.ready && s.server === 'call' && s.serverCall === id) client.signal(id, payload);
    },
  });
  s.call = call;
  s.lastHideIp = call.hideIp;
  s.words = null;
  s.wordsChanged = false;
  s.callInfo = {
    interests: Array.isArray(msg.interests) ? msg.interests.filter((i) => typeof i === 'string') : [],
    country: countryCode(msg.country),
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
  call.addEventListener('safetywords', ({ detail }) => {
    if (s.call !== call) return;
    s.words = detail.words;
    s.wordsChanged = s.wordsChanged || detail.changed;
    render();
  });
  call.addEventListener('chatopen', () => { if (s.call === call) render(); });
  call.addEventListener('chat', ({ detail }) => { if (s.call === call) appendChat('stranger', detail.text); });
  call.addEventListener('failed', ({ detail }) => { if (s.call === call) callFailed(detail.reason); });
  clearChat();
  setState('connecting');
}

function closeCall() {
  if (!s.call) return;
  const subject = reportDialog.subject;
  if (subject && subject.kind === 'stranger' && subject.call === s.call.id) reportDialog.close();
  s.call.close();
  s.call = null;
  s.callInfo = null;
  s.words = null;
  s.wordsChanged = false;
  detachMeter('stranger');
  el.remoteAudio.srcObject = null;
  clearChat();
}

const FAILURE_TEXT = {
  connection_failed: 'The connection to the stranger failed. Press Start to try someone else.',
  channel_closed: 'The stranger left the call. Press Start to talk to someone else.',
  timeout: 'Could not connect to the stranger. Press Start to try again.',
  relay_unavailable: 'This browser could not use the server\'s relay, so the call was not made (your IP address stays hidden). Press Start to try again, or turn off "Hide my IP address".',
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

function onWelcome() {
  s.server = 'idle';
  s.serverCall = null;
  s.pending = null;
  s.everReady = true;
  s.offlineNote = null;
  reconcile();
  render();
}

function onDisconnected({ detail }) {
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
}

function onSearching({ detail }) {
  s.server = 'searching';
  s.serverCall = null;
  if (s.pending === 'search' || s.pending === 'skip') s.pending = null;
  if (Array.isArray(detail.interests)) s.interests = detail.interests.filter((i) => typeof i === 'string');
  if (s.wantSearch && !s.call && s.state !== 'searching') setState('searching');
  reconcile();
}

function onMatched({ detail }) {
  if (!Number.isSafeInteger(detail.call)) return;
  s.server = 'call';
  s.serverCall = detail.call;
  if (s.wantSearch && !s.call && s.localStream && s.pending === null) beginCall(detail);
  reconcile();
}

function onSignal({ detail }) {
  if (s.call && detail.call === s.call.id) s.call.handleSignal(detail);
}

/**
 * Fresh ICE servers (`ice_servers`): the call in progress uses them from now
 * on, and restarts ICE with them when the server still has us in it (the
 * new offer and answer need the signalling).
 */
function onIceServers({ detail }) {
  s.iceUpdated = 0;
  if (!s.call || s.call.closed) return;
  const live = s.server === 'call' && s.serverCall === s.call.id;
  if (s.call.updateIceServers(detail.ice_servers, live)) s.iceUpdated = 1;
}

function onCallEnded({ detail }) {
  if (s.server === 'call' && detail.call === s.serverCall) {
    s.server = 'searching'; // the server has already put us back in the queue
    s.serverCall = null;
  }
  if (s.call && detail.call === s.call.id) {
    const subject = reportDialog.subject;
    const reporting = Boolean(subject && subject.kind === 'stranger' && subject.call === detail.call);
    closeCall();
    s.wantSearch = true;
    const text = CALL_ENDED_TEXT[detail.reason] || 'The call ended. Looking for someone new…';
    setState('searching', reporting
      ? `The stranger left before you sent the report, so it wasn't sent. ${text.replace(/^[^.]*\. /, '')}`
      : text);
  }
  reconcile();
}

function onIdle() {
  s.server = 'idle';
  s.serverCall = null;
  if (s.pending === 'report') s.reportIdleAt = Date.now();
  if (s.pending === 'end' || s.pending === 'report') s.pending = null;
  reconcile();
}

function onError({ detail }) {
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
      if (pending === 'report') {
        // The call ended on the server just before the report reached it
        // (the stranger skipped or left): nothing was reported.
        if (s.server === 'call') s.server = 'searching';
        if (s.state === 'ended') s.message = 'You ended the call. The stranger had just left, so the report wasn\'t sent.';
        render();
        break;
      }
      if (pending !== 'skip') return; // a signal that crossed the end of its call
      if (s.server === 'call') s.server = 'idle';
      break;
    case 'banned': {
      // Reported by several people: no matching for a while. `idle` follows.
      const wait = Number.isFinite(detail.retry_after_ms) ? Math.max(0, detail.retry_after_ms) : 3600000;
      if (pending === 'search' || pending === 'skip') s.pending = null;
      if (s.server === 'searching' || pending === 'search' || pending === 'skip') s.server = 'idle';
      startBan(wait);
      if (s.call) {
        render(); // a call that is still going goes on; Start stays off afterwards
      } else {
        s.wantSearch = false;
        releaseMic();
        s.restoreFocus = true;
        // Said once here (the status is announced); the notice counts down.
        setState('idle', `You can't be matched with anyone for ${formatWait(wait)}.`);
      }
      reconcile();
      return;
    }
    case 'bad_interests':
      s.pending = null;
      endEverything(s.state === 'searching' ? 'idle' : s.state, null);
      showInterestsError('The server did not accept those interests. Use letters, digits, spaces and "-" only.');
      return;
    case 'rate_limited': {
      if (pending === null && Date.now() - s.reportIdleAt < 5000 && s.state === 'ended') {
        // Follows the `idle` of a report over the report limit: the call
        // ended, but the report may not count.
        s.reportIdleAt = 0;
        setState('ended', 'You ended the call. You\'ve sent a lot of reports lately, so this one may not count.');
      }
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
}

// ------------------------------------------------------------------ wiring

function listen() {
  client.addEventListener('welcome', onWelcome);
  client.addEventListener('disconnected', onDisconnected);
  client.addEventListener('searching', onSearching);
  client.addEventListener('matched', onMatched);
  client.addEventListener('signal', onSignal);
  client.addEventListener('ice_servers', onIceServers);
  client.addEventListener('call_ended', onCallEnded);
  client.addEventListener('idle', onIdle);
  client.addEventListener('error', onError);
}

/**
 * Run the stranger page on `signalling` (not yet connected). Returns the
 * read-only view the test hook exposes.
 */
export function startStrangers(signalling, safety) {
  client = signalling;
  consent = safety.consent;
  reportDialog = safety.reportDialog;
  el = findElements();
  hideIp = new HideIpControl(client, { box: el.hideIpBox, input: el.hideIp, note: el.hideIpNote }, HIDE_IP_TEXT);
  hideIp.addEventListener('change', render);
  meters = { you: new MeterView(el.meterYou), stranger: new MeterView(el.meterStranger) };
  chat = new ChatView({ log: el.chatLog, form: el.chatForm, input: el.chatInput, send: el.chatSend, onSend: sendChat });
  listen();
  el.start.addEventListener('click', start);
  el.skip.addEventListener('click', skip);
  el.end.addEventListener('click', end);
  el.mute.addEventListener('click', toggleMute);
  el.report.addEventListener('click', openReport);
  consent.addEventListener('accept', () => {
    render();
    if (!el.start.disabled) el.start.focus();
  });
  el.interests.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.isComposing) {
      event.preventDefault();
      start();
    }
  });
  el.interests.addEventListener('input', () => showInterestsError(null));
  document.addEventListener('keydown', onKey);

  if (typeof WebSocket !== 'function') {
    s.fatal = 'This browser is too old for Earshot. Try a current Firefox, Chrome, Edge or Safari.';
  } else {
    s.message = insecurePageNote();
  }
  render();
  return {
    get pc() { return s.call ? s.call.pc : null; },
    get state() { return s.state; },
    get hideIp() { return s.lastHideIp; },
    get iceUpdated() { return s.iceUpdated; },
  };
}
