// strangers.js: the stranger page (`/`). Owns its part of the DOM and the
// page's state machine; drives call.js (the peer connection), and talks to
// the server through session.js (requests, answers, errors, microphone),
// which drives protocol.js. app.js starts it with the page's one
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
// Next to it the session keeps a mirror of what the server thinks we are
// (`server`: offline | idle | searching | call, and here `serverCall`) and
// the page says what we want (`wantSearch`). reconcile() sends whatever
// brings the two together, one request at a time (`pending`), so that races
// (End while a `matched` is in flight, a socket that drops and comes back)
// settle without the page second-guessing itself. An `error` says which
// request it answers (`re`).
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

import { parseInterests } from './protocol.js';
import { Call, MAX_CHAT_CHARS } from './call.js';
import { MeterView } from './meter.js';
import { BanNotice, SAFETY_WARNING, formatWait } from './safety.js';
import { Session, setText } from './session.js';
import { audioContext, callSupportProblem, insecurePageNote, remoteAudio } from './media.js';
import { countryCode, countryName, flagEmoji } from './country.js';

const $ = (id) => document.getElementById(id);
let el;
const findElements = () => ({
  start: $('start'),
  skip: $('skip'),
  end: $('end'),
  report: $('report'),
  interests: $('interests'),
  interestsError: $('interests-error'),
  partner: $('partner'),
  partnerCountry: $('partner-country'),
  countryFlag: $('country-flag'),
  countryName: $('country-name'),
  partnerInterests: $('partner-interests'),
  sharedInterests: $('shared-interests'),
  safety: $('safety'),
  safetyLine: $('safety-line'),
  safetyWords: $('safety-words'),
  safetyWarning: $('safety-warning'),
  safetyNote: $('safety-note'),
  chatInput: $('chat-input'),
  remoteAudio: $('remote-audio'),
  meterYou: $('meter-you'),
  meterStranger: $('meter-stranger'),
});

const s = {
  state: 'idle',
  message: null, // what happened, in plain words; null = the default for the state
  wantSearch: false,
  serverCall: null, // call id the server has us in (when session.server is 'call')
  call: null, // the current Call
  callInfo: null, // { interests, country } from `matched`
  unstable: false,
  interests: [],
  chatHadFocus: false,
  words: null, // the current call's safety words, once exchanged
  wordsWarning: null, // or why there are none (wordsexchange.js)
};

const SAFETY_TEXT = 'Read these words to each other. If they differ, someone is in the middle: end the call.';

let client;
let session;
let meterStranger;
let ban;

// ---------------------------------------------------------------- rendering

function setState(state, message = null) {
  s.state = state;
  s.message = message;
  s.unstable = false;
  render();
}

function statusText(online, serverNote) {
  switch (s.state) {
    case 'searching':
      if (!online) return serverNote;
      return s.message || 'Looking for someone…';
    case 'connecting':
      return s.message || 'Connecting…';
    case 'connected': {
      const base = s.unstable ? RECONNECTING_TEXT : (s.message || 'Connected — say hi');
      return online ? base : `${base} (The call goes on. Reconnecting to the server…)`;
    }
    default: {
      const base = s.message || (online ? 'Press Start to talk to a random stranger.' : '');
      if (online) return base;
      return base ? `${base} ${serverNote}` : serverNote;
    }
  }
}

const RECONNECTING_TEXT = 'Reconnecting… The connection to the stranger dropped (did your network change?). The call comes back on its own.';

const CONTROL_BUTTONS = () => [el.start, el.skip, el.end, session.muteButton, el.report];

function render() {
  const active = s.state === 'searching' || s.state === 'connecting' || s.state === 'connected';
  const focused = document.activeElement;

  session.showStatus(s.state, statusText);

  el.start.disabled = active || session.micPending || Boolean(session.fatal) || !session.consent.accepted || ban.banned;
  el.skip.disabled = !active;
  el.end.disabled = !active;
  session.muteButton.disabled = !session.localStream;
  session.muteButton.setAttribute('aria-pressed', String(session.muted));
  el.report.disabled = !s.call;
  el.interests.disabled = active || session.micPending;
  ban.render();

  const chatOpen = Boolean(s.call && s.call.chatOpen);
  if (!chatOpen && document.activeElement === el.chatInput) s.chatHadFocus = true;
  session.chat.setOpen(chatOpen);

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
  setText(el.sharedInterests, shared);

  const words = s.call && s.words ? s.words.join(' ') : '';
  const warning = s.call && !words ? s.wordsWarning : null;
  el.safety.hidden = !words && !warning;
  el.safetyLine.hidden = !words;
  el.safetyNote.hidden = !words;
  setText(el.safetyWords, words);
  if (words) el.safetyWords.dataset.words = words;
  else delete el.safetyWords.dataset.words;
  el.safety.dataset.warning = String(Boolean(warning));
  el.safetyWarning.hidden = !warning;
  setText(el.safetyWarning, warning ? SAFETY_WARNING : '');
  if (warning) el.safetyWarning.dataset.reason = warning;
  else delete el.safetyWarning.dataset.reason;
  setText(el.safetyNote, SAFETY_TEXT);

  session.hideIp.render(s.call ? s.call.hideIp : null);

  // A button that was just pressed may have become disabled; keep keyboard
  // users on the control that matters now instead of dropping them on <body>
  // (possibly later: Start stays disabled while the mic prompt is open).
  session.keepFocus(focused, (node) => CONTROL_BUTTONS().includes(node) && node.disabled, [active ? el.skip : el.start]);
  if (chatOpen && s.chatHadFocus) {
    s.chatHadFocus = false;
    if (document.activeElement === document.body || document.activeElement === null) el.chatInput.focus();
  }
}

function showInterestsError(message) {
  el.interestsError.textContent = message || '';
  el.interestsError.hidden = !message;
  if (message) el.interests.setAttribute('aria-invalid', 'true');
  else el.interests.removeAttribute('aria-invalid');
}

// ------------------------------------------------------------ user actions

async function start() {
  if (session.micPending || session.fatal || (s.state !== 'idle' && s.state !== 'ended')) return;
  if (!session.consent.accepted || ban.banned) return;
  const parsed = parseInterests(el.interests.value, client.welcome && client.welcome.limits);
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
  const asking = session.openMic('Start', () => s.state === 'idle' || s.state === 'ended');
  setState(s.state, 'Waiting for microphone permission…');
  const mic = await asking;
  if (mic.error) setState(s.state, mic.error);
  if (!mic.stream) return;
  s.interests = parsed.interests;
  s.wantSearch = true;
  session.chat.clear();
  setState('searching');
  session.reconcile();
}

function skip() {
  if (s.state !== 'searching' && s.state !== 'connecting' && s.state !== 'connected') return;
  if (!s.call) return; // already looking; nothing to skip
  const id = s.call.id;
  closeCall();
  s.wantSearch = true;
  if (client.ready && session.server === 'call' && s.serverCall === id && session.pending === null) {
    session.request('skip');
  }
  setState('searching', 'Looking for someone new…');
  session.reconcile();
}

function end() {
  if (s.state !== 'searching' && s.state !== 'connecting' && s.state !== 'connected') return;
  const hadCall = Boolean(s.call);
  closeCall();
  s.wantSearch = false;
  session.releaseMic();
  // `end` is answered by `idle` in every server state; sending it even while
  // a `search` is unanswered makes the server's last word `idle`.
  if (client.ready) session.request('end');
  if (hadCall) setState('ended', 'You ended the call. Press Start to talk to someone else.');
  else setState('idle', 'Stopped looking. Press Start when you\'re ready.');
}

function openReport() {
  if (!s.call || session.reportDialog.isOpen) return;
  const id = s.call.id;
  session.reportDialog.open({
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
  session.releaseMic();
  session.restoreFocus = true;
  if (client.ready && session.server === 'call' && s.serverCall === id) {
    // `report` ends the call on the server too; `idle` answers it.
    session.request('report', reason);
    setState('ended', 'Reported. You won\'t be matched with this person again.');
  } else {
    // The server no longer has us in this call (the connection to it
    // dropped): the report cannot be made, only the call ended.
    setState('ended', 'You ended the call. The report couldn\'t be sent: the connection to the server had dropped.');
  }
  session.reconcile();
}

function sendChat(text) {
  if (!s.call) return false;
  if ([...text].length > MAX_CHAT_CHARS) return false; // maxlength already stops this
  if (!s.call.sendChat(text)) return false;
  appendChat('you', text);
  return true;
}

/** Escape skips; the session handles the rest of the keys (M mutes). */
function onKey(event) {
  if (event.key !== 'Escape') return false;
  if (!el.skip.disabled) {
    event.preventDefault();
    skip();
  }
  return true;
}

function appendChat(who, text) {
  session.chat.append(who, who === 'you' ? 'You:' : 'Stranger:', text);
}

// -------------------------------------------------------------------- call

function beginCall(msg) {
  const id = msg.call;
  const call = new Call({
    id,
    polite: msg.polite,
    iceServers: client.iceServers,
    hideIp: session.hideIp.wanted,
    localStream: session.localStream,
    sendSignal: (payload) => {
      // Only while the server has us in this call: anything else would be
      // answered with an error, and errors count against the connection.
      if (client.ready && session.server === 'call' && s.serverCall === id) client.signal(id, payload);
    },
  });
  s.call = call;
  session.lastHideIp = call.hideIp;
  s.words = null;
  s.wordsWarning = null;
  s.callInfo = {
    interests: Array.isArray(msg.interests) ? msg.interests.filter((i) => typeof i === 'string') : [],
    country: countryCode(msg.country),
  };
  call.addEventListener('connectionstate', ({ detail }) => {
    if (s.call !== call) return;
    if (detail.reconnecting) {
      if (s.state === 'connected' && !s.unstable) { s.unstable = true; render(); }
    } else if (detail.state === 'connected') {
      if (s.state === 'connecting') setState('connected');
      else if (s.unstable) { s.unstable = false; render(); }
    }
  });
  call.addEventListener('track', ({ detail }) => {
    if (s.call !== call) return;
    el.remoteAudio.srcObject = detail.stream;
    remoteAudio().play(el.remoteAudio);
    meterStranger.attach(audioContext(), detail.stream);
  });
  call.addEventListener('safetywords', ({ detail }) => {
    if (s.call !== call) return;
    s.words = detail.words;
    s.wordsWarning = detail.warning;
    render();
  });
  call.addEventListener('chatopen', () => { if (s.call === call) render(); });
  call.addEventListener('chat', ({ detail }) => { if (s.call === call) appendChat('stranger', detail.text); });
  call.addEventListener('failed', ({ detail }) => { if (s.call === call) callFailed(detail.reason); });
  session.chat.clear();
  setState('connecting');
}

function closeCall() {
  if (!s.call) return;
  const subject = session.reportDialog.subject;
  if (subject && subject.kind === 'stranger' && subject.call === s.call.id) session.reportDialog.close();
  s.call.close();
  s.call = null;
  s.callInfo = null;
  s.words = null;
  s.wordsWarning = null;
  meterStranger.detach();
  remoteAudio().forget(el.remoteAudio);
  el.remoteAudio.srcObject = null;
  session.chat.clear();
}

const FAILURE_TEXT = {
  connection_failed: 'The connection to the stranger failed. Press Start to try someone else.',
  channel_closed: 'The stranger left the call. Press Start to talk to someone else.',
  timeout: 'Could not connect to the stranger. Press Start to try again.',
  connection_lost: 'The connection to the stranger dropped and could not be restored. Press Start to talk to someone else.',
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
  session.releaseMic();
  const server = session.server;
  if (client.ready && (server === 'searching' || (server === 'call' && (callId === null || s.serverCall === callId)))) {
    session.request('end');
  }
  setState(state, message);
  session.reconcile();
}

// ------------------------------------------------------------- signalling

/** The requests that bring the server's idea of us in line with ours. */
function reconcile() {
  if (s.call) return; // an ongoing call outlives the server's view of it
  if (session.server === 'call') {
    // The server has us in a call we do not have (e.g. `matched` arrived
    // after End): leave it. `idle` follows, and then we search if we want to.
    session.request('end');
  } else if (s.wantSearch && session.server === 'idle' && !session.held) {
    session.request('search', s.interests);
  } else if (!s.wantSearch && session.server === 'searching') {
    session.request('end');
  }
}

const CALL_ENDED_TEXT = {
  partner_skipped: 'Stranger skipped you. Looking for someone new…',
  partner_ended: 'Stranger ended the call. Looking for someone new…',
  partner_left: 'Stranger left. Looking for someone new…',
};

function onDisconnected() {
  s.serverCall = null;
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
}

function onSearching({ detail }) {
  session.server = 'searching';
  s.serverCall = null;
  if (session.pending === 'search' || session.pending === 'skip') session.pending = null;
  if (Array.isArray(detail.interests)) s.interests = detail.interests.filter((i) => typeof i === 'string');
  if (s.wantSearch && !s.call && s.state !== 'searching') setState('searching');
  session.reconcile();
}

function onMatched({ detail }) {
  if (!Number.isSafeInteger(detail.call)) return;
  session.server = 'call';
  s.serverCall = detail.call;
  if (s.wantSearch && !s.call && session.localStream && session.pending === null) beginCall(detail);
  session.reconcile();
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
  session.iceUpdated = 0;
  if (!s.call || s.call.closed) return;
  const live = session.server === 'call' && s.serverCall === s.call.id;
  if (s.call.updateIceServers(detail.ice_servers, live)) session.iceUpdated = 1;
}

function onCallEnded({ detail }) {
  if (session.server === 'call' && detail.call === s.serverCall) {
    session.server = 'searching'; // the server has already put us back in the queue
    s.serverCall = null;
  }
  if (s.call && detail.call === s.call.id) {
    const subject = session.reportDialog.subject;
    const reporting = Boolean(subject && subject.kind === 'stranger' && subject.call === detail.call);
    closeCall();
    s.wantSearch = true;
    const text = CALL_ENDED_TEXT[detail.reason] || 'The call ended. Looking for someone new…';
    setState('searching', reporting
      ? `The stranger left before you sent the report, so it wasn't sent. ${text.replace(/^[^.]*\. /, '')}`
      : text);
  }
  session.reconcile();
}

/** An `error`; `answered` when it answers the pending request (see session.js). */
function onError({ code, re, answered, detail }) {
  switch (code) {
    case 'wrong_call':
      return; // a late signal from the previous call: harmless
    case 'already_searching':
      if (answered) session.server = 'searching';
      return;
    case 'already_in_call':
      if (answered) {
        session.server = 'call'; // one we do not know: reconcile() leaves it
        s.serverCall = null;
      }
      return;
    case 'not_in_call':
      if (re === 'report') {
        // The call ended on the server just before the report reached it
        // (the stranger skipped or left): nothing was reported.
        if (session.server === 'call') session.server = 'searching';
        if (s.state === 'ended') s.message = 'You ended the call. The stranger had just left, so the report wasn\'t sent.';
      } else if (re === 'skip' && session.server === 'call') {
        session.server = 'idle';
      }
      return; // about a signal: one that crossed the end of its call
    case 'banned': {
      // Reported by several people: no matching for a while. `idle` follows.
      // Without `re`: found when the server put us back in the queue.
      const wait = Number.isFinite(detail.retry_after_ms) ? Math.max(0, detail.retry_after_ms) : 3600000;
      if (re === 'search' || re === 'skip' || session.server === 'searching') session.server = 'idle';
      ban.start(wait);
      if (s.call) return; // a call that is still going goes on; Start stays off afterwards
      s.wantSearch = false;
      session.releaseMic();
      session.restoreFocus = true;
      // Said once here (the status is announced); the notice counts down.
      setState('idle', `You can't be matched with anyone for ${formatWait(wait)}.`);
      return;
    }
    case 'bad_interests':
      endEverything(s.state === 'searching' ? 'idle' : s.state, null);
      showInterestsError('The server did not accept those interests. Use letters, digits, spaces and "-" only.');
      return;
    case 'rate_limited': {
      const wait = Number.isFinite(detail.retry_after_ms) ? detail.retry_after_ms : 1000;
      if (re === 'report') {
        // Over the report limit (`idle` came first): the call ended, but
        // the report may not count.
        if (s.state === 'ended') setState('ended', 'You ended the call. You\'ve sent a lot of reports lately, so this one may not count.');
        return;
      }
      // Our request was not taken, or (no `re`, several nodes) a search
      // was refused after `searching`: ask again once the server allows.
      if (answered || re === null) session.retryAfter(wait);
      return; // a dropped signal: perfect negotiation recovers or the call times out
    }
    default:
      console.warn('earshot: server error', code);
  }
}

// ------------------------------------------------------------------ wiring

/**
 * Run the stranger page on `signalling` (not yet connected). Returns the
 * read-only view the test hook exposes.
 */
export function startStrangers(signalling, safety) {
  client = signalling;
  el = findElements();
  session = new Session(client, safety, {
    name: 'strangers',
    primary: el.start,
    meter: new MeterView(el.meterYou),
    render,
    reconcile,
    onError,
    onDisconnected,
    onWelcome: () => { s.serverCall = null; },
    onIdle: () => { s.serverCall = null; },
    onMicEnded: () => endEverything('ended', 'Your microphone stopped (unplugged or access withdrawn). Press Start to try again.'),
    onMicReplaced: (track) => { if (s.call) s.call.replaceAudioTrack(track); },
    onKey,
    sendChat,
  });
  meterStranger = new MeterView(el.meterStranger);
  ban = new BanNotice($('ban-notice'), () => {
    if (s.state === 'idle' || s.state === 'ended') {
      setState(s.state, 'You can be matched again. Press Start when you\'re ready.');
    } else {
      render();
    }
  });
  client.addEventListener('searching', onSearching);
  client.addEventListener('matched', onMatched);
  client.addEventListener('signal', onSignal);
  client.addEventListener('ice_servers', onIceServers);
  client.addEventListener('call_ended', onCallEnded);
  el.start.addEventListener('click', start);
  el.skip.addEventListener('click', skip);
  el.end.addEventListener('click', end);
  el.report.addEventListener('click', openReport);
  el.interests.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.isComposing) {
      event.preventDefault();
      start();
    }
  });
  el.interests.addEventListener('input', () => showInterestsError(null));

  if (!session.fatal) s.message = insecurePageNote();
  render();
  return {
    get pc() { return s.call ? s.call.pc : null; },
    get state() { return s.state; },
    get hideIp() { return session.lastHideIp; },
    get iceUpdated() { return session.iceUpdated; },
  };
}
