// tile.js: the people in a room, one tile each (`data-testid="participant"`
// in `#participants`): name, level bar, video, volume, the connection's state
// and safety words, muted and refused notes, and a Report button on everyone
// else's. Tiles (the list) keeps them in order (you first, then everyone in
// the order they joined) and counts who is here and who is in the call.
//
// It only shows what members.js tells it (from mesh.js and call.js); it sends
// nothing. Audio plays from each tile's own <audio> element; the <video> is
// muted.

import { MeterView } from './meter.js';
import { audioContext, remoteAudio } from './media.js';
import { setText } from './session.js';
import { SAFETY_WARNING } from './safety.js';

/** How a room member is named: peer ids are all anyone knows of them. */
export const guestName = (peer) => `Guest ${peer}`;

/** One participant: name, level bar, video, volume, muted/refused notes. */
export class Tile {
  /** `onReport(peer)`: its Report button was pressed (not on your own tile). */
  constructor(peer, self, onReport) {
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
    this.wordsWarning = null; // why there are no words (wordsexchange.js)

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
    const warning = document.createElement('p');
    warning.className = 'tile-safety-warning safety-warning';
    warning.setAttribute('data-testid', 'safety-warning');
    warning.setAttribute('role', 'alert');
    warning.hidden = true;
    this.safetyWarning = warning;

    const refused = document.createElement('p');
    refused.className = 'tile-refused';
    refused.setAttribute('data-testid', 'peer-refused');
    refused.hidden = true;
    this.refusedLine = refused;

    li.append(video, head, state, safety, warning, meterNode);
    if (!self) this.addPartnerControls(peer, onReport);
    li.append(refused);
    this.render();
  }

  /** A partner's own controls: its volume, its audio and Report. */
  addPartnerControls(peer, onReport) {
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
    report.addEventListener('click', () => onReport(peer));
    this.reportButton = report;
    actions.append(report);
    this.li.append(label, audio, actions);
  }

  /** In the call: connected and neither refused nor failed nor reported. */
  get inCall() {
    return !this.refused && !this.failed && !this.reported
      && ['connected', 'disconnected', 'reconnecting'].includes(this.connection);
  }

  /** A connection state, or 'reconnecting' (call.js restarts a dropped one). */
  setConnection(state) {
    if (['connected', 'disconnected', 'reconnecting', 'connecting', 'new'].includes(state)) {
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

  setSafetyWords(words, warning) {
    this.words = words;
    this.wordsWarning = words ? null : warning || null;
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
      remoteAudio().play(this.audio);
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
    if (this.audio) {
      remoteAudio().forget(this.audio);
      this.audio.srcObject = null;
    }
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
    else if (this.connection === 'disconnected' || this.connection === 'reconnecting') state = 'Reconnecting…';
    else if (this.connection === 'failed' || this.connection === 'closed') state = 'Disconnected';
    else state = 'Connecting…';
    setText(this.stateLine, state);
    this.stateLine.hidden = !state;
    const words = this.words && !gone ? this.words.join(' ') : '';
    this.safetyLine.hidden = !words;
    setText(this.safetyWords, words);
    if (words) this.safetyWords.dataset.words = words;
    else delete this.safetyWords.dataset.words;
    setText(this.safetyLabel, 'Safety words:');
    const warning = !words && !gone && !this.self ? this.wordsWarning : null;
    this.safetyWarning.hidden = !warning;
    setText(this.safetyWarning, warning ? SAFETY_WARNING : '');
    if (warning) this.safetyWarning.dataset.reason = warning;
    else delete this.safetyWarning.dataset.reason;
    setText(this.refusedLine, this.refused || '');
    this.refusedLine.hidden = !this.refused;
    if (this.slider) this.slider.disabled = gone;
    if (this.reportButton) {
      this.reportButton.disabled = this.reported;
      setText(this.reportButton, this.reported ? 'Reported' : 'Report');
    }
  }
}

/** The tiles of a room, by peer id ('self' for yours), in `list`. */
export class Tiles {
  #list;
  #tiles = new Map();
  #onReport;
  #onRemove;

  /**
   * `onReport(peer)`: a tile's Report button; `onRemove(key)`: a tile goes
   * (key null: all of them), so that a report dialog about it can close.
   */
  constructor(list, { onReport, onRemove }) {
    this.#list = list;
    this.#onReport = onReport;
    this.#onRemove = onRemove;
  }

  get size() { return this.#tiles.size; }

  get(key) { return this.#tiles.get(key); }

  has(key) { return this.#tiles.has(key); }

  values() { return this.#tiles.values(); }

  add(peer, self = false) {
    const key = self ? 'self' : peer;
    if (this.#tiles.has(key)) return this.#tiles.get(key);
    const tile = new Tile(peer, self, this.#onReport);
    this.#tiles.set(key, tile);
    // You first, then everyone in the order they joined (peer ids grow).
    const after = [...this.#list.children].find((li) => li.dataset.peer !== 'self' && !self && Number(li.dataset.peer) > peer);
    if (self) this.#list.prepend(tile.li);
    else this.#list.insertBefore(tile.li, after || null);
    return tile;
  }

  remove(key) {
    const tile = this.#tiles.get(key);
    if (!tile) return;
    this.#onRemove(key);
    tile.remove();
    this.#tiles.delete(key);
  }

  clear() {
    this.#onRemove(null);
    for (const tile of this.#tiles.values()) tile.remove();
    this.#tiles.clear();
  }

  /** The other members we are in the call with. */
  othersInCall() {
    let n = 0;
    for (const tile of this.#tiles.values()) if (!tile.self && tile.inCall) n += 1;
    return n;
  }

  /** The other members, leaving out those we reported (we hung up on them). */
  othersHere() {
    let n = 0;
    for (const tile of this.#tiles.values()) if (!tile.self && !tile.reported) n += 1;
    return n;
  }

  /** Whether another member's tile shows safety words. */
  showWords() {
    return [...this.#tiles.values()].some((t) => !t.self && t.words && !t.refused && !t.failed && !t.reported);
  }
}
