"""Bookkeeping for received messages: distinct bodies, duplicates, unexpected bodies."""


class Tally:
    """What a consumer has seen, checked against expected bodies "<prefix>-0".."<prefix>-<count-1>"."""

    def __init__(self, prefix, count):
        self.prefix, self.count = prefix, count
        self.received = {}  # body index -> message id of the first delivery
        self.seen_ids = set()
        self.duplicates, self.unexpected = [], []

    def record(self, message_id, body):
        """Records one delivery; returns True if it was a new, expected message."""
        text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else str(body)
        index = None
        if text.startswith(self.prefix + "-"):
            tail = text[len(self.prefix) + 1:]
            if tail.isdigit() and int(tail) < self.count:
                index = int(tail)
        if index is None:
            self.unexpected.append(text[:80])
            return False
        if message_id in self.seen_ids or index in self.received:
            self.duplicates.append(message_id)
            return False
        self.seen_ids.add(message_id)
        self.received[index] = message_id
        return True

    def complete(self):
        return len(self.received) == self.count

    def report(self):
        return {"received": len(self.received), "duplicates": self.duplicates,
                "unexpected": self.unexpected,
                "missing": [i for i in range(self.count) if i not in self.received],
                "ids": [self.received[i] for i in sorted(self.received)]}
