// privacy.js: the "Hide my IP address" checkbox that both views share
// (PROTOCOL.md `welcome`: `hide_ip_default`, TURN in `ice_servers`;
// DESIGN.md privacy invariant 4).
//
// Without it, a WebRTC call offers the browser's own addresses (host and
// server-reflexive candidates), so the other side learns the user's IP
// address. With it, every new RTCPeerConnection is made with
// `iceTransportPolicy: 'relay'` (call.js): only relay candidates on the
// server's TURN service are gathered and offered, and audio goes through
// that relay, still DTLS-SRTP encrypted end to end.
//
// The checkbox is shown, and can be used, only when the server offers TURN
// (an ice server with a turn:/turns: URL and credentials); it starts as
// `welcome.hide_ip_default`, and follows each new `welcome` until the user
// changes it. Without TURN a short note says that the IP cannot be hidden
// here. Changing it during a call applies to the next connection, which the
// note says. Nothing is stored: every page load starts from the server's
// default.

export class HideIpControl extends EventTarget {
  #client;
  #el;
  #words;
  #touched = false;
  #known = false; // a `welcome` has said whether TURN is offered

  /**
   * @param {import('./protocol.js').SignallingClient} client
   * @param {{box: HTMLElement, input: HTMLInputElement, note: HTMLElement}} el
   * @param {object} words  what the note says, for this view (see session.js)
   */
  constructor(client, el, words) {
    super();
    this.#client = client;
    this.#el = el;
    this.#words = words;
    const refresh = () => {
      this.#known = true;
      if (!this.#touched) el.input.checked = client.hideIpDefault;
      this.dispatchEvent(new Event('change'));
    };
    client.addEventListener('welcome', refresh);
    client.addEventListener('ice_servers', refresh);
    el.input.addEventListener('change', () => {
      this.#touched = true;
      this.dispatchEvent(new Event('change'));
    });
  }

  /** Whether the server offers TURN (as of its last word). */
  get available() { return this.#client.turnOffered; }

  /** Whether the next peer connection should be relay only. */
  get wanted() { return this.available && this.#el.input.checked; }

  /**
   * Show the checkbox and the note. `current` is whether the connection in
   * progress hides the IP (true/false), or null when there is none.
   */
  render(current = null) {
    const { box, input, note } = this.#el;
    const w = this.#words;
    const available = this.#known && this.available;
    box.hidden = !available;
    input.disabled = !available;
    let text = '';
    if (!this.#known) text = '';
    else if (!available) text = w.unavailable;
    else if (current === null) text = input.checked ? '' : w.off;
    else if (current !== input.checked) text = current ? w.nextDirect : w.nextRelayed;
    else text = current ? w.relayed : w.direct;
    if (note.textContent !== text) note.textContent = text;
    note.hidden = !text;
    note.dataset.available = String(available);
  }
}
