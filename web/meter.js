// meter.js: how loud a MediaStream is, for the level bars ("You",
// "Stranger", and one per room participant).
//
// A LevelMeter taps the stream with a WebAudio AnalyserNode and reports a
// level from 0 (silence) to 1 (full scale) each time read() is called. It
// never connects to the output: the remote voice is already played by an
// <audio> element, and the local one must not be played back at all.
//
// A MeterView is the bar on the page: an element with role="meter" filled
// with segments, redrawn once per animation frame (one shared loop for all
// bars) while a stream is attached.

const FLOOR_DB = -60; // quieter than this shows as an empty bar
const FALL_PER_READ = 0.03; // bars rise at once and fall back gently

export class LevelMeter {
  #source;
  #analyser;
  #samples;
  #level = 0;

  /**
   * @param {AudioContext} context
   * @param {MediaStream} stream  must have at least one audio track
   */
  constructor(context, stream) {
    this.#source = context.createMediaStreamSource(stream);
    this.#analyser = context.createAnalyser();
    this.#analyser.fftSize = 1024;
    this.#source.connect(this.#analyser);
    this.#samples = new Float32Array(this.#analyser.fftSize);
  }

  /** Current level in [0, 1]. */
  read() {
    if (!this.#analyser) return 0;
    this.#analyser.getFloatTimeDomainData(this.#samples);
    let sum = 0;
    for (const s of this.#samples) sum += s * s;
    const rms = Math.sqrt(sum / this.#samples.length);
    const db = rms > 0 ? 20 * Math.log10(rms) : -Infinity;
    const now = Math.min(1, Math.max(0, (db - FLOOR_DB) / -FLOOR_DB));
    this.#level = Math.max(now, this.#level - FALL_PER_READ);
    return this.#level;
  }

  /** Stop listening. Idempotent. */
  close() {
    if (!this.#analyser) return;
    this.#source.disconnect();
    this.#analyser = null;
    this.#level = 0;
  }
}

const SEGMENTS = 16;
const HOT_SEGMENTS = 3;
const live = new Set();
let frame = 0;

function drawAll() {
  frame = 0;
  for (const view of live) view.paint(view.meter ? view.meter.read() : 0);
  if (live.size > 0) frame = requestAnimationFrame(drawAll);
}

export class MeterView {
  #segs;
  #lit = 0;
  #now = 0;

  /** `node` gets the segments; it should carry role="meter" and a label. */
  constructor(node) {
    this.node = node;
    this.meter = null;
    for (let i = 0; i < SEGMENTS; i += 1) {
      const seg = document.createElement('span');
      seg.className = i >= SEGMENTS - HOT_SEGMENTS ? 'seg seg-hot' : 'seg';
      node.append(seg);
    }
    this.#segs = [...node.children];
    node.setAttribute('aria-valuemin', '0');
    node.setAttribute('aria-valuemax', '100');
    node.setAttribute('aria-valuenow', '0');
  }

  /** Show the level of `stream` (needs an AudioContext; silently no bar without one). */
  attach(context, stream) {
    this.detach();
    if (!context || !stream || stream.getAudioTracks().length === 0) return;
    try {
      this.meter = new LevelMeter(context, stream);
    } catch {
      return; // the bar stays empty; the call is unaffected
    }
    this.node.classList.add('live');
    live.add(this);
    if (!frame) frame = requestAnimationFrame(drawAll);
  }

  detach() {
    if (this.meter) this.meter.close();
    this.meter = null;
    live.delete(this);
    this.node.classList.remove('live');
    this.paint(0);
  }

  paint(level) {
    const lit = Math.round(level * SEGMENTS);
    if (lit !== this.#lit) {
      this.#segs.forEach((seg, i) => seg.classList.toggle('lit', i < lit));
      this.#lit = lit;
    }
    // Coarse steps: assistive tech does not need 60 updates a second.
    const now = Math.round(level * 10) * 10;
    if (now !== this.#now) {
      this.node.setAttribute('aria-valuenow', String(now));
      this.#now = now;
    }
  }
}
