// safety.js: the safety parts of the page that both views share.
//
// - The consent screen (`#consent`): shown as a modal dialog on every page
//   load, before Start or Join can be used: 18+, the rules, and safety tips.
//   Accepting only closes it; nothing about it is sent or stored anywhere,
//   so it comes back on the next page load.
// - The proof-of-work progress (`data-testid="pow-progress"`), fed by the
//   `pow` events of protocol.js while the server asks the page to prove it
//   is not a bot.
// - The report dialog (`#report-dialog`): asks for a reason and hands it to
//   whoever opened it (strangers.js for the stranger, members.js for one room
//   member). Escape or Cancel closes it without reporting.
// - The ban notice (`#ban-notice`, stranger page): after error `banned`, no
//   matching for a while, with a countdown (BanNotice).
// - formatWait(): "59 minutes", "45 seconds", for rate limits and bans.
// - SAFETY_WARNING: the one line shown instead of safety words when the
//   exchange that makes them (wordsexchange.js) failed or never finished.
//
// No storage, nothing logged.

import { REPORT_REASONS } from './protocol.js';

const $ = (id) => document.getElementById(id);

/**
 * Shown in place of the safety words, as plainly as words that differ: a
 * server in the middle could simply block the exchange.
 */
export const SAFETY_WARNING = 'Safety check failed: no safety words. Someone may be in the middle: end the call.';

/** A wait in plain words, rounded up: "1 second", "45 seconds", "59 minutes", "2 hours". */
export function formatWait(ms) {
  const s = Math.max(1, Math.ceil(ms / 1000));
  if (s < 60) return s === 1 ? '1 second' : `${s} seconds`;
  const m = Math.ceil(s / 60);
  if (m < 120) return m === 1 ? '1 minute' : `${m} minutes`;
  const h = Math.ceil(m / 60);
  if (h < 48) return `${h} hours`;
  const d = Math.ceil(h / 24);
  return `${d} days`;
}

function openModal(dialog) {
  if (dialog.open) return;
  if (typeof dialog.showModal === 'function') {
    try {
      dialog.showModal();
      return;
    } catch { /* not in the document, or already open non-modally */ }
  }
  dialog.setAttribute('open', '');
}

function closeModal(dialog) {
  if (typeof dialog.close === 'function') dialog.close();
  else dialog.removeAttribute('open');
}

/** True while a modal dialog (consent, report) has the page: page shortcuts stay off. */
export function dialogOpen(target = null) {
  if (target instanceof Element && target.closest('dialog')) return true;
  return Boolean(document.querySelector('dialog[open]'));
}

// ----------------------------------------------------------------- consent

/**
 * Show the consent screen. Returns {accepted, addEventListener('accept')}.
 * The views keep Start and Join disabled until `accepted`.
 */
export function startConsent() {
  const dialog = $('consent');
  const accept = $('consent-accept');
  const consent = new EventTarget();
  let accepted = false;
  Object.defineProperty(consent, 'accepted', { get: () => accepted });

  const done = () => {
    if (accepted) return;
    accepted = true;
    closeModal(dialog);
    document.body.dataset.consent = 'accepted';
    consent.dispatchEvent(new Event('accept'));
  };
  // Escape does not count as agreeing: the dialog stays. (A browser may
  // close it anyway after a second Escape; then it simply opens again.)
  dialog.addEventListener('cancel', (event) => event.preventDefault());
  dialog.addEventListener('close', () => {
    if (!accepted) openModal(dialog);
  });
  accept.addEventListener('click', done);
  document.body.dataset.consent = 'pending';
  openModal(dialog);
  // showModal() focuses the autofocus button; make sure, for older browsers.
  if (document.activeElement !== accept) accept.focus();
  return consent;
}

// ----------------------------------------------------------- proof of work

/** Show the `pow` progress of `client` in `#pow`. */
export function startPowProgress(client) {
  const box = $('pow');
  const bar = $('pow-progress');
  const text = $('pow-text');
  const meter = $('pow-bar');
  let hideTimer = 0;

  const show = (percent, words) => {
    clearTimeout(hideTimer);
    box.hidden = false;
    const value = String(percent);
    bar.setAttribute('aria-valuenow', value);
    bar.setAttribute('aria-valuetext', words);
    bar.dataset.state = 'solving';
    meter.value = percent;
    if (text.textContent !== words) text.textContent = words;
  };
  const hide = () => {
    clearTimeout(hideTimer);
    box.hidden = true;
    bar.dataset.state = 'idle';
  };

  client.addEventListener('pow', ({ detail }) => {
    const percent = Math.max(0, Math.min(100, Math.floor((detail.progress || 0) * 100)));
    if (detail.state === 'solving') {
      show(percent, `Checking you're not a bot… ${percent}%`);
    } else if (detail.state === 'solved') {
      show(100, 'Checking you\'re not a bot… 100%');
      bar.dataset.state = 'solved';
    } else if (detail.state === 'failed') {
      const words = detail.reason === 'no_crypto'
        ? 'The server asks for a check that this page can only do over HTTPS (or on localhost).'
        : 'The check that you\'re not a bot didn\'t work. Trying again…';
      show(percent, words);
      bar.dataset.state = 'failed';
    }
  });
  // Done once the server lets us in; a dropped socket starts over.
  client.addEventListener('welcome', () => {
    if (box.hidden) return;
    hideTimer = setTimeout(hide, 600);
  });
  client.addEventListener('disconnected', () => {
    // A search outlives its socket (protocol.js): keep showing it.
    const pow = client.pow;
    if (bar.dataset.state !== 'failed' && !(pow && pow.state === 'solving')) hide();
  });
  hide();
}

// ------------------------------------------------------------ report dialog

/**
 * The report dialog. open({title, note, submit, onReport}) shows it;
 * onReport(reason) runs on submit, reason one of REPORT_REASONS or null.
 * close() closes it without reporting (e.g. the person it is about left).
 */
export class ReportDialog {
  #dialog;
  #form;
  #title;
  #note;
  #reason;
  #submit;
  #cancel;
  #onReport = null;
  #returnFocus = null;
  #subject = null;

  constructor() {
    this.#dialog = $('report-dialog');
    this.#form = $('report-form');
    this.#title = $('report-title');
    this.#note = $('report-note');
    this.#reason = $('report-reason');
    this.#submit = $('report-submit');
    this.#cancel = $('report-cancel');
    this.#form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.#done();
    });
    this.#cancel.addEventListener('click', () => this.close());
    // Escape: the browser closes the dialog (`cancel`, then `close`).
    this.#dialog.addEventListener('close', () => this.#closed());
  }

  get isOpen() { return this.#dialog.open; }

  /** What the open dialog is about (whatever open() was given), or null. */
  get subject() { return this.isOpen ? this.#subject : null; }

  open({ subject = null, title, note, submit, onReport, returnFocus = null }) {
    this.#subject = subject;
    this.#onReport = onReport;
    this.#returnFocus = returnFocus || document.activeElement;
    this.#title.textContent = title;
    this.#note.textContent = note;
    this.#submit.textContent = submit;
    this.#reason.value = '';
    openModal(this.#dialog);
    this.#reason.focus();
  }

  close() {
    this.#onReport = null;
    if (this.#dialog.open) closeModal(this.#dialog);
    else this.#closed();
  }

  #done() {
    const onReport = this.#onReport;
    const value = this.#reason.value;
    const reason = REPORT_REASONS.includes(value) ? value : null;
    this.#onReport = null;
    this.#returnFocus = null; // the view decides where focus goes after reporting
    if (this.#dialog.open) closeModal(this.#dialog);
    if (onReport) onReport(reason);
  }

  #closed() {
    if (this.#dialog.open) return; // opened again before this `close` event arrived
    this.#onReport = null;
    this.#subject = null;
    const back = this.#returnFocus;
    this.#returnFocus = null;
    if (back && back.isConnected && !back.disabled && typeof back.focus === 'function') back.focus();
  }
}

// -------------------------------------------------------------- ban notice

/**
 * The ban notice: after error `banned`, Start stays off until the time is
 * over, and the notice counts down (its `data-retry-after-ms` too).
 */
export class BanNotice {
  #node;
  #onOver;
  #until = 0; // no matching until then (ms since epoch)
  #timer = 0;

  /** `onOver()` runs once the ban is over. */
  constructor(node, onOver) {
    this.#node = node;
    this.#onOver = onOver;
  }

  get banned() { return Date.now() < this.#until; }

  /** No matching for `ms` from now. */
  start(ms) {
    this.#until = Date.now() + ms;
    clearInterval(this.#timer);
    this.#timer = setInterval(() => {
      if (this.banned) {
        this.render();
        return;
      }
      clearInterval(this.#timer);
      this.#timer = 0;
      this.#until = 0;
      this.#onOver();
    }, 1000);
  }

  render() {
    const node = this.#node;
    const left = this.#until - Date.now();
    const text = left > 0
      ? `You were reported by several people. You can be matched again in ${formatWait(left)}.`
      : '';
    node.hidden = left <= 0;
    if (node.textContent !== text) node.textContent = text;
    if (left > 0) node.dataset.retryAfterMs = String(left);
    else delete node.dataset.retryAfterMs;
  }
}
