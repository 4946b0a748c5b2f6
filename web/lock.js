// lock.js: a room's lock and passphrase (room page; PROTOCOL.md "Locked
// rooms"). Owns the lock controls (`#lock-controls`, the lock state line)
// and the passphrase form (`#passphrase-form`), what the page knows of the
// lock, and the lock requests (`room_lock`, `room_unlock`), which room.js
// sends through its Session when reconcile() asks.
//
// The passphrase form has a mode:
//
//   null     closed
//   'join'   the room is locked: joining needs the passphrase
//   'lock'   choosing a passphrase to lock (or re-lock) the room
//   'verify' someone else locked it: enter the passphrase to check newcomers
//            (shown as "reverify" when we already hold a key)
//
// and, while it works, a step: 'deriving' (PBKDF2, roomcrypto.js),
// 'checking' (the join with the verifier is on its way) or 'locking'.
//
// Re-locking: when the socket drops, the server may restart and forget the
// lock. Whoever knew the passphrase puts the lock back when they rejoin
// (`restoreLock`), and a lock by someone else within RELOCK_WINDOW_MS is
// taken as the same passphrase being put back.
//
// Privacy: the passphrase is only read from its field, turned into the
// verifier and the auth key (roomcrypto.js), and cleared from the field; the
// two derived values live in memory while we are in the room and are dropped
// on Leave or when the room is unlocked. Nothing is stored or logged.

import { cryptoAvailable, deriveRoomKeys } from './roomcrypto.js';
import { setText } from './session.js';

const RELOCK_WINDOW_MS = 20000;

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

const $ = (id) => document.getElementById(id);

export class RoomLock {
  locked = false; // as last told by the server (or learned from passphrase_required)
  // The passphrase, derived: known while in the room, dropped on Leave.
  verifier = null;
  authKey = null;
  restoreLock = false; // re-lock after rejoining if the server forgot the lock
  // Until when a lock from someone else is taken as the same passphrase
  // being put back after a server restart (by us and maybe others).
  expectRelockUntil = 0;
  wantRejoin = false; // leave and join again, to come back with the passphrase
  lockRequest = null; // {verifier, authKey} to send with room_lock
  pendingLock = null; // the one sent, awaiting room_lock_state
  unlockRequest = false;
  mode = null; // null | 'join' | 'lock' | 'verify'
  step = null; // null | 'deriving' | 'checking' | 'locking'
  error = null;
  rateLimited = false; // `error` is the rate-limit note
  #token = 0; // bumps to cancel a derivation nobody waits for any more
  #el;
  #room;

  /**
   * `room`: room.js's side: name, session, state and want (getters), mesh
   * (getter), logEvent(text), render(), leave(state, message), and alone()
   * (members are here but we are connected to none of them).
   */
  constructor(room) {
    this.#room = room;
    this.#el = {
      controls: $('lock-controls'),
      lock: $('room-lock'),
      unlock: $('room-unlock'),
      state: $('lock-state'),
      form: $('passphrase-form'),
      label: $('passphrase-label'),
      hint: $('passphrase-hint'),
      input: $('passphrase'),
      submit: $('passphrase-submit'),
      cancel: $('passphrase-cancel'),
      progress: $('passphrase-progress'),
      error: $('passphrase-error'),
    };
    const el = this.#el;
    el.lock.addEventListener('click', () => this.#onLockClick());
    el.unlock.addEventListener('click', () => this.#onUnlockClick());
    el.form.addEventListener('submit', (event) => this.#submit(event));
    el.cancel.addEventListener('click', () => this.#onCancel());
    el.input.addEventListener('input', () => {
      if (this.error && !this.rateLimited) {
        this.error = null;
        room.render();
      }
    });
  }

  /** The passphrase field (keyboard focus goes there while the form is open). */
  get input() { return this.#el.input; }

  /** The status line while joining a locked room, or null. */
  joiningText() {
    if (this.mode !== 'join') return null;
    return this.step ? PASS_STEP_TEXT[this.step] : 'This room is locked. Enter its passphrase to join.';
  }

  // ------------------------------------------------------------ rendering

  render() {
    const el = this.#el;
    const room = this.#room;
    const { pending } = room.session;
    const joined = room.state === 'joined';
    el.controls.hidden = !joined;
    const busy = pending === 'room_lock' || pending === 'room_unlock' || this.lockRequest !== null
      || this.unlockRequest || (this.mode === 'lock' && this.step !== null);
    setText(el.lock, this.locked ? 'Change passphrase' : 'Lock room');
    el.lock.disabled = busy || !cryptoAvailable();
    el.unlock.hidden = !this.locked;
    el.unlock.disabled = busy;
    el.state.dataset.locked = String(this.locked);
    setText(el.state, this.#stateText(joined));

    const mode = this.mode;
    el.form.hidden = mode === null;
    if (mode) {
      const t = PASS_TEXT[mode === 'verify' && this.authKey ? 'reverify' : mode];
      setText(el.label, t.label);
      setText(el.hint, t.hint);
      setText(el.submit, t.submit);
      setText(el.cancel, t.cancel);
      el.form.dataset.mode = mode;
    }
    el.input.disabled = this.step !== null;
    el.submit.disabled = this.step !== null || (mode === 'join' && room.session.held);
    setText(el.progress, this.step ? PASS_STEP_TEXT[this.step] : '');
    el.form.setAttribute('aria-busy', String(this.step !== null));
    setText(el.error, this.error || '');
    el.error.hidden = !this.error;
    if (this.error) el.input.setAttribute('aria-invalid', 'true');
    else el.input.removeAttribute('aria-invalid');
  }

  #stateText(joined) {
    if (!joined && !this.locked) return 'Lock: you\'ll see whether the room is locked when you join.';
    if (!this.locked) return 'Unlocked: anyone with the link can join.';
    if (!joined) return 'Locked: joining needs the passphrase.';
    if (!this.authKey) return 'Locked: new people need the passphrase. You haven\'t entered it, so you can\'t connect to newcomers.';
    return 'Locked: new people need the passphrase.';
  }

  // -------------------------------------------------------- the passphrase

  /** Drop the derived passphrase (the mesh stops checking newcomers with it). */
  forget() {
    this.verifier = null;
    this.authKey = null;
    const { mesh } = this.#room;
    if (mesh) mesh.setAuthKey(null);
  }

  close() {
    this.mode = null;
    this.step = null;
    this.error = null;
    this.rateLimited = false;
    this.#token += 1;
    this.#el.input.value = '';
  }

  /** Show the passphrase form; `grab` moves the focus to it even from elsewhere. */
  open(mode, error = null, grab = true) {
    const opening = this.mode !== mode;
    this.mode = mode;
    this.step = null;
    this.error = error;
    this.rateLimited = false;
    if (opening || error) {
      this.#token += 1;
      this.#el.input.value = '';
    }
    this.#room.render();
    const active = document.activeElement;
    if (grab || !active || active === document.body) this.#el.input.focus();
  }

  /** Leave, or the join failed: forget everything about the lock. */
  reset() {
    this.forget();
    this.locked = false;
    this.restoreLock = false;
    this.expectRelockUntil = 0;
    this.wantRejoin = false;
    this.lockRequest = null;
    this.unlockRequest = false;
    this.close();
  }

  #onLockClick() {
    if (this.#room.state !== 'joined') return;
    // The field already holds a passphrase for locking: lock with it.
    if (this.mode === 'lock' && this.#el.input.value !== '') {
      this.#submit();
      return;
    }
    this.open('lock');
  }

  #onUnlockClick() {
    if (this.#room.state !== 'joined' || !this.locked) return;
    this.lockRequest = null;
    this.unlockRequest = true;
    if (this.mode === 'lock') this.close();
    this.#room.render();
    this.#room.session.reconcile();
  }

  #onCancel() {
    if (this.mode === 'join') {
      this.#room.leave('idle', 'You didn\'t join: the room is locked. Press Join room to try again.');
      return;
    }
    this.close();
    this.#room.render();
  }

  async #submit(event) {
    if (event) event.preventDefault();
    const room = this.#room;
    const el = this.#el;
    const mode = this.mode;
    if (!mode || this.step !== null) return;
    if (mode === 'join' && room.session.held) return;
    const passphrase = el.input.value;
    if (passphrase === '') {
      this.error = 'Type the passphrase first.';
      room.render();
      el.input.focus();
      return;
    }
    if (!cryptoAvailable()) {
      this.error = 'This page can\'t do the passphrase maths (it needs HTTPS, or localhost).';
      room.render();
      return;
    }
    const token = ++this.#token;
    this.step = 'deriving';
    this.error = null;
    room.render();
    let keys;
    try {
      keys = await deriveRoomKeys(passphrase, room.name);
    } catch {
      if (token !== this.#token) return;
      this.step = null;
      this.error = 'The key could not be derived in this browser.';
      room.render();
      return;
    }
    if (token !== this.#token || this.mode !== mode) return; // cancelled or left meanwhile
    el.input.value = '';
    if (mode === 'join') {
      if (room.state !== 'joining' || !room.want) return;
      this.verifier = keys.verifier;
      this.authKey = keys.authKey;
      this.step = 'checking';
      room.render();
      room.session.reconcile();
    } else if (mode === 'lock') {
      if (room.state !== 'joined') return;
      this.unlockRequest = false;
      this.lockRequest = keys;
      this.step = 'locking';
      room.render();
      room.session.reconcile();
    } else {
      // 'verify': nothing to check it against but the next newcomer's `auth`.
      this.authKey = keys.authKey;
      this.verifier = keys.verifier;
      if (room.mesh) room.mesh.setAuthKey(keys.authKey);
      this.close();
      if (room.state === 'joined' && room.alone()) {
        // Connected to nobody (say, everyone else knows the passphrase and
        // refused us after a server restart): nothing to lose by joining
        // again, this time with the passphrase, as a newcomer who can prove it.
        this.wantRejoin = true;
        room.logEvent('You entered the passphrase: joining again with it.');
        room.session.reconcile();
      } else {
        room.logEvent('You entered the passphrase: newcomers are checked against it.');
      }
      room.render();
    }
  }

  // ------------------------------------------------------------- requests

  /** In the room on the server: send the lock request we have, if any (reconcile). */
  reconcile() {
    const { session } = this.#room;
    if (this.wantRejoin) {
      this.wantRejoin = false;
      session.request('end'); // `idle` follows, then we join with the verifier
    } else if (this.lockRequest) {
      this.pendingLock = this.lockRequest;
      this.lockRequest = null;
      session.request('room_lock', this.pendingLock.verifier);
    } else if (this.unlockRequest) {
      this.unlockRequest = false;
      session.request('room_unlock');
    }
  }

  /**
   * A lock request (`type`) failed; `again`: send it again later (rate
   * limited), else only a lock is kept for after we rejoin (not in the room).
   */
  failed(type, again) {
    if (type === 'room_lock') this.lockRequest = this.lockRequest || this.pendingLock;
    else if (again) this.unlockRequest = true;
    this.pendingLock = null;
  }

  /** The server refused our `room_lock` as malformed. */
  refused() {
    this.pendingLock = null;
    if (this.mode === 'lock') {
      this.step = null;
      this.error = 'The server did not accept the lock. Try again.';
    }
  }

  /** The socket dropped; `joined`: we were in the room. */
  onDisconnected(joined) {
    if (this.pendingLock) {
      // Unknown whether it was applied; ask again once back in the room.
      this.lockRequest = this.lockRequest || this.pendingLock;
      this.pendingLock = null;
    }
    if (joined) this.restoreLock = this.locked && Boolean(this.authKey && this.verifier);
  }

  /** `room_joined` said whether the room is `locked`; before the mesh is made. */
  onJoined(locked) {
    this.locked = locked;
    if (this.mode === 'join') this.close();
    if (this.mode === 'verify' && (!locked || this.authKey)) this.close();
    if (!locked) {
      // A lock the server forgot (restart) is put back by whoever knows it.
      if (this.restoreLock && this.verifier && this.authKey) {
        this.lockRequest = { verifier: this.verifier, authKey: this.authKey };
        this.expectRelockUntil = Date.now() + RELOCK_WINDOW_MS;
      } else {
        this.forget();
      }
    }
    this.restoreLock = false;
  }

  /** The rate limit on passphrase attempts is over: returns whether it was. */
  retryReady() {
    if (!this.rateLimited) return false;
    this.rateLimited = false;
    this.error = null;
    setText(this.#el.progress, '');
    return this.mode === 'join';
  }

  /** `room_lock_state`: someone (maybe us) locked or unlocked the room. */
  onLockState(locked) {
    const room = this.#room;
    const { session } = room;
    const ours = (session.pending === 'room_lock' && locked) || (session.pending === 'room_unlock' && !locked);
    if (ours) session.pending = null;
    if (room.state !== 'joined') {
      this.locked = locked;
      room.render();
      session.reconcile();
      return;
    }
    if (ours && locked) {
      const keys = this.pendingLock;
      this.pendingLock = null;
      this.verifier = keys ? keys.verifier : null;
      this.authKey = keys ? keys.authKey : null;
      if (this.mode === 'lock' || this.mode === 'verify') this.close();
      room.logEvent(this.locked
        ? 'You changed the passphrase. Newcomers need the new one.'
        : 'You locked the room. Newcomers need the passphrase; everyone here stays connected.');
    } else if (ours) {
      this.forget();
      room.logEvent('You unlocked the room. Anyone with the link can join.');
    } else if (locked && this.authKey && Date.now() < this.expectRelockUntil) {
      // Someone else who knows the passphrase put the lock back after a
      // restart, as we were about to.
      room.logEvent('The room is locked again.');
    } else if (locked && this.authKey) {
      // A re-lock, perhaps with a new passphrase. Keep the key we have: a
      // stale key can only make us refuse newcomers, never let anyone in.
      room.logEvent('Someone locked the room again, perhaps with a new passphrase.');
      if (this.mode === null) this.open('verify', null, false);
    } else if (locked) {
      room.logEvent('Someone locked the room. Newcomers need the passphrase; everyone here stays connected.');
      if (this.mode !== 'lock' || this.step === null) {
        this.mode = null;
        this.open('verify', null, false);
      }
    } else {
      this.forget();
      room.logEvent('Someone unlocked the room. Anyone with the link can join.');
      if (this.mode === 'verify') this.close();
    }
    this.locked = locked;
    if (room.mesh) {
      room.mesh.setLocked(locked);
      room.mesh.setAuthKey(this.authKey);
    }
    room.render();
    session.reconcile();
  }
}
