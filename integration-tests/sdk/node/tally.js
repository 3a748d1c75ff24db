'use strict';
// Bookkeeping for received messages: distinct bodies, duplicates, unexpected bodies.

class Tally {
  /** Expected bodies are `${prefix}-0` .. `${prefix}-${count - 1}`. */
  constructor(prefix, count) {
    this.prefix = prefix;
    this.count = count;
    this.received = new Map(); // body index -> message id of the first delivery
    this.seenIds = new Set();
    this.duplicates = [];
    this.unexpected = [];
  }

  /** Records one delivery; returns true if it was a new, expected message. */
  record(messageId, body) {
    const text = Buffer.isBuffer(body) ? body.toString('utf8') : String(body);
    let index = null;
    if (text.startsWith(`${this.prefix}-`)) {
      const tail = text.slice(this.prefix.length + 1);
      if (/^\d+$/.test(tail) && Number(tail) < this.count) index = Number(tail);
    }
    if (index === null) {
      this.unexpected.push(text.slice(0, 80));
      return false;
    }
    if (this.seenIds.has(messageId) || this.received.has(index)) {
      this.duplicates.push(messageId);
      return false;
    }
    this.seenIds.add(messageId);
    this.received.set(index, messageId);
    return true;
  }

  complete() {
    return this.received.size === this.count;
  }

  report() {
    const missing = [];
    for (let i = 0; i < this.count; i++) if (!this.received.has(i)) missing.push(i);
    const ids = [ ...this.received.keys() ].sort((a, b) => a - b).map(i => this.received.get(i));
    return { received: this.received.size, duplicates: this.duplicates,
      unexpected: this.unexpected, missing, ids };
  }
}

module.exports = { Tally };
