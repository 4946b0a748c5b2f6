// media.js: microphone, camera and audio-context helpers shared by the
// stranger page (strangers.js), the room page (room.js) and what they share
// (session.js: the microphone).
//
// Everything that turns a getUserMedia failure into words a person can act
// on lives here, so both pages say the same thing. No state but the one
// AudioContext the level meters share, and the "Tap to hear" button
// (TapToHear) for browsers that refuse to play without a tap.

export const MIC_CONSTRAINTS = Object.freeze({
  audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  video: false,
});

export const CAMERA_CONSTRAINTS = Object.freeze({
  audio: false,
  video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24, max: 30 } },
});

const INSECURE = 'The microphone only works on a secure page. Open Earshot over HTTPS, or on localhost.';

/** Why this page cannot make calls at all, or null when it can. */
export function callSupportProblem() {
  if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) return INSECURE;
  if (typeof RTCPeerConnection !== 'function') {
    return 'This browser can\'t make voice calls (no WebRTC). Try a current Firefox, Chrome, Edge or Safari.';
  }
  return null;
}

/** The note shown from the start when the microphone cannot work here. */
export function insecurePageNote() {
  return !window.isSecureContext || !navigator.mediaDevices ? INSECURE : null;
}

/**
 * A getUserMedia failure in plain words; `button` names what to press to
 * try again ('Start', 'Join room').
 */
export function micErrorMessage(err, button = 'Start') {
  switch (err && err.name) {
    case 'NotAllowedError':
    case 'PermissionDeniedError':
      return `Microphone access is blocked, so you can't talk yet. To allow it, click the lock or settings icon next to the address bar, set Microphone to Allow, and press ${button} again. (On a phone: the browser's site settings.)`;
    case 'NotFoundError':
    case 'DevicesNotFoundError':
    case 'OverconstrainedError':
      return `No microphone was found. Connect or turn on a microphone, then press ${button} again.`;
    case 'NotReadableError':
    case 'TrackStartError':
    case 'AbortError':
      return `Your microphone could not be started. Another app may be using it: close that app, then press ${button} again.`;
    case 'SecurityError':
      return 'The microphone only works on a secure page. Open Earshot over HTTPS (or on localhost).';
    default:
      return `The microphone could not be started. Check your browser's microphone settings and press ${button} again.`;
  }
}

export function cameraErrorMessage(err) {
  switch (err && err.name) {
    case 'NotAllowedError':
    case 'PermissionDeniedError':
      return 'Camera access is blocked. To allow it, click the lock or settings icon next to the address bar and set Camera to Allow. You can keep talking without it.';
    case 'NotFoundError':
    case 'DevicesNotFoundError':
    case 'OverconstrainedError':
      return 'No camera was found. You can keep talking without it.';
    case 'NotReadableError':
    case 'TrackStartError':
    case 'AbortError':
      return 'Your camera could not be started. Another app may be using it. You can keep talking without it.';
    default:
      return 'The camera could not be started. You can keep talking without it.';
  }
}

let context = null;

/**
 * The shared AudioContext for level meters, created or resumed; call it
 * inside a click so autoplay rules let it run. Null without WebAudio.
 */
export function audioContext() {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return null;
  try {
    if (!context) context = new Ctx();
    if (context.state === 'suspended') context.resume().catch(() => {});
  } catch {
    context = null; // no meters, still a call
  }
  return context;
}

/** Stop every track of a stream (null is fine). */
export function stopStream(stream) {
  if (stream) for (const track of stream.getTracks()) track.stop();
}

/**
 * Where a phone's browser handles a voice call as one (Safari's audio
 * session): it then keeps the microphone and the loudspeaker routing of a
 * call. Nothing where the API does not exist.
 */
export function useCallAudioSession() {
  try {
    if (navigator.audioSession && navigator.audioSession.type !== 'play-and-record') {
      navigator.audioSession.type = 'play-and-record';
    }
  } catch { /* read-only or unsupported: the browser's default */ }
}

/**
 * Plays the other side's audio. A browser that refuses to play outside a
 * tap (Safari: NotAllowedError) gets the "Tap to hear" button, whose click
 * plays every element it refused. One for the page (remoteAudio()).
 */
export class TapToHear {
  #button;
  #playing = new Set(); // every element asked to play, until forgotten
  #waiting = new Set(); // those refused, until a tap

  constructor(button) {
    this.#button = button;
    if (button) button.addEventListener('click', () => this.#tapped());
    this.#render();
  }

  /** Whether the button is showing (some audio waits for a tap). */
  get waiting() { return this.#waiting.size > 0; }

  /** Play `media`; on a refusal, show the button. */
  play(media) {
    if (!media || !media.srcObject) return;
    this.#playing.add(media);
    let attempt;
    try {
      attempt = media.play();
    } catch (err) {
      attempt = Promise.reject(err);
    }
    if (!attempt || typeof attempt.then !== 'function') return;
    attempt.then(() => {
      if (this.#waiting.delete(media)) this.#render();
    }, (err) => {
      if (err && err.name === 'NotAllowedError' && this.#playing.has(media) && media.srcObject) {
        this.#waiting.add(media);
        this.#render();
      }
    });
  }

  /** Play again whatever a hidden page paused (it is visible again). */
  resume() {
    for (const media of [...this.#playing]) {
      if (!media.isConnected || !media.srcObject) this.forget(media);
      else if (media.paused) this.play(media);
    }
  }

  /** `media` no longer needs playing (the call ended). */
  forget(media) {
    this.#playing.delete(media);
    if (this.#waiting.delete(media)) this.#render();
  }

  #tapped() {
    audioContext(); // the tap lets the meters' context run too
    const medias = [...this.#waiting];
    this.#waiting.clear();
    this.#render();
    for (const media of medias) this.play(media);
  }

  #render() {
    if (this.#button) this.#button.hidden = this.#waiting.size === 0;
  }
}

let tap = null;

/** The page's TapToHear, on its `#tap-to-hear` button (made at first use). */
export function remoteAudio() {
  if (!tap) tap = new TapToHear(document.getElementById('tap-to-hear'));
  return tap;
}
