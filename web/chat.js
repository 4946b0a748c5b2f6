// chat.js: the chat log and its form, shared by the stranger page and the
// room page. Text goes in with textContent only (it is another person's
// text); the log keeps at most MAX_LINES lines and lives only in the DOM.

const MAX_LINES = 500;

export class ChatView {
  /**
   * @param {object} o
   * @param {HTMLElement} o.log  the log (data-testid="chat-log")
   * @param {HTMLFormElement} o.form
   * @param {HTMLInputElement} o.input
   * @param {HTMLButtonElement} o.send
   * @param {(text: string) => boolean} o.onSend  true when the text went out
   */
  constructor({ log, form, input, send, onSend }) {
    this.log = log;
    this.form = form;
    this.input = input;
    this.send = send;
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const text = input.value;
      if (!text.trim()) return;
      if (onSend(text)) input.value = '';
    });
  }

  /** One message: `kind` styles it ('you', 'stranger', 'them'), `label` names the sender. */
  append(kind, label, text) {
    const line = document.createElement('p');
    line.className = `msg msg-${kind}`;
    const name = document.createElement('span');
    name.className = 'who';
    name.textContent = label;
    const body = document.createElement('span');
    body.className = 'text';
    body.textContent = text; // never innerHTML
    line.append(name, ' ', body);
    this.log.append(line);
    while (this.log.childElementCount > MAX_LINES) this.log.firstElementChild.remove();
    this.log.scrollTop = this.log.scrollHeight;
  }

  clear() {
    this.log.replaceChildren();
    this.input.value = '';
  }

  setOpen(open, closedPlaceholder = 'Not connected yet') {
    this.input.disabled = !open;
    this.send.disabled = !open;
    this.input.placeholder = open ? 'Type a message' : closedPlaceholder;
  }
}
