// session.js: the controller that the stranger page (strangers.js) and the
// room page (room.js) share. Each page makes one Session on the page's one
// SignallingClient and keeps only what is its own: its state machine, what
// it wants from the server, and its part of the DOM.
//
// Requests. A page asks the server for one thing at a time. The session
// keeps the page's mirror of the server:
//
//   server   what the server thinks we are doing: 'offline' until `welcome`,
//            'idle' after it (and after every `idle`); the page sets the rest
//            ('searching', 'call'; 'room', 'other')
//   pending  the `type` of the request awaiting its answer ('search',
//            'room_join', ...), or null
//
// reconcile() calls the page's own reconcile (which sends, with request(),
// whatever brings the server in line with what the page wants) only while
// the socket is ready and nothing is pending.
//
// Answers. `idle` answers `end` and `report`; the page settles its other
// answers itself (`searching`, `room_joined`, ...). An `error` answers the
// pending request exactly when its `re` names it (PROTOCOL.md `error`), so
// no page guesses: the page's onError gets {code, re, answered, detail},
// with `pending` already cleared when `answered`. `unsupported_version`
// makes the fatal note; every other code is the page's.
//
// Retry and backoff. When the server rate-limits a request, the page calls
// retryAfter(ms): the error is then not followed by a reconcile (sending
// again at once would only be refused again), `held` stays true until that
// time for the requests the page holds back (a search, a room join), and
// when it comes the page's onRetry runs and reconcile() asks again. (The
// socket's own reconnect backoff is protocol.js's.)
//
// Notes. `offlineNote` (the server said it is full) and serverNote() (what
// to say while the socket is not ready); `fatal` for a problem no button
// fixes (an old browser, an out-of-date page).
//
// Microphone. openMic() asks for it inside the click that wants it;
// `localStream`, `micPending` and `muted` are the page's to read; the mute
// button and the M key toggle mute. A track that ends, or stays muted by
// the system (a phone call, the page in the background), is replaced by a
// new one in the same `localStream` and handed to the page's
// onMicReplaced (which swaps it into its calls, with no new call); only
// when the microphone cannot be had again does the page's onMicEnded run.
// The page checks the track again whenever it becomes visible, and plays
// the other side's audio again (media.js remoteAudio).
//
// Also here, because both pages have them: the chat view, the "Hide my IP
// address" control and its words for each page, `lastHideIp` and
// `iceUpdated` for the test hook, keeping keyboard users on a usable
// control (keepFocus), and setText().
//
// Privacy: nothing is stored or logged here.

import { ChatView } from './chat.js';
import { HideIpControl } from './privacy.js';
import { dialogOpen } from './safety.js';
import {
  MIC_CONSTRAINTS, audioContext, micErrorMessage, remoteAudio, stopStream, useCallAudioSession,
} from './media.js';

const $ = (id) => document.getElementById(id);

const TOO_OLD = 'This browser is too old for Earshot. Try a current Firefox, Chrome, Edge or Safari.';
const OUT_OF_DATE = 'This page is out of date. Please reload it.';
const SERVER_FULL = 'The server is full. Trying again shortly…';
// A system mute this long (not a blip) counts as a lost microphone.
const MIC_MUTE_GRACE_MS = 1500;

/** What the "Hide my IP address" note says on each page (privacy.js). */
const HIDE_IP_TEXT = {
  strangers: {
    unavailable: 'Hiding your IP address isn\'t available on this server: in a call, the stranger\'s browser can see your IP address.',
    off: 'Off: in a call, the stranger\'s browser can see your IP address.',
    relayed: 'This call is relayed: the stranger can\'t see your IP address.',
    direct: 'This call is direct: the stranger\'s browser can see your IP address.',
    nextRelayed: 'Applies from your next call. This call stays direct: the stranger\'s browser can see your IP address.',
    nextDirect: 'Applies from your next call. This call stays relayed.',
  },
  room: {
    unavailable: 'Hiding your IP address isn\'t available on this server: in the room, the others\' browsers can see your IP address.',
    off: 'Off: in the room, the others\' browsers can see your IP address.',
    relayed: 'Your connections are relayed: the others in the room can\'t see your IP address.',
    direct: 'Your connections are direct: the others\' browsers can see your IP address.',
    nextRelayed: 'Applies to people who connect from now on. Those already connected keep a direct connection and can see your IP address.',
    nextDirect: 'Applies to people who connect from now on: they will see your IP address. Those already connected stay relayed.',
  },
};

/** The SignallingClient method that sends each request type. */
const SENDERS = {
  search: 'search',
  skip: 'skip',
  end: 'end',
  report: 'report',
  room_join: 'roomJoin',
  room_lock: 'roomLock',
  room_unlock: 'roomUnlock',
};

/** Set a node's text, leaving it alone when it is already that. */
export function setText(node, text) {
  // Rewriting identical text can make screen readers repeat it.
  if (node.textContent !== text) node.textContent = text;
}

/** Whether `node` can take the focus: enabled and not inside something hidden. */
export function focusable(node) {
  return Boolean(node) && !node.disabled && !node.closest('[hidden]');
}

function isTyping(target) {
  return target instanceof HTMLElement
    && (target.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(target.tagName));
}

export class Session {
  server = 'offline';
  pending = null;
  everReady = false;
  offlineNote = null;
  fatal = null;
  retryAt = 0; // held until then (ms since epoch)
  localStream = null;
  micPending = false;
  muted = false;
  restoreFocus = false; // move the focus to a usable control at the next keepFocus()
  lastHideIp = null; // whether the latest peer connection was relay only
  iceUpdated = 0; // peer connections the last `ice_servers` was applied to
  #page;
  #retryTimer = 0;
  #retried = false; // the page called retryAfter() while handling an error
  #micRecovering = false;

  /**
   * @param {import('./protocol.js').SignallingClient} client  not yet connected
   * @param {object} safety  {consent, reportDialog} from app.js
   * @param {object} page  the page's side:
   *   name ('strangers' | 'room'), primary (the Start or Join button),
   *   meter (a MeterView for your own voice, or null), render(),
   *   reconcile(), onError({code, re, answered, detail}), onMicEnded(),
   *   sendChat(text) → whether it went out; and optionally onMicReplaced(track),
   *   onWelcome(),
   *   onDisconnected(detail), onIdle(), onRetry(), onMute(muted),
   *   onKey(event) → true when it handled the key.
   */
  constructor(client, safety, page) {
    this.client = client;
    this.consent = safety.consent;
    this.reportDialog = safety.reportDialog;
    this.#page = page;
    this.status = $('status');
    this.muteButton = $('mute');
    // Made before the listeners below: it reads each `welcome` first.
    this.hideIp = new HideIpControl(
      client,
      { box: $('hide-ip-box'), input: $('hide-ip'), note: $('hide-ip-note') },
      HIDE_IP_TEXT[page.name],
    );
    this.hideIp.addEventListener('change', () => page.render());
    this.chat = new ChatView({
      log: $('chat-log'),
      form: $('chat-form'),
      input: $('chat-input'),
      send: $('chat-send'),
      onSend: (text) => page.sendChat(text),
    });
    client.addEventListener('welcome', () => this.#onWelcome());
    client.addEventListener('disconnected', ({ detail }) => this.#onDisconnected(detail));
    client.addEventListener('idle', () => this.#onIdle());
    client.addEventListener('error', ({ detail }) => this.#onError(detail));
    this.muteButton.addEventListener('click', () => this.toggleMute());
    this.consent.addEventListener('accept', () => {
      page.render();
      if (!page.primary.disabled) page.primary.focus();
    });
    document.addEventListener('keydown', (event) => this.#onKey(event));
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') this.#onVisible();
    });
    if (typeof WebSocket !== 'function') this.fatal = TOO_OLD;
  }

  // ------------------------------------------------------------- requests

  /** Send whatever brings the server's idea of us in line with the page's. */
  reconcile() {
    if (!this.client.ready || this.pending !== null) return;
    this.#page.reconcile();
  }

  /** Send request `type` (a client message type) and await its answer. */
  request(type, ...args) {
    this.pending = type;
    this.client[SENDERS[type]](...args);
  }

  /** Whether the page should hold back what the server rate-limited. */
  get held() { return Date.now() < this.retryAt; }

  /**
   * Ask again in `ms` (run the page's onRetry, then reconcile); `hold`:
   * and say `held` until then.
   */
  retryAfter(ms, hold = true) {
    const wait = Math.max(0, ms);
    if (hold) this.retryAt = Date.now() + wait;
    this.#retried = true;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => {
      if (this.#page.onRetry) this.#page.onRetry();
      this.#page.render();
      this.reconcile();
    }, wait + 50);
  }

  /**
   * Show the page's `state` on the status line (`data-state`), in the words
   * `text(online, serverNote)` gives, unless the fatal note says it all.
   */
  showStatus(state, text) {
    this.status.dataset.state = state;
    setText(this.status, this.fatal || text(this.client.ready, this.serverNote()));
  }

  /** What to say about the server while the socket is not ready. */
  serverNote() {
    return this.offlineNote
      || (this.everReady ? 'Reconnecting to the server…' : 'Connecting to the server…');
  }

  #onWelcome() {
    this.server = 'idle';
    this.pending = null;
    this.everReady = true;
    this.offlineNote = null;
    if (this.#page.onWelcome) this.#page.onWelcome();
    this.reconcile();
    this.#page.render();
  }

  #onDisconnected(detail) {
    this.server = 'offline';
    this.pending = null;
    this.offlineNote = detail.code === 1013 ? SERVER_FULL : null;
    if (this.#page.onDisconnected) this.#page.onDisconnected(detail);
    this.#page.render();
  }

  #onIdle() {
    this.server = 'idle';
    if (this.pending === 'end' || this.pending === 'report') this.pending = null;
    if (this.#page.onIdle) this.#page.onIdle();
    this.reconcile();
    this.#page.render();
  }

  #onError(detail) {
    const code = typeof detail.code === 'string' ? detail.code : 'unknown';
    const re = typeof detail.re === 'string' ? detail.re : null;
    if (code === 'unsupported_version') {
      this.fatal = OUT_OF_DATE;
      this.#page.render();
      return;
    }
    const answered = re !== null && re === this.pending;
    if (answered) this.pending = null;
    this.#retried = false;
    this.#page.onError({ code, re, answered, detail });
    if (!this.#retried) this.reconcile();
    this.#page.render();
  }

  // ----------------------------------------------------------- microphone

  /**
   * Ask for the microphone; call it inside the click that wants it (it
   * starts the shared AudioContext too). `micPending` is true from the
   * call until it resolves, to {stream} (now `localStream`), {error} (in
   * words, naming `button` as what to press again) or {stale: true} when
   * `stillWanted()` says no by then (the stream is stopped).
   */
  async openMic(button, stillWanted) {
    audioContext();
    useCallAudioSession();
    this.micPending = true;
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
    } catch (err) {
      this.micPending = false;
      return { error: micErrorMessage(err, button) };
    }
    this.micPending = false;
    if (!stillWanted()) {
      stopStream(stream);
      return { stale: true };
    }
    if (stream.getAudioTracks().length === 0) {
      stopStream(stream);
      return { error: micErrorMessage({ name: 'NotFoundError' }, button) };
    }
    this.#setLocalStream(stream);
    return { stream };
  }

  #setLocalStream(stream) {
    this.releaseMic();
    this.localStream = stream;
    for (const track of stream.getAudioTracks()) this.#watchTrack(stream, track);
    if (this.#page.meter) this.#page.meter.attach(audioContext(), stream);
  }

  #watchTrack(stream, track) {
    track.enabled = !this.muted;
    const current = () => this.localStream === stream && stream.getAudioTracks().includes(track);
    // Unplugged, revoked, or taken by the system (a phone call): get it again.
    track.addEventListener('ended', () => { if (current()) this.#recoverMic(); });
    track.addEventListener('mute', () => {
      setTimeout(() => {
        if (current() && track.muted && document.visibilityState === 'visible') this.#recoverMic();
      }, MIC_MUTE_GRACE_MS);
    });
  }

  // The microphone track is gone: ask for it again and swap the new track
  // into the same stream and the page's calls; say so only if that fails.
  async #recoverMic() {
    const stream = this.localStream;
    if (!stream || this.#micRecovering) return;
    this.#micRecovering = true;
    let fresh = null;
    try {
      fresh = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
    } catch {
      fresh = null;
    }
    this.#micRecovering = false;
    if (this.localStream !== stream) {
      stopStream(fresh); // released meanwhile
      return;
    }
    const track = fresh ? fresh.getAudioTracks()[0] : null;
    if (!track) {
      stopStream(fresh);
      this.#page.onMicEnded();
      return;
    }
    for (const old of stream.getAudioTracks()) {
      stream.removeTrack(old);
      old.stop();
    }
    stream.addTrack(track);
    this.#watchTrack(stream, track);
    if (this.#page.meter) this.#page.meter.attach(audioContext(), stream);
    if (this.#page.onMicReplaced) this.#page.onMicReplaced(track);
  }

  // Back from the background: a phone may have taken the microphone and
  // paused the audio meanwhile.
  #onVisible() {
    const track = this.localStream ? this.localStream.getAudioTracks()[0] : null;
    if (this.localStream && (!track || track.readyState === 'ended' || track.muted)) this.#recoverMic();
    audioContext();
    remoteAudio().resume();
  }

  /** Stop the microphone (and unmute, for next time). */
  releaseMic() {
    if (this.#page.meter) this.#page.meter.detach();
    stopStream(this.localStream);
    this.localStream = null;
    this.muted = false;
  }

  toggleMute() {
    if (!this.localStream) return;
    this.muted = !this.muted;
    for (const track of this.localStream.getAudioTracks()) track.enabled = !this.muted;
    if (this.#page.onMute) this.#page.onMute(this.muted);
    this.#page.render();
  }

  // ------------------------------------------------------ keyboard, focus

  #onKey(event) {
    if (event.defaultPrevented || event.isComposing || event.ctrlKey || event.metaKey || event.altKey) return;
    // Escape in a dialog closes the dialog; it must not also skip the call.
    if (dialogOpen(event.target)) return;
    if (this.#page.onKey && this.#page.onKey(event)) return;
    if ((event.key === 'm' || event.key === 'M') && !event.repeat && !isTyping(event.target)) {
      if (!this.muteButton.hidden && !this.muteButton.disabled) {
        event.preventDefault();
        this.toggleMute();
      }
    }
  }

  /**
   * After a render: a control that was just used may have gone (disabled,
   * or hidden). Keep keyboard users on the first usable of `next` instead
   * of dropping them on <body>, now or at a later render. `focused` is what
   * had the focus before the render; `gone(node)` says whether focus on
   * that control counts as lost.
   */
  keepFocus(focused, gone, next) {
    if (focused && focused !== document.body && gone(focused)) this.restoreFocus = true;
    if (!this.restoreFocus) return;
    const active = document.activeElement;
    if (active && active !== document.body && !gone(active)) {
      this.restoreFocus = false;
      return;
    }
    const target = next.find(focusable);
    if (target) {
      target.focus();
      this.restoreFocus = false;
    }
  }
}
