// meter.js: how loud a MediaStream is, for the "You" and "Stranger" bars.
//
// A LevelMeter taps the stream with a WebAudio AnalyserNode and reports a
// level from 0 (silence) to 1 (full scale) each time read() is called, which
// the page does once per animation frame. It never connects to the output:
// the remote voice is already played by an <audio> element, and the local
// one must not be played back at all.

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
